//! Report assembly: what each process held at the end of the run, filtered,
//! estimated and symbolized as the options ask, becomes one [`Report`] (for
//! one process, or for many, ranked by process).

use std::collections::HashMap;

use memprof_common::{AllocInfo, LiveKey};

use crate::aggregate;
use crate::config::Config;
use crate::model::{
    self, Growth, ProbePlacement, Released, Report, Sampling, Stack, Stats, Totals, Truncation,
    Walk, SCHEMA_VERSION,
};
use crate::procfs;
use crate::snapshot::Snapshot;
use crate::sources::Found;
use crate::symbolize::{self, Symbolizer};
use crate::wait::Sample;
use crate::window_log::WindowLog;

/// What one process held at the end of the run, and what it is.
#[derive(Debug)]
pub(crate) struct Held {
    pub pid: u32,
    /// Short command name.
    pub comm: String,
    pub cmdline: String,
    /// The allocator probed ("" when memprof never probed the process).
    pub allocator: String,
    /// When it started, in seconds since the Unix epoch.
    pub started_unix_secs: Option<f64>,
    /// It exited during the run.
    pub exited: bool,
    /// Execs during the run (a launched command's first one not counted).
    pub execs: u64,
    /// `CLOCK_MONOTONIC` ns of its latest exec.
    pub last_exec_ns: u64,
    /// What it held, as the report shows it.
    pub outstanding: Outstanding,
    /// What went away with it, or with the program an exec replaced.
    pub released: Released,
}

impl Held {
    /// The process `pid` as discovery `seen` it (else as /proc shows it
    /// now), with what it held and what went away with it.
    pub(crate) fn new(
        pid: u32,
        seen: Option<crate::select::Seen>,
        exited: bool,
        events: memprof_common::ProcEvents,
        outstanding: Outstanding,
        released: Released,
    ) -> Held {
        let (comm, cmdline, allocator, start_ticks) = match seen {
            Some(s) => (s.comm, s.cmdline, s.allocator, s.start_ticks),
            None => (
                procfs::comm(pid).unwrap_or_else(|| "?".to_string()),
                procfs::cmdline(pid),
                String::new(),
                procfs::start_ticks(pid),
            ),
        };
        Held {
            pid,
            comm,
            cmdline,
            allocator,
            started_unix_secs: start_ticks.and_then(procfs::started_unix_secs),
            exited,
            execs: events.execs,
            last_exec_ns: events.last_exec_ns,
            outstanding,
            released,
        }
    }
}

/// Whether the report is about one process or many.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    /// One process: the report's target; exactly one [`Held`].
    One,
    /// Many: each in [`Report::processes`], described as selected.
    Many { selection: String },
}

/// What the run as a whole found.
#[derive(Debug)]
pub(crate) struct Run<'a> {
    /// When the probes started recording, in seconds since the Unix epoch.
    pub start_unix_secs: f64,
    /// `CLOCK_MONOTONIC` ns when the probes started recording.
    pub started_ns: u64,
    pub duration_secs: f64,
    /// When what was recorded exited: seconds into the run.
    pub exited_after_secs: Option<f64>,
    /// The launched command's exit status, as a shell gives it.
    pub command_status: Option<i32>,
    pub stats: Stats,
    /// The sources besides the heap.
    pub found: Found,
    /// With sampling by windows: when they were open.
    pub windows: Option<&'a WindowLog>,
    /// What processes that held nothing any more released.
    pub released: Released,
    /// Where the probes went.
    pub probes: Vec<ProbePlacement>,
}

