//! Beyond what is still outstanding at the end: the allocation profile
//! (every allocation per stack, freed or not, and its temporaries), the peak
//! (the moment the outstanding total was highest, and the stacks that held
//! it then) and the timeline (outstanding bytes and resident memory through
//! the run). Full tracking only: a sampled run leaves them out.
//!
//! # Allocation profile
//! Each stack's aggregate in `AGG` ([`memprof_common::StackAgg`]) counts,
//! besides what is outstanding, every allocation made from it
//! (`allocs`, `alloc_bytes`, never decreasing) and the blocks freed within
//! the temporary threshold (`temps`, `temp_bytes`; 1 ms by default,
//! `--temporary-ms`): an add at each allocation, and at a free one clock read
//! and, for a temporary, two adds, all on the CPU's own copy of the entry
//! that the outstanding figures already update. It costs no map lookup of
//! its own. `cargo xtask bench` prints its ratio: `full-no-peak` against
//! `full-bare` (`--temporary-ms 0` reads no clock at a free). One run on a
//! 2-CPU VM with a load average of 4-6 from other work: 2927 against 2522
//! ns per malloc/free pair (medians of 3 rounds whose spread was larger than
//! that); the BPF programs' own run time (`BPF_ENABLE_STATS`), which load
//! disturbs less, 1936 against 1811 ns per pair (medians of 5 rounds, each
//! mode's rounds spread over about 200 ns): about 7%, or 0.06x of what a
//! pair costs the target under full tracking.
//!
//! A stack with nothing outstanding for a second leaves the maps during the
//! run (so that a long run meets new stacks without filling them): its
//! figures and frames are kept in [`Retired`] first, and added back at the
//! end, under the same id if the stack came back (ids are hashes of frames).
//!
//! # Peak
//! Exact for full tracking without reading the maps on every allocation:
//! every block that enters or leaves `LIVE` is sent, 32 bytes, through a
//! ring buffer (8 MiB: about 210,000 events with their headers, drained
//! every 20 ms; the target allocated and freed about 1.5 million blocks a
//! second under full tracking in the bench's tight loop), and a thread
//! ([`drain`]) replays them in order ([`peak`]), keeping the running total
//! and each stack's share, and the shares at the highest total so far. A
//! block recorded per free instead (its allocation time kept with it) would
//! need every freed block kept until the end to sweep the times; the replay
//! needs only a few entries per stack. An event the buffer has no room for
//! is counted (`heap_events_lost`), and the peak is then marked approximate.
//! Its cost, `full` against `full-no-peak` in the bench: the BPF programs'
//! run time went from 1936 to 2066 ns per pair (+7%, medians of 5 rounds on
//! the same loaded VM), about one ring-buffer output per allocation and per
//! free; `--no-peak` saves it. The buffer adds its size to the kernel's
//! memory and, once the consumer has touched it, to memprof's RSS.
//! The peak is of every recorded process together; memory a process takes
//! with it when it exits is still counted after its exit.
//!
//! # Timeline
//! Every `--timeline-every` seconds (a hundredth of `--duration`, 0.1 s at
//! least and 10 s at most; 0.1 s without one) the wait reads `AGG` (one
//! entry per stack) and the resident memory of the recorded processes
//! (`/proc/PID/statm`); `--interval` takes these same samples at its own
//! period, and its growth ranking reads them. Past 1,000 samples every other
//! one is dropped and the period doubles; a default period also doubles
//! whenever one sample takes more than a tenth of it (reading `AGG` costs
//! two syscalls per stack: apt-cache, 6,000 stacks, took up to seconds per
//! sample on a busy 2-CPU machine), so that sampling stays under about a
//! tenth of a CPU. The timeline states the period it ended with. The timeline keeps the totals, and
//! the series of the [`TIMELINE_STACKS`] stacks that held the most at any sample.

mod drain;
pub(crate) mod peak;

use std::collections::{HashMap, HashSet};

use memprof_common::{StackAgg, StackTrace, STACK_NO_ROOM};

pub(crate) use self::drain::HeapDrain;
use self::peak::PeakFound;
use crate::model::{
    AllocStack, AllocTotals, Allocations, Frame, Peak, PeakStack, Report, Timeline, TimelineSample,
    TimelineStack, Totals,
};
use crate::symbolize::Symbolizer;
use crate::wait::Sample;

/// Stacks whose series the timeline keeps.
pub(crate) const TIMELINE_STACKS: usize = 5;

