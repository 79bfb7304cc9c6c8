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
//! # Sampling (`--sample-rate N`)
//!
//! The `*_sampled` programs are uprobe *session* programs: the kernel runs one
//! at the entry of an allocation function and, only when that entry run
//! returned 0, again at the function's return. The entry run draws a random
//! number and records the call with probability 1/N; an unsampled call
//! returns [`SKIP_RETURN`], so it pays for neither the return probe nor the
//! stack walk. `free` keeps its plain uprobe and runs on every call (a `LIVE`
//! lookup that mostly misses).
//!
//! Two rules keep the sample unbiased:
//! - an unsampled `realloc(p, n)` forgets `p` at once: glibc moves or frees it
//!   without calling the probed `free`, and a sampled block realloc'ed by an
//!   unsampled call would otherwise stay "outstanding" forever;
//! - a call from which glibc calls another probed allocation function
//!   (`realloc(NULL, n)` calls `malloc`, `reallocarray` calls `realloc`, the
//!   memalign family may call `malloc`) stays pending even when it is not
//!   sampled (`PendingCall::record == 0`), so the inner call sees it, is skipped
//!   as nested, and does not get a second chance to be sampled.
//!
//! An unsampled call with nothing to forget returns before any map lookup, so
//! `nested_calls` only counts the nested calls that a recorded or pending
//! call's entry met.
//!
//! # Sampling by windows (`--sample-by window`)
//!
//! With [`SAMPLE_BY_WINDOW`] the same programs record every call that enters
//! while `CONTROL[control::WINDOW]` is nonzero, and no other. User space
//! opens short windows at random times: it attaches the session links of the
//! functions that only allocate (malloc, calloc, the memalign family), sets
//! the window's number, clears it when the window ends and then detaches
//! them. Between windows those functions carry no breakpoint at all, so their
//! calls cost the target nothing; `free`, `realloc` and `reallocarray` stay
//! attached, because a block recorded in a window must be seen leaving.
//! Detaching can cut a call off from its return run: its pending entry keeps
//! the window's number, so the first call of a later window knows it as stale.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::ffi::c_void;
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{
        bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, pt_regs, BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST,
    },
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_current_task_btf, bpf_get_func_ip, bpf_get_prandom_u32, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
        generated::bpf_task_storage_get,
    },
    macros::{btf_map, map, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::{
        Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace as KernelStacks,
    },
    programs::{
        tracing::StackIdContext as _, ProbeContext, RawTracePointContext, RetProbeContext,
        TracePointContext,
    },
    EbpfContext, Global,
};
use memprof_common::{
    control, defaults, filter, mmap_event, source_stat, sources, stat, window_cookie, AllocInfo,
    LiveKey, MmapEvent, PendingCall, ProcEvents, StackAgg, StackTrace, MAX_FRAMES, STACK_LOST,
};

mod unwind;

const EEXIST: i32 = 17;

/// Which processes are recorded: one of [`filter`]; set by the loader, as
/// are the other globals. They are read-only for the programs, so the
/// verifier knows their values and drops the branches of the other modes.
#[unsafe(no_mangle)]
static FILTER: Global<u32> = Global::new(filter::ONE);

/// With [`filter::ONE`]: the process (tgid) whose calls are recorded.
#[unsafe(no_mangle)]
static TARGET_TGID: Global<u32> = Global::new(0);

/// memprof itself, never recorded.
#[unsafe(no_mangle)]
static SELF_TGID: Global<u32> = Global::new(0);

/// When nonzero: only tasks in this cgroup (v2 id), or below it, are recorded.
#[unsafe(no_mangle)]
static CGROUP_ID: Global<u64> = Global::new(0);

/// The depth of [`CGROUP_ID`] under the root cgroup.
#[unsafe(no_mangle)]
static CGROUP_LEVEL: Global<u32> = Global::new(0);

/// Nonzero: children forked by recorded processes are recorded too.
#[unsafe(no_mangle)]
static FOLLOW_FORKS: Global<u32> = Global::new(0);

/// Nonzero: every exec is noted in `EXECS`, for user space to check (`--comm`).
#[unsafe(no_mangle)]
static WATCH_EXECS: Global<u32> = Global::new(0);

/// Offset of `child_pid` in the `sched_process_fork` record.
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: Global<u32> = Global::new(20);

/// Sampled mode: each allocation call is recorded with probability 1/SAMPLE_RATE.
#[unsafe(no_mangle)]
static SAMPLE_RATE: Global<u32> = Global::new(1);

/// Nonzero: sample by time windows, not by call (see the module comment).
#[unsafe(no_mangle)]
static SAMPLE_BY_WINDOW: Global<u32> = Global::new(0);

/// What a session program's entry run returns to skip the return run.
const SKIP_RETURN: u32 = 1;
/// What a session program's entry run returns to get the return run.
const RUN_RETURN: u32 = 0;

#[map]
static LIVE: HashMap<LiveKey, AllocInfo> = HashMap::with_max_entries(defaults::MAX_LIVE, 0);

/// With [`filter::SET`]: the recorded processes (user space puts them in,
/// [`process_fork`] adds their children, [`thread_exit`] takes them out).
/// Thread ids pass through briefly when a recorded process starts threads.
#[map]
static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(defaults::MAX_PROCESSES, 0);

