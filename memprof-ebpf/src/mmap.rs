//! `--mmap`: the target's anonymous memory, from the syscall tracepoints of
//! `mmap`, `munmap` and `mremap`, sent as events through the `MMAP_EVENTS`
//! ring buffer for user space to replay in order.
//!
//! Apart from the heap: its own map and counters (`SOURCE_STATS`); only the
//! user stacks of anonymous mappings go to the shared `STACKS` map (their
//! frames begin inside the syscall wrapper, so they never hash like a heap
//! stack). Nothing here adds to `LIVE` or `AGG`, so the heap totals are
//! untouched.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::{map, tracepoint},
    maps::RingBuf,
    programs::TracePointContext,
    Global,
};
use memprof_common::{mmap_event, source_stat, sources, MmapEvent, STACK_LOST};

use crate::maps::bump_source;
use crate::settings::target_thread;
use crate::stack::{capture_syscall_stack, store_stack};

/// Anonymous-memory events of the target, replayed in order by user space.
#[map]
static MMAP_EVENTS: RingBuf = RingBuf::with_byte_size(sources::MMAP_EVENTS_OFF_BYTES, 0);

const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const PAGE_MASK: u64 = 4095;

/// A length rounded up to whole pages, as the kernel rounds it.
#[inline(always)]
fn page_up(len: u64) -> u64 {
    len.wrapping_add(PAGE_MASK) & !PAGE_MASK
}

/// Offsets in the records of the syscall tracepoints, from their tracefs
/// `format` files: where `args[0]` of a `sys_enter_*` record is (the next
/// arguments follow, 8 bytes each), and the return value of a `sys_exit_*` one.
#[unsafe(no_mangle)]
static SYSCALL_ARGS: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static SYSCALL_RET: Global<u32> = Global::new(16);

/// The current task's saved user registers (the syscall's arguments as it
/// entered, its stack).
#[inline(always)]
fn user_regs() -> Option<pt_regs> {
    // SAFETY: the helpers have no preconditions; the registers are read
    // through bpf_probe_read_kernel, which handles faults.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        bpf_probe_read_kernel(regs).ok()
    }
}

/// Argument `n` of the syscall of a `sys_enter_*` record.
#[inline(always)]
fn syscall_arg(ctx: &TracePointContext, n: u32) -> Option<u64> {
    // SAFETY: an offset inside the record, from its format file; the helper
    // handles faults.
    unsafe { ctx.read_at::<u64>((SYSCALL_ARGS.load() + 8 * n) as usize) }.ok()
}

/// The return value of a `sys_exit_*` record.
#[inline(always)]
fn syscall_ret(ctx: &TracePointContext) -> Option<i64> {
    // SAFETY: as in `syscall_arg`.
    unsafe { ctx.read_at::<i64>(SYSCALL_RET.load() as usize) }.ok()
}

/// Sends one event; a full ring buffer is counted, never silent.
#[inline(always)]
fn send_mmap_event(event: MmapEvent) {
    if MMAP_EVENTS.output::<MmapEvent>(&event, 0).is_err() {
        bump_source(source_stat::MMAP_EVENTS_LOST);
    }
}

/// `--mmap`: the entry of `munmap` or `mremap`.
///
/// # Why syscall tracepoints
/// Syscall tracepoints see every caller: glibc's `mmap` wrapper and the
/// `mmap` glibc's malloc makes for large blocks (which the heap report counts
/// too: the overlap is said in the report), direct `syscall(2)`s, static
/// binaries, other libcs and runtimes. Uprobes on libc's `mmap` would miss all
/// but the first. The per-syscall tracepoints (`syscalls:sys_enter_munmap`,
/// ...) run no program for other syscalls: the kernel checks a bitmap of
/// enabled syscalls first. Measured on the development machine (Linux 6.18,
/// 2 cores), a `getppid` round trip of any process took 115-125 ns without
/// them and 120-140 ns with them; with the raw `sys_enter`/`sys_exit`
/// tracepoints, tried first, which run a program on every syscall, 180-210 ns.
/// The user registers, for the arguments the record lacks and for the stack,
/// come from `bpf_task_pt_regs`. The record offsets come from tracefs
/// (`SYSCALL_ARGS`, `SYSCALL_RET`).
///
/// `munmap` is sent at its entry, before the kernel unmaps (a later `mmap` of
/// another thread may get the same addresses once it has), when its
/// arguments are valid (page-aligned address, nonzero length); a valid
/// `munmap` that fails anyway (ENOMEM when a split meets the map-count
/// limit) is counted as done. The old range of `mremap` is sent at its entry
/// for the same reason, its result at its return.
#[inline(always)]
fn unmap_or_remap_begin(ctx: &TracePointContext, kind: u64) {
    let Some(tid) = target_thread() else { return };
    let (Some(addr), Some(len)) = (syscall_arg(ctx, 0), syscall_arg(ctx, 1)) else {
        bump_source(source_stat::MMAP_EVENTS_LOST);
        return;
    };
    if kind == mmap_event::UNMAP && (addr & PAGE_MASK != 0 || len == 0) {
        return; // EINVAL: nothing happens
    }
    send_mmap_event(MmapEvent {
        kind,
        tid,
        // SAFETY: the helper has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        addr,
        len: page_up(len),
        pid: tid >> 32,
        ..MmapEvent::default()
    });
}

