//! Walks user stacks from the unwind tables that user space compiles from
//! each object's call frame information (`memprof/src/unwind`), for code
//! built without frame pointers.
//!
//! The walk is a state machine driven by `bpf_loop`, so that the verifier
//! checks one run of [`step`] once, however many frames and probes there
//! are (binary searches written as loops made it follow every path of every
//! search); the searches' bounds live in a map value, which the verifier
//! does not track, so a run can make a few probes. For each frame it finds
//! how to reach the caller's, its rule: a row of the tables, or in code
//! without a table (or, under `--unwind auto`, built with frame pointers) a
//! frame-pointer step. First in this CPU's [`RULES`], which keeps the rule
//! of each address it walked last: an allocation's frames are most often
//! those of an earlier one, and such a frame takes one run with no search
//! (several frames a run made the verifier's work, at every attach, grow
//! with each: 4 frames a run took 0.5 s more, 8 took 1.4 s, for no
//! measurable gain). Else it finds the mapping of the pc (the mapping
//! of the previous frame first, which is usually it; else a binary search
//! in the process's table), and the row in effect (the object's page index
//! narrows it to the rows of one 128-byte page of code, most often 1 to 4).
//! A step: CFA from the rule, return address at CFA - 8, rbp restored, rsp
//! = CFA, the stack's words read from this CPU's copies of its pages
//! ([`STACK_COPY`]). A pc in no executable mapping is never recorded; every
//! early end says why in the stack's `walk` word and in `STATS`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_NO_PREALLOC},
    helpers::{generated, generated::bpf_loop},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, Queue},
    Global,
};
use memprof_common::{
    stat,
    unwind::{
        cfa, mapping, mode, walk, ExecMapping, PageChunk, ProcSlot, RowChunk, UnwindRow,
        MAX_MAPPINGS, MAX_UNWIND_EXECS, MAX_UNWIND_PROCS, PAGES_PER_CHUNK, PAGE_LEN_SHIFT,
        PAGE_SHIFT, ROWS_PER_CHUNK,
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

/// Each object's page index (sized by the loader).
#[map]
static UNWIND_PAGES: Array<PageChunk> = Array::with_max_entries(1, 0);

/// Where each process's executable mappings are.
#[map]
static UNWIND_PROCS: HashMap<u32, ProcSlot> =
    HashMap::with_max_entries(MAX_UNWIND_PROCS, BPF_F_NO_PREALLOC);

/// Processes that called exec, for user space to write their new tables at once.
#[map]
static UNWIND_EXECS: Queue<u32> = Queue::with_max_entries(MAX_UNWIND_EXECS, 0);

/// The processes' executable mappings (sized by the loader).
#[map]
static UNWIND_MAPPINGS: Array<ExecMapping> = Array::with_max_entries(1, 0);

/// Probes of a binary search in one run of [`step`].
const PROBES_PER_RUN: usize = 4;

/// Most runs of [`step`] in one walk: per frame, a binary search over
/// `MAX_MAPPINGS` mappings (10 probes), one over at most 2^22 rows (23),
/// and the step itself.
const RUNS_PER_FRAME: u32 = (10u32 + 23).div_ceil(PROBES_PER_RUN as u32) + 2;

/// What the next run of [`step`] does.
const FIND_MAPPING: u32 = 0;
const FIND_ROW: u32 = 1;

/// [`Rule::kind`] of a frame-pointer step: code without a table, or built
/// with frame pointers (`--unwind auto`). The others are [`cfa`]'s.
const FP_STEP: u8 = 0x80;

/// Pages of the stack a walk keeps copies of ([`STACK_COPY`]).
const STACK_PAGES: usize = 4;

/// The size of a page of the stack, and of a copy.
const PAGE_BYTES: u64 = 4096;

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
    /// The mapping of the last frame (from `base`): tried first for the next.
    hint: u64,
    phase: u32,
    /// Nonzero for the first frame, whose registers are exact (its pc is
    /// not a return address).
    first: u32,
    /// Nonzero: a frame-pointer step in objects built with frame pointers.
    fp_objects: u32,
    /// The process's table ([`ProcSlot::generation`]).
    generation: u32,
}

/// How a frame's caller is found: a row of the tables ([`cfa`] kinds, with
/// [`UnwindRow`]'s meaning of `cfa_offset` and `rbp`), or [`FP_STEP`].
#[derive(Clone, Copy)]
struct Rule {
    cfa_offset: u16,
    kind: u8,
    rbp: i8,
}

/// Entries of this CPU's [`RULES`].
const RULE_ENTRIES: usize = 1024;

/// The rule of an address, as a walk found it under one process table.
#[repr(C)]
#[derive(Clone, Copy)]
struct Remembered {
    ip: u64,
    /// [`rule_tag`] of the table and frame it was found for (0: empty).
    tag: u32,
    rule: Rule,
}

/// This CPU's rules of the addresses it walked last, by a hash of the
/// address: an allocation's frames are most often those of one before it,
/// and a remembered frame costs one map read instead of two searches.
/// Entries of a table that was replaced are never met again (the tag holds
/// its generation); rows are never moved while the run lasts.
#[repr(C)]
struct RuleCache {
    entries: [Remembered; RULE_ENTRIES],
}

#[map]
static RULES: PerCpuArray<RuleCache> = PerCpuArray::with_max_entries(1, 0);

/// Copies of the pages of the stack this CPU's walk read, each in slot
/// `page number % STACK_PAGES`. A stack's frames lie close together: one
/// read of a page serves the frames in it, where a read per frame took
/// most of a walk's time (the helper's fixed cost, about 70 ns here, is
/// most of a read's). A whole page is always safe to read when one of its
/// words is: memory is mapped, and present, by page.
#[repr(C)]
struct StackCopy {
    /// Each slot's page number + 1 in this walk (0: none).
    pages: [u64; STACK_PAGES],
    words: [[u64; (PAGE_BYTES / 8) as usize]; STACK_PAGES],
}

#[map]
static STACK_COPY: PerCpuArray<StackCopy> = PerCpuArray::with_max_entries(1, 0);

/// True when stacks are walked from unwind tables.
#[inline(always)]
pub fn enabled() -> bool {
    UNWIND_MODE.load() != mode::FP
}

/// Drops the mapping table of `tgid`, which just called exec: its stacks
/// are walked by frame pointer (and counted) until user space has read the
/// new program's mappings, which it does as soon as it takes `tgid` from
/// `UNWIND_EXECS`.
#[inline(always)]
pub fn forget(tgid: u32) {
    if enabled() {
        let _ = UNWIND_PROCS.remove(tgid);
        let _ = UNWIND_EXECS.push(tgid, 0);
    }
}

/// Walks the stack of `regs` of the process `tgid` into this CPU's scratch
/// buffer; returns the hash of its frames (as `capture_stack` computes it
/// before the length) and their number (at least 1), or None when the
/// process has no table yet, or its table does not know the first frame's
/// code yet.
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
    // Field by field, not a whole value (a call of memset in BPF). `hint`
    // stays from the last walk: this CPU's allocations often come from the
    // same code.
    state.ip = ip;
    state.sp = sp;
    state.bp = bp;
    state.hash = seed;
    state.len = 0;
    state.walk = 0;
    state.lo = 0;
    state.hi = maps;
    state.base = u64::from(slot.slot) * MAX_MAPPINGS as u64;
    state.maps = maps;
    state.phase = FIND_MAPPING;
    state.first = 1;
    state.fp_objects = u32::from(UNWIND_MODE.load() == mode::AUTO);
    state.generation = slot.generation;
    let copy = STACK_COPY.get_ptr_mut(0)?;
    // SAFETY: this CPU's value; programs do not migrate while running.
    unsafe { (*copy).pages = [0; STACK_PAGES] };
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
    if state.len == 0 {
        // The first frame's code is in none of the table's mappings: an
        // object mapped since the table was written (`dlopen`), whose table
        // comes at user space's next look.
        return None;
    }
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

/// The page index entry `i`.
#[inline(always)]
fn page(i: u64) -> Option<u32> {
    let chunk = UNWIND_PAGES.get((i / PAGES_PER_CHUNK as u64) as u32)?;
    chunk
        .pages
        .get((i % PAGES_PER_CHUNK as u64) as usize)
        .copied()
}

/// The word of the stack at `addr`, from this walk's copy of its page
/// (copied first if needed); None when it cannot be read, or `addr` is not
/// 8-byte aligned (no saved word of a stack is).
#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    if addr & 7 != 0 {
        // Saved words are 8-byte aligned: this is no stack address.
        return None;
    }
    let copy = STACK_COPY.get_ptr_mut(0)?;
    // SAFETY: this CPU's value; programs do not migrate while running.
    let copy = unsafe { &mut *copy };
    let page = addr / PAGE_BYTES;
    let slot = page as usize & (STACK_PAGES - 1);
    let words = copy.words.get_mut(slot)?;
    let tag = copy.pages.get_mut(slot)?;
    if *tag != page + 1 {
        // SAFETY: reading user memory through the helper, which handles
        // faults, into a map value of that size.
        let failed = unsafe {
            generated::bpf_probe_read_user(
                words.as_mut_ptr() as *mut c_void,
                PAGE_BYTES as u32,
                (page * PAGE_BYTES) as *const c_void,
            )
        } != 0;
        if failed {
            *tag = 0;
            return None;
        }
        *tag = page + 1;
    }
    words.get(((addr % PAGE_BYTES) / 8) as usize).copied()
}

