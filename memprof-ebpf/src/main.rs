//! The BPF programs of memprof: uprobes and uretprobes on the allocator
//! entry points of the target's libc.
//!
//! Entry programs remember the arguments of the call per thread (`PENDING`,
//! task-local storage);
//! return programs record the returned block in `LIVE` (address -> size,
//! time, stack) and add it to the per-stack aggregate `AGG`; `free` removes
//! the block and subtracts it. Every path that gives up bumps a counter in
//! `STATS`, which user space shows in every report.
//!
//! `AGG` is per CPU: threads of one program often allocate from the same
//! stack, and one shared entry bounced between their CPUs on every
//! allocation and free (about 150 ns per malloc/free pair on the benchmark).
//!
//! User space frees the stacks that nothing outstanding refers to any more
//! while the probes run, by deleting the `AGG` entry (every CPU's value) and
//! then the frames. That is safe because an allocation adds to its stack's
//! `AGG` entry *before* it makes sure the frames are in `STACKS` (the first
//! allocation on each CPU since the entry was made does): a stack whose
//! count user space reads as zero after deleting it either has no live
//! allocation, or has one whose program is about to store it again (and
//! user space puts back what it deleted when the count turned nonzero).
//!
//! One object holds every program: they share maps. Its modules, one concern
//! each:
//! - [`maps`]: the maps user space reads, and the counters of every give-up path;
//! - [`settings`]: the load-time globals and `CONTROL`: is this thread recorded,
//!   which sampling window is open;
//! - [`task`]: each thread's pending allocator call, in task-local storage;
//! - [`decode`]: the arguments and return value of each kind of allocation
//!   function, read in one place for every mode;
//! - [`record`]: `LIVE` and `AGG`: a block returned, freed, moved or put back;
//! - [`stack`]: user stacks, captured and stored in `STACKS`;
//! - [`python`]: the Python frames of allocations in CPython processes;
//! - [`pymalloc`]: CPython's allocator of small objects;
//! - [`full`]: the programs that record every call (uprobe and uretprobe);
//! - [`free`]: `free`, attached in every mode;
//! - [`sampled`]: the uprobe session programs of `--sample-rate` and
//!   `--sample-by window`;
//! - [`process`]: exit, exec and fork;
//! - [`mmap`] and [`kernel`]: the optional sources `--mmap` and `--kernel`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod decode;
mod free;
mod full;
mod kernel;
mod maps;
mod mmap;
mod process;
mod pymalloc;
mod python;
mod record;
mod sampled;
mod settings;
mod share;
mod stack;
mod task;

/// The license the loader hands the kernel with every program. Helpers the
/// programs call (`bpf_probe_read_user`, `bpf_probe_read_kernel`,
/// `bpf_get_current_task_btf`, `bpf_task_pt_regs`, `bpf_get_stackid`) are
/// GPL-only: the kernel refuses them to a program whose license is not
/// GPL-compatible. Without this section aya assumes "GPL"; saying it here
/// keeps the object correct for any loader.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
