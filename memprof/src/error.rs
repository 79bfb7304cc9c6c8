//! Errors a user can act on. Each message names what failed and what to do.

use std::path::PathBuf;

/// The failures a caller (or a test) may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pid {0} does not exist (no /proc/{0}): check the pid, or whether the process already exited")]
    NoSuchProcess(u32),

    #[error(
        "pid {pid} ({comm}) maps no libc (glibc's libc.so.6 or musl's libc.so): it is probably \
         statically linked; memprof probes the allocator of a dynamically linked glibc or musl \
         program, or of a statically linked musl one"
    )]
    NoLibc { pid: u32, comm: String },

    #[error(
        "{what} is a Go program: memprof does not attach to it. The Go runtime allocates its \
         memory itself, not through malloc, and the return probes memprof would plant crash Go \
         programs (the runtime moves goroutine stacks). Use Go's own heap profile instead \
         (runtime/pprof, net/http/pprof: go tool pprof -sample_index=inuse_space)"
    )]
    GoProgram { what: String },

    #[error(
        "{command} is statically linked: it maps no libc.so.6 whose allocator memprof could \
         probe; build it dynamically linked (or statically with musl)"
    )]
    StaticCommand { command: String },

    #[error(
        "memprof needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load BPF programs and attach \
         uprobes; missing: {missing}. Run it with sudo"
    )]
    NotPermitted { missing: String },

    #[error(
        "this kernel cannot attach uprobes ({path} is missing): memprof needs a kernel built with \
         CONFIG_UPROBE_EVENTS and CONFIG_BPF_EVENTS"
    )]
    NoUprobes { path: PathBuf },

    #[error(
        "the kernel refused a uprobe on {function} in {library}: another tracer (bcc, bpftrace, \
         perf, a USDT user) probably holds a uprobe at the same address with a different \
         ref_ctr_offset (dmesg says 'ref_ctr_offset mismatch'); stop that tracer and run memprof again"
    )]
    ProbeConflict { function: String, library: String },

    #[error(
        "{library} exports none of the allocator functions memprof probes (malloc, free, ...)"
    )]
    NoAllocatorSymbols { library: String },
}
