/*
 * churn: the allocation-heavy workload of `cargo xtask bench`.
 *
 *   usage: churn PAIRS
 *
 * Protocol (the ready/go/done one of bench.h, all lines written with
 * write(2), so nothing waits in a stdio buffer):
 *   1. prints "ready <pid>" and waits for a line on stdin ("go");
 *   2. two threads each make PAIRS malloc/free pairs of 16 B..4 KiB (the size
 *      varies deterministically with the pair's index), with no work between
 *      the pairs; the main thread times them with CLOCK_MONOTONIC;
 *   3. leaks a known amount on the way: 100 x malloc(1000) in bench_leak,
 *      50 per thread, one every PAIRS/50 pairs, so that the leak is spread
 *      over the run as a real leak is (a sampler that records calls made at
 *      some moments only, `--sample-by window`, sees it in proportion);
 *   4. prints "done <ns_per_pair>", the wall time of step 2 divided by the
 *      pairs both threads made (2 x PAIRS), and waits for EOF on stdin
 *      before exiting (the threads too), so a profiler can report while the
 *      process lives.
 *
 * Built with gcc -O2 -g -fno-omit-frame-pointer -pthread: frame pointers so
 * stacks can be walked, bench_leak noinline so it names the leak's stack.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#define THREADS 2
#define LEAK_COUNT 100
#define LEAKS_PER_THREAD (LEAK_COUNT / THREADS)
#define LEAK_SIZE 1000
#define MIN_SIZE 16
#define MAX_SIZE 4096

/* Volatile, so gcc can drop neither a pair nor the leak. */
static void *volatile sink;
static void *volatile leaked[LEAK_COUNT];

static unsigned long pairs;
static pthread_barrier_t churned, reported;

NOINLINE void bench_leak(unsigned slot)
{
	leaked[slot] = malloc(LEAK_SIZE);
}

static void *churn(void *arg)
{
	/* A different but fixed sequence of sizes per thread (xorshift32). */
	uint32_t x = 2463534242u + (uint32_t)(uintptr_t)arg;
	unsigned slot = (unsigned)(uintptr_t)arg * LEAKS_PER_THREAD;
	unsigned leaks = 0;
	unsigned long every = pairs / LEAKS_PER_THREAD;
	if (every == 0)
		every = 1;
	for (unsigned long i = 0; i < pairs; i++) {
		if (i % every == every / 2 && leaks < LEAKS_PER_THREAD)
			bench_leak(slot + leaks++);
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		size_t size = MIN_SIZE + x % (MAX_SIZE - MIN_SIZE + 1);
		void *p = malloc(size);
		sink = p;
		free(p);
	}
	/* Fewer pairs than leaks: the rest now. */
	while (leaks < LEAKS_PER_THREAD)
		bench_leak(slot + leaks++);
	/* Churned; then alive until the profiler reported (bpftrace names a
	 * thread's frames through /proc/TID, which goes with the thread). */
	pthread_barrier_wait(&churned);
	pthread_barrier_wait(&reported);
	return NULL;
}


int main(int argc, char **argv)
{
	if (argc != 2 || (pairs = strtoul(argv[1], NULL, 10)) == 0) {
		fprintf(stderr, "usage: %s PAIRS\n", argv[0]);
		return 2;
	}
	if (!bench_ready())
		return 0;

	pthread_t threads[THREADS];
	if (pthread_barrier_init(&churned, NULL, THREADS + 1) != 0 ||
	    pthread_barrier_init(&reported, NULL, THREADS + 1) != 0) {
		fprintf(stderr, "churn: pthread_barrier_init failed\n");
		return 1;
	}
	uint64_t start = now_ns();
	for (uintptr_t t = 0; t < THREADS; t++) {
		if (pthread_create(&threads[t], NULL, churn, (void *)t) != 0) {
			fprintf(stderr, "churn: pthread_create failed\n");
			return 1;
		}
	}
	pthread_barrier_wait(&churned);
	uint64_t elapsed = now_ns() - start;

	bench_done((double)elapsed / (double)(THREADS * pairs));
	pthread_barrier_wait(&reported);
	for (int t = 0; t < THREADS; t++)
		pthread_join(threads[t], NULL);
	return 0;
}
