/*
 * live: 1,000,000 live allocations, for measuring memprof's own memory.
 *
 *   usage: live [COUNT]    (default 1000000)
 *
 * The protocol of bench.h: prints "ready <pid>" (write(2)), waits for a
 * line on stdin, then makes COUNT malloc(16) calls in the noinline
 * hold_live and keeps every block (none is freed), prints "done <ns>" (the
 * time the allocations took, in nanoseconds per allocation) and waits for
 * EOF on stdin before exiting. Built like churn.c.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#define DEFAULT_COUNT 1000000UL
#define BLOCK_SIZE 16

/* Volatile stores, so gcc cannot drop an allocation. */
NOINLINE void hold_live(void *volatile *blocks, unsigned long count)
{
	for (unsigned long i = 0; i < count; i++)
		blocks[i] = malloc(BLOCK_SIZE);
}

int main(int argc, char **argv)
{
	unsigned long count = DEFAULT_COUNT;
	if (argc > 2 || (argc == 2 && (count = strtoul(argv[1], NULL, 10)) == 0)) {
		fprintf(stderr, "usage: %s [COUNT]\n", argv[0]);
		return 2;
	}
	/* The pointer array is allocated before memprof attaches: not counted. */
	void *volatile *blocks = calloc(count, sizeof *blocks);
	if (blocks == NULL) {
		fprintf(stderr, "live: out of memory\n");
		return 1;
	}
	if (!bench_ready())
		return 0;

	uint64_t start = now_ns();
	hold_live(blocks, count);
	uint64_t elapsed = now_ns() - start;

	bench_done((double)elapsed / (double)count);
	return 0;
}
