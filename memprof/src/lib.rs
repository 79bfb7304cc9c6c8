//! memprof: an eBPF-based memory allocation and leak profiler.
//!
//! Data flows one way, one module per step:
//! [`cli`] -> [`target`] -> [`probes`] -> [`session`] (wait) -> [`snapshot`]
//! -> [`aggregate`] -> [`symbolize`] -> [`render`].

pub mod aggregate;
pub mod cli;
pub mod compare;
pub mod error;
pub mod exits;
pub mod group;
pub mod launch;
pub mod load_order;
pub mod model;
pub mod placement;
pub mod probes;
pub mod procfs;
pub mod render;
pub mod session;
pub mod session_link;
pub mod snapshot;
pub mod sources;
pub mod symbolize;
pub mod target;
pub mod tracefs;
pub mod window_log;
pub mod windows;

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cli::ProfileArgs;
use memprof_common::{AllocInfo, LiveKey};

use crate::aggregate::take_older;
use crate::model::{Released, Report, Sampling, Stack, Totals, SCHEMA_VERSION};
use crate::probes::{ProbeConfig, Probes};
use crate::session::{End, Plan, Sample, Session, Waited};
use crate::symbolize::Symbolizer;
use crate::target::TargetProcess;

/// Profiles what `args` select (one process, a command, or many processes)
/// and returns what they still hold.
pub fn profile_selected(args: &ProfileArgs, quiet: bool) -> anyhow::Result<Report> {
    if let Some(selection) = group::Selection::from_args(args)? {
        return group::profile(args, &selection, quiet);
    }
    match args.pid.first() {
        Some(&pid) => profile(args, pid, quiet),
        None => launch(args, quiet),
    }
}

/// Profiles the running process `pid` and returns what it still holds.
pub fn profile(args: &ProfileArgs, pid: u32, quiet: bool) -> anyhow::Result<Report> {
    // First: without the capabilities nothing else can work, and reading the
    // target's memory map would fail with a less helpful message.
    probes::check_permissions()?;
    let target = TargetProcess::open(pid)?;
    run(args, target, None, quiet)
}

/// Runs `args.command` under memprof from its first allocation and returns
/// what it still held at its exit (or at `--duration`).
pub fn launch(args: &ProfileArgs, quiet: bool) -> anyhow::Result<Report> {
    probes::check_permissions()?;
    let launched = launch::spawn(&args.command)?;
    let target = launched.target()?;
    run(args, target, Some(launched), quiet)
}