/// What happened to each recorded process (exec), by tgid.
#[map]
static PROCS: LruHashMap<u32, ProcEvents> =
    LruHashMap::with_max_entries(defaults::MAX_PROCESSES, 0);

/// With [`WATCH_EXECS`]: processes that called exec, and when.
#[map]
static EXECS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(defaults::MAX_PROCESSES, 0);

/// Not preallocated: user space deletes entries while programs run, and a
/// preallocated map would hand a deleted element to the next insert at once.
#[map]
static AGG: PerCpuHashMap<i64, StackAgg> =
    PerCpuHashMap::with_max_entries(defaults::MAX_STACKS + 1, BPF_F_NO_PREALLOC);

/// Stacks by a hash of their frames. The kernel's stack-trace map keeps one
/// stack per bucket of a hash of its own and fails (or relabels) on a bucket
/// collision, which loses about a quarter of the stacks when 10,000 distinct
/// ones meet 16,384 buckets.
#[map]
static STACKS: HashMap<i64, StackTrace> = HashMap::with_max_entries(defaults::MAX_STACKS, 0);

/// The thread and address of this CPU's last release (see [`count_unknown`]).
#[map]
static LAST_RELEASE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room to capture a stack before it is stored.
#[map]
static SCRATCH: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);

/// A task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`): one value per
/// thread, kept in the thread itself and freed with it. The kernel wants it
/// defined with BTF; aya-ebpf 0.2 has no wrapper, so this is its BTF map
/// definition (the layout libbpf reads: pointers to arrays whose lengths are
/// the numbers).
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders that the loader reads from BTF; they are
// never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

/// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
const STORAGE_CREATE: u64 = 1;

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        TaskStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn get(&self, flags: u64) -> Option<*mut T> {
        // SAFETY: the helper takes the map and the current task (a BTF
        // pointer the verifier tracks) and returns the value or null.
        let value = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                bpf_get_current_task_btf(),
                core::ptr::null_mut(),
                flags,
            )
        };
        (!value.is_null()).then_some(value.cast())
    }

    /// The current thread's value, created zeroed on first use; None when
    /// the kernel could not allocate it.
    #[inline(always)]
    fn mine(&self) -> Option<*mut T> {
        self.get(STORAGE_CREATE)
    }

    /// The current thread's value if it has one.
    #[inline(always)]
    fn mine_if_any(&self) -> Option<*mut T> {
        self.get(0)
    }
}

/// Each thread's allocator call between its entry and its return; `sp == 0`
/// when there is none. A lookup costs a fraction of a hash map's (the value
/// hangs off the thread), and nothing has to be removed at the thread's exit.
#[btf_map]
static PENDING: TaskStorage<PendingCall> = TaskStorage::new();

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// `[control::RECORDING]`: nonzero while recording. User space turns it on
/// once every probe is attached and off before detaching them, so that the
/// maps only reflect moments when all probes were in place (attaching and
/// detaching one probe at a time takes a while, and the target keeps running
/// meanwhile). `[control::WINDOW]`: the open sampling window, see the module
/// comment.
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(control::LEN, 0);

#[inline(always)]
fn add(counter: *mut u64, n: u64) {
    // SAFETY: `counter` points into a map value that lives as long as the map;
    // the atomic add keeps concurrent updaters correct.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[inline(always)]
fn bump_by(index: u32, n: u64) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        add(counter, n);
    }
}

#[inline(always)]
fn bump(index: u32) {
    bump_by(index, 1);
}

/// True when the process `tgid` is one of those recorded (see [`FILTER`]).
#[inline(always)]
fn is_target(tgid: u32) -> bool {
    let chosen = match FILTER.load() {
        filter::ONE => tgid == TARGET_TGID.load(),
        // SAFETY: only tested for presence.
        filter::SET => unsafe { TARGETS.get(tgid) }.is_some(),
        _ => tgid != SELF_TGID.load(),
    };
    if !chosen {
        return false;
    }
    let cgroup = CGROUP_ID.load();
    // SAFETY: the helper only reads the current task.
    cgroup == 0
        || unsafe { bpf_get_current_ancestor_cgroup_id(CGROUP_LEVEL.load() as i32) } == cgroup
}

/// The pid and tgid (`bpf_get_current_pid_tgid`) of the caller when it
/// belongs to a recorded process and memprof is recording.
#[inline(always)]
fn target_thread() -> Option<u64> {
    let id = bpf_get_current_pid_tgid();
    if !is_target((id >> 32) as u32) {
        return None;
    }
    match CONTROL.get(control::RECORDING) {
        Some(&recording) if recording != 0 => Some(id),
        _ => None,
    }
}

#[inline(always)]
fn stack_pointer(regs: *const aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: `regs` is the program's context, which the verifier lets us read.
    unsafe { (*regs).rsp }
}

/// This thread's pending call, if it has one.
#[inline(always)]
fn pending_call() -> Option<&'static mut PendingCall> {
    let slot = PENDING.mine_if_any()?;
    // SAFETY: the value is this thread's; only this thread touches it.
    let slot = unsafe { &mut *slot };
    (slot.sp != 0).then_some(slot)
}