/// The report of a run.
pub(crate) fn assemble(config: &Config, shape: Shape, held: Vec<Held>, run: Run<'_>) -> Report {
    let Run {
        start_unix_secs,
        started_ns,
        duration_secs,
        exited_after_secs,
        command_status,
        stats,
        found,
        windows,
        mut released,
        probes,
    } = run;
    let mut younger: Option<Totals> = None;
    let mut samplings = Vec::new();
    let mut processes = Vec::new();
    let mut groups = Vec::new();
    for h in held {
        add_released(&mut released, &h.released);
        younger = match (younger, h.outstanding.younger) {
            (Some(a), Some(b)) => Some(add_totals(a, b)),
            (a, b) => a.or(b),
        };
        samplings.push(h.outstanding.sampling);
        processes.push((
            model::Process {
                pid: h.pid,
                comm: h.comm,
                cmdline: h.cmdline,
                allocator: h.allocator,
                started_unix_secs: h.started_unix_secs,
                exited: h.exited,
                execs: h.execs,
                totals: h.outstanding.totals,
            },
            h.last_exec_ns,
        ));
        groups.push((h.pid, h.outstanding.stacks));
    }
    let totals = processes
        .iter()
        .fold(Totals::default(), |t, (p, _)| add_totals(t, p.totals));
    let (target, selection, processes, sampling) = match shape {
        Shape::One => {
            let (process, last_exec_ns) = processes.pop().unwrap_or_default();
            let target = model::Target {
                pid: process.pid,
                comm: process.comm,
                cmdline: process.cmdline,
                allocator: process.allocator,
                exited_after_secs,
                exit_status: command_status,
                started_unix_secs: process.started_unix_secs,
                execs: process.execs,
                exec_after_secs: (process.execs > 0)
                    .then(|| last_exec_ns.saturating_sub(started_ns) as f64 / 1e9),
            };
            (target, None, Vec::new(), samplings.pop().flatten())
        }
        Shape::Many { selection } => {
            let mut processes: Vec<model::Process> =
                processes.into_iter().map(|(p, _)| p).collect();
            processes.sort_by(|a, b| {
                b.totals
                    .bytes
                    .cmp(&a.totals.bytes)
                    .then(b.totals.count.cmp(&a.totals.count))
                    .then(a.pid.cmp(&b.pid))
            });
            let rank: HashMap<u32, usize> = processes
                .iter()
                .enumerate()
                .map(|(i, p)| (p.pid, i))
                .collect();
            groups.sort_by_key(|(pid, _)| rank.get(pid).copied().unwrap_or(usize::MAX));
            let mut allocators: Vec<String> = processes
                .iter()
                .map(|p| p.allocator.clone())
                .filter(|a| !a.is_empty())
                .collect();
            allocators.sort();
            allocators.dedup();
            let target = model::Target {
                pid: 0,
                comm: format!("{} processes", processes.len()),
                cmdline: selection.clone(),
                allocator: allocators.join(", "),
                exited_after_secs,
                exit_status: command_status,
                ..model::Target::default()
            };
            let sampling = sampling_of_run(config, Sampling::merged(samplings), windows);
            (target, Some(selection), processes, sampling)
        }
    };
    let stacks: Vec<Stack> = groups.into_iter().flat_map(|(_, s)| s).collect();
    Report {
        version: SCHEMA_VERSION,
        host: model::Host::this(),
        target,
        selection,
        processes,
        start_unix_secs,
        duration_secs,
        totals,
        stacks,
        stats,
        min_age_secs: config.min_age,
        younger,
        interval_secs: config.interval,
        released,
        sampling,
        mmap: found.mmap,
        kernel: found.kernel,
        probes,
        // Added by the profiles, which read more than the end's maps.
        allocations: None,
        peak: None,
        timeline: None,
    }
}

/// What the maps held at the end of a run, for one process.
pub(crate) struct Recorded<'a> {
    /// Its live allocations.
    pub live: &'a [(LiveKey, AllocInfo)],
    /// The same, grouped by stack.
    pub all: &'a [aggregate::StackTotals],
    /// Every stack's frames (of this process or not).
    pub traces: &'a HashMap<i64, Vec<u64>>,
    /// How each stack was walked (its `walk` word).
    pub walks: &'a HashMap<i64, u64>,
    /// The `--interval` snapshots.
    pub samples: &'a [Sample],
    /// With sampling by window: when the windows were open.
    pub windows: Option<&'a WindowLog>,
}

/// When a run ended.
pub(crate) struct Clock {
    /// `CLOCK_MONOTONIC` ns at the end.
    pub end_ns: u64,
    /// Seconds the probes recorded.
    pub duration_secs: f64,
}

/// The outstanding memory of one process, as the report shows it.
#[derive(Debug)]
pub(crate) struct Outstanding {
    /// Symbolized, at least `--min-size` each, ranked.
    pub stacks: Vec<Stack>,
    /// Over every stack, listed or not.
    pub totals: Totals,
    /// With `--min-age`: what was younger.
    pub younger: Option<Totals>,
    /// With `--sample-rate`: how the figures were estimated.
    pub sampling: Option<Sampling>,
}

