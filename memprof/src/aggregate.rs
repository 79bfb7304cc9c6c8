//! Grouping live allocations by stack: pure, no I/O.

use std::collections::HashMap;

use memprof_common::AllocInfo;

use crate::model::{
    Growth, Released, SampleMethod, SampleWindows, Sampling, StackEstimate, Totals,
};
use crate::window_log::WindowLog;

/// Outstanding memory of one stack id, before symbolization.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct StackTotals {
    pub stack_id: i64,
    pub bytes: u64,
    pub count: u64,
    pub oldest_age_ns: u64,
    pub median_age_ns: u64,
    /// The variance of a sampled estimate needs these: the sums over the
    /// units of sampling (each block, or each window when sampling by
    /// window) of the squared bytes, and of the squared counts.
    pub size_squares: u128,
    pub count_squares: u128,
    /// Sampled by window: the bytes and count recorded in each window
    /// (window, bytes, count), for the totals' error (blocks of different
    /// stacks recorded in one window are not independent either). Empty
    /// otherwise.
    pub windows: Vec<(u64, u64, u64)>,
    /// Set by [`scale_sampled`].
    pub estimate: Option<StackEstimate>,
}

/// Takes the blocks made before `ns` (`CLOCK_MONOTONIC`) out of `live` and
/// returns what they add up to: what a program replaced by an exec, or one
/// that exited, held.
pub(crate) fn take_older<K>(live: &mut Vec<(K, AllocInfo)>, ns: u64) -> Totals {
    let mut taken = Totals::default();
    live.retain(|(_, info)| {
        let older = info.timestamp_ns < ns;
        if older {
            taken.bytes = taken.bytes.saturating_add(info.size);
            taken.count += 1;
        }
        !older
    });
    taken
}

/// Groups live allocations by stack id, largest `bytes` first (ties: larger
/// count, then stack id, so the order is deterministic).
pub(crate) fn by_stack<K>(live: &[(K, AllocInfo)], now_ns: u64) -> Vec<StackTotals> {
    by_stack_in(live, now_ns, None)
}

/// [`by_stack`], for a run sampled by the windows of `windows`: the units
/// of sampling are the windows, not the blocks.
pub(crate) fn by_stack_in<K>(
    live: &[(K, AllocInfo)],
    now_ns: u64,
    windows: Option<&WindowLog>,
) -> Vec<StackTotals> {
    #[derive(Default)]
    struct Group {
        bytes: u64,
        ages: Vec<u64>,
        /// Each block's squared size (blocks are the units of sampling).
        size_squares: u128,
        /// By window, when windows are the units: bytes and count.
        windows: HashMap<u64, (u64, u64)>,
    }
    let square = |x: u64| u128::from(x) * u128::from(x);
    let mut groups: HashMap<i64, Group> = HashMap::new();
    for (_, info) in live {
        let group = groups.entry(info.stack_id).or_default();
        group.bytes += info.size;
        group.ages.push(now_ns.saturating_sub(info.timestamp_ns));
        match windows {
            Some(w) => {
                let sums = group
                    .windows
                    .entry(w.window_of(info.timestamp_ns) as u64)
                    .or_default();
                sums.0 += info.size;
                sums.1 += 1;
            }
            None => group.size_squares = group.size_squares.saturating_add(square(info.size)),
        }
    }
    let mut stacks: Vec<StackTotals> = groups
        .into_iter()
        .map(|(stack_id, mut group)| {
            group.ages.sort_unstable();
            let count = group.ages.len() as u64;
            let (size_squares, count_squares) = if windows.is_some() {
                group
                    .windows
                    .values()
                    .fold((0u128, 0u128), |(b, c), &(bytes, count)| {
                        (b.saturating_add(square(bytes)), c + square(count))
                    })
            } else {
                (group.size_squares, u128::from(count))
            };
            let mut by_window: Vec<(u64, u64, u64)> = group
                .windows
                .iter()
                .map(|(&w, &(bytes, count))| (w, bytes, count))
                .collect();
            by_window.sort_unstable();
            StackTotals {
                stack_id,
                bytes: group.bytes,
                count,
                oldest_age_ns: group.ages.last().copied().unwrap_or(0),
                median_age_ns: group.ages.get(group.ages.len() / 2).copied().unwrap_or(0),
                size_squares,
                count_squares,
                windows: by_window,
                estimate: None,
            }
        })
        .collect();
    stacks.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.count.cmp(&a.count))
            .then(a.stack_id.cmp(&b.stack_id))
    });
    stacks
}