/// Records an allocator entry for this thread, unless it is nested in
/// another. `frees` is the block a realloc replaces (else 0).
#[inline(always)]
fn enter(ctx: &ProbeContext, size: u64, ptr: u64, frees: u64) {
    if target_thread().is_none() {
        return;
    }
    let sp = stack_pointer(ctx.regs);
    let Some(slot) = PENDING.mine() else {
        bump(stat::PENDING_MAP_FULL);
        return;
    };
    // SAFETY: the value is this thread's; only this thread touches it.
    let slot = unsafe { &mut *slot };
    if slot.sp != 0 {
        if sp <= slot.sp {
            // Called (or tail-called) from inside the outer allocator call:
            // the outer call is the one the user made.
            slot.depth += 1;
            bump(stat::NESTED_CALLS);
            return;
        }
        // A deeper-or-equal stack than a call still pending: that call never returned.
        bump(stat::PENDING_STALE);
    }
    *slot = PendingCall {
        size,
        sp,
        ptr,
        depth: 0,
        record: 1,
        window: 0,
        old: AllocInfo::default(),
        old_tracked: 0,
    };
    take_old(slot, frees);
}

/// Takes this thread's pending call at the return of the outermost allocator call.
#[inline(always)]
fn leave() -> Option<PendingCall> {
    target_thread()?;
    let Some(pending) = pending_call() else {
        bump(stat::RETURN_WITHOUT_ENTRY);
        return None;
    };
    if pending.depth > 0 {
        pending.depth -= 1;
        return None;
    }
    let call = *pending;
    pending.sp = 0;
    Some(call)
}

/// The sampling window open now (0 when none is, or when not sampling by window).
#[inline(always)]
fn current_window() -> u32 {
    if SAMPLE_BY_WINDOW.load() == 0 {
        return 0;
    }
    CONTROL.get(control::WINDOW).copied().unwrap_or(0)
}

/// True while this thread is inside an allocator call (a free made by the
/// allocator itself): a call is pending, entered no deeper than this one
/// (`sp`), and not stale. A call whose return run was lost when a sampling
/// window closed is stale once another window, or none, is open: its thread
/// must not have its frees ignored until its next probed allocation.
#[inline(always)]
fn inside_allocator(sp: u64) -> bool {
    pending_call().is_some_and(|p| sp <= p.sp && p.window == current_window())
}

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
        (*agg).last_ns = now;
        before
    }
}

