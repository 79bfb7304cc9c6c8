//! One profiling run, step by step, whatever it records (one pid, many, a
//! cgroup, the whole machine or a launched command): check, select, load,
//! attach, record, wait, stop, detach, read, report.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use memprof_common::{AllocInfo, LiveKey};

use crate::config::Config;
use crate::launch;
use crate::model::{ProbePlacement, Released, Report};
use crate::probes::{self, ProbeConfig, Probes};
use crate::report::{self, Clock, Held, Recorded, Run, Shape};
use crate::select::{Processes, Selection};
use crate::symbolize::Symbolizer;
use crate::wait::{End, Plan, Waited, Waiter};
use crate::{aggregate, exits, periods, snapshot, sources};

/// Records what `config` selects and returns what it still holds. With
/// `config.every`, `on_period` gets each period's report (numbered from 1)
/// while the run goes on; the returned one is the last, partial period's.
pub(crate) fn run(
    config: &Config,
    quiet: bool,
    mut on_period: Option<&mut periods::OnPeriod<'_>>,
) -> anyhow::Result<Report> {
    // Check: without the capabilities nothing else can work, and reading the
    // processes' memory maps would fail with a less helpful message.
    probes::check_permissions()?;
    periods::check(config)?;

    // Select: the processes named by pid (or the command, started and held
    // before its exec) are read now, so that one that cannot be profiled
    // fails before anything is loaded.
    let selection = Selection::resolve(&config.select)?;
    if config.sources.mmap && !selection.is_one() {
        bail!(
            "--mmap records one process (-p PID, or a command); it does not work over many \
             processes yet (--kernel does)"
        );
    }
    let mut launched = if selection.launch {
        Some(launch::spawn(&config.select.command)?)
    } else {
        None
    };
    let mut processes = Processes::open(
        &selection,
        launched.as_ref(),
        !config.bench.probe_at_entry,
        config.at_exit,
        config.sampling.is_none(),
    )?;
    let describe = match &launched {
        Some(l) if !selection.is_one() => format!("{} and its children", l.cmdline),
        _ => selection.describe(),
    };
    match processes.one() {
        Some((pid, seen)) => log::info!("attaching to pid {pid} ({}) ...", seen.comm),
        None => log::info!("finding the processes to record ({describe}) ..."),
    }

    // Load and attach. The signal handlers come first, so that a Ctrl-C
    // while attaching ends the run with a report.
    let mut waiter = Waiter::new()?;
    let mut filter = processes.filter();
    filter.hold = launched.as_ref().filter(|l| l.traced).map_or(0, |l| l.pid);
    let mut probes = Probes::load(ProbeConfig::of(config), &filter)?;
    if let Some(launched) = &launched {
        probes.hold_launched(launched);
    }
    processes.attach(&mut probes)?;

    // Record.
    probes.set_recording(true)?;
    let start_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let started = Instant::now();
    let started_ns = snapshot::monotonic_ns();
    log_attached(config, &probes, &processes, &describe);
    if let Some(launched) = &mut launched {
        launched.release()?;
        // It has exec'd: a Python interpreter linked into the program is
        // there to find now (one in a libpython is found at the next look).
        probes.python_tick();
    }

    // Wait; in continuous mode, one period at a time, each reported while
    // the probes stay attached.
    let timeline_every = config.profiles.timeline_every(config.duration);
    let mut period = 0;
    let mut waited: Option<Waited> = None;
    let Waited {
        end,
        samples,
        stacks_freed,
        sample_every,
        command_status,
    } = loop {
        let elapsed = started.elapsed().as_secs_f64();
        let duration = config.duration.map(|d| (d - elapsed).max(0.0));
        // On a fixed schedule from the start, however long reporting took;
        // a period that the end of the run cuts short is the run's last.
        let period_left = config
            .every
            .map(|every| (every * (period + 1) as f64 - elapsed).max(0.0))
            .filter(|left| on_period.is_some() && duration.is_none_or(|d| *left < d));
        let plan = Plan {
            duration,
            interval: config.interval,
            // Sampled runs have no timeline (their figures are estimates).
            timeline_every: config.sampling.is_none().then_some(timeline_every),
            adaptive: config.interval.is_none() && config.profiles.timeline_every.is_none(),
            quiet,
            period: period_left,
            offset_secs: elapsed,
        };
        let now = waiter.wait(
            &mut probes,
            &mut processes,
            launched.as_mut().map(|l| &mut l.events),
            plan,
        )?;
        let now = periods::join(waited.take(), now);
        match (now.end, on_period.as_mut()) {
            (End::Period, Some(emit)) => {
                period += 1;
                let report =
                    periods::report(config, &probes, &mut processes, &describe, &now, started)?;
                emit(period, report)?;
                waited = Some(now);
            }
            _ => break now,
        }
    };

    // Stop: freeze the maps at the end of the run; detaching takes longer.
    probes.set_recording(false)?;
    let procs = probes.procs()?;
    // Read once recording stopped: a process not in it was alive then.
    let exits = probes.exits()?;
    let duration_secs = started.elapsed().as_secs_f64();
    // Ages are taken at the end of the run, not after the (slower) detach.
    let end_ns = snapshot::monotonic_ns();
    let end_rss = crate::profiles::rss_of(&processes);
    log_end(config, end, &processes);
    // No exited process left half taken out of the maps (its stacks freed,
    // some of its blocks still in LIVE).
    if let Err(e) = processes.finish_purge(&mut probes) {
        log::warn!("taking exited processes' blocks out of the maps failed: {e:#}");
    }

    // Detach and read.
    log::info!(
        "detaching {} probes and reading the maps ...",
        probes.attached
    );
    // Sites are attached once per file and offset, whatever the processes.
    let mut placements: Vec<ProbePlacement> =
        probes.sites.iter().map(|s| s.placement_report()).collect();
    let mut distinct = HashSet::new();
    placements.retain(|p| distinct.insert((p.library.clone(), p.functions.clone())));
    let maps = probes.detach()?;
    log::debug!("detached; reading maps");
    let mut snap = snapshot::read_all(&maps.live, &maps.agg, &maps.stacks, &maps.stats)?;
    let purged = processes.purged().clone();
    snap.stats.stacks_freed = stacks_freed.saturating_add(purged.stacks);
    // The reserved stacks' aggregates still count what left the maps with
    // processes that exited.
    for (id, gone) in &purged.reserved {
        if let Some(agg) = snap.agg.get_mut(id) {
            agg.bytes = agg.bytes.wrapping_sub(gone.bytes);
            agg.count = agg.count.wrapping_sub(gone.count);
        }
    }
    for (id, ips) in &snap.traces {
        log::trace!("stack {id}: {ips:x?}");
    }
    report::check_consistency(
        &snap,
        &aggregate::totals(&aggregate::by_stack(&snap.live, end_ns)),
    );
    // With --at-exit, what exited processes held left the maps during the
    // run and was kept: back with the rest.
    let (kept, kept_traces) = processes.take_kept();
    for (id, frames) in kept_traces {
        snap.traces.entry(id).or_insert(frames);
    }
    for (key, mut info) in kept {
        // As read_all does: a stack that was never stored is lost.
        if info.stack_id >= 0 && !snap.traces.contains_key(&info.stack_id) {
            info.stack_id = memprof_common::STACK_LOST;
        }
        snap.live.push((key, info));
    }
    let windows = maps.windows.as_ref();
    let recording = match config.sampling {
        // Sampled: the allocations are a sample, and the peak unknown.
        Some(_) => None,
        None => Some(crate::profiles::Recording::new(crate::profiles::Ending {
            agg: &snap.agg,
            traces: snapshot::read_traces(&maps.stacks, snap.agg.keys().copied())?,
            retired: maps.retired,
            peak: match maps.heap.map(|heap| heap.finish()) {
                Some(Ok(replay)) => Some((replay.found(), snap.stats.heap_events_lost)),
                Some(Err(e)) => {
                    log::warn!("the peak is left out: {e:#}");
                    None
                }
                None => None,
            },
            samples: &samples,
            end_secs: duration_secs,
            end_rss,
            every_secs: sample_every.unwrap_or(timeline_every),
            temporary_ns: config.profiles.temporary_ns,
            started_ns,
        })),
    };
    let mut parts = Vec::new();

    // Report: what each process held, then the run as a whole.
    let one = processes.one().map(|(pid, _)| pid);
    let mut by_process: HashMap<u32, Vec<(LiveKey, AllocInfo)>> = HashMap::new();
    if let Some(pid) = one {
        // Reported even when it holds nothing.
        by_process.insert(pid, Vec::new());
    }
    for entry in std::mem::take(&mut snap.live) {
        by_process.entry(entry.0.tgid).or_default().push(entry);
    }
    let clock = Clock {
        end_ns,
        duration_secs,
    };
    let mut released = Released::default();
    // Processes whose blocks all left the maps during the run.
    for (pid, held) in &purged.by_process {
        if !by_process.contains_key(pid) {
            released.at_exit = report::add_totals(released.at_exit, *held);
        }
    }
    let mut held = Vec::new();
    // The one process's symbolizer and what its mappings left out, for the
    // sources (kernel stacks alone need no process's symbols).
    let mut sources_view = (None, 0);
    for (pid, mut live) in by_process {
        let (seen, mut mine, events, is_command) =
            process_start(&processes, one.is_some(), &procs, pid, &mut live);
        // Exited only when its exit was noted while recording (what /proc
        // shows now says nothing of the run); with the pid taken by a newer
        // process since, its blocks are those made after the exit. In
        // launch mode, what the command holds at its exit is the report.
        let exited_at = exits.get(&pid).copied();
        let keep = config.at_exit || is_command;
        let settled = exits::settle(&mut live, exited_at, keep);
        mine.at_exit = settled.released;
        if let Some(gone) = purged.by_process.get(&pid) {
            mine.at_exit = report::add_totals(mine.at_exit, *gone);
        }
        // (Nothing left: the one process of its run, which exited.)
        let exited = settled.exited || (exited_at.is_some() && live.is_empty());
        let same = !exited;
        let mut cutoff = events.last_exec_ns;
        if let (Some(at), false) = (exited_at, keep) {
            cutoff = cutoff.max(at.saturating_add(1));
        }
        if live.is_empty() && one.is_none() {
            report::add_released(&mut released, &mine);
            continue;
        }
        let symbolizer = match processes.take_symbolizer(pid) {
            Some(mut symbolizer) if same => {
                symbolizer.refresh();
                symbolizer
            }
            Some(symbolizer) => symbolizer,
            // Gone: its files with it.
            None => Symbolizer::new(if same { pid } else { 0 }),
        };
        let all = aggregate::by_stack_in(&live, end_ns, windows);
        let recorded = Recorded {
            live: &live,
            all: &all,
            traces: &snap.traces,
            walks: &snap.walks,
            samples: &samples,
            windows,
        };
        let outstanding = report::outstanding(
            config,
            &recorded,
            &clock,
            &mut mine,
            &symbolizer,
            one.is_none().then_some(pid),
        );
        held.push(Held::new(pid, seen, exited, events, outstanding, mine));
        if let Some(recording) = &recording {
            parts.push(recording.part(
                pid,
                &symbolizer,
                one.is_none().then_some(pid),
                one.is_some(),
            ));
        }
        if one.is_some() {
            sources_view = (Some(symbolizer), cutoff);
        }
    }
    let (symbolizer, released_before_ns) = sources_view;
    let found = sources::collect(
        maps.sources,
        &maps.stacks,
        &symbolizer.unwrap_or_else(|| Symbolizer::new(0)),
        sources::Ending {
            end_ns,
            released_before_ns,
            min_size: config.min_size,
        },
    )?;
    let shape = match one {
        Some(_) => Shape::One,
        None => {
            log::info!(
                "{} {} held memory at the end",
                held.len(),
                if held.len() == 1 {
                    "process"
                } else {
                    "processes"
                }
            );
            Shape::Many {
                selection: describe,
            }
        }
    };
    let run = Run {
        start_unix_secs,
        started_ns,
        duration_secs,
        exited_after_secs: match end {
            End::TargetExited(after) => Some(after),
            _ => None,
        },
        command_status,
        stats: snap.stats,
        found,
        windows,
        released,
        probes: placements,
    };
    let mut report = report::assemble(config, shape, held, run);
    if let Some(recording) = &recording {
        recording.finish(parts, &mut report);
    }
    Ok(report)
}

