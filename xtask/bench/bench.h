/*
 * The ready/go/done protocol shared by the workloads of `cargo xtask bench`
 * (see xtask/src/bench.rs). Every line is written with write(2), so nothing
 * waits in a stdio buffer:
 *   1. bench_ready() prints "ready <pid>" and waits for a line on stdin ("go");
 *   2. the workload does its work, timed with now_ns();
 *   3. bench_done() prints "done <ns>" (the workload's own timing of the work)
 *      and waits for EOF on stdin, so a profiler can report while the process
 *      still lives.
 */
#ifndef MEMPROF_BENCH_H
#define MEMPROF_BENCH_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))

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

/* Reads stdin up to the end of a line; returns 0 on EOF before it. */
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

/* Prints "ready <pid>" and waits for "go"; returns 0 if stdin ends first. */
static int bench_ready(void)
{
	char line[64];
	snprintf(line, sizeof line, "ready %d\n", (int)getpid());
	say(line);
	return read_line();
}

/* Prints "done <ns>" and waits for EOF on stdin. */
static void bench_done(double ns)
{
	char line[64];
	snprintf(line, sizeof line, "done %.2f\n", ns);
	say(line);
	wait_for_eof();
}

#endif
