//! memprof: an eBPF-based memory allocation and leak profiler.
//!
//! Data flows one way, one module per step:
//! [`cli`] -> [`target`] -> [`probes`] -> [`session`] (wait) -> [`snapshot`]
//! -> [`aggregate`] -> [`symbolize`] -> [`render`].

pub mod aggregate;
pub mod cli;
pub mod compare;
pub mod error;
pub mod model;
pub mod placement;
pub mod probes;
pub mod render;
pub mod session;
pub mod snapshot;
pub mod symbolize;
pub mod target;

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cli::Cli;
use crate::model::{Report, Stack, SCHEMA_VERSION};
use crate::probes::{MapSizes, Probes};
use crate::session::End;
use crate::symbolize::Symbolizer;
use crate::target::Target;

/// Profiles the target named on the command line and returns what it still holds.
pub fn profile(cli: &Cli) -> anyhow::Result<Report> {
    let target = Target::open(cli.pid)?;
    let mut symbolizer = Symbolizer::new(target.pid);
    let sizes = MapSizes {
        max_live: cli.max_live,
        max_stacks: cli.max_stacks,
        max_threads: cli.max_threads,
    };
    let probes = Probes::attach(&target, sizes)?;
    let start_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let started = Instant::now();
    log::info!(
        "attached {} probes to pid {} ({}) in {}; {}",
        probes.attached,
        target.pid,
        target.comm,
        target.libc,
        match cli.duration {
            Some(d) => format!("recording for {d} s (Ctrl-C to stop early)"),
            None => "recording until Ctrl-C".to_string(),
        }
    );

    let end = session::wait(&probes, &target, cli.duration, cli.quiet)?;
    let duration_secs = started.elapsed().as_secs_f64();
    // Ages are taken at the end of the run, not after the (slower) detach.
    let end_ns = snapshot::monotonic_ns();
    symbolizer.refresh();
    match end {
        End::Duration => log::debug!("duration reached"),
        End::Signal(name) => log::info!("{name} received: detaching and reporting"),
        End::TargetExited(after) => {
            log::warn!(
                "pid {} exited after {after:.1} s: reporting what it held then",
                target.pid
            )
        }
    }
    log::debug!("detaching {} probes", probes.attached);
    let maps = probes.detach()?;
    log::debug!("detached; reading maps");
    let snap = snapshot::read_all(&maps.live, &maps.agg, &maps.stacks, &maps.stats)?;

    for (id, ips) in &snap.traces {
        log::trace!("stack {id}: {ips:x?}");
    }
    let stacks = aggregate::by_stack(&snap.live, end_ns);
    let totals = aggregate::totals(&stacks);
    check_consistency(&snap, &totals);
    let shown: Vec<_> = stacks
        .into_iter()
        .filter(|s| s.bytes >= cli.min_size)
        .collect();
    let traces: HashMap<i64, Vec<u64>> = shown
        .iter()
        .filter_map(|s| {
            snap.traces
                .get(&s.stack_id)
                .map(|t| (s.stack_id, t.clone()))
        })
        .collect();
    let mut frames = symbolizer.symbolize_stacks(&traces);
    let stacks = shown
        .into_iter()
        .map(|s| Stack {
            bytes: s.bytes,
            count: s.count,
            oldest_age_secs: s.oldest_age_ns as f64 / 1e9,
            median_age_secs: s.median_age_ns as f64 / 1e9,
            frames: frames.remove(&s.stack_id).unwrap_or_default(),
        })
        .collect();

    Ok(Report {
        version: SCHEMA_VERSION,
        target: model::Target {
            pid: target.pid,
            comm: target.comm.clone(),
            cmdline: target.cmdline.clone(),
            allocator: target.libc.clone(),
            exited_after_secs: match end {
                End::TargetExited(after) => Some(after),
                _ => None,
            },
        },
        start_unix_secs,
        duration_secs,
        totals,
        stacks,
        stats: snap.stats,
    })
}

/// The in-kernel per-stack aggregate and the live-allocation map must agree
/// once the probes are detached; a mismatch is a memprof bug worth reporting.
fn check_consistency(snap: &snapshot::Snapshot, totals: &model::Totals) {
    let (bytes, count) = snap.agg.values().fold((0u64, 0u64), |(b, c), a| {
        (b.wrapping_add(a.bytes), c.wrapping_add(a.count))
    });
    if bytes != totals.bytes || count != totals.count {
        log::warn!(
            "per-stack aggregate ({bytes} B in {count}) disagrees with live allocations ({} B in {})",
            totals.bytes,
            totals.count
        );
    }
}