/// Adds one allocation to its stack's aggregate; returns how many
/// allocations this CPU had added to it before (0: the frames must be
/// stored), or None when the map is full.
#[inline(always)]
fn agg_add(stack_id: i64, size: u64, now: u64) -> Option<u64> {
    if let Some(agg) = AGG.get_ptr_mut(stack_id) {
        return Some(agg_add_to(agg, size, now));
    }
    // A new entry has this value on this CPU and zeros on the others.
    let first = StackAgg {
        bytes: size,
        count: 1,
        last_ns: now,
        allocs: 1,
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

/// Forgets a live block; returns what it was, or None when it was not tracked.
#[inline(always)]
fn forget(key: &LiveKey) -> Option<AllocInfo> {
    // SAFETY: the value is copied out at once.
    let info = (unsafe { LIVE.get(key) }).copied()?;
    LIVE.remove(key).ok()?;
    match AGG.get_ptr_mut(info.stack_id) {
        // SAFETY: points into this CPU's value; fields are updated atomically.
        Some(agg) => unsafe {
            add(&raw mut (*agg).bytes, 0u64.wrapping_sub(info.size));
            add(&raw mut (*agg).count, u64::MAX);
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
    if agg_add(info.stack_id, info.size, now).is_none() {
        let _ = LIVE.remove(key);
        bump(stat::STACK_MAP_FULL);
    }
}

/// The block a realloc replaces, taken out of `LIVE` at the call's entry.
#[inline(always)]
fn take_old(call: &mut PendingCall, addr: u64) {
    if addr == 0 {
        return;
    }
    if let Some(info) = forget(&live_key(bpf_get_current_pid_tgid(), addr)) {
        call.old = info;
        call.old_tracked = 1;
    }
}

/// Notes this CPU's last release, for [`count_unknown`].
#[inline(always)]
fn note_release(tid: u64, addr: u64) {
    if let Some(last) = LAST_RELEASE.get_ptr_mut(0) {
        // SAFETY: this CPU's value; programs do not migrate while running.
        unsafe { *last = [tid, addr] };
    }
}

/// Counts the release of a block that was not tracked.
///
/// One release can reach two probes: a sized `operator delete` that jumps to
/// `free` (mimalloc's), or another wrapper. The second sees a block already
/// forgotten; it is told apart from a free of an unknown block by this CPU's
/// last release (same thread, same address), and counted as nested.
#[inline(always)]
fn count_unknown(tid: u64, addr: u64) {
    // SAFETY: this CPU's value; programs do not migrate while running.
    let again = LAST_RELEASE
        .get_ptr_mut(0)
        .is_some_and(|last| unsafe { *last } == [tid, addr]);
    bump(if again {
        stat::NESTED_CALLS
    } else {
        stat::FREES_UNKNOWN
    });
}

/// The `LIVE` key of `addr` in the process of the thread `pid_tgid`.
#[inline(always)]
fn live_key(pid_tgid: u64, addr: u64) -> LiveKey {
    LiveKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        addr,
    }
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
fn capture_stack<C: EbpfContext>(ctx: &C, tgid: u32) -> i64 {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return STACK_LOST;
    };
    // SAFETY: this CPU's scratch value; programs do not migrate while running.
    let buf = unsafe { &mut *buf };
    let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
    // SAFETY: the context of a uprobe program is the task's registers.
    let (ip, mut fp) = unsafe { ((*regs).rip, (*regs).rbp) };
    if ip == 0 {
        return STACK_LOST;
    }
    let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(tgid);
    let mut how = memprof_common::unwind::walk::FP;
    if unwind::enabled() {
        match unwind::capture(regs, tgid, seed) {
            Some((_, 0)) => return STACK_LOST,
            Some((hash, len)) => return (unwind::mix(hash, len) >> 1) as i64,
            None => {
                bump(stat::UNWIND_NO_TABLE);
                how |= memprof_common::unwind::walk::NO_TABLE;
            }
        }
    }
    buf.ips[0] = ip;
    let mut hash: u64 = seed;
    hash = (hash ^ ip).wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 32;
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
        hash = (hash ^ ret).wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 32;
        if next <= fp {
            break;
        }
        fp = next;
    }
    buf.len = len;
    buf.walk = how;
    // The length is part of the identity, as the frames are.
    hash = (hash ^ len).wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 32;
    (hash >> 1) as i64
}

/// Makes sure the stack just captured by [`capture_stack`] is in `STACKS`
/// under `id`. A stack that cannot be stored is counted as lost; user space
/// shows allocations whose stack is missing as `[stack lost]`.
#[inline(always)]
fn store_stack(id: i64) {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        bump(stat::STACK_LOST);
        return;
    };
    // SAFETY: this CPU's scratch value, filled by capture_stack in this run.
    let buf = unsafe { &mut *buf };
    // SAFETY: the value is only read.
    if let Some(stored) = unsafe { STACKS.get(id) } {
        if stored.len != buf.len || stored.ips[0] != buf.ips[0] {
            bump(stat::STACK_COLLISIONS);
        }
        return;
    }
    // A new stack: no frames of an older capture past its own.
    for i in 0..MAX_FRAMES {
        if i as u64 >= buf.len {
            buf.ips[i] = 0;
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

/// Records a block returned to the target.
#[inline(always)]
fn record<C: EbpfContext>(ctx: &C, addr: u64, size: u64) {
    let key = live_key(bpf_get_current_pid_tgid(), addr);
    let stack_id = capture_stack(ctx, key.tgid);
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
    let Some(before) = agg_add(stack_id, size, now) else {
        let _ = LIVE.remove(key);
        bump(stat::STACK_MAP_FULL);
        return;
    };
    // After the aggregate: see the module comment. A stack that this CPU
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
fn finish_alloc<C: EbpfContext>(ctx: &C, call: PendingCall, addr: u64) {
    if addr == 0 {
        bump(stat::FAILED_ALLOCS);
    } else {
        record(ctx, addr, call.size);
    }
}

/// Ends a realloc or reallocarray call that returned `new`. Its old block
/// left `LIVE` at the entry ([`take_old`]).
#[inline(always)]
fn finish_realloc<C: EbpfContext>(ctx: &C, call: PendingCall, new: u64) {
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
        record(ctx, new, call.size);
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
        Ok(addr) if addr != 0 => record(ctx, addr, call.size),
        _ => bump(stat::FAILED_ALLOCS),
    }
}

// ---- entry programs -------------------------------------------------------

/// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    let size: u64 = ctx.arg(0).unwrap_or(0);
    enter(&ctx, size, 0, 0);
    0
}

/// `calloc(nmemb, size)`.
#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let nmemb: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    enter(&ctx, nmemb.wrapping_mul(size), 0, 0);
    0
}

/// `realloc(ptr, size)`.
#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    enter(&ctx, size, ptr, ptr);
    0
}

/// `reallocarray(ptr, nmemb, size)`.
#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let nmemb: u64 = ctx.arg(1).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    enter(&ctx, nmemb.wrapping_mul(size), ptr, ptr);
    0
}

/// `posix_memalign(memptr, alignment, size)`.
#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let memptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    enter(&ctx, size, memptr, 0);
    0
}

/// `aligned_alloc(alignment, size)`, `memalign(alignment, size)`.
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    let size: u64 = ctx.arg(1).unwrap_or(0);
    enter(&ctx, size, 0, 0);
    0
}

/// `free(ptr)`: no return probe needed.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let Some(tid) = target_thread() else { return 0 };
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    if ptr == 0 {
        return 0;
    }
    // A tracked block leaves, whoever frees it (a block an allocator call
    // releases itself, realloc's old one, left `LIVE` at that call's entry).
    if forget(&live_key(tid, ptr)).is_some() {
        bump(stat::FREES);
        note_release(tid, ptr);
        return 0;
    }
    if SAMPLE_RATE.load() > 1 {
        // Sampled mode: most blocks were not sampled, and their frees are
        // expected; not counted.
        return 0;
    }
    if inside_allocator(stack_pointer(ctx.regs)) {
        // e.g. realloc(p, 0) freeing p: accounted at realloc's return.
        bump(stat::NESTED_CALLS);
        return 0;
    }
    count_unknown(tid, ptr);
    0
}

// ---- return programs ------------------------------------------------------

/// Return of malloc, calloc, aligned_alloc, memalign, valloc, pvalloc.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        finish_alloc(&ctx, call, ctx.ret());
    }
    0
}

