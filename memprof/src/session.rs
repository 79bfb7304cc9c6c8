//! Waiting out the run: the duration, Ctrl-C and SIGTERM, the target's exit,
//! and a status line on a terminal. The only async module.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::launch::ChildEvent;
use crate::probes::Probes;
use crate::procfs;
use crate::snapshot;
use crate::symbolize::Symbolizer;
use crate::target::TargetProcess;

/// How often stacks that nothing outstanding uses are looked for and freed.
const FREE_STACKS_EVERY: Duration = Duration::from_secs(1);

/// How long a stack must have had nothing outstanding before it is freed.
const STACK_IDLE_NS: u64 = 1_000_000_000;

/// How often the target's mappings are read again (new libraries, exec).
const REFRESH_MAPPINGS_EVERY: Duration = Duration::from_secs(5);

/// Why the run ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum End {
    /// The requested duration passed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// The target exited, this many seconds into the run (in a run over
    /// many processes: the last of them).
    TargetExited(f64),
}

/// Called every second in a run over many processes (with false), and when
/// a launched command stops at its exit (with true): finds new processes and
/// probes them; returns true when none is left to record.
pub type Housekeeping<'a> = &'a mut dyn FnMut(&mut Probes, bool) -> anyhow::Result<bool>;

/// Outstanding bytes per stack id at one moment of the run.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since the probes were attached.
    pub at_secs: f64,
    pub bytes: HashMap<i64, u64>,
}

/// What happened while waiting.
#[derive(Clone, Debug)]
pub struct Waited {
    pub end: End,
    /// With [`Plan::interval`]: the snapshots, oldest first.
    pub samples: Vec<Sample>,
    /// Stacks freed during the run.
    pub stacks_freed: u64,
}

/// What to wait for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plan {
    /// End after this many seconds (else on a signal or the target's exit).
    pub duration: Option<f64>,
    /// Take a [`Sample`] this often.
    pub interval: Option<f64>,
    /// No status line.
    pub quiet: bool,
}

/// The runtime and the signal handlers of a run. Created before the probes
/// are attached, so that a Ctrl-C or SIGTERM that comes while attaching (or
/// right after) ends the run with a report instead of killing memprof.
pub struct Session {
    runtime: tokio::runtime::Runtime,
    sigint: Signal,
    sigterm: Signal,
}

impl Session {
    /// Installs the SIGINT and SIGTERM handlers.
    pub fn new() -> anyhow::Result<Session> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (sigint, sigterm) = runtime.block_on(async {
            anyhow::Ok((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })?;
        Ok(Session {
            runtime,
            sigint,
            sigterm,
        })
    }

    /// Waits until the run should end, sampling the per-stack aggregate,
    /// freeing unused stacks and following the target's mappings on the way.
    pub fn wait(
        &mut self,
        probes: &mut Probes,
        target: &TargetProcess,
        symbolizer: &mut Symbolizer,
        child: Option<&mut UnboundedReceiver<ChildEvent>>,
        plan: Plan,
    ) -> anyhow::Result<Waited> {
        self.run(
            Watch {
                probes,
                target: Some(target),
                symbolizer: Some(symbolizer),
                child,
                many: None,
            },
            plan,
        )
    }

    /// [`Session::wait`] for a run over many processes: `housekeeping`
    /// follows them.
    pub fn wait_many(
        &mut self,
        probes: &mut Probes,
        housekeeping: Housekeeping<'_>,
        child: Option<&mut UnboundedReceiver<ChildEvent>>,
        plan: Plan,
    ) -> anyhow::Result<Waited> {
        self.run(
            Watch {
                probes,
                target: None,
                symbolizer: None,
                child,
                many: Some(housekeeping),
            },
            plan,
        )
    }

    fn run(&mut self, watch: Watch<'_>, plan: Plan) -> anyhow::Result<Waited> {
        let Session {
            runtime,
            sigint,
            sigterm,
        } = self;
        runtime.block_on(wait_async(watch, plan, sigint, sigterm))
    }
}

/// What the wait looks after besides the clock and the signals.
struct Watch<'a> {
    probes: &'a mut Probes,
    /// The one target process and its symbolizer (not in a run over many).
    target: Option<&'a TargetProcess>,
    symbolizer: Option<&'a mut Symbolizer>,
    /// A launched command's tracer: it stops the command at its exit so that
    /// its mappings can be read one last time.
    child: Option<&'a mut UnboundedReceiver<ChildEvent>>,
    /// In a run over many processes: what follows them.
    many: Option<Housekeeping<'a>>,
}

