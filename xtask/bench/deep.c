/*
 * deep: the churn of `cargo xtask bench` at a chosen stack depth, to measure
 * what each frame of a stack walk costs.
 *
 *   usage: deep PAIRS DEPTH
 *
 * The ready/go/done protocol of bench.h. Two threads each make PAIRS
 * malloc/free pairs of 16 B..4 KiB (churn.c's sizes), every one from the
 * bottom of a recursion: the stack of each allocation has DEPTH (at least
 * 2) frames of this program, then the thread's start in libc. Each thread
 * then leaks one block of 1000 bytes from the same place, so the report
 * shows how much of that stack a walk found. Prints "done <ns_per_pair>".
 *
 * Built twice by the bench: with frame pointers (walked by frame pointer)
 * and without (walked from call frame information), same source.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#define THREADS 2
#define MIN_SIZE 16
#define MAX_SIZE 4096
#define LEAK_SIZE 1000

static void *volatile sink;
static void *volatile leaked[THREADS];
static volatile unsigned long depth_sum;

static unsigned long pairs;
static unsigned depth;
static pthread_barrier_t churned, reported;

NOINLINE static void churn_here(uint32_t x, unsigned slot)
{
	for (unsigned long i = 0; i < pairs; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		void *p = malloc(MIN_SIZE + x % (MAX_SIZE - MIN_SIZE + 1));
		sink = p;
		free(p);
	}
	/* One block kept, so the report shows this stack, whole. */
	leaked[slot] = malloc(LEAK_SIZE);
}

/* Not a tail call (the sum after it), so every level keeps its frame. */
NOINLINE static unsigned descend(unsigned level, uint32_t x, unsigned slot)
{
	if (level <= 1) {
		churn_here(x, slot);
		return 1;
	}
	unsigned below = descend(level - 1, x, slot);
	depth_sum += below;
	return below + 1;
}

static void *thread_main(void *arg)
{
	unsigned slot = (unsigned)(uintptr_t)arg;
	uint32_t x = 2463534242u + slot;
	/* This function and churn_here are two frames; descend makes the others. */
	if (depth > 2)
		descend(depth - 2, x, slot);
	else
		churn_here(x, slot);
	pthread_barrier_wait(&churned);
	pthread_barrier_wait(&reported);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3 || (pairs = strtoul(argv[1], NULL, 10)) == 0 ||
	    (depth = (unsigned)strtoul(argv[2], NULL, 10)) < 2) {
		fprintf(stderr, "usage: %s PAIRS DEPTH (at least 2)\n", argv[0]);
		return 2;
	}
	if (!bench_ready())
		return 0;

	pthread_t threads[THREADS];
	if (pthread_barrier_init(&churned, NULL, THREADS + 1) != 0 ||
	    pthread_barrier_init(&reported, NULL, THREADS + 1) != 0) {
		fprintf(stderr, "deep: pthread_barrier_init failed\n");
		return 1;
	}
	uint64_t start = now_ns();
	for (uintptr_t t = 0; t < THREADS; t++) {
		if (pthread_create(&threads[t], NULL, thread_main, (void *)t) != 0) {
			fprintf(stderr, "deep: pthread_create failed\n");
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