/// Return of realloc and reallocarray.
#[uretprobe]
pub fn realloc_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        finish_realloc(&ctx, call, ctx.ret());
    }
    0
}

/// Return of posix_memalign: 0 on success, the block stored through `memptr`.
#[uretprobe]
pub fn posix_memalign_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        finish_posix_memalign(&ctx, call, ctx.ret());
    }
    0
}

// ---- sampled mode: uprobe session programs ---------------------------------
//
// Not written with `#[uprobe]`: that macro's wrapper discards the function's
// value and always returns 0, and a session entry run must be able to return
// SKIP_RETURN. The section name is the one `#[uprobe]` uses, so aya parses
// them as UProbe programs (which it never loads: user space loads them itself
// for a uprobe session link, see memprof/src/session_link.rs).

/// How a session run is told apart: at the entry the registers' ip is the
/// probed address, which `bpf_get_func_ip` also returns for uprobe
/// session links; at the return it is the caller's return address.
#[inline(always)]
fn is_return(ctx: &ProbeContext) -> bool {
    // SAFETY: `regs` is the program's context, which the verifier lets us read.
    let ip = unsafe { (*ctx.regs).rip };
    // SAFETY: the helper only reads the run's context.
    let func = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    ip != func
}

/// The return value of the probed function, at the return run.
#[inline(always)]
fn return_value(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `is_return`.
    unsafe { (*ctx.regs).rax }
}

/// How an unsampled call is handled at its entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unsampled {
    /// Nothing to do: skip the return.
    Skip,
    /// glibc may call another probed allocation function from inside this
    /// one: stay pending (without recording), so that the inner call is
    /// skipped as nested instead of being sampled on its own.
    StayPending,
}

/// The entry run of a sampled-mode allocation call. `frees` is the block the
/// call releases whatever it returns (realloc's old pointer, else 0).
#[inline(always)]
fn sample_enter(ctx: &ProbeContext, size: u64, ptr: u64, frees: u64, unsampled: Unsampled) -> u32 {
    if target_thread().is_none() {
        return SKIP_RETURN;
    }
    let (sampled, window) = if SAMPLE_BY_WINDOW.load() != 0 {
        let window = current_window();
        (window != 0, window)
    } else {
        let rate = SAMPLE_RATE.load();
        // SAFETY: the helper has no preconditions.
        (rate <= 1 || unsafe { bpf_get_prandom_u32() } % rate == 0, 0)
    };
    if !sampled && unsampled == Unsampled::Skip && frees == 0 {
        // Nothing to record or forget, nested or not: the cheap common case,
        // without a map lookup.
        return SKIP_RETURN;
    }
    let sp = stack_pointer(ctx.regs);
    if let Some(outer) = pending_call() {
        if sp <= outer.sp && outer.window == window {
            // Called (or tail-called) from inside a pending call, which
            // accounts for this one (and its block): no return run needed.
            bump(stat::NESTED_CALLS);
            return SKIP_RETURN;
        }
        // A deeper-or-equal stack than a call still pending, or a call from
        // an earlier window (whose probes were detached before it returned):
        // that call never returned. Dropped, or later calls would be taken
        // for nested ones.
        bump(stat::PENDING_STALE);
        outer.sp = 0;
    }
    if !sampled {
        if frees != 0 {
            // glibc moves or frees the old block of a realloc without calling
            // the probed free: forget it now (see the module comment). Most
            // blocks were not sampled: a miss is expected, and not counted.
            if forget(&live_key(bpf_get_current_pid_tgid(), frees)).is_some() {
                bump(stat::FREES);
            }
        }
        if unsampled == Unsampled::Skip {
            return SKIP_RETURN;
        }
    }
    let Some(slot) = PENDING.mine() else {
        bump(stat::PENDING_MAP_FULL);
        return SKIP_RETURN;
    };
    // SAFETY: the value is this thread's; only this thread touches it.
    let slot = unsafe { &mut *slot };
    *slot = PendingCall {
        size,
        sp,
        ptr,
        depth: 0,
        record: u32::from(sampled),
        window,
        old: AllocInfo::default(),
        old_tracked: 0,
    };
    if sampled {
        take_old(slot, frees);
    }
    RUN_RETURN
}

/// The pending call at a sampled-mode return run, when it is to be recorded.
#[inline(always)]
fn sample_leave() -> Option<PendingCall> {
    leave().filter(|call| call.record != 0)
}

/// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn malloc_sampled(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if is_return(&ctx) {
        if let Some(call) = sample_leave() {
            finish_alloc(&ctx, call, return_value(&ctx));
        }
        return 0;
    }
    let size: u64 = ctx.arg(0).unwrap_or(0);
    sample_enter(&ctx, size, 0, 0, Unsampled::Skip)
}

/// `calloc(nmemb, size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn calloc_sampled(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if is_return(&ctx) {
        if let Some(call) = sample_leave() {
            finish_alloc(&ctx, call, return_value(&ctx));
        }
        return 0;
    }
    let nmemb: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    sample_enter(&ctx, nmemb.wrapping_mul(size), 0, 0, Unsampled::Skip)
}

