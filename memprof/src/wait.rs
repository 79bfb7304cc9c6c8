//! Waiting out the run: the duration, Ctrl-C and SIGTERM, the exit of what
//! is recorded, and a status line on a terminal. The only async module.
//!
//! What is recorded is followed through [`Follow`], which the caller
//! implements: the wait only knows when to call it.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{IsTerminal as _, Write as _};
use std::os::fd::OwnedFd;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::launch::ChildEvent;
use crate::probes::Probes;
use crate::snapshot;

/// How often stacks that nothing outstanding uses are looked for and freed.
const FREE_STACKS_EVERY: Duration = Duration::from_secs(1);

/// How long a stack must have had nothing outstanding before it is freed.
const STACK_IDLE_NS: u64 = 1_000_000_000;

/// Why the run ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum End {
    /// The requested duration passed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// The target exited, this many seconds into the run (in a run over
    /// many processes: the last of them).
    TargetExited(f64),
    /// With [`Plan::period`]: the period ended; the run goes on.
    Period,
}

/// What the wait follows besides the clock and the signals: the recorded
/// processes.
pub(crate) trait Follow {
    /// Pidfds of processes whose exit may end the run: when one becomes
    /// readable, [`Follow::tick`] is called at once.
    fn exit_fds(&self) -> Vec<OwnedFd>;

    /// Called every second: follows the processes (new ones, execs, new
    /// libraries). Returns true when none is left to record.
    fn tick(&mut self, probes: &mut Probes) -> anyhow::Result<bool>;

    /// A launched command is stopped at its exit, its memory map still
    /// there: read it one last time.
    fn command_exiting(&mut self, probes: &mut Probes) -> anyhow::Result<()>;

    /// The processes recorded now, whose resident memory the timeline shows.
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
}

/// Outstanding bytes per stack id at one moment of the run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    /// Seconds since the probes were attached.
    pub at_secs: f64,
    /// The [`SAMPLE_STACKS`] stacks holding most, by id.
    pub bytes: HashMap<i64, u64>,
    /// What the other stacks held, summed: totals stay exact while a
    /// machine-wide run's thousands of small stacks take no memory per sample.
    pub other_bytes: u64,
    /// Outstanding allocations, over every stack.
    pub count: u64,
    /// Resident memory of the recorded processes, when readable.
    pub rss_bytes: Option<u64>,
}

/// Most samples kept: past it every other one is dropped and the period
/// doubles, so that a long run keeps its whole timeline in bounded memory.
const MAX_SAMPLES: usize = 1000;

/// Stacks kept by name in each sample (the rest are summed): the timeline
/// draws the top few and `--interval` ranks the growth of these.
const SAMPLE_STACKS: usize = 512;

/// Most of the time between samples one sample may take (reading `AGG`
/// costs a few syscalls per stack): past it a default period doubles, so
/// that sampling takes no more than about a tenth of a CPU.
const MAX_SAMPLE_SHARE: f64 = 0.1;

/// What happened while waiting.
#[derive(Clone, Debug)]
pub(crate) struct Waited {
    pub end: End,
    /// With [`Plan::interval`]: the snapshots, oldest first.
    pub samples: Vec<Sample>,
    /// Stacks freed during the run.
    pub stacks_freed: u64,
    /// Seconds between samples at the end (the period doubles when samples
    /// are slow or many).
    pub sample_every: Option<f64>,
    /// The launched command's exit status as a shell gives it (see
    /// [`shell_status`]), when it ended during the run.
    pub command_status: Option<i32>,
}

/// What to wait for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Plan {
    /// End after this many seconds (else on a signal or the target's exit).
    pub duration: Option<f64>,
    /// Take a [`Sample`] this often.
    pub interval: Option<f64>,
    /// Take samples this often when `interval` is not given (the timeline).
    pub timeline_every: Option<f64>,
    /// The period is a default, not asked for: it doubles when a sample
    /// takes more than a tenth of it.
    pub adaptive: bool,
    /// No status line.
    pub quiet: bool,
    /// Return [`End::Period`] after this many seconds (continuous mode).
    pub period: Option<f64>,
    /// Seconds into the run when this wait starts (continuous mode waits
    /// once per period): samples are timed from the start of the run.
    pub offset_secs: f64,
}

/// The runtime and the signal handlers of a run. Created before the probes
/// are attached, so that a Ctrl-C or SIGTERM that comes while attaching (or
/// right after) ends the run with a report instead of killing memprof.
pub(crate) struct Waiter {
    runtime: tokio::runtime::Runtime,
    sigint: Signal,
    sigterm: Signal,
}