/// Sum over stacks.
pub(crate) fn totals(stacks: &[StackTotals]) -> Totals {
    stacks.iter().fold(Totals::default(), |t, s| Totals {
        bytes: t.bytes.saturating_add(s.bytes),
        count: t.count.saturating_add(s.count),
    })
}

/// How a sampled run's figures become estimates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Estimator {
    /// `--sample-rate`.
    pub rate: u64,
    pub method: SampleMethod,
    /// What every recorded figure is multiplied by.
    pub scale: f64,
    /// By window: their number and total time open.
    pub windows: Option<SampleWindows>,
}

impl Estimator {
    /// Each call recorded with probability 1/`rate`; `None` when every call
    /// was (`rate` 0 or 1).
    pub(crate) fn by_call(rate: u32) -> Option<Estimator> {
        (rate > 1).then(|| Estimator {
            rate: u64::from(rate),
            method: SampleMethod::Call,
            scale: f64::from(rate),
            windows: None,
        })
    }

    /// Every call recorded during the windows of `log`, meant to cover
    /// 1/`rate` of the run.
    pub(crate) fn by_window(rate: u32, log: &WindowLog) -> Estimator {
        Estimator {
            rate: u64::from(rate),
            method: SampleMethod::Window,
            scale: log.scale(),
            windows: Some(SampleWindows {
                count: log.spans.len() as u64,
                open_secs: log.open_ns() as f64 / 1e9,
                failed_links: log.failed_links,
            }),
        }
    }

    /// How a run with `--sample-rate` `rate` (if any) and these sampling
    /// windows (with `--sample-by window`) was sampled; `None` when every
    /// call was recorded.
    pub(crate) fn of_run(rate: Option<u32>, windows: Option<&WindowLog>) -> Option<Estimator> {
        match (rate, windows) {
            (Some(rate), Some(windows)) => Some(Estimator::by_window(rate, windows)),
            (rate, _) => Estimator::by_call(rate.unwrap_or(0)),
        }
    }

    /// `x` times the scale: exact for a whole scale, rounded otherwise.
    fn times(&self, x: u64) -> u64 {
        if self.scale.fract() == 0.0 {
            x.saturating_mul(self.scale as u64)
        } else {
            (x as f64 * self.scale).round() as u64
        }
    }
}

/// Turns what sampling recorded into estimates (see [`Sampling`]):
/// multiplies the bytes and counts of `stacks`, `younger`, `released` and
/// the `growth` series by the estimator's scale, sets each stack's
/// [`StackEstimate`], and returns how they were estimated, with the standard
/// errors of the totals of `stacks`. Nothing is changed, and `None`
/// returned, without an estimator (every call recorded).
pub(crate) fn scale_sampled(
    estimator: Option<Estimator>,
    stacks: &mut [StackTotals],
    younger: &mut Option<Totals>,
    released: &mut Released,
    growth: Option<&mut HashMap<i64, Growth>>,
) -> Option<Sampling> {
    let e = estimator?;
    let recorded = totals(stacks);
    // Horvitz-Thompson: Var(s * sum over recorded units of x_u) is estimated
    // by s (s - 1) * sum over recorded units of x_u^2 (x_u: a unit's bytes or
    // count; a unit is a block by call, a window by window).
    let factor = e.scale * (e.scale - 1.0);
    let stderr = |squares: u128| (factor * squares as f64).max(0.0).sqrt();
    let square = |x: u64| u128::from(x) * u128::from(x);
    let (mut size_squares, mut count_squares) = (0u128, 0u128);
    let mut by_window: HashMap<u64, (u64, u64)> = HashMap::new();
    for stack in stacks.iter_mut() {
        if stack.windows.is_empty() {
            // Independent units: the totals' squares are the stacks' added up.
            size_squares = size_squares.saturating_add(stack.size_squares);
            count_squares = count_squares.saturating_add(stack.count_squares);
        }
        for &(window, bytes, count) in &stack.windows {
            let sums = by_window.entry(window).or_default();
            sums.0 = sums.0.saturating_add(bytes);
            sums.1 += count;
        }
        stack.estimate = Some(StackEstimate {
            recorded: stack.count,
            bytes_stderr: stderr(stack.size_squares),
            count_stderr: stderr(stack.count_squares),
        });
        stack.bytes = e.times(stack.bytes);
        stack.count = e.times(stack.count);
    }
    for (bytes, count) in by_window.into_values() {
        size_squares = size_squares.saturating_add(square(bytes));
        count_squares = count_squares.saturating_add(square(count));
    }
    let scale = |t: &mut Totals| {
        t.bytes = e.times(t.bytes);
        t.count = e.times(t.count);
    };
    if let Some(younger) = younger {
        scale(younger);
    }
    scale(&mut released.at_exec);
    scale(&mut released.at_exit);
    for g in growth.into_iter().flat_map(|g| g.values_mut()) {
        for bytes in &mut g.samples {
            *bytes = e.times(*bytes);
        }
        g.bytes_per_sec *= e.scale;
    }
    Some(Sampling {
        rate: e.rate,
        method: e.method,
        scale: e.scale,
        windows: e.windows,
        sampled_count: recorded.count,
        bytes_stderr: stderr(size_squares),
        count_stderr: stderr(count_squares),
    })
}

