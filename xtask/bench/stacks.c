/*
 * stacks: leaks from 10,000 distinct call stacks, for measuring how long
 * memprof takes to read and symbolize many stacks.
 *
 *   usage: stacks [LEAVES]    (default 10000, at most 16384)
 *
 * The protocol of bench.h: prints "ready <pid>" (write(2)), waits for a
 * line on stdin, leaks, prints "done <ns>" (nanoseconds per leaf) and waits
 * for EOF on stdin before exiting.
 *
 * Leaf i is reached through a chain of DEPTH = 14 calls, each to `left` or
 * `right` as the bits of i say, most significant first; the last of them
 * mallocs one block (32 bytes in left, 48 in right). Every call site is a
 * distinct return address, so every leaf has its own call stack. The
 * functions are noinline and noclone, and a volatile store after each call
 * keeps gcc from turning it into a tail jump (which would drop the frame).
 * Built like churn.c, with frame pointers.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#define DEPTH 14
#define DEFAULT_LEAVES 10000UL
#define LEFT_SIZE 32
#define RIGHT_SIZE 48

static void *volatile leaves[1UL << DEPTH];
static volatile unsigned long calls;

NOINLINE void left(unsigned long i, int depth);
NOINLINE void right(unsigned long i, int depth);

/* Calls left or right by bit depth-1 of i; depth counts the calls still to make. */
static inline void descend(unsigned long i, int depth)
{
	if ((i >> (depth - 1)) & 1)
		right(i, depth - 1);
	else
		left(i, depth - 1);
	calls = calls + 1; /* not a tail call */
}

NOINLINE void left(unsigned long i, int depth)
{
	if (depth == 0)
		leaves[i] = malloc(LEFT_SIZE);
	else
		descend(i, depth);
}

NOINLINE void right(unsigned long i, int depth)
{
	if (depth == 0)
		leaves[i] = malloc(RIGHT_SIZE);
	else
		descend(i, depth);
}

int main(int argc, char **argv)
{
	unsigned long count = DEFAULT_LEAVES;
	if (argc > 2 ||
	    (argc == 2 && ((count = strtoul(argv[1], NULL, 10)) == 0 || count > (1UL << DEPTH)))) {
		fprintf(stderr, "usage: %s [LEAVES], 1..%lu\n", argv[0], 1UL << DEPTH);
		return 2;
	}
	if (!bench_ready())
		return 0;

	uint64_t start = now_ns();
	for (unsigned long i = 0; i < count; i++)
		descend(i, DEPTH);
	uint64_t elapsed = now_ns() - start;

	bench_done((double)elapsed / (double)count);
	return 0;
}