/// `realloc(ptr, size)`: `realloc(NULL, n)` calls malloc.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn realloc_sampled(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if is_return(&ctx) {
        if let Some(call) = sample_leave() {
            finish_realloc(&ctx, call, return_value(&ctx));
        }
        return 0;
    }
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(1).unwrap_or(0);
    let unsampled = if ptr == 0 {
        Unsampled::StayPending
    } else {
        Unsampled::Skip
    };
    sample_enter(&ctx, size, ptr, ptr, unsampled)
}

/// `reallocarray(ptr, nmemb, size)`: calls realloc.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn reallocarray_sampled(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if is_return(&ctx) {
        if let Some(call) = sample_leave() {
            finish_realloc(&ctx, call, return_value(&ctx));
        }
        return 0;
    }
    let ptr: u64 = ctx.arg(0).unwrap_or(0);
    let nmemb: u64 = ctx.arg(1).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    sample_enter(
        &ctx,
        nmemb.wrapping_mul(size),
        ptr,
        ptr,
        Unsampled::StayPending,
    )
}

/// `posix_memalign(memptr, alignment, size)`: may call malloc.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn posix_memalign_sampled(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if is_return(&ctx) {
        if let Some(call) = sample_leave() {
            finish_posix_memalign(&ctx, call, return_value(&ctx));
        }
        return 0;
    }
    let memptr: u64 = ctx.arg(0).unwrap_or(0);
    let size: u64 = ctx.arg(2).unwrap_or(0);
    sample_enter(&ctx, size, memptr, 0, Unsampled::StayPending)
}

/// `aligned_alloc(alignment, size)`, `memalign(alignment, size)`: may call malloc.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn memalign_sampled(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if is_return(&ctx) {
        if let Some(call) = sample_leave() {
            finish_alloc(&ctx, call, return_value(&ctx));
        }
        return 0;
    }
    let size: u64 = ctx.arg(1).unwrap_or(0);
    sample_enter(&ctx, size, 0, 0, Unsampled::StayPending)
}

/// Sampling by windows: malloc, calloc, posix_memalign and the memalign
/// family in one program (the kind in the link's cookie, one of
/// [`window_cookie`]), so that a window attaches and detaches a single link
/// per library: closing a link waits for RCU grace periods.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_windowed(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    // SAFETY: the helper only reads the run's context.
    let kind = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if is_return(&ctx) {
        if let Some(call) = sample_leave() {
            if kind == window_cookie::POSIX_MEMALIGN {
                finish_posix_memalign(&ctx, call, return_value(&ctx));
            } else {
                finish_alloc(&ctx, call, return_value(&ctx));
            }
        }
        return 0;
    }
    match kind {
        window_cookie::CALLOC => {
            let nmemb: u64 = ctx.arg(0).unwrap_or(0);
            let size: u64 = ctx.arg(1).unwrap_or(0);
            sample_enter(&ctx, nmemb.wrapping_mul(size), 0, 0, Unsampled::Skip)
        }
        window_cookie::POSIX_MEMALIGN => {
            let memptr: u64 = ctx.arg(0).unwrap_or(0);
            let size: u64 = ctx.arg(2).unwrap_or(0);
            sample_enter(&ctx, size, memptr, 0, Unsampled::StayPending)
        }
        window_cookie::MEMALIGN => {
            let size: u64 = ctx.arg(1).unwrap_or(0);
            sample_enter(&ctx, size, 0, 0, Unsampled::StayPending)
        }
        _ => {
            let size: u64 = ctx.arg(0).unwrap_or(0);
            sample_enter(&ctx, size, 0, 0, Unsampled::Skip)
        }
    }
}

/// A thread exits: with [`filter::SET`], its id leaves `TARGETS`: a thread
/// id a fork put there, or the process itself when its main thread exits, so
/// that a later process given the same pid is not recorded. (Its pending
/// call, if it died inside the allocator, goes with its task storage.)
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn thread_exit(_ctx: RawTracePointContext) -> u32 {
    if FILTER.load() == filter::SET {
        let _ = TARGETS.remove(bpf_get_current_pid_tgid() as u32);
    }
    0
}

/// A process calls exec: the allocations of the program it replaces are gone.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if WATCH_EXECS.load() != 0 {
        let _ = EXECS.insert(tgid, now, BPF_ANY as u64);
    }
    if target_thread().is_none() {
        return 0;
    }
    unwind::forget(tgid);
    if let Some(events) = PROCS.get_ptr_mut(tgid) {
        // SAFETY: points into the map value; only this process's exec writes it.
        unsafe {
            (*events).execs += 1;
            (*events).last_exec_ns = now;
        }
    } else {
        let first = ProcEvents {
            execs: 1,
            last_exec_ns: now,
        };
        let _ = PROCS.insert(tgid, first, BPF_ANY as u64);
    }
    0
}

/// A task forks or starts a thread: with [`FOLLOW_FORKS`], the child of a
/// recorded process is recorded too (a thread's id is put in `TARGETS` as
/// well, harmlessly: ids are looked up by tgid, and it leaves at its exit).
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    if FOLLOW_FORKS.load() == 0 || FILTER.load() != filter::SET {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: only tested for presence.
    if unsafe { TARGETS.get(parent) }.is_none() {
        return 0;
    }
    // SAFETY: the offset comes from the tracepoint's format file.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(FORK_CHILD_PID_OFFSET.load() as usize) }) else {
        bump(stat::FORKS_NOT_FOLLOWED);
        return 0;
    };
    if TARGETS.insert(child as u32, 1, BPF_ANY as u64).is_err() {
        bump(stat::FORKS_NOT_FOLLOWED);
    }
    0
}