/// `--mmap`: `munmap(addr, len)` (see [`unmap_or_remap_begin`]).
#[tracepoint(category = "syscalls", name = "sys_enter_munmap")]
pub fn mmap_enter_munmap(ctx: TracePointContext) -> u32 {
    unmap_or_remap_begin(&ctx, mmap_event::UNMAP);
    0
}

/// `--mmap`: `mremap(addr, old_len, ...)`, its old range.
#[tracepoint(category = "syscalls", name = "sys_enter_mremap")]
pub fn mmap_enter_mremap(ctx: TracePointContext) -> u32 {
    unmap_or_remap_begin(&ctx, mmap_event::REMAP_BEGIN);
    0
}

/// `--mmap`: the return of `mmap`; anonymous mappings (and file mappings
/// placed with `MAP_FIXED`, which replace what was there) are sent.
#[tracepoint(category = "syscalls", name = "sys_exit_mmap")]
pub fn mmap_exit_mmap(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    let (Some(ret), Some(regs)) = (syscall_ret(&ctx), user_regs()) else {
        bump_source(source_stat::MMAP_EVENTS_LOST);
        return 0;
    };
    if (-4095..0).contains(&ret) {
        bump_source(source_stat::MMAP_FAILED);
        return 0;
    }
    // The argument registers are as the syscall entry saved them.
    let flags = regs.r10;
    let anonymous = flags & MAP_ANONYMOUS != 0;
    if !anonymous && flags & MAP_FIXED == 0 {
        return 0; // a file mapping placed where nothing was
    }
    let stack_id = if anonymous {
        mmap_stack(&regs)
    } else {
        STACK_LOST
    };
    send_mmap_event(MmapEvent {
        kind: mmap_event::MAP,
        tid,
        // SAFETY: the helper has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        addr: ret as u64,
        len: page_up(regs.rsi),
        stack_id,
        anonymous: u64::from(anonymous),
        pid: tid >> 32,
        ..MmapEvent::default()
    });
    0
}

/// `--mmap`: the return of `mremap`.
#[tracepoint(category = "syscalls", name = "sys_exit_mremap")]
pub fn mmap_exit_mremap(ctx: TracePointContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    let (Some(ret), Some(regs)) = (syscall_ret(&ctx), user_regs()) else {
        bump_source(source_stat::MMAP_EVENTS_LOST);
        return 0;
    };
    let failed = (-4095..0).contains(&ret);
    let stack_id = if failed {
        bump_source(source_stat::MMAP_FAILED);
        STACK_LOST
    } else {
        mmap_stack(&regs)
    };
    send_mmap_event(MmapEvent {
        kind: mmap_event::REMAP_END,
        tid,
        // SAFETY: the helper has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        addr: regs.rdi,
        len: page_up(regs.rsi),
        new_addr: ret as u64,
        new_len: page_up(regs.rdx),
        stack_id,
        anonymous: 1,
        pid: tid >> 32,
    });
    0
}

/// The stored user stack of the thread inside a syscall, or [`STACK_LOST`] (counted).
#[inline(always)]
fn mmap_stack(regs: &pt_regs) -> i64 {
    let id = capture_syscall_stack(regs);
    if id == STACK_LOST {
        bump_source(source_stat::MMAP_STACK_LOST);
        return id;
    }
    store_stack(id);
    id
}
