//! The bookkeeping of the heap: a block returned to the target goes into
//! `LIVE` and adds to its stack's aggregate in `AGG` (and makes sure the
//! stack is in `STACKS`); a block freed, moved or replaced leaves them.
//! A block whose stack finds no room in `AGG` is still recorded, under
//! [`STACK_NO_ROOM`], so that what each process holds stays exact whatever
//! the stack maps hold. Every path that gives up bumps a counter in `STATS`.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    EbpfContext,
};
use memprof_common::{stat, AllocInfo, LiveKey, PendingCall, StackAgg, STACK_LOST, STACK_NO_ROOM};

use crate::decode::Return;
use crate::maps::{add, bump, bump_by, log_event, AGG, EEXIST, EVENT_ALLOC, EVENT_FREE, LIVE};
use crate::settings::{LOG_EVENTS, SAMPLE_RATE, TEMPORARY_NS};
use crate::share::{note_stack, over_share};
use crate::stack::{capture_stack_tagged, store_stack};

/// Adds one allocation to this CPU's value of an aggregate; returns how
/// many allocations this CPU had added to it before. The adds are atomic (a
/// program run on this CPU may be preempted by another); the count read
/// before is not read atomically with its add (the BPF CPU version the
/// programs are built for has no fetch-and-add), and two adds that both read
/// 0 only store the frames twice.
#[inline(always)]
fn agg_add_to(agg: *mut StackAgg, size: u64, now: u64) -> u64 {
    // SAFETY: points into the map value; a racing store of the time is as
    // good as ours.
    unsafe {
        let before = core::ptr::read_volatile(&raw const (*agg).allocs);
        add(&raw mut (*agg).allocs, 1);
        add(&raw mut (*agg).bytes, size);
        add(&raw mut (*agg).count, 1);
        add(&raw mut (*agg).alloc_bytes, size);
        (*agg).last_ns = now;
        before
    }
}

/// Adds one allocation to its stack's aggregate; returns how many
/// allocations this CPU had added to it before (0: the frames must be
/// stored), or None when the map is full.
#[inline(always)]
fn agg_add(stack_id: i64, tgid: u32, size: u64, now: u64) -> Option<u64> {
    if let Some(agg) = AGG.get_ptr_mut(stack_id) {
        return Some(agg_add_to(agg, size, now));
    }
    // A new entry has this value on this CPU and zeros on the others.
    let first = StackAgg {
        bytes: size,
        count: 1,
        last_ns: now,
        allocs: 1,
        alloc_bytes: size,
        temps: 0,
        temp_bytes: 0,
        // The reserved entries are made by user space with 0.
        tgid,
        _pad: 0,
    };
    match AGG.insert(stack_id, first, BPF_NOEXIST as u64) {
        Ok(()) => Some(0),
        // Another CPU created it between our lookup and insert.
        Err(e) if e == -EEXIST => AGG
            .get_ptr_mut(stack_id)
            .map(|agg| agg_add_to(agg, size, now)),
        Err(_) => None,
    }
}

/// [`agg_add`] for a block of process `tgid`, or None when the stack is new
/// and the process holds its share of the maps (see [`crate::share`]).
#[inline(always)]
fn agg_add_within_share(tgid: u32, stack_id: i64, size: u64, now: u64) -> Option<u64> {
    if let Some(agg) = AGG.get_ptr_mut(stack_id) {
        return Some(agg_add_to(agg, size, now));
    }
    if stack_id >= 0 && over_share(tgid) {
        return None;
    }
    let before = agg_add(stack_id, tgid, size, now)?;
    if before == 0 && stack_id >= 0 {
        note_stack(tgid, stack_id);
    }
    Some(before)
}

