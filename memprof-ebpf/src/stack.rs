//! User stacks: captured into this CPU's scratch buffer, then stored in
//! `STACKS` under a hash of their frames.
//!
//! The contract between the two halves: a capture fills [`scratch`]'s frames
//! and length and returns their id (a hash from [`HASH_SEED`] through [`mix`],
//! shifted right by one so that it is never negative), or [`STACK_LOST`];
//! [`store_stack`] then makes sure those frames are in `STACKS` under that
//! id. Callers store only when needed (the first allocation from a stack on
//! a CPU), so a capture whose frames are already stored costs no map update.
//!
//! Two walkers fill the buffer: [`capture_stack`] at a probe (by frame
//! pointer, or from unwind tables in [`unwind`]), and
//! [`capture_syscall_stack`] for a thread inside a syscall (the `--mmap`
//! tracepoints).

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_probe_read_user, macros::map, maps::PerCpuArray,
    EbpfContext,
};
use memprof_common::{stat, unwind::walk, StackTrace, MAX_FRAMES, STACK_LOST};

use crate::maps::{bump, EEXIST, STACKS};
use crate::python;

mod syscall;
mod unwind;

pub(crate) use syscall::capture_syscall_stack;
pub(crate) use unwind::forget as forget_unwind_table;

/// Per-CPU room to capture a stack before it is stored.
#[map]
static SCRATCH: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);

/// Where a stack's hash starts.
const HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Mixes one value (a frame, the length) into a stack's hash.
#[inline(always)]
pub(crate) fn mix(hash: u64, value: u64) -> u64 {
    let hash = (hash ^ value).wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 32)
}

/// This CPU's scratch buffer.
#[inline(always)]
pub(crate) fn scratch() -> Option<&'static mut StackTrace> {
    let buf = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value; programs do not migrate while running.
    Some(unsafe { &mut *buf })
}

/// Captures the user stack into this CPU's scratch buffer and returns a hash
/// of its frames and of the process `tgid` (never negative), or
/// [`STACK_LOST`]. The same addresses mean different code in two processes,
/// so their stacks never share an id.
///
/// The stack is walked here, by frame pointer, as the kernel's
/// `bpf_get_stack(BPF_F_USER_STACK)` does: the instruction pointer (at an
/// allocator's return, the caller's return address), then the return address
/// above each saved frame pointer. Doing it here costs a third of the helper,
/// which takes most of an allocation's BPF time (perf callchain set-up): about
/// 800 ns of 1,200 per allocation on the churn bench. The walk stops at a null
/// or unreadable frame, a null return address, or a frame pointer that does not
/// move up the stack (a loop, or garbage from code without frame pointers).
#[inline(always)]
pub(crate) fn capture_stack<C: EbpfContext>(ctx: &C, tgid: u32) -> i64 {
    let Some(buf) = scratch() else {
        return STACK_LOST;
    };
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: the context of a uprobe program is the task's registers.
    let (ip, mut fp) = unsafe { ((*regs).rip, (*regs).rbp) };
    if ip == 0 {
        return STACK_LOST;
    }
    let mut how = walk::FP;
    if unwind::enabled() {
        match unwind::capture(regs, tgid, HASH_SEED ^ u64::from(tgid)) {
            Some((hash, len)) => {
                let hash = python::append(buf, hash, len, tgid);
                return (mix(hash, len) >> 1) as i64;
            }
            None => {
                bump(stat::UNWIND_NO_TABLE);
                how |= walk::NO_TABLE;
            }
        }
    }
    buf.ips[0] = ip;
    let mut hash = mix(HASH_SEED ^ u64::from(tgid), ip);
    let mut len: u64 = 1;
    for i in 1..MAX_FRAMES {
        if fp == 0 {
            break;
        }
        // SAFETY: reading user memory through the helper, which handles faults.
        let Ok(frame) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        let (next, ret) = (frame[0], frame[1]);
        if ret == 0 {
            break;
        }
        buf.ips[i] = ret;
        len += 1;
        hash = mix(hash, ret);
        if next <= fp {
            break;
        }
        fp = next;
    }
    buf.len = len;
    buf.walk = how;
    hash = python::append(buf, hash, len, tgid);
    // The length is part of the identity, as the frames are.
    hash = mix(hash, len);
    (hash >> 1) as i64
}

/// [`capture_stack`] for a block of the allocator `tag` (0: malloc's
/// family; else a bit of `StackTrace::walk`, such as
/// [`memprof_common::python::PYMALLOC`]): the tag is kept in the stack's
/// `walk` and mixed into its id, so that the same code allocating from two
/// allocators makes two stacks, each saying where its blocks came from.
#[inline(always)]
pub(crate) fn capture_stack_tagged<C: EbpfContext>(ctx: &C, tgid: u32, tag: u64) -> i64 {
    let id = capture_stack(ctx, tgid);
    if tag == 0 || id < 0 {
        return id;
    }
    let Some(buf) = scratch() else {
        return STACK_LOST;
    };
    buf.walk |= tag;
    (mix(id as u64, tag) >> 1) as i64
}

/// Makes sure the stack just captured by [`capture_stack`] (or
/// [`capture_syscall_stack`]) is in `STACKS` under `id`. A stack that cannot
/// be stored is counted as lost; user space shows allocations whose stack is
/// missing as `[stack lost]`.
#[inline(always)]
pub(crate) fn store_stack(id: i64) {
    let Some(buf) = scratch() else {
        bump(stat::STACK_LOST);
        return;
    };
    // SAFETY: the value is only read.
    if let Some(stored) = unsafe { STACKS.get(id) } {
        if stored.len != buf.len || stored.ips[0] != buf.ips[0] {
            bump(stat::STACK_COLLISIONS);
        }
        return;
    }
    // A new stack: no frames of an older capture past its own. (A stack
    // with Python frames, at the end of `ips`, keeps what lies between:
    // nothing reads it, and a second bound makes the verifier follow every
    // pair of bounds.)
    if memprof_common::python::frame::count(buf.walk) == 0 {
        for i in 0..MAX_FRAMES {
            if i as u64 >= buf.len {
                buf.ips[i] = 0;
            }
        }
    }
    // Passed by reference: a copy of the 1 KiB value would overflow the
    // 512-byte BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    match STACKS.insert(id, &*buf, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {}
        Err(_) => bump(stat::STACK_LOST),
    }
}