fn run(
    args: &ProfileArgs,
    target: TargetProcess,
    mut launched: Option<launch::Launched>,
    quiet: bool,
) -> anyhow::Result<Report> {
    let mut session = Session::new()?;
    let mut symbolizer = Symbolizer::new(target.pid);
    let config = ProbeConfig::from_args(args);
    log::info!("attaching to pid {} ({}) ...", target.pid, target.comm);
    let mut probes = Probes::attach(&target, config)?;
    let placements = probes.sites.iter().map(|s| s.placement_report()).collect();
    let start_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let started = Instant::now();
    let started_ns = snapshot::monotonic_ns();
    log::info!(
        "attached {} probes to pid {} ({}) in {}; {}",
        probes.attached,
        target.pid,
        target.comm,
        target.allocator_description(),
        match (args.duration, &launched) {
            (Some(d), _) => format!("recording for {d} s (Ctrl-C to stop early)"),
            (None, Some(_)) => "running the command until it exits".to_string(),
            (None, None) => "recording until Ctrl-C".to_string(),
        }
    );
    if let Some(launched) = &mut launched {
        launched.release()?;
    }

    let plan = Plan {
        duration: args.duration,
        interval: args.interval,
        quiet,
    };
    let Waited {
        end,
        samples,
        stacks_freed,
    } = session.wait(
        &mut probes,
        &target,
        &mut symbolizer,
        launched.as_mut().map(|l| &mut l.events),
        plan,
    )?;
    // In launch mode, what the command holds at its exit is the report.
    let at_exit = args.at_exit || launched.is_some();
    // Freeze the maps at the end of the run; detaching takes longer.
    probes.set_recording(false)?;
    let (mut execs, last_exec_ns) = probes.execs(target.pid)?;
    if launched.is_some() {
        // Not the exec that started the command.
        execs = execs.saturating_sub(1);
    }
    let duration_secs = started.elapsed().as_secs_f64();
    // Ages are taken at the end of the run, not after the (slower) detach.
    let end_ns = snapshot::monotonic_ns();
    symbolizer.refresh();
    match end {
        End::Duration => log::debug!("duration reached"),
        End::Signal(name) => log::info!("{name} received: detaching and reporting"),
        End::TargetExited(after) if at_exit => log::info!(
            "pid {} exited after {after:.1} s: reporting what it held then",
            target.pid
        ),
        End::TargetExited(after) => log::warn!(
            "pid {} exited after {after:.1} s: what it held went with it and is left out \
             (--at-exit reports it)",
            target.pid
        ),
    }
    log::info!(
        "detaching {} probes and reading the maps ...",
        probes.attached
    );
    let maps = probes.detach()?;
    log::debug!("detached; reading maps");
    let mut snap = snapshot::read_all(&maps.live, &maps.agg, &maps.stacks, &maps.stats)?;
    snap.stats.stacks_freed = stacks_freed;
    for (id, ips) in &snap.traces {
        log::trace!("stack {id}: {ips:x?}");
    }
    let windows = maps.windows.as_ref();
    let all = aggregate::by_stack_in(&snap.live, end_ns, windows);
    check_consistency(&snap, &aggregate::totals(&all));
    let mut released = Released::default();
    if execs > 0 {
        // Made by a program that exec replaced: its address space is gone.
        released.at_exec = take_older(&mut snap.live, last_exec_ns);
    }
    if matches!(end, End::TargetExited(_)) && !at_exit {
        released.at_exit = take_older(&mut snap.live, u64::MAX);
    }
    let all = if released.is_empty() {
        all
    } else {
        aggregate::by_stack_in(&snap.live, end_ns, windows)
    };

    let Outstanding {
        stacks,
        totals,
        younger,
        sampling,
    } = outstanding(
        args,
        &Recorded {
            live: &snap.live,
            all: &all,
            traces: &snap.traces,
            samples: &samples,
            windows,
        },
        &Clock {
            end_ns,
            duration_secs,
        },
        &mut released,
        &symbolizer,
        None,
    );
    let found = sources::collect(
        maps.sources,
        &maps.stacks,
        &symbolizer,
        sources::Ending {
            end_ns,
            // Every exec replaced the address space, the launching one too.
            released_before_ns: if matches!(end, End::TargetExited(_)) && !at_exit {
                u64::MAX
            } else {
                last_exec_ns
            },
            min_size: args.min_size,
        },
    )?;

    Ok(Report {
        version: SCHEMA_VERSION,
        host: model::Host::this(),
        target: model::Target {
            pid: target.pid,
            comm: target.comm.clone(),
            cmdline: target.cmdline.clone(),
            allocator: target.allocator_description(),
            exited_after_secs: match end {
                End::TargetExited(after) => Some(after),
                _ => None,
            },
            started_unix_secs: target.started_unix_secs,
            execs,
            exec_after_secs: (execs > 0)
                .then(|| last_exec_ns.saturating_sub(started_ns) as f64 / 1e9),
        },
        start_unix_secs,
        duration_secs,
        totals,
        stacks,
        stats: snap.stats,
        min_age_secs: args.min_age,
        younger,
        interval_secs: args.interval,
        released,
        sampling,
        selection: None,
        processes: Vec::new(),
        mmap: found.mmap,
        kernel: found.kernel,
        probes: placements,
    })
}

/// What the maps held at the end of a run, for one process.
pub(crate) struct Recorded<'a> {
    /// Its live allocations.
    live: &'a [(LiveKey, AllocInfo)],
    /// The same, grouped by stack.
    all: &'a [aggregate::StackTotals],
    /// Every stack's frames (of this process or not).
    traces: &'a HashMap<i64, Vec<u64>>,
    /// The `--interval` snapshots.
    samples: &'a [Sample],
    /// With sampling by window: when the windows were open.
    windows: Option<&'a crate::window_log::WindowLog>,
}

/// When a run ended.
pub(crate) struct Clock {
    /// `CLOCK_MONOTONIC` ns at the end.
    end_ns: u64,
    /// Seconds the probes recorded.
    duration_secs: f64,
}

/// The outstanding memory of one process, as the report shows it.
pub(crate) struct Outstanding {
    /// Symbolized, at least `--min-size` each, ranked.
    stacks: Vec<Stack>,
    /// Over every stack, listed or not.
    totals: Totals,
    /// With `--min-age`: what was younger.
    younger: Option<Totals>,
    /// With `--sample-rate`: how the figures were estimated.
    sampling: Option<Sampling>,
}