/// Says what was attached and how long the run lasts.
/// What is known of the process `pid` at the report: as discovery saw it,
/// its blocks made by a program that exec replaced taken out of `live`
/// (its address space is gone), its exec count (without the exec that
/// started a launched command), and whether it is the launched command.
pub(crate) fn process_start(
    processes: &Processes<'_>,
    one: bool,
    procs: &HashMap<u32, memprof_common::ProcEvents>,
    pid: u32,
    live: &mut Vec<(LiveKey, AllocInfo)>,
) -> (
    Option<crate::select::Seen>,
    Released,
    memprof_common::ProcEvents,
    bool,
) {
    let seen = if one {
        processes.one().map(|(_, seen)| seen.clone())
    } else {
        processes.seen(pid).cloned()
    };
    let mut mine = Released::default();
    let mut events = procs.get(&pid).copied().unwrap_or_default();
    if events.execs > 0 {
        mine.at_exec = aggregate::take_older(live, events.last_exec_ns);
    }
    let is_command = Some(pid) == processes.command();
    if is_command {
        events.execs = events.execs.saturating_sub(1);
    }
    (seen, mine, events, is_command)
}

fn log_attached(config: &Config, probes: &Probes, processes: &Processes<'_>, describe: &str) {
    let launched = processes.command().is_some();
    let until = |command: &str| match config.duration {
        Some(d) => format!("recording for {d} s (Ctrl-C to stop early)"),
        None if launched => format!("running the command until {command}"),
        None => "recording until Ctrl-C".to_string(),
    };
    match processes.one() {
        Some((pid, seen)) => log::info!(
            "attached {} probes to pid {pid} ({}) in {}; {}",
            probes.attached,
            seen.comm,
            seen.allocator,
            until("it exits")
        ),
        None => log::info!(
            "attached {} probes for {} {} ({describe}); {}",
            probes.attached,
            processes.count(),
            if processes.count() == 1 {
                "process"
            } else {
                "processes"
            },
            until("it and its children exit")
        ),
    }
}

/// Says why the run ended.
fn log_end(config: &Config, end: End, processes: &Processes<'_>) {
    let after = match end {
        End::Duration | End::Period => return log::debug!("duration reached"),
        End::Signal(name) => return log::info!("{name} received: detaching and reporting"),
        End::TargetExited(after) => after,
    };
    match processes.one() {
        Some((pid, _)) if config.at_exit || processes.command().is_some() => {
            log::info!("pid {pid} exited after {after:.1} s: reporting what it held then")
        }
        Some((pid, _)) => log::warn!(
            "pid {pid} exited after {after:.1} s: what it held went with it and is left out \
             (--at-exit reports it)"
        ),
        None => log::info!(
            "the last recorded process exited after {after:.1} s: reporting{}",
            if config.at_exit {
                " what they held then"
            } else {
                " (what they held went with them; --at-exit reports it)"
            }
        ),
    }
}
