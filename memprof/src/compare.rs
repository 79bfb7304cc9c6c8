//! Combining reports: merge several into one, or compare two as a
//! differential flame graph.
//!
//! Stacks from different runs (or processes) cannot be matched by address, so
//! both operations match them by their symbolized frame names
//! ([`Frame::display_name`], innermost first). Pure functions: no I/O besides
//! writing the SVG to the given `out`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use anyhow::Context as _;

use crate::model::{Frame, Host, Released, Report, Stack, Stats, Target, Totals, SCHEMA_VERSION};
use crate::render::folded::fold;
use crate::render::svg::{flamegraph, message_svg};
use crate::render::{human_bytes, RenderOptions};

/// Merges `reports` into one report of the whole set.
///
/// - Stacks with the same frame names are joined: bytes and counts summed, the
///   oldest age is the maximum, the median age is the count-weighted median of
///   the medians (an approximation: the individual ages are gone), and the frames
///   (with their addresses) are those of the largest contributing stack.
///   Stacks the kernel could not walk are joined together. Sampled stacks add
///   their recorded blocks and combine their standard errors as independent.
/// - Totals and every counter of the stats are summed.
/// - The target is the common pid, or 0 when the reports are of several
///   processes; `comm`, `cmdline` and `allocator` list the distinct values.
/// - The run spans from the earliest start to the latest end.
///
/// Stacks come out largest first, ties ordered by their frame names, so the
/// result does not depend on hash order.
pub fn merge(reports: &[Report]) -> Report {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    for report in reports {
        for stack in &report.stacks {
            let key: Vec<String> = stack.frames.iter().map(Frame::display_name).collect();
            let i = *index.entry(key.clone()).or_insert_with(|| {
                groups.push(Group {
                    key,
                    stack: Stack {
                        frames: stack.frames.clone(),
                        truncated: stack.truncated,
                        walk: stack.walk,
                        truncation: stack.truncation,
                        growth: None,
                        allocator: stack.allocator,
                        ..Stack::default()
                    },
                    largest: 0,
                    medians: Vec::new(),
                });
                groups.len() - 1
            });
            if let Some(group) = groups.get_mut(i) {
                group.add(stack);
            }
        }
    }
    let mut groups: Vec<Group> = groups.into_iter().map(Group::finish).collect();
    groups.sort_by(|a, b| {
        b.stack
            .bytes
            .cmp(&a.stack.bytes)
            .then(b.stack.count.cmp(&a.stack.count))
            .then_with(|| a.key.cmp(&b.key))
    });

    let totals = reports
        .iter()
        .fold(Totals::default(), |t, r| add_totals(t, r.totals));
    let stats = reports
        .iter()
        .fold(Stats::default(), |s, r| add_stats(&s, &r.stats));
    let (start_unix_secs, duration_secs) = span(reports);
    Report {
        version: SCHEMA_VERSION,
        target: merged_target(reports, start_unix_secs),
        // Stacks are matched by their frames whatever process held them: the
        // merged report is about one program, not a list of processes.
        selection: None,
        processes: Vec::new(),
        host: merged_host(reports),
        start_unix_secs,
        duration_secs,
        totals,
        stacks: groups.into_iter().map(|g| g.stack).collect(),
        stats,
        // The same --min-age everywhere carries over; a mix has no single meaning.
        min_age_secs: reports
            .first()
            .and_then(|r| r.min_age_secs)
            .filter(|age| reports.iter().all(|r| r.min_age_secs == Some(*age))),
        younger: reports.iter().filter_map(|r| r.younger).reduce(add_totals),
        // Snapshots of different runs do not line up in time.
        interval_secs: None,
        released: reports.iter().fold(Released::default(), |a, r| Released {
            at_exec: add_totals(a.at_exec, r.released.at_exec),
            at_exit: add_totals(a.at_exit, r.released.at_exit),
        }),
        sampling: crate::model::Sampling::merged(reports.iter().map(|r| r.sampling)),
        // The optional sources (--mmap, --kernel) are not merged: their stacks
        // are apart from the heap's and a merge of them is yet to be written.
        mmap: None,
        kernel: None,
        probes: Vec::new(),
        // Profiles over time of different runs do not line up either.
        allocations: None,
        peak: None,
        timeline: None,
    }
}

