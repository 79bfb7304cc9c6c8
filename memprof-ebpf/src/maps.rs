//! The maps of the heap that user space reads and sizes (those named in
//! [`memprof_common::maps`]), and the counters that every give-up path bumps
//! (`STATS` for the heap, `SOURCE_STATS` for `--mmap` and `--kernel`). One
//! object holds every program, so they all see these same maps.
//!
//! Defined next to their code instead: `PENDING` in [`crate::task`] (it
//! needs a map type of its own), the per-CPU working state that one concern
//! keeps to itself (`SCRATCH` in [`crate::stack`], `LAST_RELEASE` in
//! [`crate::free`]), and the optional sources' maps in [`crate::mmap`] and
//! [`crate::kernel`].

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use memprof_common::{
    control, defaults, heap_event, source_stat, stat, window_frees, AllocInfo, HeapEvent, LiveKey,
    ProcEvents, StackAgg, StackTrace, AGG_RESERVED, HEAP_EVENTS_OFF_BYTES,
};

use crate::settings::LOG_EVENTS;

/// The error a map insert with `BPF_NOEXIST` returns (negated) when the key is there.
pub(crate) const EEXIST: i32 = 17;

#[map]
pub(crate) static LIVE: HashMap<LiveKey, AllocInfo> =
    HashMap::with_max_entries(defaults::MAX_LIVE, 0);

/// With [`filter::SET`](memprof_common::filter::SET): the recorded processes
/// (user space puts them in, [`crate::process::process_fork`] adds their
/// children, [`crate::process::thread_exit`] takes them out). Thread ids pass
/// through briefly when a recorded process starts threads.
#[map]
pub(crate) static TARGETS: HashMap<u32, u32> =
    HashMap::with_max_entries(defaults::MAX_PROCESSES, 0);

/// What happened to each recorded process (exec), by tgid.
#[map]
pub(crate) static PROCS: LruHashMap<u32, ProcEvents> =
    LruHashMap::with_max_entries(defaults::MAX_PROCESSES, 0);

/// With [`WATCH_EXECS`](crate::settings::WATCH_EXECS): processes that called
/// exec, and when.
#[map]
pub(crate) static EXECS: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(defaults::MAX_PROCESSES, 0);

/// Recorded processes that exited while recording, and when (see
/// [`crate::process::thread_exit`]).
#[map]
pub(crate) static EXITS: LruHashMap<u32, u64> =
    LruHashMap::with_max_entries(defaults::MAX_PROCESSES, 0);

/// Not preallocated: user space deletes entries while programs run, and a
/// preallocated map would hand a deleted element to the next insert at once.
/// User space puts in the entries of [`STACK_LOST`](memprof_common::STACK_LOST)
/// and [`STACK_NO_ROOM`](memprof_common::STACK_NO_ROOM) at load time (the
/// [`AGG_RESERVED`] entries past the stacks), so they always have room.
#[map]
pub(crate) static AGG: PerCpuHashMap<i64, StackAgg> =
    PerCpuHashMap::with_max_entries(defaults::MAX_STACKS + AGG_RESERVED, BPF_F_NO_PREALLOC);

/// Stacks by a hash of their frames. The kernel's stack-trace map keeps one
/// stack per bucket of a hash of its own and fails (or relabels) on a bucket
/// collision, which loses about a quarter of the stacks when 10,000 distinct
/// ones meet 16,384 buckets.
#[map]
pub(crate) static STACKS: HashMap<i64, StackTrace> =
    HashMap::with_max_entries(defaults::MAX_STACKS, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// `[control::RECORDING]`: nonzero while recording. User space turns it on
/// once every probe is attached and off before detaching them, so that the
/// maps only reflect moments when all probes were in place (attaching and
/// detaching one probe at a time takes a while, and the target keeps running
/// meanwhile). `[control::WINDOW]`: the open sampling window, see
/// [`crate::sampled`].
#[map]
pub(crate) static CONTROL: Array<u32> = Array::with_max_entries(control::LEN, 0);

/// With sampling by windows: the target's frees, all and those in windows
/// (indices in [`window_frees`]).
#[map]
static WINDOW_FREES: PerCpuArray<u64> = PerCpuArray::with_max_entries(window_frees::LEN, 0);

/// Counts one free of the target with sampling by windows.
#[inline(always)]
pub(crate) fn count_window_free(in_window: bool) {
    if let Some(counter) = WINDOW_FREES.get_ptr_mut(window_frees::ALL) {
        add(counter, 1);
    }
    if in_window {
        if let Some(counter) = WINDOW_FREES.get_ptr_mut(window_frees::IN_WINDOWS) {
            add(counter, 1);
        }
    }
}

/// Every allocation and free of a recorded block, in the order they
/// happened, when [`LOG_EVENTS`] is set: user space replays them to find
/// the peak of the outstanding total. Sized by user space.
#[map]
static HEAP_EVENTS: RingBuf = RingBuf::with_byte_size(HEAP_EVENTS_OFF_BYTES, 0);

/// Sends one heap event (see [`HEAP_EVENTS`]); a full buffer is counted.
#[inline(always)]
pub(crate) fn log_event(kind: u32, tgid: u32, info: &AllocInfo, now: u64) {
    if LOG_EVENTS.load() == 0 {
        return;
    }
    let event = HeapEvent {
        timestamp_ns: now,
        size: info.size,
        stack_id: info.stack_id,
        tgid,
        kind,
    };
    if HEAP_EVENTS.output::<HeapEvent>(&event, 0).is_err() {
        bump(stat::HEAP_EVENTS_LOST);
    }
}

/// An allocation for [`log_event`].
pub(crate) const EVENT_ALLOC: u32 = heap_event::ALLOC;
/// A free for [`log_event`].
pub(crate) const EVENT_FREE: u32 = heap_event::FREE;

/// The counters of `--mmap` and `--kernel`, apart from the heap's.
#[map]
static SOURCE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(source_stat::COUNT, 0);

/// Adds `n` to a counter in a map value.
#[inline(always)]
pub(crate) fn add(counter: *mut u64, n: u64) {
    // SAFETY: `counter` points into a map value that lives as long as the map;
    // the atomic add keeps concurrent updaters correct.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Adds `n` to the heap counter `index` (one of [`stat`]).
#[inline(always)]
pub(crate) fn bump_by(index: u32, n: u64) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        add(counter, n);
    }
}

/// Counts one event of the heap counter `index` (one of [`stat`]).
#[inline(always)]
pub(crate) fn bump(index: u32) {
    bump_by(index, 1);
}

/// Counts one event of the sources' counter `index` (one of [`source_stat`]).
#[inline(always)]
pub(crate) fn bump_source(index: u32) {
    if let Some(counter) = SOURCE_STATS.get_ptr_mut(index) {
        add(counter, 1);
    }
}
