//! Continuous mode (`--every`): the report of one period, read from the
//! maps while the probes stay attached.
//!
//! A period's report is what is outstanding at the period's end: every
//! block allocated since the probes were attached and not freed by then,
//! whichever period allocated it. A block therefore shows in every report
//! until it is freed and in none after, so nothing is lost or counted twice
//! between periods; what a period added is the difference between two
//! consecutive reports (the Prometheus gauge's `deriv`).
//!
//! The maps are read while the target keeps allocating: a block freed
//! during the read may or may not be in it, and one allocated during the
//! read may be in this report or only in the next. The kernel's hash-map
//! walk restarts when the entry it stands on is deleted, so a block may be
//! met twice: blocks are counted once by (process, address).

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use memprof_common::{maps, AllocInfo, LiveKey};

use crate::config::Config;
use crate::model::{ProbePlacement, Released, Report};
use crate::probes::Probes;
use crate::report::{self, Clock, Held, Recorded, Run, Shape};
use crate::select::Processes;
use crate::symbolize::Symbolizer;
use crate::wait::Waited;
use crate::{aggregate, exits, snapshot};

/// What continuous mode calls with each period's number (from 1) and report.
pub(crate) type OnPeriod<'a> = dyn FnMut(u64, Report) -> anyhow::Result<()> + 'a;

/// Fails when `config` asks continuous mode for what it cannot do yet.
pub(crate) fn check(config: &Config) -> anyhow::Result<()> {
    if config.every.is_none() {
        return Ok(());
    }
    if config.interval.is_some() {
        anyhow::bail!("--every and --interval do not work together: leave --interval out");
    }
    if config.sources.mmap || config.sources.kernel {
        anyhow::bail!("--every does not work with --mmap or --kernel yet: leave them out");
    }
    if config.sampling.is_some_and(|s| s.window().is_some()) {
        anyhow::bail!("--every does not work with --sample-by window yet: use --sample-by call");
    }
    Ok(())
}

/// The waits of the periods so far and of the one that just ended, as one.
pub(crate) fn join(before: Option<Waited>, now: Waited) -> Waited {
    let Some(mut before) = before else {
        return now;
    };
    before.end = now.end;
    before.samples.extend(now.samples);
    before.stacks_freed = before.stacks_freed.saturating_add(now.stacks_freed);
    before.sample_every = now.sample_every.or(before.sample_every);
    before.command_status = now.command_status.or(before.command_status);
    before
}

