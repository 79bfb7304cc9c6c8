/*
 * stacks: leaks from 10,000 distinct call stacks, for measuring how long
 * memprof takes to read and symbolize many stacks.
 *
 *   usage: stacks [LEAVES]    (default 10000, at most 16384)
 *
 * Same protocol as churn.c: prints "ready <pid>" (write(2)), waits for a
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
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))

#define DEPTH 14
#define DEFAULT_LEAVES 10000UL
#define LEFT_SIZE 32
#define RIGHT_SIZE 48

static void *volatile leaves[1UL << DEPTH];
static volatile unsigned long calls;

static void say(const char *line)
{
	size_t len = strlen(line);
	while (len > 0) {
		ssize_t n = write(STDOUT_FILENO, line, len);
		if (n <= 0)
			exit(3);
		line += n;
		len -= (size_t)n;
	}
}

static int read_line(void)
{
	char c;
	for (;;) {
		ssize_t n = read(STDIN_FILENO, &c, 1);
		if (n <= 0)
			return 0;
		if (c == '\n')
			return 1;
	}
}

static void wait_for_eof(void)
{
	char buf[64];
	while (read(STDIN_FILENO, buf, sizeof buf) > 0)
		;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

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
	char line[64];
	snprintf(line, sizeof line, "ready %d\n", (int)getpid());
	say(line);
	if (!read_line())
		return 0;

	uint64_t start = now_ns();
	for (unsigned long i = 0; i < count; i++)
		descend(i, DEPTH);
	uint64_t elapsed = now_ns() - start;

	snprintf(line, sizeof line, "done %.2f\n", (double)elapsed / (double)count);
	say(line);
	wait_for_eof();
	return 0;
}