/// Stacks whose figures [`Retired`] keeps with their frames.
const RETIRED_STACKS: usize = 65_536;

/// What the stacks freed during the run had allocated, and their frames.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    stacks: HashMap<i64, (StackAgg, Option<Vec<u64>>)>,
}

impl Retired {
    /// Keeps what the stack `id` allocated before it leaves the maps.
    pub(crate) fn add(&mut self, id: i64, agg: &StackAgg, trace: Option<&StackTrace>) {
        let ips = trace.map(|t| {
            let len = usize::try_from(t.len).unwrap_or(0).min(t.ips.len());
            t.ips[..len].to_vec()
        });
        // Past the cap (a machine-wide run meets stacks without end), what a
        // new stack allocated still counts, without its frames, under
        // [`STACK_LOST`]: totals stay exact in bounded memory.
        let (id, ips) = if self.stacks.len() >= RETIRED_STACKS && !self.stacks.contains_key(&id) {
            (memprof_common::STACK_LOST, None)
        } else {
            (id, ips)
        };
        let entry = self.stacks.entry(id).or_default();
        entry.0 = StackAgg::sum([&entry.0, agg]);
        // Outstanding figures are the end's, not the retired ones'.
        entry.0.bytes = 0;
        entry.0.count = 0;
        if entry.1.is_none() {
            entry.1 = ips;
        }
    }
}

/// What the run recorded for the profiles, read at its end.
pub(crate) struct Recording {
    /// Every stack's figures: the end's, with those of its retired runs added.
    stacks: HashMap<i64, StackAgg>,
    /// Their frames.
    traces: HashMap<i64, Vec<u64>>,
    /// The peak, and the events lost.
    peak: Option<(PeakFound, u64)>,
    /// The timeline's samples, the end's last.
    samples: Vec<Sample>,
    /// The stacks whose series the timeline keeps.
    timeline_ids: Vec<i64>,
    every_secs: f64,
    temporary_ns: u64,
    started_ns: u64,
}

/// One process's part of the profiles, symbolized.
#[derive(Default)]
pub(crate) struct Part {
    allocations: Vec<AllocStack>,
    peak: Vec<PeakStack>,
    timeline: Vec<(i64, TimelineStack)>,
}

/// How the run went, for [`Recording::new`].
pub(crate) struct Ending<'a> {
    /// `AGG` at the end, each stack summed over the CPUs.
    pub agg: &'a HashMap<i64, StackAgg>,
    /// The frames of the stacks of `agg`.
    pub traces: HashMap<i64, Vec<u64>>,
    pub retired: Retired,
    pub peak: Option<(PeakFound, u64)>,
    /// The samples taken during the run.
    pub samples: &'a [Sample],
    /// Seconds into the run at its end, and the resident memory then.
    pub end_secs: f64,
    pub end_rss: Option<u64>,
    pub every_secs: f64,
    pub temporary_ns: u64,
    pub started_ns: u64,
}

impl Recording {
    /// Puts together what the run recorded.
    pub(crate) fn new(ending: Ending<'_>) -> Recording {
        let Ending {
            agg,
            mut traces,
            retired,
            peak,
            samples,
            end_secs,
            end_rss,
            every_secs,
            temporary_ns,
            started_ns,
        } = ending;
        let mut stacks = agg.clone();
        for (id, (old, ips)) in retired.stacks {
            let entry = stacks.entry(id).or_insert_with(|| StackAgg {
                tgid: old.tgid,
                ..StackAgg::default()
            });
            let (bytes, count) = (entry.bytes, entry.count);
            *entry = StackAgg::sum([&*entry, &old]);
            (entry.bytes, entry.count) = (bytes, count);
            if let Some(ips) = ips {
                traces.entry(id).or_insert(ips);
            }
        }
        let mut samples = samples.to_vec();
        samples.push(Sample {
            at_secs: end_secs,
            bytes: agg
                .iter()
                .filter(|(_, a)| a.bytes != 0)
                .map(|(id, a)| (*id, a.bytes))
                .collect(),
            other_bytes: 0,
            count: agg.values().fold(0u64, |c, a| c.wrapping_add(a.count)),
            rss_bytes: end_rss,
        });
        let timeline_ids = top_series(&samples, TIMELINE_STACKS);
        Recording {
            stacks,
            traces,
            peak,
            samples,
            timeline_ids,
            every_secs,
            temporary_ns,
            started_ns,
        }
    }

