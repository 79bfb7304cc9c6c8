//! Waiting out the run: the duration, Ctrl-C and SIGTERM, the target's exit,
//! and a status line on a terminal. The only async module.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use crate::probes::Probes;
use crate::snapshot;
use crate::target::Target;

/// Why the run ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum End {
    /// The requested duration passed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// The target exited, this many seconds into the run.
    TargetExited(f64),
}

/// Waits until the run should end.
pub fn wait(
    probes: &Probes,
    target: &Target,
    duration: Option<f64>,
    quiet: bool,
) -> anyhow::Result<End> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(wait_async(probes, target, duration, quiet))
}

async fn wait_async(
    probes: &Probes,
    target: &Target,
    duration: Option<f64>,
    quiet: bool,
) -> anyhow::Result<End> {
    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
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
    let end = loop {
        tokio::select! {
            _ = &mut sleep_until_deadline => break End::Duration,
            _ = sigint.recv() => break End::Signal("SIGINT"),
            _ = sigterm.recv() => break End::Signal("SIGTERM"),
            _ = tick.tick() => {
                if !target.is_alive() {
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
    Ok(end)
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