/// Adds the block `key` (just put in `LIVE`) to its stack's aggregate, or,
/// when `AGG` has no room for that stack, to [`STACK_NO_ROOM`]'s (and
/// relabels the block). Returns how many allocations this CPU had added to
/// the stack before (see [`agg_add`]; the frames of a relabelled block need
/// no storing), or None when even the reserved entry is missing (user space
/// failed to reserve it): the block then leaves `LIVE` and is counted as
/// `STACK_MAP_FULL`.
#[inline(always)]
fn agg_add_or_no_room(key: &LiveKey, stack_id: i64, size: u64, now: u64) -> Option<u64> {
    if let Some(before) = agg_add_within_share(key.tgid, stack_id, size, now) {
        return Some(before);
    }
    if agg_add(STACK_NO_ROOM, 0, size, now).is_none() {
        let _ = LIVE.remove(key);
        bump(stat::STACK_MAP_FULL);
        return None;
    }
    if let Some(info) = LIVE.get_ptr_mut(key) {
        // SAFETY: points into the map value; the block's address has not
        // reached the target yet, so nothing else frees or replaces it.
        unsafe { (*info).stack_id = STACK_NO_ROOM };
    }
    bump(stat::STACK_NO_ROOM);
    // Nothing to store for this id.
    Some(1)
}

/// Forgets a live block; returns what it was, or None when it was not
/// tracked. A block that lived less than [`TEMPORARY_NS`] counts as a
/// temporary of its stack.
#[inline(always)]
pub(crate) fn forget(key: &LiveKey) -> Option<AllocInfo> {
    // SAFETY: the value is copied out at once.
    let info = (unsafe { LIVE.get(key) }).copied()?;
    LIVE.remove(key).ok()?;
    // Both settings are known to the verifier: with neither (`--no-peak
    // --temporary-ms 0`) a free reads no clock.
    let threshold = TEMPORARY_NS.load();
    let now = if threshold != 0 || LOG_EVENTS.load() != 0 {
        // SAFETY: the helper has no preconditions.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    log_event(EVENT_FREE, key.tgid, &info, now);
    let temporary = threshold != 0 && now.wrapping_sub(info.timestamp_ns) < threshold;
    match AGG.get_ptr_mut(info.stack_id) {
        // SAFETY: points into this CPU's value; fields are updated atomically.
        Some(agg) => unsafe {
            add(&raw mut (*agg).bytes, 0u64.wrapping_sub(info.size));
            add(&raw mut (*agg).count, u64::MAX);
            if temporary {
                add(&raw mut (*agg).temps, 1);
                add(&raw mut (*agg).temp_bytes, info.size);
            }
        },
        None => {
            // Deleted by user space as idle while this block was live: cannot
            // happen for a block younger than the idle time, which its
            // allocation's time update guarantees.
        }
    }
    Some(info)
}

/// Puts back a block that [`forget`] took out (a realloc that failed).
#[inline(always)]
fn restore(addr: u64, info: AllocInfo) {
    let key = live_key(bpf_get_current_pid_tgid(), addr);
    if LIVE.insert(key, info, BPF_NOEXIST as u64).is_err() {
        bump(stat::LIVE_MAP_FULL);
        bump_by(stat::LIVE_MAP_FULL_BYTES, info.size);
        return;
    }
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if agg_add_or_no_room(&key, info.stack_id, info.size, now).is_some() {
        log_event(EVENT_ALLOC, key.tgid, &live_info(&key, info), now);
    }
}

/// The block `key` as `LIVE` holds it now (its stack relabelled when it
/// found no room), or `fallback`.
#[inline(always)]
fn live_info(key: &LiveKey, fallback: AllocInfo) -> AllocInfo {
    // SAFETY: the value is copied out at once.
    unsafe { LIVE.get(key) }.copied().unwrap_or(fallback)
}

/// The block a realloc replaces, taken out of `LIVE` at the call's entry.
#[inline(always)]
pub(crate) fn take_old(call: &mut PendingCall, addr: u64) {
    if addr == 0 {
        return;
    }
    if let Some(info) = forget(&live_key(bpf_get_current_pid_tgid(), addr)) {
        call.old = info;
        call.old_tracked = 1;
    }
}

/// The `LIVE` key of `addr` in the process of the thread `pid_tgid`.
#[inline(always)]
pub(crate) fn live_key(pid_tgid: u64, addr: u64) -> LiveKey {
    LiveKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        addr,
    }
}