fn add_totals(a: Totals, b: Totals) -> Totals {
    Totals {
        bytes: a.bytes.saturating_add(b.bytes),
        count: a.count.saturating_add(b.count),
    }
}

/// The stacks of several reports that share frame names.
struct Group {
    key: Vec<String>,
    stack: Stack,
    /// Bytes of the stack whose frames `stack` carries.
    largest: u64,
    /// (median age, count) of every joined stack.
    medians: Vec<(f64, u64)>,
}

impl Group {
    fn add(&mut self, stack: &Stack) {
        if stack.bytes > self.largest {
            self.largest = stack.bytes;
            self.stack.frames.clone_from(&stack.frames);
        }
        self.stack.bytes = self.stack.bytes.saturating_add(stack.bytes);
        self.stack.count = self.stack.count.saturating_add(stack.count);
        self.stack.oldest_age_secs = self.stack.oldest_age_secs.max(stack.oldest_age_secs);
        self.medians.push((stack.median_age_secs, stack.count));
        // Sampled: recorded blocks add up, errors of independent runs combine.
        if let Some(e) = stack.estimate {
            let sum = self.stack.estimate.get_or_insert_with(Default::default);
            sum.recorded = sum.recorded.saturating_add(e.recorded);
            sum.bytes_stderr = sum.bytes_stderr.hypot(e.bytes_stderr);
            sum.count_stderr = sum.count_stderr.hypot(e.count_stderr);
        }
    }

    fn finish(mut self) -> Group {
        self.stack.median_age_secs = weighted_median(&mut self.medians);
        self
    }
}

/// The value at the middle of `values` weighted by their counts (0 when empty).
fn weighted_median(values: &mut [(f64, u64)]) -> f64 {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u64 = values.iter().map(|v| v.1).fold(0, u64::saturating_add);
    let half = total.div_ceil(2).max(1);
    let mut seen = 0u64;
    for &(value, count) in values.iter() {
        seen = seen.saturating_add(count);
        if seen >= half {
            return value;
        }
    }
    values.last().map_or(0.0, |v| v.0)
}

fn add_stats(a: &Stats, b: &Stats) -> Stats {
    Stats {
        allocs: a.allocs.saturating_add(b.allocs),
        heap_events_lost: a.heap_events_lost.saturating_add(b.heap_events_lost),
        frees: a.frees.saturating_add(b.frees),
        failed_allocs: a.failed_allocs.saturating_add(b.failed_allocs),
        frees_unknown: a.frees_unknown.saturating_add(b.frees_unknown),
        nested_calls: a.nested_calls.saturating_add(b.nested_calls),
        live_map_full: a.live_map_full.saturating_add(b.live_map_full),
        live_map_full_bytes: a.live_map_full_bytes.saturating_add(b.live_map_full_bytes),
        stack_lost: a.stack_lost.saturating_add(b.stack_lost),
        stack_map_full: a.stack_map_full.saturating_add(b.stack_map_full),
        stack_no_room: a.stack_no_room.saturating_add(b.stack_no_room),
        exits_not_noted: a.exits_not_noted.saturating_add(b.exits_not_noted),
        return_without_entry: a
            .return_without_entry
            .saturating_add(b.return_without_entry),
        pending_map_full: a.pending_map_full.saturating_add(b.pending_map_full),
        pending_stale: a.pending_stale.saturating_add(b.pending_stale),
        stack_collisions: a.stack_collisions.saturating_add(b.stack_collisions),
        stacks_freed: a.stacks_freed.saturating_add(b.stacks_freed),
        forks_not_followed: a.forks_not_followed.saturating_add(b.forks_not_followed),
        unwind: a.unwind.merged(&b.unwind),
        python: a.python.merged(&b.python),
    }
}

/// Start and duration of the set: earliest start to latest end when every
/// start is known, else no start and the longest duration.
fn span(reports: &[Report]) -> (f64, f64) {
    let known = reports.iter().all(|r| r.start_unix_secs > 0.0);
    if !known || reports.is_empty() {
        let longest = reports.iter().map(|r| r.duration_secs).fold(0.0, f64::max);
        return (0.0, longest);
    }
    let start = reports
        .iter()
        .map(|r| r.start_unix_secs)
        .fold(f64::INFINITY, f64::min);
    let end = reports
        .iter()
        .map(|r| r.start_unix_secs + r.duration_secs)
        .fold(f64::NEG_INFINITY, f64::max);
    (start, end - start)
}