// ---- optional sources: anonymous mmap (--mmap) and kernel (--kernel) -------
//
// Apart from the heap: their own maps (MMAP_EVENTS, KLIVE, KSTACKS) and
// counters (SOURCE_STATS); only the user stacks of anonymous mappings go to
// the shared STACKS map (their frames begin inside the syscall wrapper, so
// they never hash like a heap stack). Nothing here adds to LIVE, AGG or
// STATS, so the heap totals are untouched.

/// Anonymous-memory events of the target, replayed in order by user space.
#[map]
static MMAP_EVENTS: RingBuf = RingBuf::with_byte_size(sources::MMAP_EVENTS_OFF_BYTES, 0);

/// Kernel objects allocated for the target: address -> bytes, time, kernel stack.
/// Preallocated: inserting must not call the kernel allocator being traced.
#[map]
static KLIVE: HashMap<u64, AllocInfo> = HashMap::with_max_entries(1, 0);

/// Kernel stacks of the objects in `KLIVE`.
#[map]
static KSTACKS: KernelStacks = KernelStacks::with_max_entries(1, 0);

#[map]
static SOURCE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(source_stat::COUNT, 0);

/// Field offsets of the kmem tracepoint records; user space overrides them
/// with what `/sys/kernel/tracing/events/kmem/*/format` says (these
/// defaults are Linux 6.18's).
#[unsafe(no_mangle)]
static KMALLOC_PTR: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static KMALLOC_BYTES: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
static KCACHE_PTR: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static KCACHE_BYTES: Global<u32> = Global::new(40);
#[unsafe(no_mangle)]
static KFREE_PTR: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static KCACHE_FREE_PTR: Global<u32> = Global::new(16);

const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const PAGE_MASK: u64 = 4095;
/// Words above the user stack pointer searched for the wrapper's return address.
const CALLER_SCAN_WORDS: usize = 16;

#[inline(always)]
fn bump_source(index: u32) {
    if let Some(counter) = SOURCE_STATS.get_ptr_mut(index) {
        add(counter, 1);
    }
}

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

/// Longest distance from a syscall wrapper's entry to its `syscall` instruction.
const WRAPPER_MAX_BYTES: u64 = 1024;

#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: reading user memory through the helper, which handles faults.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

#[inline(always)]
fn le_i32(b: [u8; 4]) -> u64 {
    i32::from_le_bytes(b) as i64 as u64
}

/// The function a call to `target` reaches: `target` itself, or, when
/// `target` is a PLT stub (`jmp *GOT(%rip)`, with or without `endbr64` and
/// `bnd`), the address in its GOT slot.
#[inline(always)]
fn through_plt(target: u64) -> u64 {
    let Some(p) = read_user::<[u8; 16]>(target) else {
        return target;
    };
    let endbr = p[0] == 0xf3 && p[1] == 0x0f && p[2] == 0x1e && p[3] == 0xfa;
    let (disp, next) = if p[0] == 0xff && p[1] == 0x25 {
        ([p[2], p[3], p[4], p[5]], 6)
    } else if endbr && p[4] == 0xf2 && p[5] == 0xff && p[6] == 0x25 {
        ([p[7], p[8], p[9], p[10]], 11)
    } else if endbr && p[4] == 0xff && p[5] == 0x25 {
        ([p[6], p[7], p[8], p[9]], 10)
    } else {
        return target;
    };
    read_user::<u64>(target.wrapping_add(next).wrapping_add(le_i32(disp))).unwrap_or(target)
}

/// True when `ret` is the return address of a call to the function that
/// contains `ip` (the syscall wrapper): the bytes before `ret` are a
/// `call rel32` or a `call *disp32(%rip)` whose target (through the PLT) is
/// the entry of a function that `ip` lies less than [`WRAPPER_MAX_BYTES`]
/// after. A stale return address left on the stack by an earlier call to
/// another function does not pass.
#[inline(always)]
fn returns_from(ret: u64, ip: u64) -> bool {
    if ret < 4096 || ret == ip {
        return false;
    }
    let Some(b) = read_user::<[u8; 8]>(ret - 8) else {
        return false;
    };
    let target = if b[3] == 0xe8 {
        ret.wrapping_add(le_i32([b[4], b[5], b[6], b[7]]))
    } else if b[2] == 0xff && b[3] == 0x15 {
        match read_user::<u64>(ret.wrapping_add(le_i32([b[4], b[5], b[6], b[7]]))) {
            Some(t) => t,
            None => return false,
        }
    } else {
        return false;
    };
    let entry = through_plt(target);
    entry <= ip && ip - entry < WRAPPER_MAX_BYTES
}