/// Applies `--min-age`, `--interval`, `--sample-rate` (which scales
/// `released` too) and `--min-size` to what one process held, and symbolizes
/// the stacks shown; each carries `pid` when given.
pub(crate) fn outstanding(
    args: &ProfileArgs,
    recorded: &Recorded<'_>,
    clock: &Clock,
    released: &mut Released,
    symbolizer: &Symbolizer,
    pid: Option<u32>,
) -> Outstanding {
    let end_ns = clock.end_ns;
    let (mut stacks, mut younger) = match args.min_age {
        Some(secs) => {
            let (old, younger) = aggregate::older_than(recorded.live, end_ns, (secs * 1e9) as u64);
            (
                aggregate::by_stack_in(&old, end_ns, recorded.windows),
                Some(younger),
            )
        }
        None => (recorded.all.to_vec(), None),
    };
    let mut growth = args
        .interval
        .map(|_| growth_by_stack(recorded.samples, recorded.all, clock.duration_secs));
    // With --sample-rate: estimates from what was recorded (no-op otherwise).
    let sampling = aggregate::scale_sampled(
        aggregate::Estimator::of_run(args.sample_rate, recorded.windows),
        &mut stacks,
        &mut younger,
        released,
        growth.as_mut(),
    );
    let totals = aggregate::totals(&stacks);
    let shown: Vec<_> = stacks
        .into_iter()
        .filter(|s| s.bytes >= args.min_size)
        .collect();
    let traces: HashMap<i64, Vec<u64>> = shown
        .iter()
        .filter_map(|s| {
            recorded
                .traces
                .get(&s.stack_id)
                .map(|t| (s.stack_id, t.clone()))
        })
        .collect();
    let mut frames = symbolizer.symbolize_stacks(&traces);
    let mut stacks: Vec<Stack> = shown
        .into_iter()
        .map(|s| {
            if s.stack_id == memprof_common::STACK_NO_ROOM {
                frames.insert(s.stack_id, vec![model::Frame::no_room()]);
            }
            let no_room = s.stack_id == memprof_common::STACK_NO_ROOM;
            let frames = frames.remove(&s.stack_id).unwrap_or_default();
            Stack {
                truncated: !no_room && !frames.is_empty() && !symbolize::reaches_start(&frames),
                frames,
                bytes: s.bytes,
                count: s.count,
                oldest_age_secs: s.oldest_age_ns as f64 / 1e9,
                median_age_secs: s.median_age_ns as f64 / 1e9,
                growth: growth.as_ref().and_then(|g| g.get(&s.stack_id).cloned()),
                pid,
                estimate: s.estimate,
            }
        })
        .collect();
    if growth.is_some() {
        rank_growing_first(&mut stacks);
    }
    Outstanding {
        stacks,
        totals,
        younger,
        sampling,
    }
}

/// Each stack's bytes at every sample, then at the end of the run.
fn growth_by_stack(
    samples: &[Sample],
    end: &[aggregate::StackTotals],
    end_secs: f64,
) -> HashMap<i64, model::Growth> {
    let mut times: Vec<f64> = samples.iter().map(|s| s.at_secs).collect();
    times.push(end_secs);
    end.iter()
        .map(|s| {
            let mut series: Vec<u64> = samples
                .iter()
                .map(|sample| sample.bytes.get(&s.stack_id).copied().unwrap_or(0))
                .collect();
            series.push(s.bytes);
            (s.stack_id, aggregate::growth(&series, &times))
        })
        .collect()
}

/// Growing stacks first, fastest first; then the rest, largest first.
fn rank_growing_first(stacks: &mut [Stack]) {
    let key = |s: &Stack| {
        s.growth
            .as_ref()
            .filter(|g| g.growing)
            .map(|g| g.bytes_per_sec)
    };
    stacks.sort_by(|a, b| match (key(a), key(b)) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.bytes.cmp(&a.bytes),
    });
}

/// The in-kernel per-stack aggregate and the live-allocation map must agree
/// once the probes are detached; a mismatch is a memprof bug worth reporting.
pub(crate) fn check_consistency(snap: &snapshot::Snapshot, totals: &model::Totals) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Growth;

    #[test]
    fn growing_stacks_rank_above_large_flat_ones() {
        let stack = |bytes, growing, rate| Stack {
            bytes,
            growth: Some(Growth {
                samples: vec![],
                bytes_per_sec: rate,
                growing,
            }),
            ..Stack::default()
        };
        let mut stacks = vec![
            stack(1_000_000, false, 0.0),
            stack(10, true, 1.0),
            stack(500, true, 50.0),
            stack(2_000, false, 3.0),
        ];
        rank_growing_first(&mut stacks);
        let order: Vec<u64> = stacks.iter().map(|s| s.bytes).collect();
        assert_eq!(order, vec![500, 10, 1_000_000, 2_000]);
    }
}