/// The distinct values of `f` over `reports`, in first-seen order.
fn distinct<'a>(reports: &'a [Report], f: impl Fn(&'a Report) -> &'a str) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for r in reports {
        let v = f(r);
        if !v.is_empty() && !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen
}

/// The host of the reports when they share one, else the distinct host names
/// (boot id and kernel only when they agree).
fn merged_host(reports: &[Report]) -> Host {
    let agree = |f: fn(&Host) -> &String| {
        let values = distinct(reports, |r| f(&r.host).as_str());
        if values.len() == 1 {
            values[0].to_string()
        } else {
            String::new()
        }
    };
    Host {
        hostname: distinct(reports, |r| &r.host.hostname).join(","),
        boot_id: agree(|h| &h.boot_id),
        kernel: agree(|h| &h.kernel),
    }
}

fn merged_target(reports: &[Report], start_unix_secs: f64) -> Target {
    let pids: BTreeSet<u32> = reports.iter().map(|r| r.target.pid).collect();
    let same_process = pids.len() == 1;
    let cmdlines = distinct(reports, |r| &r.target.cmdline);
    let cmdline = if same_process || reports.len() <= 1 {
        cmdlines.join(" | ")
    } else {
        let who: Vec<String> = reports
            .iter()
            .map(|r| format!("pid {} ({})", r.target.pid, r.target.comm))
            .collect();
        format!("merged from {} reports: {}", reports.len(), who.join(", "))
    };
    // Only meaningful for one process: when it exited, relative to the merged start.
    let exited_after_secs = if same_process {
        reports
            .iter()
            .filter_map(|r| {
                r.target
                    .exited_after_secs
                    .map(|e| e + (r.start_unix_secs - start_unix_secs).max(0.0))
            })
            .reduce(f64::max)
    } else {
        None
    };
    Target {
        pid: if same_process {
            pids.into_iter().next().unwrap_or(0)
        } else {
            0
        },
        comm: distinct(reports, |r| &r.target.comm).join(","),
        cmdline,
        allocator: distinct(reports, |r| &r.target.allocator).join(", "),
        exited_after_secs,
        ..Target::default()
    }
}

/// The folded stacks of `before` and `after` (as `--format folded` writes
/// them), the two inputs of inferno's differential flame graph.
pub fn diff_folded(before: &Report, after: &Report) -> (String, String) {
    let folded = |report: &Report| {
        let mut s = String::new();
        for (stack, bytes) in fold(report, Frame::display_name) {
            s.push_str(&stack);
            s.push(' ');
            s.push_str(&bytes.to_string());
            s.push('\n');
        }
        s
    };
    (folded(before), folded(after))
}

/// Writes a differential flame graph of `after` against `before` to `out`.
///
/// Widths are the outstanding bytes of `after`; frames are red where they grew
/// and blue where they shrank (stacks gone in `after` have no width). Hex
/// addresses are masked so that unsymbolized frames of different runs match.
/// An `after` without outstanding bytes gives a small SVG saying so.
pub fn render_diff_svg(
    before: &Report,
    after: &Report,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let title = opts.title.clone().unwrap_or_else(|| {
        let who = |r: &Report| format!("pid {} ({})", r.target.pid, r.target.comm);
        format!(
            "memprof: outstanding memory, {} vs {}",
            who(before),
            who(after)
        )
    });
    let subtitle = format!(
        "before: {} in {} allocations; after: {} in {} allocations; red grew, blue shrank",
        human_bytes(before.totals.bytes),
        before.totals.count,
        human_bytes(after.totals.bytes),
        after.totals.count,
    );
    let (folded_before, folded_after) = diff_folded(before, after);
    let mut merged = Vec::new();
    let diff_opts = inferno::differential::Options {
        normalize: false,
        strip_hex: true,
    };
    inferno::differential::from_readers(
        diff_opts,
        folded_before.as_bytes(),
        folded_after.as_bytes(),
        &mut merged,
    )
    .context("inferno could not combine the folded stacks")?;
    let merged = String::from_utf8_lossy(&merged);
    let lines: Vec<String> = merged
        .lines()
        .filter(|line| line.rsplit(' ').next().is_some_and(|after| after != "0"))
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return message_svg(
            &title,
            Some(&subtitle),
            "no outstanding allocations in the later report",
            out,
        );
    }
    flamegraph(
        &lines,
        title,
        Some(subtitle),
        opts.color,
        &BTreeSet::new(),
        out,
    )
}