/// Captures the user stack of a thread inside a syscall into this CPU's
/// scratch buffer and returns its hash (as [`capture_stack`] does), or
/// [`STACK_LOST`].
///
/// The thread is inside libc's syscall wrapper, which has no frame pointer:
/// `%rbp` is still its caller's frame, so a frame-pointer walk from the
/// syscall's `%rip` skips the caller, the very function that mapped the
/// memory. That caller's return address is on the stack a few words above
/// `%rsp` (at `%rsp` for glibc's `mmap` and `munmap`, 0x58 above it for
/// `mremap`): the first of [`CALLER_SCAN_WORDS`] words that is the return
/// address of a call to the wrapper (see [`returns_from`]) is taken as frame
/// 1, then the walk goes on from `%rbp`.
#[inline(always)]
fn capture_syscall_stack(regs: &pt_regs) -> i64 {
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return STACK_LOST;
    };
    // SAFETY: this CPU's scratch value; programs do not migrate while running.
    let buf = unsafe { &mut *buf };
    let (ip, mut fp, sp) = (regs.rip, regs.rbp, regs.rsp);
    if ip == 0 {
        return STACK_LOST;
    }
    let mut hash: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, v: u64| {
        let h = (h ^ v).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 32)
    };
    buf.ips[0] = ip;
    hash = mix(hash, ip);
    let mut len: usize = 1;
    // SAFETY: reading user memory through the helper, which handles faults.
    if let Ok(words) = unsafe { bpf_probe_read_user(sp as *const [u64; CALLER_SCAN_WORDS]) } {
        for word in words {
            if returns_from(word, ip) {
                buf.ips[1] = word;
                hash = mix(hash, word);
                len = 2;
                break;
            }
        }
    }
    for _ in 1..MAX_FRAMES {
        if fp == 0 || len >= MAX_FRAMES {
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
        // The scanned caller is also the first return address of the walk
        // when the caller itself has no frame of its own yet.
        if !(len == 2 && buf.ips[1] == ret) {
            if let Some(slot) = buf.ips.get_mut(len) {
                *slot = ret;
            }
            len += 1;
            hash = mix(hash, ret);
        }
        if next <= fp {
            break;
        }
        fp = next;
    }
    buf.len = len as u64;
    buf.walk = memprof_common::unwind::walk::FP;
    hash = mix(hash, len as u64);
    (hash >> 1) as i64
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

/// `--kernel`: an object allocated by the kernel while running for the target.
/// Its size is `bytes_alloc`, what the allocator really reserved (bcc's
/// memleak counts the same), not `bytes_req`.
#[inline(always)]
fn kernel_alloc(ctx: &TracePointContext, ptr_at: u32, bytes_at: u32) {
    if target_thread().is_none() {
        return;
    }
    // SAFETY: offsets of the record's fields, from its format file; the
    // helper handles faults.
    let (Ok(ptr), Ok(bytes)) = (unsafe { ctx.read_at::<u64>(ptr_at as usize) }, unsafe {
        ctx.read_at::<u64>(bytes_at as usize)
    }) else {
        bump_source(source_stat::KERNEL_READ_FAILED);
        return;
    };
    if ptr == 0 {
        return;
    }
    let stack_id = match ctx.get_stackid(&KSTACKS, 0) {
        Ok(id) => id,
        Err(_) => {
            bump_source(source_stat::KERNEL_STACK_LOST);
            STACK_LOST
        }
    };
    let info = AllocInfo {
        size: bytes,
        // SAFETY: the helper has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
    };
    match KLIVE.insert(ptr, info, BPF_NOEXIST as u64) {
        Ok(()) => bump_source(source_stat::KERNEL_ALLOCS),
        Err(e) if e == -EEXIST => {
            bump_source(source_stat::KERNEL_REPLACED);
            if KLIVE.insert(ptr, info, BPF_ANY as u64).is_ok() {
                bump_source(source_stat::KERNEL_ALLOCS);
            }
        }
        Err(_) => bump_source(source_stat::KERNEL_LIVE_FULL),
    }
}

/// `--kernel`: a kernel object freed, in any context (frees are not filtered:
/// the kernel often frees from another task, RCU callbacks or workers).
#[inline(always)]
fn kernel_free(ctx: &TracePointContext, ptr_at: u32) {
    // SAFETY: as in `kernel_alloc`.
    let Ok(ptr) = (unsafe { ctx.read_at::<u64>(ptr_at as usize) }) else {
        return;
    };
    if ptr != 0 && KLIVE.remove(ptr).is_ok() {
        bump_source(source_stat::KERNEL_FREES);
    }
}

/// `kmem:kmalloc` (covers kmalloc_node and friends since Linux 6.1).
#[tracepoint(category = "kmem", name = "kmalloc")]
pub fn kmem_kmalloc(ctx: TracePointContext) -> u32 {
    kernel_alloc(&ctx, KMALLOC_PTR.load(), KMALLOC_BYTES.load());
    0
}

/// `kmem:kmem_cache_alloc` (covers kmem_cache_alloc_node since Linux 6.1).
#[tracepoint(category = "kmem", name = "kmem_cache_alloc")]
pub fn kmem_cache_alloc(ctx: TracePointContext) -> u32 {
    kernel_alloc(&ctx, KCACHE_PTR.load(), KCACHE_BYTES.load());
    0
}

/// `kmem:kfree`.
#[tracepoint(category = "kmem", name = "kfree")]
pub fn kmem_kfree(ctx: TracePointContext) -> u32 {
    kernel_free(&ctx, KFREE_PTR.load());
    0
}

/// `kmem:kmem_cache_free`.
#[tracepoint(category = "kmem", name = "kmem_cache_free")]
pub fn kmem_cache_free(ctx: TracePointContext) -> u32 {
    kernel_free(&ctx, KCACHE_FREE_PTR.load());
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
