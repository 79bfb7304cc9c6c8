//! What user space decides: the load-time globals of the heap programs
//! (names in [`memprof_common::globals`]) and the switches of `CONTROL`, and
//! the questions every program asks of them: is this thread recorded, which
//! sampling window is open.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid},
    Global,
};
use memprof_common::{control, filter};

use crate::maps::{CONTROL, TARGETS};

/// Which processes are recorded: one of [`filter`]; set by the loader, as
/// are the other globals. They are read-only for the programs, so the
/// verifier knows their values and drops the branches of the other modes.
#[unsafe(no_mangle)]
pub(crate) static FILTER: Global<u32> = Global::new(filter::ONE);

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
pub(crate) static FOLLOW_FORKS: Global<u32> = Global::new(0);

/// Nonzero: every exec is noted in `EXECS`, for user space to check (`--comm`).
#[unsafe(no_mangle)]
pub(crate) static WATCH_EXECS: Global<u32> = Global::new(0);

/// Offset of `child_pid` in the `sched_process_fork` record.
#[unsafe(no_mangle)]
pub(crate) static FORK_CHILD_PID_OFFSET: Global<u32> = Global::new(20);

/// Sampled mode: each allocation call is recorded with probability 1/SAMPLE_RATE.
#[unsafe(no_mangle)]
pub(crate) static SAMPLE_RATE: Global<u32> = Global::new(1);

/// Nonzero: sample by time windows, not by call (see [`crate::sampled`]).
#[unsafe(no_mangle)]
pub(crate) static SAMPLE_BY_WINDOW: Global<u32> = Global::new(0);

/// A block freed within this many ns of its allocation is a temporary.
#[unsafe(no_mangle)]
pub(crate) static TEMPORARY_NS: Global<u64> = Global::new(1_000_000);

/// Nonzero: every allocation and free of a recorded block goes to `HEAP_EVENTS`.
#[unsafe(no_mangle)]
pub(crate) static LOG_EVENTS: Global<u32> = Global::new(0);

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
pub(crate) fn target_thread() -> Option<u64> {
    let id = bpf_get_current_pid_tgid();
    if !is_target((id >> 32) as u32) {
        return None;
    }
    match CONTROL.get(control::RECORDING) {
        Some(&recording) if recording != 0 => Some(id),
        _ => None,
    }
}

/// The sampling window open now (0 when none is, or when not sampling by window).
#[inline(always)]
pub(crate) fn current_window() -> u32 {
    if SAMPLE_BY_WINDOW.load() == 0 {
        return 0;
    }
    CONTROL.get(control::WINDOW).copied().unwrap_or(0)
}
