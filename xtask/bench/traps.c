/*
 * What one uprobe costs on this kernel, by the instruction it replaces:
 * `traps KIND N` calls a function that starts with that instruction N times
 * and prints the time per call. The bench runs it unprobed and under a
 * bpftrace probe whose program only counts.
 *
 *   push   push %rbp: emulated by the kernel (one trap)
 *   jcc    jne: emulated (one trap), where memprof moves most probes
 *   mov    mov %rdi,%rax: single-stepped out of line (a second trap)
 *   ret    ret: single-stepped, the cost of a probe on a function's ret
 *   nop5   a 5-byte nop: Linux 6.18 rewrites a probe there into a call
 *          (optimized uprobes), no trap after the first hit
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

__asm__(".text\n"
	".globl f_push\n.type f_push,@function\n"
	"f_push:\n push %rbp\n pop %rbp\n ret\n.size f_push,.-f_push\n"
	".globl f_jcc\n.type f_jcc,@function\n"
	"f_jcc:\n .byte 0x75,0x00\n ret\n.size f_jcc,.-f_jcc\n"
	".globl f_mov\n.type f_mov,@function\n"
	"f_mov:\n mov %rdi,%rax\n ret\n.size f_mov,.-f_mov\n"
	".globl f_ret\n.type f_ret,@function\n"
	"f_ret:\n ret\n.size f_ret,.-f_ret\n"
	".globl f_nop5\n.type f_nop5,@function\n"
	"f_nop5:\n .byte 0x0f,0x1f,0x44,0x00,0x00\n ret\n.size f_nop5,.-f_nop5\n");
long f_push(long), f_jcc(long), f_mov(long), f_ret(long), f_nop5(long);

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: traps push|jcc|mov|ret|nop5 CALLS\n");
		return 2;
	}
	static const struct {
		const char *name;
		long (*f)(long);
	} kinds[] = { { "push", f_push }, { "jcc", f_jcc }, { "mov", f_mov },
		      { "ret", f_ret },   { "nop5", f_nop5 } };
	long (*f)(long) = NULL;
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
		if (!strcmp(argv[1], kinds[i].name))
			f = kinds[i].f;
	long calls = atol(argv[2]);
	if (!f || calls <= 0) {
		fprintf(stderr, "usage: traps push|jcc|mov|ret|nop5 CALLS\n");
		return 2;
	}
	volatile long sink = 0;
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < calls; i++)
		sink += f(i);
	clock_gettime(CLOCK_MONOTONIC, &b);
	double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
	printf("%.1f ns per call\n", ns / calls);
	return 0;
}