/// What is outstanding now, as the report of a run that ended now.
pub(crate) fn report(
    config: &Config,
    probes: &Probes,
    processes: &mut Processes<'_>,
    describe: &str,
    waited: &Waited,
    started: Instant,
) -> anyhow::Result<Report> {
    // The period ends now, before the (slow) read of the maps: what the
    // read meets that is younger belongs to the period's end as well.
    let end_ns = snapshot::monotonic_ns();
    let duration_secs = started.elapsed().as_secs_f64();
    let end_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let ebpf = probes.ebpf();
    let map = |name: &str| {
        ebpf.map(name)
            .with_context(|| format!("BPF map {name} missing from the object"))
    };
    let mut snap = snapshot::read_all(
        map(maps::LIVE)?,
        map(maps::AGG)?,
        map(maps::STACKS)?,
        map(maps::STATS)?,
    )?;
    let procs = probes.procs()?;
    let exits = probes.exits()?;
    let purged = processes.purged().clone();
    snap.stats.stacks_freed = waited.stacks_freed.saturating_add(purged.stacks);

    let one = processes.one().map(|(pid, _)| pid);
    let mut by_process: HashMap<u32, Vec<(LiveKey, AllocInfo)>> = HashMap::new();
    if let Some(pid) = one {
        by_process.insert(pid, Vec::new());
    }
    for entry in count_once(std::mem::take(&mut snap.live)) {
        by_process.entry(entry.0.tgid).or_default().push(entry);
    }
    let clock = Clock {
        end_ns,
        duration_secs,
    };
    let mut released = Released::default();
    for (pid, held) in &purged.by_process {
        if !by_process.contains_key(pid) {
            released.at_exit = report::add_totals(released.at_exit, *held);
        }
    }
    let mut held = Vec::new();
    for (pid, mut live) in by_process {
        let (seen, mut mine, events, is_command) =
            crate::pipeline::process_start(processes, one.is_some(), &procs, pid, &mut live);
        let exited_at = exits.get(&pid).copied();
        let settled = exits::settle(&mut live, exited_at, config.at_exit || is_command);
        mine.at_exit = settled.released;
        if let Some(gone) = purged.by_process.get(&pid) {
            mine.at_exit = report::add_totals(mine.at_exit, *gone);
        }
        let exited = settled.exited || (exited_at.is_some() && live.is_empty());
        if live.is_empty() && one.is_none() {
            report::add_released(&mut released, &mine);
            continue;
        }
        let all = aggregate::by_stack_in(&live, end_ns, None);
        let recorded = Recorded {
            live: &live,
            all: &all,
            traces: &snap.traces,
            walks: &snap.walks,
            samples: &waited.samples,
            windows: None,
        };
        let fresh;
        let symbolizer = match processes.symbolizer(pid) {
            Some(symbolizer) => {
                if !exited {
                    symbolizer.refresh();
                }
                &*symbolizer
            }
            None => {
                fresh = Symbolizer::new(if exited { 0 } else { pid });
                &fresh
            }
        };
        let outstanding = report::outstanding(
            config,
            &recorded,
            &clock,
            &mut mine,
            symbolizer,
            one.is_none().then_some(pid),
        );
        held.push(Held::new(pid, seen, exited, events, outstanding, mine));
    }
    let shape = match one {
        Some(_) => Shape::One,
        None => Shape::Many {
            selection: describe.to_string(),
        },
    };
    let mut placements: Vec<ProbePlacement> =
        probes.sites.iter().map(|s| s.placement_report()).collect();
    let mut distinct = HashSet::new();
    placements.retain(|p| distinct.insert((p.library.clone(), p.functions.clone())));
    let run = Run {
        start_unix_secs: end_unix - duration_secs,
        started_ns: end_ns.saturating_sub((duration_secs * 1e9) as u64),
        duration_secs,
        exited_after_secs: None,
        command_status: waited.command_status,
        stats: snap.stats,
        found: Default::default(),
        windows: None,
        released,
        probes: placements,
    };
    Ok(report::assemble(config, shape, held, run))
}

/// The blocks read, each once (by process and address), in the order met.
fn count_once(live: Vec<(LiveKey, AllocInfo)>) -> Vec<(LiveKey, AllocInfo)> {
    let mut met = HashSet::new();
    live.into_iter()
        .filter(|(key, _)| met.insert((key.tgid, key.addr)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::End;

    fn block(tgid: u32, addr: u64, size: u64) -> (LiveKey, AllocInfo) {
        (
            LiveKey {
                tgid,
                _pad: 0,
                addr,
            },
            AllocInfo {
                size,
                timestamp_ns: 1,
                stack_id: 7,
            },
        )
    }

    #[test]
    fn a_block_met_twice_by_a_restarted_walk_counts_once() {
        let read = vec![
            block(1, 0x10, 100),
            block(1, 0x20, 200),
            block(1, 0x10, 100),
            block(2, 0x10, 300),
        ];
        let once = count_once(read);
        let sizes: Vec<u64> = once.iter().map(|(_, i)| i.size).collect();
        assert_eq!(sizes, [100, 200, 300]);
    }

    #[test]
    fn the_waits_of_the_periods_add_up() {
        let wait = |end, freed, status| Waited {
            end,
            samples: Vec::new(),
            stacks_freed: freed,
            sample_every: None,
            command_status: status,
        };
        let first = join(None, wait(End::Period, 2, None));
        assert_eq!(first.stacks_freed, 2);
        let all = join(Some(first), wait(End::Signal("SIGTERM"), 3, Some(4)));
        assert_eq!(all.end, End::Signal("SIGTERM"));
        assert_eq!(all.stacks_freed, 5);
        assert_eq!(all.command_status, Some(4));
    }
}