/// One stack's change between two reports, matched by frame names.
#[derive(Clone, Debug, PartialEq)]
pub struct StackDelta {
    /// Frame names, innermost first.
    pub frames: Vec<String>,
    pub before: Totals,
    pub after: Totals,
}

impl StackDelta {
    /// Outstanding bytes gained (negative: released).
    pub fn delta_bytes(&self) -> i128 {
        i128::from(self.after.bytes) - i128::from(self.before.bytes)
    }
}

/// Every stack of either report with its bytes before and after, largest
/// change first (ties by frame names).
///
/// Stacks are matched by frame names, so the same code at other addresses (a
/// later run) is one stack; stacks of one report with the same names are
/// summed. A stack found on one side only has zero totals on the other.
/// Unchanged stacks are included, with a delta of 0.
pub fn stack_deltas(before: &Report, after: &Report) -> Vec<StackDelta> {
    let mut by_key: HashMap<Vec<String>, StackDelta> = HashMap::new();
    for (report, is_after) in [(before, false), (after, true)] {
        for stack in &report.stacks {
            let frames: Vec<String> = stack.frames.iter().map(Frame::display_name).collect();
            let entry = by_key.entry(frames.clone()).or_insert_with(|| StackDelta {
                frames,
                before: Totals::default(),
                after: Totals::default(),
            });
            let side = if is_after {
                &mut entry.after
            } else {
                &mut entry.before
            };
            side.bytes = side.bytes.saturating_add(stack.bytes);
            side.count = side.count.saturating_add(stack.count);
        }
    }
    let mut deltas: Vec<StackDelta> = by_key.into_values().collect();
    deltas.sort_by(|a, b| {
        b.delta_bytes()
            .abs()
            .cmp(&a.delta_bytes().abs())
            .then_with(|| a.frames.cmp(&b.frames))
    });
    deltas
}

/// Writes a text report of what changed from `before` to `after`.
///
/// The header gives both totals and their change; then the stacks whose bytes
/// changed, largest change first ([`stack_deltas`]), at most `opts.top` of them
/// (0 shows all), each with its frame names; or `no stack changed`.
pub fn render_diff_text(
    before: &Report,
    after: &Report,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let who = |r: &Report| format!("pid {} ({})", r.target.pid, r.target.comm);
    writeln!(out, "memprof diff: {} -> {}", who(before), who(after))?;
    let delta = i128::from(after.totals.bytes) - i128::from(before.totals.bytes);
    writeln!(
        out,
        "outstanding: {} in {} allocations -> {} in {} allocations ({})",
        human_bytes(before.totals.bytes),
        before.totals.count,
        human_bytes(after.totals.bytes),
        after.totals.count,
        signed_bytes(delta),
    )?;
    let deltas: Vec<StackDelta> = stack_deltas(before, after)
        .into_iter()
        .filter(|d| d.delta_bytes() != 0)
        .collect();
    if deltas.is_empty() {
        writeln!(out, "\nno stack changed")?;
        return Ok(());
    }
    let shown = if opts.top == 0 {
        deltas.len()
    } else {
        opts.top.min(deltas.len())
    };
    writeln!(
        out,
        "\n{shown} of {} changed stacks, largest change first:",
        deltas.len()
    )?;
    for (rank, d) in deltas.iter().take(shown).enumerate() {
        writeln!(
            out,
            "\n#{:<3} {} ({} -> {} bytes, {} -> {} allocations)",
            rank + 1,
            signed_bytes(d.delta_bytes()),
            d.before.bytes,
            d.after.bytes,
            d.before.count,
            d.after.count,
        )?;
        if d.frames.is_empty() {
            writeln!(out, "      [stack lost]")?;
        }
        for name in &d.frames {
            writeln!(out, "      {name}")?;
        }
    }
    Ok(())
}

