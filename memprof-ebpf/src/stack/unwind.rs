//! Walks user stacks from the unwind tables that user space compiles from
//! each object's call frame information (`memprof/src/unwind`), for code
//! built without frame pointers.
//!
//! The walk is a state machine driven by `bpf_loop`, so that the verifier
//! checks one run of [`step`] once, however many frames and probes there
//! are (binary searches written as loops made it follow every path of every
//! search). For each frame it finds the mapping of the pc (binary search in
//! the process's table, one probe per run), records the pc, finds the row
//! in effect (binary search in the object's rows), and computes the
//! caller's registers: CFA from the row's rule, return
//! address at CFA - 8, rbp from where the row says it was saved, rsp = CFA.
//! A pc in no executable mapping is never recorded; every early end says why
//! in the stack's `walk` word and in `STATS`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_NO_PREALLOC},
    helpers::{bpf_probe_read_user, generated::bpf_loop},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    Global,
};
use memprof_common::{
    stat,
    unwind::{
        cfa, mode, walk, ExecMapping, ProcSlot, RowChunk, UnwindRow, MAX_MAPPINGS,
        MAX_UNWIND_PROCS, ROWS_PER_CHUNK,
    },
    MAX_FRAMES,
};

use super::{mix, scratch};
use crate::maps::bump;

/// One of [`mode`], set by the loader.
#[unsafe(no_mangle)]
static UNWIND_MODE: Global<u32> = Global::new(mode::FP);

/// The rows of every object's table (sized by the loader).
#[map]
static UNWIND_ROWS: Array<RowChunk> = Array::with_max_entries(1, 0);

/// Where each process's executable mappings are.
#[map]
static UNWIND_PROCS: HashMap<u32, ProcSlot> =
    HashMap::with_max_entries(MAX_UNWIND_PROCS, BPF_F_NO_PREALLOC);

/// The processes' executable mappings (sized by the loader).
#[map]
static UNWIND_MAPPINGS: Array<ExecMapping> = Array::with_max_entries(1, 0);

/// Most runs of [`step`] in one walk: per frame, a binary search over
/// `MAX_MAPPINGS` mappings (10 probes), one over at most 2^22 rows (23),
/// and the step itself.
const RUNS_PER_FRAME: u32 = 10 + 23 + 2;

/// What the next run of [`step`] does.
const FIND_MAPPING: u32 = 0;
const FIND_ROW: u32 = 1;

/// The state of this CPU's walk. In a map rather than on the stack: the
/// verifier knows nothing of a map value's contents, so it checks [`step`]
/// once, where it would follow a state on the stack whose counters it knows
/// exactly through every run of the loop.
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// The state of a walk.
#[repr(C)]
struct Walk {
    ip: u64,
    sp: u64,
    bp: u64,
    hash: u64,
    len: u64,
    walk: u64,
    /// The binary search under way: the answer is in `[lo, hi)`.
    lo: u64,
    hi: u64,
    /// First entry of the process's mappings in `UNWIND_MAPPINGS`, and their number.
    base: u64,
    maps: u64,
    /// The mapping of `ip`, once found: its bias.
    bias: u64,
    /// The object address looked up in the rows.
    pc: u64,
    phase: u32,
    /// Nonzero for the first frame, whose registers are exact (its pc is
    /// not a return address).
    first: u32,
}

/// True when stacks are walked from unwind tables.
#[inline(always)]
pub fn enabled() -> bool {
    UNWIND_MODE.load() == mode::DWARF
}

/// Drops the mapping table of `tgid`, which just called exec: its stacks
/// are walked by frame pointer (and counted) until user space has read the
/// new program's mappings.
#[inline(always)]
pub fn forget(tgid: u32) {
    if enabled() {
        let _ = UNWIND_PROCS.remove(tgid);
    }
}