/// Applies `--min-age`, `--interval`, `--sample-rate` (which scales
/// `released` too) and `--min-size` to what one process held, and symbolizes
/// the stacks shown; each carries `pid` when given.
pub(crate) fn outstanding(
    config: &Config,
    recorded: &Recorded<'_>,
    clock: &Clock,
    released: &mut Released,
    symbolizer: &Symbolizer,
    pid: Option<u32>,
) -> Outstanding {
    let end_ns = clock.end_ns;
    let (mut stacks, mut younger) = match config.min_age {
        Some(secs) => {
            let (old, younger) = aggregate::older_than(recorded.live, end_ns, (secs * 1e9) as u64);
            (
                aggregate::by_stack_in(&old, end_ns, recorded.windows),
                Some(younger),
            )
        }
        None => (recorded.all.to_vec(), None),
    };
    let mut growth = config
        .interval
        .map(|_| growth_by_stack(recorded.samples, recorded.all, clock.duration_secs));
    // With --sample-rate: estimates from what was recorded (no-op otherwise).
    let sampling = aggregate::scale_sampled(
        aggregate::Estimator::of_run(config.sampling.map(|s| s.rate), recorded.windows),
        &mut stacks,
        &mut younger,
        released,
        growth.as_mut(),
    );
    let totals = aggregate::totals(&stacks);
    let shown: Vec<_> = stacks
        .into_iter()
        .filter(|s| s.bytes >= config.min_size)
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
    if config.python_only {
        for stack in frames.values_mut() {
            symbolizer.python_only(stack);
        }
    }
    let mut stacks: Vec<Stack> = shown
        .into_iter()
        .map(|s| {
            if s.stack_id == memprof_common::STACK_NO_ROOM {
                frames.insert(s.stack_id, vec![model::Frame::no_room()]);
            }
            let no_room = s.stack_id == memprof_common::STACK_NO_ROOM;
            let mut frames = frames.remove(&s.stack_id).unwrap_or_default();
            let word = recorded.walks.get(&s.stack_id).copied();
            if word.is_some_and(|w| w & memprof_common::unwind::walk::FP != 0) {
                cut_at_no_code(&mut frames);
            }
            let (walk, truncation) = match word {
                Some(word) if !no_room && !frames.is_empty() => {
                    walk_of(word, symbolize::reaches_start(&frames))
                }
                _ => (None, None),
            };
            Stack {
                truncated: truncation.is_some(),
                walk,
                truncation,
                frames,
                bytes: s.bytes,
                count: s.count,
                oldest_age_secs: s.oldest_age_ns as f64 / 1e9,
                median_age_secs: s.median_age_ns as f64 / 1e9,
                growth: growth.as_ref().and_then(|g| g.get(&s.stack_id).cloned()),
                pid,
                estimate: s.estimate,
                allocator: match word {
                    Some(word) if word & memprof_common::python::PYMALLOC != 0 => {
                        model::HeapAllocator::Pymalloc
                    }
                    Some(word) if word & memprof_common::python::PYMALLOC_ARENA != 0 => {
                        model::HeapAllocator::PymallocArena
                    }
                    _ => model::HeapAllocator::Malloc,
                },
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

/// Cuts a stack walked by frame pointer (in part at least) before its first
/// frame, after the first, that lies in no code of the process (a bare
/// address: no module, no name): where a frame pointer that was not one
/// led. The stack then does not reach the program's start, and is marked
/// cut short. (The first frame is the allocator's return address itself.)
fn cut_at_no_code(frames: &mut Vec<model::Frame>) {
    let no_code = |f: &model::Frame| f.module.is_none() && f.function.is_none();
    if let Some(at) = frames.iter().skip(1).position(no_code) {
        frames.truncate(at + 1);
    }
}

/// How a stack was walked, from its `walk` word, and why it ended early if
/// it did. A walk from call frame information that found the outermost
/// frame (or a null return address) is complete, whatever the last
/// function's name; a walk by frame pointer cannot tell where it lost its
/// way, so one that does not reach the start of the program or of a thread
/// (`reaches_start`) is marked truncated.
pub(crate) fn walk_of(word: u64, reaches_start: bool) -> (Option<Walk>, Option<Truncation>) {
    use memprof_common::unwind::walk;
    let (cfi, fp) = (word & walk::CFI != 0, word & walk::FP != 0);
    let how = if word & walk::NO_TABLE != 0 {
        Walk::NoTable
    } else if cfi && fp {
        Walk::Mixed
    } else if cfi {
        Walk::Cfi
    } else {
        Walk::FramePointers
    };
    let ended = match (word >> walk::END_SHIFT) & walk::END_MASK {
        walk::end::COMPLETE => None,
        walk::end::NOT_MAPPED => Some(Truncation::NotMapped),
        walk::end::NO_CFI => Some(Truncation::NoCfi),
        walk::end::UNSUPPORTED => Some(Truncation::UnsupportedRule),
        walk::end::READ_FAILED => Some(Truncation::ReadFailed),
        walk::end::TOO_DEEP => Some(Truncation::TooDeep),
        walk::end::BAD_FRAME_POINTER => Some(Truncation::BadFramePointer),
        // A cause this build does not know: still cut short.
        _ => Some(Truncation::Other),
    };
    let truncation = match ended {
        Some(t) => Some(t),
        None if how == Walk::Cfi || reaches_start => None,
        None => Some(Truncation::FramePointers),
    };
    (Some(how), truncation)
}

/// Each stack's bytes at every sample, then at the end of the run.
fn growth_by_stack(
    samples: &[Sample],
    end: &[aggregate::StackTotals],
    end_secs: f64,
) -> HashMap<i64, Growth> {
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
pub(crate) fn check_consistency(snap: &Snapshot, totals: &Totals) {
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

pub(crate) fn add_totals(a: Totals, b: Totals) -> Totals {
    Totals {
        bytes: a.bytes.saturating_add(b.bytes),
        count: a.count.saturating_add(b.count),
    }
}

pub(crate) fn add_released(sum: &mut Released, one: &Released) {
    sum.at_exec = add_totals(sum.at_exec, one.at_exec);
    sum.at_exit = add_totals(sum.at_exit, one.at_exit);
}

/// How a run over many processes was sampled: what its processes' reports
/// say, with the windows of the run (one set served every process), and said
/// even when nothing was recorded.
fn sampling_of_run(
    config: &Config,
    merged: Option<Sampling>,
    windows: Option<&WindowLog>,
) -> Option<Sampling> {
    let estimator = aggregate::Estimator::of_run(config.sampling.map(|s| s.rate), windows);
    let mut sampling = merged.or_else(|| {
        aggregate::scale_sampled(
            estimator,
            &mut [],
            &mut None,
            &mut Released::default(),
            None,
        )
    })?;
    if let Some(e) = estimator.filter(|e| e.windows.is_some()) {
        sampling.windows = e.windows;
    }
    Some(sampling)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn says_how_each_stack_was_walked_and_why_it_ended() {
        use memprof_common::unwind::walk;
        let end = |code: u64| code << walk::END_SHIFT;
        // From tables to the outermost frame: complete, whatever the last name.
        assert_eq!(walk_of(walk::CFI, false), (Some(Walk::Cfi), None));
        assert_eq!(
            walk_of(walk::CFI | end(walk::end::TOO_DEEP), false),
            (Some(Walk::Cfi), Some(Truncation::TooDeep))
        );
        assert_eq!(
            walk_of(walk::CFI | walk::FP | end(walk::end::NOT_MAPPED), true),
            (Some(Walk::Mixed), Some(Truncation::NotMapped))
        );
        // By frame pointer: complete only when it reaches a start.
        assert_eq!(walk_of(walk::FP, true), (Some(Walk::FramePointers), None));
        assert_eq!(
            walk_of(walk::FP, false),
            (Some(Walk::FramePointers), Some(Truncation::FramePointers))
        );
        assert_eq!(
            walk_of(walk::FP | walk::NO_TABLE, false),
            (Some(Walk::NoTable), Some(Truncation::FramePointers))
        );
        assert_eq!(
            walk_of(walk::CFI | end(99), true),
            (Some(Walk::Cfi), Some(Truncation::Other))
        );
    }

    #[test]
    fn a_frame_pointer_walk_stops_before_an_address_in_no_code() {
        let named = |name: &str| model::Frame {
            function: Some(name.to_string()),
            ..model::Frame::default()
        };
        let in_module = model::Frame {
            module: Some("/usr/lib/libfoo.so".to_string()),
            ..model::Frame::default()
        };
        let bare = |addr| model::Frame {
            addr,
            ..model::Frame::default()
        };
        let mut frames = vec![
            named("leak"),
            in_module.clone(),
            bare(0x3730_3230_3030_3030),
            named("main"),
        ];
        cut_at_no_code(&mut frames);
        assert_eq!(frames, [named("leak"), in_module]);
        // The first frame stays, whatever it is.
        let mut frames = vec![bare(0x1000), bare(0x2000)];
        cut_at_no_code(&mut frames);
        assert_eq!(frames, [bare(0x1000)]);
        let mut whole = vec![named("leak"), named("main")];
        cut_at_no_code(&mut whole);
        assert_eq!(whole, [named("leak"), named("main")]);
    }

    #[test]
    fn walks_read_back_from_json() {
        let json = r#"["cfi","frame-pointers","mixed","no-table"]"#;
        let walks: Vec<Walk> = serde_json::from_str(json).unwrap();
        assert_eq!(
            walks,
            [Walk::Cfi, Walk::FramePointers, Walk::Mixed, Walk::NoTable]
        );
        // A cause a later version names is still read, as Other.
        let t: Truncation = serde_json::from_str(r#""stack-on-fire""#).unwrap();
        assert_eq!(t, Truncation::Other);
        let t: Truncation = serde_json::from_str(r#""not-mapped""#).unwrap();
        assert_eq!(t, Truncation::NotMapped);
    }
}