/// The next event of a launched command (never, for a process memprof did not start).
async fn child_event(child: &mut Option<&mut UnboundedReceiver<ChildEvent>>) -> Option<ChildEvent> {
    match child {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the target exits (never, without a pidfd: then the
/// periodic check of [`TargetProcess::is_alive`] notices).
async fn target_exit(pidfd: Option<&AsyncFd<std::os::fd::OwnedFd>>) {
    match pidfd {
        Some(fd) => {
            let _ = fd.readable().await;
        }
        None => std::future::pending().await,
    }
}

async fn wait_async(
    watch: Watch<'_>,
    plan: Plan,
    sigint: &mut Signal,
    sigterm: &mut Signal,
) -> anyhow::Result<Waited> {
    let Watch {
        probes,
        target,
        mut symbolizer,
        mut child,
        mut many,
    } = watch;
    // A launched command's own exec is expected, not news.
    let mut execs_seen = u64::from(child.is_some());
    let Plan {
        duration,
        interval,
        quiet,
    } = plan;
    let mut samples = Vec::new();
    let period = Duration::from_secs_f64(interval.unwrap_or(1.0));
    let mut sampler = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
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
    let pidfd = target
        .and_then(TargetProcess::pidfd)
        .and_then(|fd| fd.try_clone().ok())
        // SAFETY: an OwnedFd is open and names one file until it is dropped,
        // and the AsyncFd owns it.
        .and_then(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok());
    let mut housekeeping = tokio::time::interval_at(
        tokio::time::Instant::now() + FREE_STACKS_EVERY,
        FREE_STACKS_EVERY,
    );
    let mut stacks_freed = 0;
    let mut exec_pending = child.is_some();
    let mut last_refresh = Instant::now();
    let end = loop {
        tokio::select! {
            _ = &mut sleep_until_deadline => break End::Duration,
            _ = sigint.recv() => break End::Signal("SIGINT"),
            _ = sigterm.recv() => break End::Signal("SIGTERM"),
            _ = target_exit(pidfd.as_ref()) => {
                break End::TargetExited(started.elapsed().as_secs_f64());
            }
            event = child_event(&mut child) => match event {
                Some(ChildEvent::Exiting(resume)) => {
                    if let Some(housekeeping) = many.as_mut() {
                        if let Err(e) = housekeeping(probes, true) {
                            log::warn!("reading the command at its exit failed: {e:#}");
                        }
                    }
                    if let Some(symbolizer) = symbolizer.as_deref_mut() {
                        if exec_pending {
                            exec_pending = false;
                            symbolizer.reset();
                        } else {
                            symbolizer.refresh();
                        }
                    }
                    let _ = resume.send(());
                }
                Some(ChildEvent::Exited(status)) => log::info!("{}", describe_exit(status)),
                None => child = None,
            },
            _ = housekeeping.tick() => {
                match probes.free_idle_stacks(STACK_IDLE_NS) {
                    Ok(n) => stacks_freed += n,
                    Err(e) => log::warn!("freeing unused stacks failed: {e:#}"),
                }
                if let Some(housekeeping) = many.as_mut() {
                    match housekeeping(probes, false) {
                        Ok(true) => break End::TargetExited(started.elapsed().as_secs_f64()),
                        Ok(false) => {}
                        Err(e) => log::warn!("following the processes failed: {e:#}"),
                    }
                }
                let (Some(target), Some(symbolizer)) = (target, symbolizer.as_deref_mut()) else {
                    continue;
                };
                let execs = probes.execs(target.pid).map(|(n, _)| n).unwrap_or(execs_seen);
                if execs > execs_seen || (exec_pending && execs > 0) {
                    if execs > execs_seen {
                        let comm = procfs::comm(target.pid).unwrap_or_default();
                        log::info!(
                            "pid {} called exec (now {comm}): what the program before held is left out",
                            target.pid,
                        );
                    }
                    // The old program's mappings are gone (for a launched
                    // command: those of memprof's copy that became it).
                    exec_pending = false;
                    execs_seen = execs;
                    symbolizer.reset();
                    last_refresh = Instant::now();
                } else if last_refresh.elapsed() >= REFRESH_MAPPINGS_EVERY {
                    symbolizer.refresh();
                    last_refresh = Instant::now();
                }
            }
            _ = sampler.tick(), if interval.is_some() => {
                match sample(probes, started.elapsed().as_secs_f64()) {
                    Ok(s) => samples.push(s),
                    Err(e) => log::warn!("snapshot failed: {e:#}"),
                }
            }
            _ = tick.tick() => {
                // With a pidfd, its branch above sees the exit at once.
                if pidfd.is_none() && target.is_some_and(|t| !t.is_alive()) {
                    break End::TargetExited(started.elapsed().as_secs_f64());
                }
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
        }
    }
    Ok(Waited {
        end,
        samples,
        stacks_freed,
    })
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

fn sample(probes: &Probes, at_secs: f64) -> anyhow::Result<Sample> {
    let agg = probes
        .ebpf()
        .map(memprof_common::maps::AGG)
        .ok_or_else(|| anyhow::anyhow!("AGG map missing"))?;
    let bytes = snapshot::read_agg(agg)?
        .into_iter()
        .map(|(id, a)| (id, a.bytes))
        .collect();
    Ok(Sample { at_secs, bytes })
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