/// Walks the stack of `regs` of the process `tgid` into this CPU's scratch
/// buffer; returns the hash of its frames (as `capture_stack` computes it
/// before the length) and their number, or None when the process has no
/// table yet.
#[inline(always)]
pub fn capture(regs: *const pt_regs, tgid: u32, seed: u64) -> Option<(u64, u64)> {
    // SAFETY: the value is only read.
    let slot = unsafe { UNWIND_PROCS.get(tgid) }?;
    // SAFETY: the context of a uprobe program is the task's registers.
    let (ip, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    let maps = u64::from(slot.len);
    let state = WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's value; programs do not migrate while running.
    let state = unsafe { &mut *state };
    *state = Walk {
        ip,
        sp,
        bp,
        hash: seed,
        len: 0,
        walk: 0,
        lo: 0,
        hi: maps,
        base: u64::from(slot.slot) * MAX_MAPPINGS as u64,
        maps,
        bias: 0,
        pc: 0,
        phase: FIND_MAPPING,
        first: 1,
    };
    // SAFETY: `step` has the callback signature bpf_loop expects; it finds
    // the state in `WALK` itself.
    unsafe {
        bpf_loop(
            (MAX_FRAMES as u32 + 1) * RUNS_PER_FRAME,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    bump(stat::UNWIND_CFI);
    match state.walk >> walk::END_SHIFT {
        walk::end::NOT_MAPPED => bump(stat::UNWIND_NOT_MAPPED),
        walk::end::NO_CFI => bump(stat::UNWIND_NO_CFI),
        walk::end::UNSUPPORTED => bump(stat::UNWIND_UNSUPPORTED),
        walk::end::READ_FAILED => bump(stat::UNWIND_READ_FAILED),
        walk::end::TOO_DEEP => bump(stat::UNWIND_TOO_DEEP),
        _ => {}
    }
    let buf = scratch()?;
    buf.len = state.len;
    buf.walk = state.walk;
    Some((state.hash, state.len))
}

/// Ends the walk of `st` for the reason `end` (see [`walk::end`]).
#[inline(always)]
fn stop(st: &mut Walk, end: u64) -> i64 {
    st.walk |= end << walk::END_SHIFT;
    1
}

#[inline(always)]
fn row(i: u64) -> Option<UnwindRow> {
    let chunk = UNWIND_ROWS.get((i / ROWS_PER_CHUNK as u64) as u32)?;
    chunk
        .rows
        .get((i % ROWS_PER_CHUNK as u64) as usize)
        .copied()
}

#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    // SAFETY: reading user memory through the helper, which handles faults.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Starts looking for the mapping of the next frame's pc.
#[inline(always)]
fn next_frame(st: &mut Walk) -> i64 {
    st.first = 0;
    st.phase = FIND_MAPPING;
    st.lo = 0;
    st.hi = st.maps;
    0
}

/// One run of the walk (the `bpf_loop` callback): one probe of a binary
/// search, or the end of one and the step to the caller's frame. Returns 0
/// to go on, 1 to stop.
#[inline(never)]
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(st) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's walk, which `capture` set up.
    let st = unsafe { &mut *st };
    if st.phase == FIND_ROW {
        return find_row(st);
    }
    // Find the last mapping that starts at or below ip.
    if st.lo < st.hi {
        let mid = st.lo + (st.hi - st.lo) / 2;
        let Some(m) = UNWIND_MAPPINGS.get((st.base + mid) as u32) else {
            return stop(st, walk::end::NOT_MAPPED);
        };
        if m.start <= st.ip {
            st.lo = mid + 1;
        } else {
            st.hi = mid;
        }
        return 0;
    }
    let m = match st.lo.checked_sub(1) {
        Some(i) => UNWIND_MAPPINGS.get((st.base + i) as u32),
        None => None,
    };
    let Some(m) = m.filter(|m| m.start <= st.ip && st.ip < m.end) else {
        return stop(st, walk::end::NOT_MAPPED);
    };
    // The pc is in the process's code: a frame.
    let Some(buf) = scratch() else {
        return stop(st, walk::end::READ_FAILED);
    };
    let Some(slot) = buf.ips.get_mut(st.len as usize) else {
        return stop(st, walk::end::TOO_DEEP);
    };
    *slot = st.ip;
    st.len += 1;
    st.hash = mix(st.hash, st.ip);

    if m.rows_len == 0 {
        // No table for this code: a frame-pointer step.
        let (Some(next), Some(ret)) = (read(st.bp), read(st.bp.wrapping_add(8))) else {
            return stop(st, walk::end::READ_FAILED);
        };
        st.walk |= walk::FP;
        if ret == 0 {
            return 1;
        }
        if next <= st.bp {
            return stop(st, walk::end::BAD_FRAME_POINTER);
        }
        st.sp = st.bp.wrapping_add(16);
        st.bp = next;
        st.ip = ret;
        return next_frame(st);
    }
    let pc = st
        .ip
        .wrapping_sub(m.bias)
        .wrapping_sub(u64::from(st.first == 0));
    if pc > u64::from(u32::MAX) {
        return stop(st, walk::end::NO_CFI);
    }
    st.pc = pc;
    st.bias = m.bias;
    st.lo = u64::from(m.rows_start);
    st.hi = st.lo + u64::from(m.rows_len);
    st.phase = FIND_ROW;
    0
}

/// A probe of the search for the row in effect at `st.pc`, or, once found,
/// the step to the caller's frame.
#[inline(always)]
fn find_row(st: &mut Walk) -> i64 {
    if st.hi - st.lo > 1 {
        let mid = st.lo + (st.hi - st.lo) / 2;
        let Some(r) = row(mid) else {
            return stop(st, walk::end::NO_CFI);
        };
        if u64::from(r.pc) <= st.pc {
            st.lo = mid;
        } else {
            st.hi = mid;
        }
        return 0;
    }
    let Some(r) = row(st.lo).filter(|r| u64::from(r.pc) <= st.pc) else {
        return stop(st, walk::end::NO_CFI);
    };
    let offset = u64::from(r.cfa_offset);
    let cfa = match r.kind {
        cfa::RSP => st.sp.wrapping_add(offset),
        cfa::RBP => st.bp.wrapping_add(offset),
        cfa::PLT => {
            let extra = if (st.ip & 15) >= r.rbp as u64 { 8 } else { 0 };
            st.sp.wrapping_add(offset + extra)
        }
        cfa::END => {
            st.walk |= walk::CFI;
            return 1;
        }
        cfa::NONE => return stop(st, walk::end::NO_CFI),
        _ => return stop(st, walk::end::UNSUPPORTED),
    };
    let Some(ret) = read(cfa.wrapping_sub(8)) else {
        return stop(st, walk::end::READ_FAILED);
    };
    if r.kind != cfa::PLT && r.rbp != 0 {
        let Some(bp) = read(cfa.wrapping_add((i64::from(r.rbp) * 8) as u64)) else {
            return stop(st, walk::end::READ_FAILED);
        };
        st.bp = bp;
    }
    st.walk |= walk::CFI;
    if ret == 0 {
        return 1;
    }
    st.sp = cfa;
    st.ip = ret;
    next_frame(st)
}