impl Waiter {
    /// Installs the SIGINT and SIGTERM handlers.
    pub(crate) fn new() -> anyhow::Result<Waiter> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (sigint, sigterm) = runtime.block_on(async {
            anyhow::Ok((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })?;
        Ok(Waiter {
            runtime,
            sigint,
            sigterm,
        })
    }

    /// Waits until the run should end, sampling the per-stack aggregate,
    /// freeing unused stacks and following the processes on the way.
    /// `child` is a launched command's tracer: it stops the command at its
    /// exit so that its mappings can be read one last time.
    pub(crate) fn wait(
        &mut self,
        probes: &mut Probes,
        follow: &mut dyn Follow,
        child: Option<&mut UnboundedReceiver<ChildEvent>>,
        plan: Plan,
    ) -> anyhow::Result<Waited> {
        let Waiter {
            runtime,
            sigint,
            sigterm,
        } = self;
        runtime.block_on(wait_async(probes, follow, child, plan, sigint, sigterm))
    }
}

/// The next event of a launched command (never, for a process memprof did not start).
async fn child_event(child: &mut Option<&mut UnboundedReceiver<ChildEvent>>) -> Option<ChildEvent> {
    match child {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when one of `fds` becomes readable (a process exited), which
/// it then forgets; never when there is none.
async fn any_exit(fds: &mut Vec<AsyncFd<OwnedFd>>) {
    if fds.is_empty() {
        return std::future::pending().await;
    }
    poll_fn(|cx| {
        let ready = fds.iter().position(|fd| fd.poll_read_ready(cx).is_ready());
        match ready {
            Some(i) => {
                fds.swap_remove(i);
                Poll::Ready(())
            }
            None => Poll::Pending,
        }
    })
    .await
}

async fn wait_async(
    probes: &mut Probes,
    follow: &mut dyn Follow,
    mut child: Option<&mut UnboundedReceiver<ChildEvent>>,
    plan: Plan,
    sigint: &mut Signal,
    sigterm: &mut Signal,
) -> anyhow::Result<Waited> {
    let Plan {
        duration,
        interval,
        timeline_every,
        adaptive,
        offset_secs,
        quiet,
        period,
    } = plan;
    let period_end = async {
        match period {
            Some(p) => tokio::time::sleep(Duration::from_secs_f64(p)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(period_end);
    let mut samples = Vec::new();
    let sampling = interval.or(timeline_every);
    let mut period = Duration::from_secs_f64(sampling.unwrap_or(1.0));
    let mut sampler = sampler_every(period);
    let started = Instant::now();
    let deadline = duration.map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d));
    let sleep_until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until_deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let status_line = !quiet && std::io::stderr().is_terminal();
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut exit_fds: Vec<AsyncFd<OwnedFd>> = follow
        .exit_fds()
        .into_iter()
        // SAFETY: an OwnedFd is open and names one file until it is dropped,
        // and the AsyncFd owns it.
        .filter_map(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok())
        .collect();
    let mut housekeeping = tokio::time::interval_at(
        tokio::time::Instant::now() + FREE_STACKS_EVERY,
        FREE_STACKS_EVERY,
    );
    let mut stacks_freed = 0;
    let mut command_status = None;
    let end = loop {
        tokio::select! {
            _ = &mut sleep_until_deadline => break End::Duration,
            _ = &mut period_end => break End::Period,
            _ = sigint.recv() => break End::Signal("SIGINT"),
            _ = sigterm.recv() => break End::Signal("SIGTERM"),
            _ = any_exit(&mut exit_fds) => match follow.tick(probes) {
                Ok(true) => break End::TargetExited(started.elapsed().as_secs_f64()),
                Ok(false) => {}
                Err(e) => log::warn!("following the processes failed: {e:#}"),
            },
            event = child_event(&mut child) => match event {
                Some(ChildEvent::Exiting(resume)) => {
                    if let Err(e) = follow.command_exiting(probes) {
                        log::warn!("reading the command at its exit failed: {e:#}");
                    }
                    let _ = resume.send(());
                }
                Some(ChildEvent::Exited(status)) => {
                    log::info!("{}", describe_exit(status));
                    command_status = Some(shell_status(status));
                }
                None => child = None,
            },
            _ = housekeeping.tick() => {
                probes.python_tick();
                match probes.free_idle_stacks(STACK_IDLE_NS) {
                    Ok(n) => stacks_freed += n,
                    Err(e) => log::warn!("freeing unused stacks failed: {e:#}"),
                }
                match follow.tick(probes) {
                    Ok(true) => break End::TargetExited(started.elapsed().as_secs_f64()),
                    Ok(false) => {}
                    Err(e) => log::warn!("following the processes failed: {e:#}"),
                }
            }
            _ = sampler.tick(), if sampling.is_some() => {
                let took = Instant::now();
                let at_secs = offset_secs + started.elapsed().as_secs_f64();
                match sample(probes, at_secs, &follow.pids()) {
                    Ok(s) => samples.push(s),
                    Err(e) => log::warn!("snapshot failed: {e:#}"),
                }
                let slow = adaptive
                    && took.elapsed().as_secs_f64() > period.as_secs_f64() * MAX_SAMPLE_SHARE;
                let thinned = samples.len() >= MAX_SAMPLES;
                if thinned {
                    thin(&mut samples);
                }
                if slow || thinned {
                    period *= 2;
                    log::debug!(
                        "sampling every {:.2} s from now on ({})",
                        period.as_secs_f64(),
                        if slow { "a sample took too long" } else { "too many samples" }
                    );
                    sampler = sampler_every(period);
                }
            }
            _ = tick.tick() => {
                if status_line && last_status.elapsed() >= Duration::from_secs(1) {
                    last_status = Instant::now();
                    show_status(probes, started.elapsed(), duration);
                }
            }
        }
    };
    if status_line {
        eprint!("\r\x1b[2K");
    }
    if let (End::TargetExited(_), Some(rx)) = (end, child) {
        // The tracer reaps the command right after the exit that ended the run.
        if let Ok(Some(ChildEvent::Exited(status))) =
            tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
        {
            log::info!("{}", describe_exit(status));
            command_status = Some(shell_status(status));
        }
    }
    Ok(Waited {
        end,
        samples,
        stacks_freed,
        sample_every: sampling.map(|_| period.as_secs_f64()),
        command_status,
    })
}

/// A timer that ticks every `period`, the first tick one period from now,
/// and after a late tick waits a whole period again (no burst of catch-up
/// samples after a busy spell).
fn sampler_every(period: Duration) -> tokio::time::Interval {
    let mut sampler = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    sampler.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sampler
}

/// A wait status as a shell reports it: the exit code, or 128 + the signal
/// that killed the process.
fn shell_status(status: i32) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

fn describe_exit(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!(
            "the command exited with status {}",
            libc::WEXITSTATUS(status)
        )
    } else if libc::WIFSIGNALED(status) {
        format!(
            "the command was killed by signal {}",
            libc::WTERMSIG(status)
        )
    } else {
        format!("the command ended (wait status {status:#x})")
    }
}

/// Keeps every other sample (the last one always).
fn thin(samples: &mut Vec<Sample>) {
    let last = samples.len().saturating_sub(1);
    let mut i = 0;
    samples.retain(|_| {
        let keep = i % 2 == 1 || i == last;
        i += 1;
        keep
    });
}

fn sample(probes: &Probes, at_secs: f64, pids: &[u32]) -> anyhow::Result<Sample> {
    let agg = probes
        .ebpf()
        .map(memprof_common::maps::AGG)
        .ok_or_else(|| anyhow::anyhow!("AGG map missing"))?;
    let agg = snapshot::read_agg(agg)?;
    let count = agg.values().fold(0u64, |c, a| c.wrapping_add(a.count));
    let mut bytes: Vec<(i64, u64)> = agg
        .into_iter()
        .filter(|(_, a)| a.bytes != 0)
        .map(|(id, a)| (id, a.bytes))
        .collect();
    let mut other_bytes = 0u64;
    if bytes.len() > SAMPLE_STACKS {
        bytes.select_nth_unstable_by(SAMPLE_STACKS, |a, b| b.1.cmp(&a.1));
        for (_, b) in bytes.drain(SAMPLE_STACKS..) {
            other_bytes = other_bytes.wrapping_add(b);
        }
    }
    let bytes = bytes.into_iter().collect();
    let rss: Vec<u64> = pids
        .iter()
        .filter_map(|&pid| crate::procfs::rss_bytes(pid))
        .collect();
    Ok(Sample {
        at_secs,
        bytes,
        other_bytes,
        count,
        rss_bytes: (!rss.is_empty()).then(|| rss.iter().sum()),
    })
}

fn show_status(probes: &Probes, elapsed: Duration, duration: Option<f64>) {
    let ebpf = probes.ebpf();
    let (Some(agg), Some(stats)) = (
        ebpf.map(memprof_common::maps::AGG),
        ebpf.map(memprof_common::maps::STATS),
    ) else {
        return;
    };
    let (Ok(agg), Ok(stats)) = (snapshot::read_agg(agg), snapshot::read_stats(stats)) else {
        return;
    };
    let (bytes, count) = agg
        .values()
        .fold((0u64, 0u64), |(b, c), a| (b + a.bytes, c + a.count));
    let time = match duration {
        Some(d) => format!("{:.0}s / {d:.0}s", elapsed.as_secs_f64()),
        None => format!("{:.0}s (Ctrl-C to stop)", elapsed.as_secs_f64()),
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[2Kmemprof: {time}: {} outstanding in {count} allocations; {} allocs, {} frees seen",
        crate::render::human_bytes(bytes),
        stats.allocs,
        stats.frees
    );
    let _ = err.flush();
}