    /// The process `pid`'s stacks, symbolized by `symbolizer`, each tagged
    /// with `tag`; `only` when it is the run's one process (which then also
    /// owns the stacks every process shares: lost stacks, no room).
    pub(crate) fn part(
        &self,
        pid: u32,
        symbolizer: &Symbolizer,
        tag: Option<u32>,
        only: bool,
    ) -> Part {
        let mine = |id: i64, tgid: u32| tgid == pid || (only && id < 0);
        let alloc_ids: Vec<i64> = self
            .stacks
            .iter()
            .filter(|(id, a)| mine(**id, a.tgid) && a.allocs > 0)
            .map(|(id, _)| *id)
            .collect();
        let peak_ids: Vec<i64> = self
            .peak
            .iter()
            .flat_map(|(p, _)| p.stacks.keys())
            .filter(|(tgid, id)| *tgid == pid || (only && *id < 0))
            .map(|(_, id)| *id)
            .collect();
        let timeline_ids: Vec<i64> = self
            .timeline_ids
            .iter()
            .copied()
            .filter(|id| self.stacks.get(id).is_some_and(|a| mine(*id, a.tgid)))
            .collect();
        let wanted: HashSet<i64> = alloc_ids
            .iter()
            .chain(&peak_ids)
            .chain(&timeline_ids)
            .copied()
            .collect();
        let traces: HashMap<i64, Vec<u64>> = wanted
            .iter()
            .filter_map(|id| self.traces.get(id).map(|t| (*id, t.clone())))
            .collect();
        let frames = symbolizer.symbolize_stacks(&traces);
        let frames_of = |id: i64| -> Vec<Frame> {
            if id == STACK_NO_ROOM {
                return vec![Frame::no_room()];
            }
            frames.get(&id).cloned().unwrap_or_default()
        };
        let allocations = alloc_ids
            .iter()
            .map(|&id| {
                let a = &self.stacks[&id];
                AllocStack {
                    totals: AllocTotals {
                        count: a.allocs,
                        bytes: a.alloc_bytes,
                        temporary: a.temps,
                        temporary_bytes: a.temp_bytes,
                    },
                    outstanding: Totals {
                        bytes: a.bytes,
                        count: a.count,
                    },
                    frames: frames_of(id),
                    pid: tag,
                }
            })
            .collect();
        let peak = self
            .peak
            .iter()
            .flat_map(|(p, _)| p.stacks.iter())
            .filter(|((tgid, id), _)| *tgid == pid || (only && *id < 0))
            .map(|((_, id), &(bytes, count))| PeakStack {
                bytes,
                count,
                frames: frames_of(*id),
                pid: tag,
            })
            .collect();
        let timeline = timeline_ids
            .iter()
            .map(|&id| {
                (
                    id,
                    TimelineStack {
                        bytes: self
                            .samples
                            .iter()
                            .map(|s| s.bytes.get(&id).copied().unwrap_or(0))
                            .collect(),
                        frames: frames_of(id),
                        pid: tag,
                    },
                )
            })
            .collect();
        Part {
            allocations,
            peak,
            timeline,
        }
    }