fn signed_bytes(delta: i128) -> String {
    let magnitude = human_bytes(u64::try_from(delta.unsigned_abs()).unwrap_or(u64::MAX));
    if delta < 0 {
        format!("-{magnitude}")
    } else {
        format!("+{magnitude}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Growth;

    fn frame(name: &str, addr: u64) -> Frame {
        Frame {
            addr,
            function: Some(name.to_string()),
            ..Frame::default()
        }
    }

    fn stack(bytes: u64, count: u64, median: f64, names: &[&str], addr: u64) -> Stack {
        Stack {
            bytes,
            count,
            oldest_age_secs: median * 2.0,
            median_age_secs: median,
            frames: names.iter().map(|n| frame(n, addr)).collect(),
            truncated: false,
            walk: None,
            truncation: None,
            growth: None,
            pid: None,
            estimate: None,
            allocator: Default::default(),
        }
    }

    fn report(pid: u32, start: f64, stacks: Vec<Stack>) -> Report {
        let totals = Totals {
            bytes: stacks.iter().map(|s| s.bytes).sum(),
            count: stacks.iter().map(|s| s.count).sum(),
        };
        Report {
            version: SCHEMA_VERSION,
            target: Target {
                pid,
                comm: format!("app{pid}"),
                cmdline: format!("app{pid} --run"),
                allocator: "/lib/libc.so.6".to_string(),
                ..Target::default()
            },
            start_unix_secs: start,
            duration_secs: 10.0,
            totals,
            stacks,
            stats: Stats {
                allocs: totals.count,
                live_map_full: 1,
                ..Stats::default()
            },
            ..Report::default()
        }
    }

    #[test]
    fn merge_names_every_host_and_keeps_what_they_share() {
        let host = |name: &str, boot: &str| Host {
            hostname: name.to_string(),
            boot_id: boot.to_string(),
            kernel: "6.18.0".to_string(),
        };
        let mut a = report(1, 100.0, vec![]);
        let mut b = report(2, 100.0, vec![]);
        let mut c = report(3, 100.0, vec![]);
        a.host = host("web-1", "b1");
        b.host = host("web-2", "b2");
        c.host = host("web-1", "b1");
        let m = merge(&[a.clone(), b, c.clone()]);
        assert_eq!(m.host, host("web-1,web-2", ""));
        assert_eq!(merge(&[a.clone(), c]).host, a.host);
    }

    #[test]
    fn merge_combines_the_estimates_of_sampled_stacks() {
        let sampled = |recorded: u64, stderr: f64| {
            let mut s = stack(
                64 * recorded * 10,
                64 * recorded,
                1.0,
                &["leak", "main"],
                0x10,
            );
            s.estimate = Some(crate::model::StackEstimate {
                recorded,
                bytes_stderr: stderr * 10.0,
                count_stderr: stderr,
            });
            s
        };
        let m = merge(&[
            report(1, 100.0, vec![sampled(9, 3.0)]),
            report(2, 100.0, vec![sampled(16, 4.0)]),
        ]);
        assert_eq!(m.stacks.len(), 1);
        let e = m.stacks[0].estimate.unwrap();
        assert_eq!(e.recorded, 25);
        assert!((e.count_stderr - 5.0).abs() < 1e-12, "{e:?}");
        assert!((e.bytes_stderr - 50.0).abs() < 1e-9, "{e:?}");
        // Stacks of full tracking stay without one.
        let full = merge(&[report(1, 100.0, vec![stack(10, 1, 1.0, &["f"], 1)])]);
        assert_eq!(full.stacks[0].estimate, None);
    }

    #[test]
    fn merge_joins_by_names_and_sums() {
        // Same names at different addresses (another run): joined.
        let a = report(
            1,
            100.0,
            vec![
                stack(100, 1, 1.0, &["leak", "main"], 0x10),
                stack(5, 5, 9.0, &[], 0),
            ],
        );
        let b = report(
            1,
            105.0,
            vec![
                stack(300, 3, 4.0, &["leak", "main"], 0x20),
                stack(50, 1, 2.0, &["other", "main"], 0x30),
                stack(7, 1, 3.0, &[], 0),
            ],
        );
        let m = merge(&[a, b]);
        assert_eq!(m.version, SCHEMA_VERSION);
        assert_eq!(
            m.totals,
            Totals {
                bytes: 462,
                count: 11
            }
        );
        assert_eq!(m.stats.allocs, 11);
        assert_eq!(m.stats.live_map_full, 2);
        assert_eq!(m.start_unix_secs, 100.0);
        assert_eq!(m.duration_secs, 15.0);
        assert_eq!(m.target.pid, 1);
        assert_eq!(m.target.cmdline, "app1 --run");

        let summary: Vec<_> = m
            .stacks
            .iter()
            .map(|s| (s.bytes, s.count, s.frames.len()))
            .collect();
        assert_eq!(summary, [(400, 4, 2), (50, 1, 2), (12, 6, 0)]);
        let leak = &m.stacks[0];
        // Frames of the largest contributor.
        assert_eq!(leak.frames[0].addr, 0x20);
        assert_eq!(leak.oldest_age_secs, 8.0);
        // Medians 1.0 (1 allocation) and 4.0 (3 allocations): 4.0.
        assert_eq!(leak.median_age_secs, 4.0);
    }

    #[test]
    fn merge_carries_min_age_only_when_the_same_everywhere() {
        let young = |bytes, count| Some(Totals { bytes, count });
        let mut a = report(1, 100.0, vec![stack(10, 1, 1.0, &["f"], 1)]);
        a.min_age_secs = Some(30.0);
        a.younger = young(100, 2);
        a.interval_secs = Some(5.0);
        a.stacks[0].growth = Some(Growth {
            samples: vec![0, 10],
            bytes_per_sec: 2.0,
            growing: true,
        });
        let mut b = a.clone();
        b.younger = young(50, 1);

        let m = merge(&[a.clone(), b.clone()]);
        assert_eq!(m.min_age_secs, Some(30.0));
        assert_eq!(m.younger, young(150, 3));
        // Snapshots of different runs do not line up: no interval, no growth.
        assert_eq!(m.interval_secs, None);
        assert_eq!(m.stacks[0].growth, None);

        // Another --min-age, or none, somewhere: no single meaning.
        let mut c = b.clone();
        c.min_age_secs = Some(10.0);
        let m = merge(&[a.clone(), b.clone(), c]);
        assert_eq!(m.min_age_secs, None);
        assert_eq!(m.younger, young(200, 4));
        let mut d = b.clone();
        d.min_age_secs = None;
        d.younger = None;
        let m = merge(&[a.clone(), d.clone()]);
        assert_eq!(m.min_age_secs, None);
        assert_eq!(m.younger, young(100, 2));
        let m = merge(&[d.clone(), a]);
        assert_eq!(m.min_age_secs, None);

        // No report with --min-age: nothing younger was measured.
        let m = merge(&[d.clone(), d]);
        assert_eq!((m.min_age_secs, m.younger), (None, None));
        assert_eq!(merge(&[]).younger, None);
    }

    #[test]
    fn merge_of_several_processes() {
        let a = report(1, 100.0, vec![stack(1, 1, 1.0, &["f"], 1)]);
        let mut b = report(2, 100.0, vec![stack(1, 1, 1.0, &["f"], 1)]);
        b.target.exited_after_secs = Some(3.0);
        let m = merge(&[a, b]);
        assert_eq!(m.target.pid, 0);
        assert_eq!(m.target.comm, "app1,app2");
        assert_eq!(
            m.target.cmdline,
            "merged from 2 reports: pid 1 (app1), pid 2 (app2)"
        );
        assert_eq!(m.target.allocator, "/lib/libc.so.6");
        assert_eq!(m.target.exited_after_secs, None);
        assert_eq!(m.stacks.len(), 1);
        assert_eq!(m.stacks[0].bytes, 2);
    }

    #[test]
    fn merge_of_nothing() {
        let m = merge(&[]);
        assert_eq!(m.version, SCHEMA_VERSION);
        assert!(m.stacks.is_empty());
        assert_eq!(m.totals, Totals::default());
    }

    #[test]
    fn weighted_medians() {
        assert_eq!(weighted_median(&mut []), 0.0);
        assert_eq!(weighted_median(&mut [(5.0, 1)]), 5.0);
        assert_eq!(weighted_median(&mut [(9.0, 1), (1.0, 1), (5.0, 1)]), 5.0);
        assert_eq!(weighted_median(&mut [(9.0, 10), (1.0, 1), (5.0, 1)]), 9.0);
        assert_eq!(weighted_median(&mut [(2.0, 0)]), 2.0);
    }

    #[test]
    fn folded_pair() {
        let before = report(1, 1.0, vec![stack(10, 1, 1.0, &["leak", "main"], 1)]);
        let after = report(
            1,
            2.0,
            vec![
                stack(30, 1, 1.0, &["leak", "main"], 1),
                stack(5, 1, 1.0, &[], 0),
            ],
        );
        let (b, a) = diff_folded(&before, &after);
        assert_eq!(b, "main;leak 10\n");
        assert_eq!(a, "[stack lost] 5\nmain;leak 30\n");
    }

    /// (frame names, bytes before, bytes after) of each delta, in order.
    fn summary(deltas: &[StackDelta]) -> Vec<(String, u64, u64)> {
        deltas
            .iter()
            .map(|d| (d.frames.join(";"), d.before.bytes, d.after.bytes))
            .collect()
    }

    #[test]
    fn deltas_match_by_names_not_addresses() {
        let before = report(1, 1.0, vec![stack(10, 1, 1.0, &["leak", "main"], 0x10)]);
        // Same names at other addresses, split over two stacks of the later run.
        let after = report(
            2,
            2.0,
            vec![
                stack(30, 3, 1.0, &["leak", "main"], 0x20),
                stack(5, 2, 1.0, &["leak", "main"], 0x30),
            ],
        );
        let deltas = stack_deltas(&before, &after);
        assert_eq!(
            deltas,
            [StackDelta {
                frames: vec!["leak".to_string(), "main".to_string()],
                before: Totals {
                    bytes: 10,
                    count: 1
                },
                after: Totals {
                    bytes: 35,
                    count: 5
                },
            }]
        );
        assert_eq!(deltas[0].delta_bytes(), 25);
        // The same names in another order are another stack.
        let swapped = report(2, 2.0, vec![stack(10, 1, 1.0, &["main", "leak"], 0x10)]);
        assert_eq!(stack_deltas(&before, &swapped).len(), 2);
    }

    #[test]
    fn deltas_of_added_removed_and_lost_stacks() {
        let before = report(
            1,
            1.0,
            vec![
                stack(40, 4, 1.0, &["gone", "main"], 1),
                stack(7, 1, 1.0, &[], 0),
                stack(3, 1, 1.0, &["same"], 1),
            ],
        );
        let after = report(
            1,
            2.0,
            vec![
                stack(20, 2, 1.0, &["new", "main"], 1),
                stack(9, 3, 1.0, &[], 0),
                stack(3, 1, 1.0, &["same"], 2),
            ],
        );
        let deltas = stack_deltas(&before, &after);
        assert_eq!(
            summary(&deltas),
            [
                ("gone;main".to_string(), 40, 0),
                ("new;main".to_string(), 0, 20),
                // The stacks the kernel could not walk are one stack.
                (String::new(), 7, 9),
                // Unchanged stacks are there too, last.
                ("same".to_string(), 3, 3),
            ]
        );
        assert_eq!(deltas[0].after, Totals::default());
        assert_eq!(deltas[0].delta_bytes(), -40);
        assert_eq!(deltas[1].before, Totals::default());
        assert_eq!(deltas[2].after.count, 3);
        assert_eq!(deltas[3].delta_bytes(), 0);
    }

    #[test]
    fn deltas_ordered_by_size_of_change_then_names() {
        let before = report(
            1,
            1.0,
            vec![
                stack(100, 1, 1.0, &["b"], 1),
                stack(100, 1, 1.0, &["a"], 1),
                stack(50, 1, 1.0, &["shrinks"], 1),
            ],
        );
        let after = report(
            1,
            2.0,
            vec![
                stack(110, 1, 1.0, &["b"], 1),
                stack(90, 1, 1.0, &["a"], 1),
                stack(20, 1, 1.0, &["c"], 1),
            ],
        );
        // |-50| first, then +20, then the tie of -10 and +10 by frame names.
        assert_eq!(
            summary(&stack_deltas(&before, &after)),
            [
                ("shrinks".to_string(), 50, 0),
                ("c".to_string(), 0, 20),
                ("a".to_string(), 100, 90),
                ("b".to_string(), 100, 110),
            ]
        );
        // Reports in the other direction: same magnitudes, same order.
        assert_eq!(
            summary(&stack_deltas(&after, &before)),
            [
                ("shrinks".to_string(), 0, 50),
                ("c".to_string(), 20, 0),
                ("a".to_string(), 90, 100),
                ("b".to_string(), 110, 100),
            ]
        );
        assert!(stack_deltas(&report(1, 1.0, vec![]), &report(1, 1.0, vec![])).is_empty());
    }

    fn diff_text(before: &Report, after: &Report, top: usize) -> String {
        let opts = RenderOptions {
            top,
            ..RenderOptions::default()
        };
        let mut out = Vec::new();
        render_diff_text(before, after, &opts, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn diff_text_exact() {
        let before = report(
            1,
            1.0,
            vec![
                stack(1024, 1, 1.0, &["leak", "main"], 1),
                stack(4096, 2, 1.0, &["gone", "main"], 1),
                stack(8, 1, 1.0, &["same"], 1),
            ],
        );
        let after = report(
            2,
            2.0,
            vec![
                stack(3 << 20, 30, 1.0, &["leak", "main"], 2),
                stack(100, 5, 1.0, &[], 0),
                stack(8, 1, 1.0, &["same"], 2),
            ],
        );
        let expected = "\
memprof diff: pid 1 (app1) -> pid 2 (app2)
outstanding: 5.0 KiB in 4 allocations -> 3.0 MiB in 36 allocations (+3.0 MiB)

3 of 3 changed stacks, largest change first:

#1   +3.0 MiB (1024 -> 3145728 bytes, 1 -> 30 allocations)
      leak
      main

#2   -4.0 KiB (4096 -> 0 bytes, 2 -> 0 allocations)
      gone
      main

#3   +100 B (0 -> 100 bytes, 0 -> 5 allocations)
      [stack lost]
";
        assert_eq!(diff_text(&before, &after, 20), expected);
        assert_eq!(diff_text(&before, &after, 0), expected);

        // --top 1: the largest change only, and the count of all of them.
        let top1 = diff_text(&before, &after, 1);
        assert!(top1.contains("\n1 of 3 changed stacks, largest change first:\n"));
        assert!(top1.contains("\n#1   +3.0 MiB"), "{top1}");
        assert!(!top1.contains("#2"), "{top1}");
        // A decrease overall is signed too.
        let back = diff_text(&after, &before, 20);
        assert!(back.contains("(-3.0 MiB)\n"), "{back}");
    }

    #[test]
    fn diff_text_without_changes() {
        let before = report(1, 1.0, vec![stack(10, 1, 1.0, &["leak"], 1)]);
        let after = report(1, 2.0, vec![stack(10, 1, 1.0, &["leak"], 2)]);
        assert_eq!(
            diff_text(&before, &after, 20),
            "memprof diff: pid 1 (app1) -> pid 1 (app1)\n\
             outstanding: 10 B in 1 allocations -> 10 B in 1 allocations (+0 B)\n\
             \n\
             no stack changed\n"
        );
        let empty = report(1, 1.0, vec![]);
        assert!(diff_text(&empty, &empty, 20).ends_with("\nno stack changed\n"));
    }

    #[test]
    fn diff_svg() {
        let before = report(
            1,
            1.0,
            vec![
                stack(10, 1, 1.0, &["leak", "main"], 1),
                stack(40, 1, 1.0, &["gone", "main"], 1),
            ],
        );
        let after = report(
            2,
            2.0,
            vec![
                stack(30, 1, 1.0, &["leak", "main"], 1),
                stack(20, 1, 1.0, &["new", "main"], 1),
            ],
        );
        let mut out = Vec::new();
        render_diff_svg(&before, &after, &RenderOptions::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("pid 1 (app1) vs pid 2 (app2)"));
        // leak grew by 20 of the 50 bytes after: +40%.
        assert!(svg.contains("leak (30 bytes, 60.00%; +40.00%)"), "{svg}");
        assert!(svg.contains("new (20 bytes, 40.00%; +40.00%)"), "{svg}");
        assert!(!svg.contains("gone ("));
    }

    #[test]
    fn diff_svg_of_empty_after() {
        let before = report(1, 1.0, vec![stack(10, 1, 1.0, &["leak"], 1)]);
        let after = report(1, 2.0, vec![]);
        let mut out = Vec::new();
        render_diff_svg(&before, &after, &RenderOptions::default(), &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("no outstanding allocations in the later report"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
