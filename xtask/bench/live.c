/*
 * live: 1,000,000 live allocations, for measuring memprof's own memory.
 *
 *   usage: live [COUNT]    (default 1000000)
 *
 * Same protocol as churn.c: prints "ready <pid>" (write(2)), waits for a
 * line on stdin, then makes COUNT malloc(16) calls in the noinline
 * hold_live and keeps every block (none is freed), prints "done <ns>" (the
 * time the allocations took, in nanoseconds per allocation) and waits for
 * EOF on stdin before exiting. Built like churn.c.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))

#define DEFAULT_COUNT 1000000UL
#define BLOCK_SIZE 16

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
	char line[64];
	snprintf(line, sizeof line, "ready %d\n", (int)getpid());
	say(line);
	if (!read_line())
		return 0;

	uint64_t start = now_ns();
	hold_live(blocks, count);
	uint64_t elapsed = now_ns() - start;

	snprintf(line, sizeof line, "done %.2f\n", (double)elapsed / (double)count);
	say(line);
	wait_for_eof();
	return 0;
}