/// What tells the rules of `st.ip` under its process's table apart: the
/// table, and whether the frame is the first (whose pc is looked up as it
/// is, not as a return address).
#[inline(always)]
fn rule_tag(st: &Walk) -> u32 {
    st.generation << 1 | (st.first & 1)
}

/// Where `ip`'s rule is kept in [`RULES`].
#[inline(always)]
fn rule_index(ip: u64) -> usize {
    ((ip ^ (ip >> 17)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize & (RULE_ENTRIES - 1)
}

/// The rule of `st.ip` this CPU found in an earlier walk under the same
/// table, if it still holds it.
#[inline(always)]
fn remembered(st: &Walk) -> Option<Rule> {
    let cache = RULES.get_ptr_mut(0)?;
    // SAFETY: this CPU's value, only read here.
    let known = unsafe { &*cache }.entries.get(rule_index(st.ip))?;
    (known.ip == st.ip && known.tag == rule_tag(st)).then_some(known.rule)
}

/// Keeps the rule of `st.ip` for the next walks on this CPU.
#[inline(always)]
fn remember(st: &Walk, rule: Rule) {
    let Some(cache) = RULES.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value; programs do not migrate while running.
    let cache = unsafe { &mut *cache };
    if let Some(entry) = cache.entries.get_mut(rule_index(st.ip)) {
        *entry = Remembered {
            ip: st.ip,
            tag: rule_tag(st),
            rule,
        };
    }
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

/// One run of the walk (the `bpf_loop` callback): the step from a frame
/// whose rule this CPU remembers, or a few probes of a binary search, or
/// the end of one and the step to the caller's frame. Returns 0 to go on,
/// 1 to stop.
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
    if let Some(rule) = remembered(st) {
        if record(st) != 0 {
            return 1;
        }
        return apply(st, rule);
    }
    // The last frame's mapping first.
    if st.hint < st.maps {
        if let Some(m) = UNWIND_MAPPINGS.get((st.base + st.hint) as u32) {
            if m.start <= st.ip && st.ip < m.end {
                return frame(st, m);
            }
        }
    }
    // Find the last mapping that starts at or below ip.
    for _ in 0..PROBES_PER_RUN {
        if st.lo >= st.hi {
            break;
        }
        let mid = st.lo + (st.hi - st.lo) / 2;
        let Some(m) = UNWIND_MAPPINGS.get((st.base + mid) as u32) else {
            return stop(st, walk::end::NOT_MAPPED);
        };
        if m.start <= st.ip {
            st.lo = mid + 1;
        } else {
            st.hi = mid;
        }
    }
    if st.lo < st.hi {
        return 0;
    }
    let Some(i) = st.lo.checked_sub(1) else {
        return stop(st, walk::end::NOT_MAPPED);
    };
    let Some(m) = UNWIND_MAPPINGS
        .get((st.base + i) as u32)
        .filter(|m| m.start <= st.ip && st.ip < m.end)
    else {
        return stop(st, walk::end::NOT_MAPPED);
    };
    st.hint = i;
    frame(st, m)
}

/// Records `st.ip` as the walk's next frame. Returns 0, or 1 when the walk
/// must stop.
#[inline(always)]
fn record(st: &mut Walk) -> i64 {
    let Some(buf) = scratch() else {
        return stop(st, walk::end::READ_FAILED);
    };
    let Some(slot) = buf.ips.get_mut(st.len as usize) else {
        return stop(st, walk::end::TOO_DEEP);
    };
    *slot = st.ip;
    st.len += 1;
    st.hash = mix(st.hash, st.ip);
    0
}

/// The pc is in the process's code, in mapping `m`: records the frame and
/// steps to the caller's, or starts the search for its row.
#[inline(always)]
fn frame(st: &mut Walk, m: &ExecMapping) -> i64 {
    if m.rows_len == 0 || (st.fp_objects != 0 && m.flags & mapping::FRAME_POINTERS != 0) {
        // No table for this code, or code built with frame pointers.
        let rule = Rule {
            cfa_offset: 16,
            kind: FP_STEP,
            rbp: -2,
        };
        remember(st, rule);
        if record(st) != 0 {
            return 1;
        }
        return apply(st, rule);
    }
    if record(st) != 0 {
        return 1;
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
    // The page index narrows the search to the rows of pc's page.
    let p = (pc >> PAGE_SHIFT).wrapping_sub(u64::from(m.page0));
    if p < u64::from(m.pages_len) {
        let Some(entry) = page(u64::from(m.pages_start) + p) else {
            return stop(st, walk::end::NO_CFI);
        };
        let first = st.lo + u64::from(entry & ((1 << PAGE_LEN_SHIFT) - 1));
        let len = u64::from(entry >> PAGE_LEN_SHIFT);
        if first < st.hi {
            st.lo = first;
            if len != 0 && first + len <= st.hi {
                st.hi = first + len;
            }
        }
    }
    st.phase = FIND_ROW;
    find_row(st)
}

/// A few probes of the search for the row in effect at `st.pc`, and once
/// found, the step to the caller's frame.
#[inline(always)]
fn find_row(st: &mut Walk) -> i64 {
    for _ in 0..PROBES_PER_RUN {
        if st.hi - st.lo <= 1 {
            break;
        }
        let mid = st.lo + (st.hi - st.lo) / 2;
        let Some(r) = row(mid) else {
            return stop(st, walk::end::NO_CFI);
        };
        if u64::from(r.pc) <= st.pc {
            st.lo = mid;
        } else {
            st.hi = mid;
        }
    }
    if st.hi - st.lo > 1 {
        return 0;
    }
    let rule = match row(st.lo) {
        Some(r) if u64::from(r.pc) <= st.pc => Rule {
            cfa_offset: r.cfa_offset,
            kind: r.kind,
            rbp: r.rbp,
        },
        Some(_) => Rule {
            cfa_offset: 0,
            kind: cfa::NONE,
            rbp: 0,
        },
        None => return stop(st, walk::end::NO_CFI),
    };
    remember(st, rule);
    apply(st, rule)
}

/// Steps from the frame at `st.ip` (recorded) to its caller's by `rule`.
/// Returns 0 to go on, 1 to stop.
#[inline(always)]
fn apply(st: &mut Walk, rule: Rule) -> i64 {
    let offset = u64::from(rule.cfa_offset);
    let cfa = match rule.kind {
        FP_STEP => return fp_step(st),
        cfa::RSP => st.sp.wrapping_add(offset),
        cfa::RBP => st.bp.wrapping_add(offset),
        cfa::PLT => {
            let extra = if (st.ip & 15) >= rule.rbp as u64 {
                8
            } else {
                0
            };
            st.sp.wrapping_add(offset + extra)
        }
        cfa::END => {
            st.walk |= walk::CFI;
            return 1;
        }
        cfa::NONE => return stop(st, walk::end::NO_CFI),
        _ => return stop(st, walk::end::UNSUPPORTED),
    };
    let saved = if rule.kind == cfa::PLT {
        0
    } else {
        i64::from(rule.rbp)
    };
    let Some(ret) = read(cfa.wrapping_sub(8)) else {
        return stop(st, walk::end::READ_FAILED);
    };
    if saved != 0 {
        let Some(bp) = read(cfa.wrapping_add((saved * 8) as u64)) else {
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

/// A frame-pointer step: the caller's rbp and return address are the two
/// words at rbp.
#[inline(always)]
fn fp_step(st: &mut Walk) -> i64 {
    st.walk |= walk::FP;
    if st.bp == 0 {
        // The outermost frame (`_start` clears rbp).
        return 1;
    }
    // A frame lies above the stack pointer: this also makes every step move
    // up the stack. (The caller's rbp, read here, is checked when it is used
    // as a frame pointer: a caller without frame pointers has its own rule
    // for it.)
    if st.bp < st.sp {
        return stop(st, walk::end::BAD_FRAME_POINTER);
    }
    let (Some(next), Some(ret)) = (read(st.bp), read(st.bp.wrapping_add(8))) else {
        return stop(st, walk::end::READ_FAILED);
    };
    if ret == 0 {
        return 1;
    }
    st.sp = st.bp.wrapping_add(16);
    st.bp = next;
    st.ip = ret;
    next_frame(st)
}