    /// Adds the profiles of `parts` to `report`.
    pub(crate) fn finish(&self, parts: Vec<Part>, report: &mut Report) {
        let mut allocations = Vec::new();
        let mut peak_stacks = Vec::new();
        let mut timeline = Vec::new();
        for part in parts {
            allocations.extend(part.allocations);
            peak_stacks.extend(part.peak);
            timeline.extend(part.timeline);
        }
        allocations.sort_by(|a: &AllocStack, b: &AllocStack| {
            b.totals
                .bytes
                .cmp(&a.totals.bytes)
                .then(b.totals.count.cmp(&a.totals.count))
                .then_with(|| frames_key(&a.frames).cmp(&frames_key(&b.frames)))
        });
        // Every stack counts in the totals, listed or not.
        let totals = self
            .stacks
            .values()
            .fold(AllocTotals::default(), |t, a| AllocTotals {
                count: t.count.saturating_add(a.allocs),
                bytes: t.bytes.saturating_add(a.alloc_bytes),
                temporary: t.temporary.saturating_add(a.temps),
                temporary_bytes: t.temporary_bytes.saturating_add(a.temp_bytes),
            });
        report.allocations = Some(Allocations {
            temporary_secs: self.temporary_ns as f64 / 1e9,
            totals,
            stacks: allocations,
        });
        if let Some((found, lost)) = &self.peak {
            peak_stacks.sort_by(|a, b| {
                b.bytes
                    .cmp(&a.bytes)
                    .then(b.count.cmp(&a.count))
                    .then_with(|| frames_key(&a.frames).cmp(&frames_key(&b.frames)))
            });
            report.peak = Some(Peak {
                at_secs: if found.at_ns == 0 {
                    0.0
                } else {
                    found.at_ns.saturating_sub(self.started_ns) as f64 / 1e9
                },
                totals: Totals {
                    bytes: found.bytes,
                    count: found.count,
                },
                exact: *lost == 0,
                events_lost: *lost,
                events: found.events,
                stacks: peak_stacks,
            });
        }
        let rank: HashMap<i64, usize> = self
            .timeline_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        timeline.sort_by_key(|(id, _)| rank.get(id).copied().unwrap_or(usize::MAX));
        report.timeline = Some(Timeline {
            every_secs: self.every_secs,
            samples: self
                .samples
                .iter()
                .map(|s| TimelineSample {
                    at_secs: s.at_secs,
                    bytes: s
                        .bytes
                        .values()
                        .fold(s.other_bytes, |b, x| b.wrapping_add(*x)),
                    count: s.count,
                    rss_bytes: s.rss_bytes,
                })
                .collect(),
            stacks: timeline.into_iter().map(|(_, s)| s).collect(),
        });
    }
}

/// The resident memory of the processes `follow` records now, when readable.
pub(crate) fn rss_of(follow: &dyn crate::wait::Follow) -> Option<u64> {
    let rss: Vec<u64> = follow
        .pids()
        .iter()
        .filter_map(|&pid| crate::procfs::rss_bytes(pid))
        .collect();
    (!rss.is_empty()).then(|| rss.iter().sum())
}

/// A stable order for stacks of equal figures.
fn frames_key(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|f| f.addr).collect()
}

/// The `n` stacks that held the most at any sample, most first (ties by id).
/// Lost stacks (negative ids) are series too.
fn top_series(samples: &[Sample], n: usize) -> Vec<i64> {
    let mut highest: HashMap<i64, u64> = HashMap::new();
    for sample in samples {
        for (&id, &bytes) in &sample.bytes {
            let h = highest.entry(id).or_default();
            *h = (*h).max(bytes);
        }
    }
    let mut ids: Vec<(i64, u64)> = highest.into_iter().filter(|(_, b)| *b > 0).collect();
    ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ids.truncate(n);
    ids.into_iter().map(|(id, _)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, bytes: &[(i64, u64)]) -> Sample {
        Sample {
            at_secs: at,
            bytes: bytes.iter().copied().collect(),
            other_bytes: 0,
            count: 0,
            rss_bytes: None,
        }
    }

    #[test]
    fn the_timeline_keeps_the_stacks_that_held_the_most_at_any_time() {
        let samples = [
            sample(1.0, &[(1, 100), (2, 5000)]),
            sample(2.0, &[(1, 200), (3, 50)]),
            sample(3.0, &[(1, 300), (3, 60)]),
        ];
        assert_eq!(top_series(&samples, 2), vec![2, 1]);
        assert_eq!(top_series(&samples, 5), vec![2, 1, 3]);
    }

    #[test]
    fn retired_stacks_keep_their_allocations_not_their_outstanding_bytes() {
        let mut retired = Retired::default();
        let agg = StackAgg {
            allocs: 10,
            alloc_bytes: 1000,
            temps: 4,
            temp_bytes: 400,
            tgid: 9,
            ..StackAgg::default()
        };
        retired.add(5, &agg, None);
        retired.add(5, &agg, None);
        let end = HashMap::from([(
            5,
            StackAgg {
                bytes: 100,
                count: 1,
                allocs: 1,
                alloc_bytes: 100,
                tgid: 9,
                ..StackAgg::default()
            },
        )]);
        let rec = Recording::new(Ending {
            agg: &end,
            traces: HashMap::new(),
            retired,
            peak: None,
            samples: &[],
            end_secs: 1.0,
            end_rss: None,
            every_secs: 0.1,
            temporary_ns: 1_000_000,
            started_ns: 0,
        });
        let s = rec.stacks[&5];
        assert_eq!(
            (s.allocs, s.alloc_bytes, s.temps, s.temp_bytes),
            (21, 2100, 8, 800)
        );
        assert_eq!((s.bytes, s.count, s.tgid), (100, 1, 9));
    }
}