/// Keeps the allocations at least `min_age_ns` old at `now_ns`; returns the
/// kept ones and the totals of those left out.
pub(crate) fn older_than<K: Copy>(
    live: &[(K, AllocInfo)],
    now_ns: u64,
    min_age_ns: u64,
) -> (Vec<(K, AllocInfo)>, Totals) {
    let mut younger = Totals::default();
    let kept = live
        .iter()
        .filter(|(_, info)| {
            let old = now_ns.saturating_sub(info.timestamp_ns) >= min_age_ns;
            if !old {
                younger.bytes += info.size;
                younger.count += 1;
            }
            old
        })
        .copied()
        .collect();
    (kept, younger)
}

/// How a stack's outstanding bytes evolved, from samples taken at `times` (seconds).
pub(crate) fn growth(samples: &[u64], times: &[f64]) -> Growth {
    let n = samples.len().min(times.len());
    let (samples, times) = (&samples[..n], &times[..n]);
    // Snapshots taken before the stack's first allocation say nothing about it.
    let born = samples.iter().position(|&b| b > 0).unwrap_or(n);
    let lived = &samples[born..];
    let steps = lived.len().saturating_sub(1);
    let rises = lived.windows(2).filter(|w| w[1] > w[0]).count();
    let max = lived.iter().copied().max().unwrap_or(0);
    // Ends near its highest point, above where it started, having risen in at
    // least half of the intervals since it appeared: a leak, possibly with
    // partial frees on the way.
    let growing = steps > 0
        && lived.last() > lived.first()
        && lived
            .last()
            .is_some_and(|&last| last as f64 >= 0.9 * max as f64)
        && rises * 2 >= steps;
    Growth {
        samples: samples.to_vec(),
        bytes_per_sec: slope(samples, times),
        growing,
    }
}

