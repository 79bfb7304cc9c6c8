//! A share of the stack maps per process, so that one process meeting
//! millions of distinct stacks cannot crowd the others out of them: once
//! the maps are past [`STACK_SHARE_FROM`] stacks, a process that holds
//! [`STACK_SHARE`] or more gets its new stacks counted under
//! [`STACK_NO_ROOM`](memprof_common::STACK_NO_ROOM) (its blocks and bytes
//! stay exact, in its totals) while the others still store theirs.
//!
//! The counts: each new stack adds to its process's count in `PROC_STACKS`
//! and to `SHARE_FILL[ADDED]`, and notes its owner in `STACK_OWNERS`. User
//! space, which frees stacks, recounts both once a second from
//! `STACK_OWNERS` (see memprof's `probes.rs`); between recounts they only
//! grow, which errs towards the share.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap},
    Global,
};
use memprof_common::{defaults, share};

use crate::maps::{add, EEXIST};

/// Stacks a process may hold once the maps are past [`STACK_SHARE_FROM`];
/// 0: no share (one process recorded).
#[unsafe(no_mangle)]
static STACK_SHARE: Global<u64> = Global::new(0);

/// How many stacks the maps hold before shares apply.
#[unsafe(no_mangle)]
static STACK_SHARE_FROM: Global<u64> = Global::new(0);

/// Stacks stored, by owner (tgid).
#[map]
static STACK_OWNERS: HashMap<i64, u32> = HashMap::with_max_entries(defaults::MAX_STACKS, 0);

/// Stacks each process holds (tgid -> count).
#[map]
static PROC_STACKS: HashMap<u32, u64> = HashMap::with_max_entries(defaults::MAX_PROCESSES, 0);

/// `[share::FILL]`: stacks held at user space's last count;
/// `[share::ADDED]`: stacks stored since.
#[map]
static SHARE_FILL: Array<u64> = Array::with_max_entries(share::LEN, 0);

/// True when `tgid` may not store one more stack.
#[inline(always)]
pub(crate) fn over_share(tgid: u32) -> bool {
    let share = STACK_SHARE.load();
    if share == 0 {
        return false;
    }
    let fill = SHARE_FILL.get(share::FILL).copied().unwrap_or(0)
        + SHARE_FILL.get(share::ADDED).copied().unwrap_or(0);
    if fill < STACK_SHARE_FROM.load() {
        return false;
    }
    // SAFETY: the value is copied out at once.
    unsafe { PROC_STACKS.get(tgid) }.is_some_and(|&held| held >= share)
}

/// Counts the new stack `id` of process `tgid`.
#[inline(always)]
pub(crate) fn note_stack(tgid: u32, id: i64) {
    if STACK_SHARE.load() == 0 {
        return;
    }
    if let Some(added) = SHARE_FILL.get_ptr_mut(share::ADDED) {
        add(added, 1);
    }
    if let Some(held) = PROC_STACKS.get_ptr_mut(tgid) {
        add(held, 1);
    } else if let Err(e) = PROC_STACKS.insert(tgid, 1, BPF_NOEXIST as u64) {
        if e == -EEXIST {
            if let Some(held) = PROC_STACKS.get_ptr_mut(tgid) {
                add(held, 1);
            }
        }
        // Else the map of processes is full: the process goes uncounted
        // (as if it held no stack), which errs against the share only.
    }
    // Sized as the stacks: no room only for a stack freed and stored again
    // before user space took its owner out, which keeps the entry.
    let _ = STACK_OWNERS.insert(id, tgid, 0);
}