/// Records a block returned to the target; `tag` marks the allocator that
/// served it (0: malloc's family, else [`memprof_common::python::PYMALLOC`]),
/// part of its stack's identity.
#[inline(always)]
fn record<C: EbpfContext>(ctx: &C, addr: u64, size: u64, tag: u64) {
    let key = live_key(bpf_get_current_pid_tgid(), addr);
    let stack_id = capture_stack_tagged(ctx, key.tgid, tag);
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let info = AllocInfo {
        size,
        timestamp_ns: now,
        stack_id,
    };
    let mut inserted = LIVE.insert(key, info, BPF_NOEXIST as u64);
    if let Err(e) = inserted {
        if e == -EEXIST {
            // Its free was never seen: drop the stale record, then take the new one.
            forget(&key);
            inserted = LIVE.insert(key, info, BPF_NOEXIST as u64);
        }
    }
    if inserted.is_err() {
        bump(stat::LIVE_MAP_FULL);
        bump_by(stat::LIVE_MAP_FULL_BYTES, size);
        return;
    }
    let Some(before) = agg_add_or_no_room(&key, stack_id, size, now) else {
        return;
    };
    if before == 1 {
        // Possibly relabelled (no room for its stack): send what `LIVE` holds.
        log_event(EVENT_ALLOC, key.tgid, &live_info(&key, info), now);
    } else {
        log_event(EVENT_ALLOC, key.tgid, &info, now);
    }
    // After the aggregate: see the crate comment. A stack that this CPU
    // added to already since its entry was made was stored then (or counted
    // as lost), and user space frees only stacks with nothing outstanding,
    // deleting their entry first.
    if stack_id == STACK_LOST {
        bump(stat::STACK_LOST);
    } else if before == 0 {
        store_stack(stack_id);
    }
    bump(stat::ALLOCS);
}

/// Ends a call that returned `addr`, the new block (malloc, calloc, memalign, ...).
#[inline(always)]
fn finish_alloc<C: EbpfContext>(ctx: &C, call: PendingCall, addr: u64, tag: u64) {
    if addr == 0 {
        bump(stat::FAILED_ALLOCS);
    } else {
        record(ctx, addr, call.size, tag);
    }
}

/// Ends a realloc or reallocarray call that returned `new`. Its old block
/// left `LIVE` at the entry ([`take_old`]).
#[inline(always)]
fn finish_realloc<C: EbpfContext>(ctx: &C, call: PendingCall, new: u64, tag: u64) {
    let old = call.ptr;
    if new == 0 && !(call.size == 0 && old != 0) {
        // Failed: the old block (if any) stays live.
        if call.old_tracked != 0 {
            restore(old, call.old);
        }
        bump(stat::FAILED_ALLOCS);
        return;
    }
    // Moved, resized or (realloc(p, 0) returning NULL) freed.
    if call.old_tracked != 0 {
        bump(stat::FREES);
    } else if old != 0 && SAMPLE_RATE.load() <= 1 {
        // Sampled, most blocks were not: their frees are not counted.
        bump(stat::FREES_UNKNOWN);
    }
    if new != 0 {
        record(ctx, new, call.size, tag);
    }
}

/// Ends a posix_memalign call that returned `rc` (0 on success, the block
/// stored through `memptr`).
#[inline(always)]
fn finish_posix_memalign<C: EbpfContext>(ctx: &C, call: PendingCall, rc: u64) {
    if rc as i32 != 0 {
        bump(stat::FAILED_ALLOCS);
        return;
    }
    // SAFETY: reading user memory through the helper, which handles faults.
    match unsafe { bpf_probe_read_user(call.ptr as *const u64) } {
        Ok(addr) if addr != 0 => record(ctx, addr, call.size, 0),
        _ => bump(stat::FAILED_ALLOCS),
    }
}

/// Ends a call that returned `ret`, by what its function returns.
#[inline(always)]
pub(crate) fn finish<C: EbpfContext>(ctx: &C, returns: Return, call: PendingCall, ret: u64) {
    finish_tagged(ctx, returns, call, ret, 0);
}

/// [`finish`] for a block of the allocator `tag` (see [`record`]).
#[inline(always)]
pub(crate) fn finish_tagged<C: EbpfContext>(
    ctx: &C,
    returns: Return,
    call: PendingCall,
    ret: u64,
    tag: u64,
) {
    match returns {
        Return::Block => finish_alloc(ctx, call, ret, tag),
        Return::Moved => finish_realloc(ctx, call, ret, tag),
        Return::Status => finish_posix_memalign(ctx, call, ret),
    }
}
