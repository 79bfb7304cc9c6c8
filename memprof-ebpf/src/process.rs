//! Process events: a thread exits, a process calls exec, a task forks. They
//! keep the set of recorded processes (`TARGETS`) and what happened to each
//! (`PROCS`, `EXECS`) true while the run lasts. And a launched command's
//! dynamic loader changed its objects: it waits for their unwind tables.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_send_signal_thread},
    macros::{raw_tracepoint, tracepoint, uprobe},
    programs::{ProbeContext, RawTracePointContext, TracePointContext},
    Global,
};
use memprof_common::{filter, stat, ProcEvents};

use crate::maps::{bump, EXECS, EXITS, PROCS, TARGETS};
use crate::settings::{target_thread, FILTER, FOLLOW_FORKS, FORK_CHILD_PID_OFFSET, WATCH_EXECS};

/// A thread exits: with [`filter::SET`], its id leaves `TARGETS`: a thread
/// id a fork put there, or the process itself when its main thread exits, so
/// that a later process given the same pid is not recorded. (Its pending
/// call, if it died inside the allocator, goes with its task storage.)
///
/// When it is the last thread of a recorded process (the tracepoint's
/// `group_dead`), the process goes into `EXITS` with the time: user space
/// tells by it, not by what `/proc` shows later, which processes exited
/// while recording and which were alive when recording stopped (a process
/// that exits after that is reported as alive, as it was).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn thread_exit(ctx: RawTracePointContext) -> u32 {
    // The tracepoint's arguments: (struct task_struct *p, bool group_dead),
    // each passed as a u64.
    let group_dead = ctx.arg::<u64>(1) & 0xff != 0;
    if group_dead {
        if let Some(id) = target_thread() {
            // SAFETY: the helper has no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            if EXITS
                .insert((id >> 32) as u32, now, BPF_ANY as u64)
                .is_err()
            {
                bump(stat::EXITS_NOT_NOTED);
            }
        }
    }
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
    crate::stack::forget_unwind_table(tgid);
    crate::python::forget(tgid);
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

/// The launched command held at each change of its loaded objects (0: none).
#[unsafe(no_mangle)]
static HOLD_TGID: Global<u32> = Global::new(0);

/// `SIGSTOP`: it cannot be caught, and the tracer (memprof) takes it away
/// before it stops anything: the command never sees it.
const SIGSTOP: u32 = 19;

/// The dynamic loader of the launched command calls `_dl_debug_state` (the
/// debuggers' hook) before and after it maps objects, before their
/// constructors run: its main thread stops for memprof, which writes the
/// unwind tables of what is mapped now and lets it go on. Only the main
/// thread, the one memprof traces: a stop of another would stop the command
/// for good.
#[uprobe]
pub fn loader_change(_ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let hold = HOLD_TGID.load();
    if hold != 0 && id >> 32 == u64::from(hold) && id as u32 == hold {
        // SAFETY: the helper has no preconditions; it fails harmlessly.
        unsafe { bpf_send_signal_thread(SIGSTOP) };
    }
    0
}