/// Least-squares slope of `ys` over `xs`; 0 when undefined.
fn slope(ys: &[u64], xs: &[f64]) -> f64 {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return 0.0;
    }
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = ys.iter().map(|&y| y as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (&x, &y) in xs.iter().zip(ys) {
        num += (x - mean_x) * (y as f64 - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(size: u64, ts: u64, stack_id: i64) -> AllocInfo {
        AllocInfo {
            size,
            timestamp_ns: ts,
            stack_id,
        }
    }

    #[test]
    fn groups_sorts_and_ages() {
        let live = vec![
            (0x10, alloc(100, 10, 1)),
            (0x20, alloc(100, 20, 1)),
            (0x30, alloc(100, 30, 1)),
            (0x40, alloc(1000, 50, 2)),
            (0x50, alloc(7, 90, -1)),
        ];
        let stacks = by_stack(&live, 100);
        assert_eq!(stacks.len(), 3);
        assert_eq!(
            stacks[0],
            StackTotals {
                stack_id: 2,
                bytes: 1000,
                count: 1,
                oldest_age_ns: 50,
                median_age_ns: 50,
                size_squares: 1_000_000,
                count_squares: 1,
                windows: vec![],
                estimate: None,
            }
        );
        assert_eq!(
            stacks[1],
            StackTotals {
                stack_id: 1,
                bytes: 300,
                count: 3,
                oldest_age_ns: 90,
                median_age_ns: 80,
                size_squares: 30_000,
                count_squares: 3,
                windows: vec![],
                estimate: None,
            }
        );
        assert_eq!(stacks[2].stack_id, -1);
        assert_eq!(
            totals(&stacks),
            Totals {
                bytes: 1307,
                count: 5
            }
        );
    }

    #[test]
    fn ties_are_ordered_deterministically() {
        let live = vec![
            (1, alloc(5, 0, 9)),
            (2, alloc(5, 0, 3)),
            (3, alloc(5, 0, 4)),
            (4, alloc(0, 0, 4)),
        ];
        let ids: Vec<_> = by_stack(&live, 0).iter().map(|s| s.stack_id).collect();
        assert_eq!(ids, vec![4, 3, 9]);
    }

    #[test]
    fn empty_input_gives_nothing() {
        assert!(by_stack::<u64>(&[], 5).is_empty());
        assert_eq!(totals(&[]), Totals::default());
    }

    #[test]
    fn keeps_only_old_allocations() {
        let live = vec![
            (1, alloc(10, 0, 1)),
            (2, alloc(20, 50, 1)),
            (3, alloc(40, 95, 2)),
        ];
        let (kept, younger) = older_than(&live, 100, 50);
        assert_eq!(kept.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            younger,
            Totals {
                bytes: 40,
                count: 1
            }
        );
    }

    #[test]
    fn sampling_scales_every_figure_and_states_the_error() {
        // Recorded at 1 in 64: stack 1 has 100 blocks of 1000 B, stack 2 one of 10 B.
        let mut live: Vec<(u64, AllocInfo)> =
            (0..100).map(|i| (0x1000 + i, alloc(1000, 0, 1))).collect();
        live.push((0x9000, alloc(10, 0, 2)));
        let mut stacks = by_stack(&live, 0);
        let mut younger = Some(Totals { bytes: 7, count: 1 });
        let mut released = Released {
            at_exec: Totals { bytes: 3, count: 1 },
            at_exit: Totals::default(),
        };
        let mut growth = HashMap::from([(
            1,
            Growth {
                samples: vec![0, 50_000, 100_000],
                bytes_per_sec: 10.0,
                growing: true,
            },
        )]);
        let sampling = scale_sampled(
            Estimator::by_call(64),
            &mut stacks,
            &mut younger,
            &mut released,
            Some(&mut growth),
        )
        .unwrap();
        assert_eq!((stacks[0].bytes, stacks[0].count), (6_400_000, 6_400));
        assert_eq!((stacks[1].bytes, stacks[1].count), (640, 64));
        assert_eq!(
            totals(&stacks),
            Totals {
                bytes: 6_400_640,
                count: 6_464
            }
        );
        assert_eq!(
            younger,
            Some(Totals {
                bytes: 448,
                count: 64
            })
        );
        assert_eq!(
            released.at_exec,
            Totals {
                bytes: 192,
                count: 64
            }
        );
        assert_eq!(growth[&1].samples, vec![0, 3_200_000, 6_400_000]);
        assert_eq!(growth[&1].bytes_per_sec, 640.0);
        assert_eq!(sampling.rate, 64);
        assert_eq!(sampling.sampled_count, 101);
        // sqrt(64 * 63 * 101) and sqrt(64 * 63 * (100 * 1000^2 + 10^2))
        assert!(
            (sampling.count_stderr - 638.147).abs() < 0.001,
            "{sampling:?}"
        );
        assert!(
            (sampling.bytes_stderr - 634_980.632).abs() < 0.001,
            "{sampling:?}"
        );
        // 100 recorded blocks: about 1/sqrt(100).
        let rse = sampling.relative_error(stacks[0].count).unwrap();
        assert!((rse - (63.0f64 / 64.0 / 100.0).sqrt()).abs() < 1e-12);
        assert_eq!(sampling.relative_error(0), None);
        // Each stack's own error: sqrt(64 * 63 * 100) for 100 blocks.
        let estimate = stacks[0].estimate.unwrap();
        assert_eq!(estimate.recorded, 100);
        assert!(
            (estimate.count_stderr - 634.980).abs() < 0.001,
            "{estimate:?}"
        );
        assert!((estimate.bytes_stderr - 634_980.315).abs() < 0.001);
        assert_eq!(sampling.method, SampleMethod::Call);
        assert_eq!(sampling.scale, 64.0);
    }

    #[test]
    fn sampling_by_window_counts_each_window_as_one_unit() {
        // A run of 10,000 ns whose two windows were open 100 ns in all:
        // scale 100. Stack 1 has 3 blocks from window 0 and 1 from window 1;
        // stack 2 one block from window 1.
        let log = WindowLog {
            start_ns: 0,
            end_ns: 10_000,
            spans: vec![(1_000, 1_050), (6_000, 6_050)],
            failed_links: 0,
        };
        let live = vec![
            (1, alloc(10, 1_010, 1)),
            (2, alloc(10, 1_020, 1)),
            (3, alloc(10, 1_055, 1)), // returned after the window closed
            (4, alloc(10, 6_001, 1)),
            (5, alloc(7, 6_002, 2)),
        ];
        let mut stacks = by_stack_in(&live, 10_000, Some(&log));
        assert_eq!(
            (stacks[0].size_squares, stacks[0].count_squares),
            (1000, 10)
        );
        assert_eq!(stacks[0].windows, vec![(0, 30, 3), (1, 10, 1)]);
        let estimator = Estimator::by_window(64, &log);
        assert_eq!(estimator.scale, 100.0);
        let sampling = scale_sampled(
            Some(estimator),
            &mut stacks,
            &mut None,
            &mut Released::default(),
            None,
        )
        .unwrap();
        assert_eq!((stacks[0].bytes, stacks[0].count), (4_000, 400));
        assert_eq!((stacks[1].bytes, stacks[1].count), (700, 100));
        // Stack 1: sqrt(100 * 99 * (3^2 + 1^2)) blocks.
        let estimate = stacks[0].estimate.unwrap();
        assert_eq!(estimate.recorded, 4);
        assert!((estimate.count_stderr - (99_000.0f64).sqrt()).abs() < 1e-9);
        assert!((estimate.bytes_stderr - (9_900_000.0f64).sqrt()).abs() < 1e-6);
        assert_eq!(sampling.method, SampleMethod::Window);
        assert_eq!(sampling.rate, 64);
        assert_eq!(
            sampling.windows,
            Some(SampleWindows {
                count: 2,
                open_secs: 1e-7,
                failed_links: 0,
            })
        );
        // Totals: windows 0 and 1 recorded 3 and 2 blocks (not 3, 1 and 1).
        assert!((sampling.count_stderr - (9_900.0f64 * 13.0).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn a_fractional_scale_rounds() {
        let log = WindowLog {
            start_ns: 0,
            end_ns: 1_000,
            spans: vec![(0, 300)],
            failed_links: 0,
        };
        let live = vec![(1, alloc(10, 5, 1))];
        let mut stacks = by_stack_in(&live, 1_000, Some(&log));
        let estimator = Estimator::by_window(3, &log);
        scale_sampled(
            Some(estimator),
            &mut stacks,
            &mut None,
            &mut Released::default(),
            None,
        );
        assert_eq!((stacks[0].bytes, stacks[0].count), (33, 3));
    }

    #[test]
    fn full_tracking_is_not_scaled() {
        let live = vec![(1, alloc(10, 0, 1))];
        let mut stacks = by_stack(&live, 0);
        let before = stacks.clone();
        for rate in [0, 1] {
            let sampling = scale_sampled(
                Estimator::by_call(rate),
                &mut stacks,
                &mut None,
                &mut Released::default(),
                None,
            );
            assert_eq!(sampling, None);
            assert_eq!(stacks, before);
        }
    }

    #[test]
    fn tells_growth_from_flat_and_noise() {
        let t = [1.0, 2.0, 3.0, 4.0, 5.0];
        let g = growth(&[100, 200, 300, 400, 500], &t);
        assert!(g.growing);
        assert!((g.bytes_per_sec - 100.0).abs() < 1e-9, "{g:?}");
        let flat = growth(&[5000, 5000, 5000, 5000, 5000], &t);
        assert!(!flat.growing);
        assert_eq!(flat.bytes_per_sec, 0.0);
        // up and down around a level: not growing even though it ends higher
        let noisy = growth(&[100, 300, 100, 100, 101], &t);
        assert!(!noisy.growing, "{noisy:?}");
        // A leak that starts late is still a leak.
        let t9: Vec<f64> = (1..=9).map(f64::from).collect();
        let late = growth(&[0, 0, 0, 0, 0, 100, 200, 300, 400], &t9);
        assert!(late.growing, "{late:?}");
        let sawtooth = growth(&[100, 200, 150, 250, 300], &t);
        assert!(sawtooth.growing, "{sawtooth:?}");
        let shrinking = growth(&[500, 400, 300, 200, 100], &t);
        assert!(!shrinking.growing);
        assert!(shrinking.bytes_per_sec < 0.0);
        assert!(!growth(&[7], &[1.0]).growing);
        assert!(!growth(&[], &[]).growing);
    }
}
