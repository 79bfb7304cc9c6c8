//! The human-readable report: what was profiled, how much is outstanding,
//! the largest stacks, and how complete the data is.
//!
//! With `--min-age` the header says which allocations were counted and how
//! much younger memory was left out. With `--interval` it says which stacks
//! grew, before anything else, each stack gets a growth line, and the stacks
//! are listed in the order of the report (memprof ranks growing stacks first).

use std::io::Write;

use super::{
    default_title, human_bytes, human_secs, relative, sampling_statement, stacks_by_bytes,
    RenderOptions,
};
use crate::model::{
    Frame, Growth, HeapAllocator, Report, Stack, Stats, Totals, Truncation, Walk, NO_ROOM_FRAME,
};

/// Indentation of the frames under a stack's heading.
const FRAME_INDENT: &str = "      ";

/// Indentation of the growth line under a stack's heading (that of its text).
const GROWTH_INDENT: &str = "    ";

/// Most snapshot values shown on a growth line; longer series are thinned evenly.
const MAX_GROWTH_VALUES: usize = 8;

/// Most growing stacks named in the header's growth summary.
const MAX_NAMED_GROWING: usize = 3;

pub(crate) fn render(
    report: &Report,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    header(report, opts, out)?;
    stacks(report, opts, out)?;
    for extra in super::extra_sources(report) {
        source_section(&extra, opts, out)?;
    }
    super::profiles::text_sections(report, opts, out)?;
    stats(&report.stats, out)?;
    Ok(())
}

/// The section of one optional source (`--mmap`, `--kernel`), after the heap's
/// stacks: what it measures, its totals, its largest stacks and its counters.
fn source_section(
    extra: &super::ExtraSource<'_>,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let source = extra.source;
    writeln!(out, "{}", extra.title)?;
    writeln!(out, "{}", "-".repeat(extra.title.chars().count()))?;
    writeln!(out, "{}", wrap(&source.description, 78))?;
    let totals = source.totals;
    writeln!(
        out,
        "outstanding:  {} ({} bytes) in {} {} from {} {}",
        human_bytes(totals.bytes),
        totals.bytes,
        totals.count,
        plural(totals.count, extra.unit, extra.units),
        source.stacks.len(),
        plural(source.stacks.len() as u64, "stack", "stacks"),
    )?;
    if !source.released.is_zero() {
        writeln!(
            out,
            "released:     {} ({} bytes) in {} {} left out: the program that held them ended",
            human_bytes(source.released.bytes),
            source.released.bytes,
            source.released.count,
            plural(source.released.count, extra.unit, extra.units),
        )?;
    }
    let shown = if opts.top == 0 {
        source.stacks.len()
    } else {
        opts.top.min(source.stacks.len())
    };
    let sum = totals
        .bytes
        .max(source.stacks.iter().map(|s| s.bytes).sum::<u64>());
    for (rank, stack) in source.stacks.iter().take(shown).enumerate() {
        let pct = if sum == 0 {
            0.0
        } else {
            100.0 * stack.bytes as f64 / sum as f64
        };
        writeln!(out)?;
        writeln!(
            out,
            "#{}  {} ({} bytes, {pct:.1}%) in {} {}; oldest {}, median age {}",
            rank + 1,
            human_bytes(stack.bytes),
            stack.bytes,
            stack.count,
            plural(stack.count, extra.unit, extra.units),
            human_secs(stack.oldest_age_secs),
            human_secs(stack.median_age_secs),
        )?;
        if stack.frames.is_empty() {
            writeln!(out, "{FRAME_INDENT}[stack lost]")?;
        }
        for frame in &stack.frames {
            writeln!(out, "{FRAME_INDENT}{}", frame_line(frame))?;
        }
    }
    let rest = &source.stacks[shown..];
    if !rest.is_empty() {
        let bytes: u64 = rest.iter().map(|s| s.bytes).sum();
        writeln!(out)?;
        writeln!(
            out,
            "... and {} more {} with {} ({bytes} bytes).",
            rest.len(),
            plural(rest.len() as u64, "stack", "stacks"),
            human_bytes(bytes),
        )?;
    }
    writeln!(out)?;
    let counters: Vec<String> = source
        .stats
        .iter()
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    writeln!(
        out,
        "{}",
        wrap(&format!("counters: {}", counters.join(", ")), 78)
    )?;
    writeln!(out)?;
    Ok(())
}

/// `text` broken into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines.join("\n")
}

fn header(report: &Report, opts: &RenderOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let t = &report.target;
    let title = opts.title.clone().unwrap_or_else(|| default_title(report));
    writeln!(out, "{title}")?;
    writeln!(out, "{}", "=".repeat(title.chars().count()))?;
    if !t.cmdline.is_empty() && report.selection.is_none() {
        writeln!(out, "command:      {}", t.cmdline)?;
    }
    if !t.allocator.is_empty() {
        writeln!(out, "allocator:    {}", t.allocator)?;
    }
    let host = &report.host;
    if !host.hostname.is_empty() {
        let kernel = match host.kernel.as_str() {
            "" => String::new(),
            k => format!(", Linux {k}"),
        };
        writeln!(out, "host:         {}{kernel}", host.hostname)?;
    }
    if let Some(start) = utc_timestamp(report.start_unix_secs) {
        writeln!(out, "started:      {start}")?;
    }
    writeln!(out, "duration:     {}", human_secs(report.duration_secs))?;
    if t.execs > 0 {
        let at_exec = report.released.at_exec;
        writeln!(
            out,
            "exec:         the process called exec {} {}{}; the {} {} ({}) of the program it \
             replaced went with it and are not shown",
            t.execs,
            plural(t.execs, "time", "times"),
            t.exec_after_secs
                .map(|s| format!(" (last {} into the run)", human_secs(s)))
                .unwrap_or_default(),
            at_exec.count,
            plural(at_exec.count, "allocation", "allocations"),
            human_bytes(at_exec.bytes),
        )?;
    }
    if let Some(exited) = t.exited_after_secs {
        let at_exit = report.released.at_exit;
        let what = if at_exit.count > 0 {
            format!(
                "; the {} {} ({}) it still held went with it and are not shown (--at-exit shows them)",
                at_exit.count,
                plural(at_exit.count, "allocation", "allocations"),
                human_bytes(at_exit.bytes),
            )
        } else {
            String::new()
        };
        writeln!(
            out,
            "process:      exited {} after memprof attached{what}",
            human_secs(exited)
        )?;
    }
    let totals = report.totals;
    writeln!(
        out,
        "outstanding:  {} ({} bytes) in {} allocations from {} {}",
        human_bytes(totals.bytes),
        totals.bytes,
        totals.count,
        report.stacks.len(),
        plural(report.stacks.len() as u64, "stack", "stacks"),
    )?;
    if let Some(statement) = sampling_statement(report) {
        writeln!(out, "sampling:     {statement}")?;
    }
    if let Some(min_age) = report.min_age_secs {
        writeln!(
            out,
            "min age:      {}",
            min_age_note(min_age, report.younger)
        )?;
    }
    if let Some(interval) = report.interval_secs {
        writeln!(
            out,
            "snapshots:    every {}; stacks that kept growing are ranked first, fastest first",
            human_secs(interval)
        )?;
        writeln!(
            out,
            "growth:       {}",
            growth_summary(&listing_order(report))
        )?;
    }
    if report.stats.lost_data() {
        writeln!(out, "{}", lost_data_warning(&report.stats))?;
    }
    if let Some(note) = no_room_note(report) {
        writeln!(out, "{note}")?;
    }
    if let Some(walks) = walk_summary(report) {
        writeln!(out, "stacks:       {walks}")?;
    }
    if let Some(warning) = truncated_warning(report) {
        writeln!(out, "{warning}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Only allocations made while memprof was attached are seen: memory allocated\n\
         before attaching is not counted (its frees are counted as frees_unknown)."
    )?;
    writeln!(out)?;
    Ok(())
}

/// What `--min-age` left out: `only allocations at least 30.0 s old count ...`.
fn min_age_note(min_age: f64, younger: Option<Totals>) -> String {
    let mut note = format!(
        "only allocations at least {} old count as leak suspects",
        human_secs(min_age)
    );
    match younger {
        Some(y) if y.count > 0 || y.bytes > 0 => note.push_str(&format!(
            "; {} ({} bytes) in {} younger {} left out",
            human_bytes(y.bytes),
            y.bytes,
            y.count,
            plural(y.count, "allocation was", "allocations were"),
        )),
        Some(_) => note.push_str("; no younger allocation was outstanding"),
        None => {}
    }
    note
}

/// The stacks in the order they are listed: as given when the report has
/// snapshots (memprof ranks growing stacks first) or many processes (grouped
/// by process, the largest first), else largest first.
fn listing_order(report: &Report) -> Vec<&Stack> {
    if report.interval_secs.is_some() || !report.processes.is_empty() {
        report.stacks.iter().collect()
    } else {
        stacks_by_bytes(report)
    }
}

/// `2 of 5 stacks grow (+34.2 KiB/s in all): #1 leak_buffer +34.1 KiB/s, ...`,
/// naming each growing stack by its rank in `listed` and its innermost frame.
fn growth_summary(listed: &[&Stack]) -> String {
    let growing: Vec<(usize, &Stack, &Growth)> = listed
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.growth
                .as_ref()
                .filter(|g| g.growing)
                .map(|g| (i + 1, *s, g))
        })
        .collect();
    if growing.is_empty() {
        let snapshots = listed
            .iter()
            .filter_map(|s| s.growth.as_ref().map(|g| g.samples.len()))
            .max()
            .unwrap_or(0);
        return if snapshots > 0 {
            format!(
                "no stack grew steadily over the {snapshots} {}",
                plural(snapshots as u64, "snapshot", "snapshots")
            )
        } else {
            "no stack grew steadily".to_string()
        };
    }
    let all: f64 = growing.iter().map(|(_, _, g)| g.bytes_per_sec).sum();
    let named: Vec<String> = growing
        .iter()
        .take(MAX_NAMED_GROWING)
        .map(|(rank, stack, g)| {
            let name = stack
                .frames
                .first()
                .map_or_else(|| "[stack lost]".to_string(), Frame::display_name);
            format!("#{rank} {name} {}", rate(g.bytes_per_sec))
        })
        .collect();
    let mut summary = format!(
        "{} of {} {} {} ({} in all): {}",
        growing.len(),
        listed.len(),
        plural(listed.len() as u64, "stack", "stacks"),
        plural(growing.len() as u64, "grows", "grow"),
        rate(all),
        named.join(", ")
    );
    if growing.len() > named.len() {
        summary.push_str(&format!(", and {} more", growing.len() - named.len()));
    }
    summary
}

/// A stack's growth line: the trend, then its outstanding bytes at (up to
/// [`MAX_GROWTH_VALUES`] evenly picked) snapshots; a flat stack says its size once.
fn growth_line(growth: &Growth) -> String {
    let samples = &growth.samples;
    let (Some(&first), Some(&last)) = (samples.first(), samples.last()) else {
        return "no snapshot taken".to_string();
    };
    let snapshots = format!(
        "{} {}",
        samples.len(),
        plural(samples.len() as u64, "snapshot", "snapshots")
    );
    let trend = if growth.growing {
        format!("growing {}", rate(growth.bytes_per_sec))
    } else if samples.iter().all(|&b| b == first) {
        return format!("flat at {} over {snapshots}", human_bytes(first));
    } else if last < first {
        format!("shrinking {}", rate(growth.bytes_per_sec))
    } else {
        format!("no steady growth ({})", rate(growth.bytes_per_sec))
    };
    let picked = pick_evenly(samples, MAX_GROWTH_VALUES);
    let values: Vec<String> = picked.iter().map(|&b| human_bytes(b)).collect();
    let mut line = format!("{trend} over {snapshots}: {}", values.join(", "));
    if picked.len() < samples.len() {
        line.push_str(&format!(" ({} of {} shown)", picked.len(), samples.len()));
    }
    line
}

/// At most `max` of `values`, evenly spread, always with the first and the last.
fn pick_evenly(values: &[u64], max: usize) -> Vec<u64> {
    let n = values.len();
    if n <= max || max < 2 {
        return values.iter().take(max).copied().collect();
    }
    let (span, steps) = (n - 1, max - 1);
    (0..max)
        .filter_map(|i| values.get((i * span + steps / 2) / steps).copied())
        .collect()
}

/// A signed rate in bytes per second: `+34.1 KiB/s`, `-512 B/s`, `+0.5 B/s`.
fn rate(bytes_per_sec: f64) -> String {
    if !bytes_per_sec.is_finite() {
        return "? B/s".to_string();
    }
    let sign = if bytes_per_sec < 0.0 { '-' } else { '+' };
    let abs = bytes_per_sec.abs();
    let magnitude = if abs < 10.0 {
        format!("{abs:.1} B")
    } else {
        human_bytes(abs.round() as u64)
    };
    format!("{sign}{magnitude}/s")
}

fn stacks(report: &Report, opts: &RenderOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    if report.stacks.is_empty() {
        let totals = report.totals;
        if totals.bytes == 0 && totals.count == 0 {
            match report.min_age_secs {
                Some(min_age) => writeln!(
                    out,
                    "no outstanding allocation is at least {} old",
                    human_secs(min_age)
                )?,
                None if report.stats.allocs == 0 && report.selection.is_some() => writeln!(
                    out,
                    "memprof saw no allocator call at all: the programs may call an allocator \
                     that was not probed (-v lists the probes), be statically linked, or have \
                     made no allocation while memprof was attached; this is not a sign of no leak"
                )?,
                None if report.stats.allocs == 0 => writeln!(
                    out,
                    "memprof saw no allocator call at all: the program may call an allocator \
                     that was not probed (probed: {}), be statically linked, or have made no \
                     allocation while memprof was attached; this is not a sign of no leak",
                    if report.target.allocator.is_empty() {
                        "none"
                    } else {
                        report.target.allocator.as_str()
                    }
                )?,
                None if report.released.at_exit.count > 0 && report.selection.is_some() => {
                    writeln!(
                        out,
                        "nothing is outstanding in the processes still running: those that \
                         exited during the run took {} with them (--at-exit lists what they \
                         held at exit)",
                        human_bytes(report.released.at_exit.bytes)
                    )?
                }
                None if report.released.at_exit.count > 0 => writeln!(
                    out,
                    "nothing is outstanding: the process exited and its memory went with it \
                     (--at-exit lists what it held at exit)"
                )?,
                None => writeln!(out, "no outstanding allocations were found")?,
            }
        } else {
            writeln!(
                out,
                "no stack is listed: the {} ({} bytes) outstanding are all in stacks below --min-size",
                human_bytes(totals.bytes),
                totals.bytes
            )?;
        }
        writeln!(out)?;
        return Ok(());
    }
    processes(report, out)?;
    let sorted = listing_order(report);
    // --top applies to each process of a run over many.
    let mut per_process: std::collections::HashMap<Option<u32>, usize> = Default::default();
    let (shown_stacks, rest): (Vec<&Stack>, Vec<&Stack>) = sorted.iter().partition(|s| {
        let n = per_process.entry(s.pid).or_default();
        *n += 1;
        opts.top == 0 || *n <= opts.top
    });
    let shown = shown_stacks.len();
    let top = if report.processes.is_empty() {
        format!("Top {shown}")
    } else {
        format!("Top {} of each process, {shown}", opts.top)
    };
    let order = if !report.processes.is_empty() {
        " by process, then by outstanding bytes"
    } else if report.interval_secs.is_some() {
        ", growing ones first, then by outstanding bytes"
    } else {
        " by outstanding bytes"
    };
    if shown == sorted.len() {
        writeln!(
            out,
            "{} {}{order}:",
            sorted.len(),
            plural(sorted.len() as u64, "stack", "stacks")
        )?;
    } else {
        writeln!(out, "{top} of {} stacks{order}:", sorted.len())?;
    }
    // Percentages are of the totals, or of the sum over the stacks if that is
    // larger (an inconsistent report), so they never exceed 100%.
    let listed: u64 = sorted.iter().map(|s| s.bytes).fold(0, u64::saturating_add);
    let sum = listed.max(report.totals.bytes);
    let mut process = None;
    for (rank, stack) in shown_stacks.iter().enumerate() {
        writeln!(out)?;
        if stack.pid.is_some() && stack.pid != process {
            process = stack.pid;
            let label = report.process_label(stack).unwrap_or_default();
            writeln!(out, "--- {label} ---")?;
        }
        stack_block(rank + 1, stack, sum, report, out)?;
    }
    if !rest.is_empty() {
        let bytes = rest.iter().map(|s| s.bytes).fold(0, u64::saturating_add);
        let count = rest.iter().map(|s| s.count).fold(0, u64::saturating_add);
        writeln!(out)?;
        writeln!(
            out,
            "... and {} more {} with {} ({} bytes) in {} {}.",
            rest.len(),
            plural(rest.len() as u64, "stack", "stacks"),
            human_bytes(bytes),
            bytes,
            count,
            plural(count, "allocation", "allocations"),
        )?;
    }
    if report.totals.bytes > listed {
        let bytes = report.totals.bytes - listed;
        let listed_count = sorted.iter().map(|s| s.count).fold(0, u64::saturating_add);
        let count = report.totals.count.saturating_sub(listed_count);
        writeln!(out)?;
        writeln!(
            out,
            "{} ({} bytes) in {} {} belong to stacks not listed in this report (below --min-size).",
            human_bytes(bytes),
            bytes,
            count,
            plural(count, "allocation", "allocations"),
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// In a run over many processes: those that held memory, most first.
fn processes(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    if report.processes.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{} {} by outstanding bytes:",
        report.processes.len(),
        plural(report.processes.len() as u64, "process", "processes")
    )?;
    let width = report
        .processes
        .iter()
        .map(|p| p.label().chars().count())
        .max()
        .unwrap_or(0);
    for (rank, p) in report.processes.iter().enumerate() {
        let mut line = format!(
            "  #{:<3} {:<width$}  {:>10} ({} bytes) in {} {}",
            rank + 1,
            p.label(),
            human_bytes(p.totals.bytes),
            p.totals.bytes,
            p.totals.count,
            plural(p.totals.count, "allocation", "allocations"),
        );
        if !p.allocator.is_empty() {
            line.push_str(&format!("; {}", p.allocator));
        }
        if p.exited {
            line.push_str("; exited");
        }
        if p.execs > 0 {
            line.push_str(&format!(
                "; called exec {} {}",
                p.execs,
                plural(p.execs, "time", "times")
            ));
        }
        writeln!(out, "{line}")?;
    }
    writeln!(out)?;
    Ok(())
}

fn stack_block(
    rank: usize,
    stack: &Stack,
    sum: u64,
    report: &Report,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let pct = if sum == 0 {
        0.0
    } else {
        100.0 * stack.bytes as f64 / sum as f64
    };
    // Sampled: the estimate's relative standard error, from its recorded blocks.
    let error = report
        .sampling
        .and_then(|s| {
            let (stderr, recorded) = match stack.estimate {
                Some(e) => (e.count_stderr, e.recorded),
                // A report from before per-stack estimates.
                None => (
                    s.relative_error(stack.count)? * stack.count as f64,
                    stack.count / s.rate.max(1),
                ),
            };
            Some(format!(
                "; estimate {} ({recorded} recorded)",
                relative(stderr, stack.count)
            ))
        })
        .unwrap_or_default();
    let walk = stack
        .walk
        .map(|w| format!(" [{}]", w.label()))
        .unwrap_or_default();
    writeln!(
        out,
        "#{rank}  {} ({} bytes, {pct:.1}%) in {} {}{}; oldest {}, median age {}{error}{walk}",
        human_bytes(stack.bytes),
        stack.bytes,
        stack.count,
        match stack.allocator {
            HeapAllocator::PymallocArena =>
                plural(stack.count, "pymalloc arena", "pymalloc arenas"),
            _ => plural(stack.count, "allocation", "allocations"),
        },
        // Said for blocks that are not malloc's: CPython's small objects.
        match stack.allocator {
            HeapAllocator::Pymalloc => format!(" of {}", stack.allocator.label()),
            HeapAllocator::Malloc | HeapAllocator::PymallocArena => String::new(),
        },
        human_secs(stack.oldest_age_secs),
        human_secs(stack.median_age_secs),
    )?;
    if let Some(growth) = &stack.growth {
        writeln!(out, "{GROWTH_INDENT}{}", growth_line(growth))?;
    }
    if stack.frames.is_empty() {
        writeln!(
            out,
            "{FRAME_INDENT}[stack lost: the kernel could not walk this stack]"
        )?;
    }
    for frame in &stack.frames {
        writeln!(out, "{FRAME_INDENT}{}", frame_line(frame))?;
    }
    if stack.truncated {
        let why = match (stack.walk, stack.truncation) {
            (Some(Walk::NoTable), None | Some(Truncation::FramePointers)) => {
                "walked by frame pointer: memprof had no unwind table of the process yet"
            }
            (_, t) => t.unwrap_or(Truncation::FramePointers).describe(),
        };
        writeln!(out, "{FRAME_INDENT}[the walk ended here: {why}]")?;
    }
    Ok(())
}

/// One frame: `function at file:line`, or `function (module+0xoffset)`
/// without debug information, or `module+0xoffset` when not even the
/// function is known (the offset is the ELF address in the module).
pub(super) fn frame_line(frame: &Frame) -> String {
    let mut line = frame.display_name();
    match (frame.location(), &frame.function, frame.module_name()) {
        (Some(loc), _, _) => {
            line.push_str(" at ");
            line.push_str(&loc);
        }
        (None, Some(_), Some(module)) => match frame.module_offset {
            Some(offset) => line.push_str(&format!(" ({module}+{offset:#x})")),
            None => line.push_str(&format!(" ({module} {:#x})", frame.addr)),
        },
        (None, Some(_), None) => {
            line.push_str(&format!(" ({:#x})", frame.addr));
        }
        // display_name() already is module+offset or the address.
        (None, None, _) => {}
    }
    if frame.inlined {
        line.push_str(" [inlined]");
    }
    line
}

fn stats(stats: &Stats, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "Stats:")?;
    let width = stats
        .named()
        .iter()
        .map(|(_, v)| v.to_string().len())
        .max()
        .unwrap_or(1);
    for (name, value) in stats.named() {
        let mut line = format!("  {name:<21} {value:>width$}");
        if value != 0 {
            if let Some(why) = explain(name) {
                line.push_str("  ");
                line.push_str(why);
            }
        }
        writeln!(out, "{line}")?;
    }
    render_unwind_stats(&stats.unwind, out)?;
    render_python_stats(&stats.python, out)?;
    if stats.lost_data() {
        writeln!(out)?;
        writeln!(out, "{}", lost_data_warning(stats))?;
    }
    Ok(())
}

/// What a nonzero counter means, for the counters that need saying.
fn explain(name: &str) -> Option<&'static str> {
    Some(match name {
        "failed_allocs" => "allocator calls returned NULL (nothing recorded)",
        "frees_unknown" => {
            "frees of blocks memprof did not see allocated: made before it attached, or glibc's \
             per-thread cache handed back at thread exit (expected, not an error)"
        }
        "nested_calls" => {
            "allocator calls made from inside another one, counted once at the outer call"
        }
        "live_map_full" => "allocations NOT tracked: the live-allocation map was full (--max-live)",
        "live_map_full_bytes" => "bytes of the allocations not tracked because of live_map_full",
        "stack_lost" => {
            "allocations whose stack could not be walked or stored, shown as [stack lost]"
        }
        "stack_map_full" => "allocations NOT counted: the stack map was full (--max-stacks)",
        "stack_no_room" => {
            "allocations counted without their stack, under [no room for the stack]: the \
             stack map was full (--max-stacks)"
        }
        "return_without_entry" => {
            "allocator returns without a matching entry (calls in flight at attach time)"
        }
        "pending_map_full" => {
            "allocations NOT tracked: the kernel could not allocate a thread's call record"
        }
        "pending_stale" => "allocator calls whose return never came (thread exited or longjmp)",
        "stack_collisions" => "allocations counted under another stack with the same hash",
        "exits_not_noted" => {
            "exits of recorded processes NOT noted (map full): they may be shown as alive"
        }
        "stacks_freed" => "stacks freed during the run once nothing outstanding used them",
        "forks_not_followed" => {
            "children NOT recorded: the set of recorded processes was full (--follow-forks)"
        }
        _ => return None,
    })
}

/// The note printed when some allocations are counted without their stack,
/// or None.
fn no_room_note(report: &Report) -> Option<String> {
    let n = report.stats.stack_no_room;
    if n == 0 {
        return None;
    }
    let (bytes, count) = report
        .stacks
        .iter()
        .filter(|s| s.frames.first().and_then(|f| f.function.as_deref()) == Some(NO_ROOM_FRAME))
        .fold((0u64, 0u64), |(b, c), s| {
            (b.saturating_add(s.bytes), c.saturating_add(s.count))
        });
    Some(format!(
        "NOTE: {n} {} found no room in the stack map and are counted without their stack \
         (outstanding of them: {bytes} bytes in {count} blocks, shown as {NO_ROOM_FRAME}); the totals \
         are exact. Raise --max-stacks to see their stacks.",
        plural(n, "allocation", "allocations"),
    ))
}

/// `walked from call frame information: 3 stacks (170.0 KiB); by frame
/// pointers: 1 (3.1 KiB), truncated: 1 (3.1 KiB)`: how the stacks listed in
/// the report were walked; None for reports without that information.
fn walk_summary(report: &Report) -> Option<String> {
    let mut by_walk: std::collections::BTreeMap<Walk, Totals> = Default::default();
    for stack in &report.stacks {
        if let Some(walk) = stack.walk {
            let t = by_walk.entry(walk).or_default();
            t.count += 1;
            t.bytes = t.bytes.saturating_add(stack.bytes);
        }
    }
    if by_walk.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = by_walk
        .iter()
        .map(|(walk, t)| {
            let how = match walk {
                Walk::Cfi => "walked from call frame information",
                Walk::FramePointers => "by frame pointer",
                Walk::Mixed => "from call frame information and frame pointers",
                Walk::NoTable => "by frame pointer before their unwind table was ready",
            };
            format!(
                "{how}: {} {} ({})",
                t.count,
                plural(t.count, "stack", "stacks"),
                human_bytes(t.bytes)
            )
        })
        .collect();
    let cut: Vec<&Stack> = report.stacks.iter().filter(|s| s.truncated).collect();
    let bytes: u64 = cut.iter().map(|s| s.bytes).sum();
    parts.push(match cut.len() {
        0 => "none cut short".to_string(),
        n => format!("cut short: {n} ({})", human_bytes(bytes)),
    });
    Some(parts.join("; "))
}

/// The warning printed when stacks look cut short, or None.
fn truncated_warning(report: &Report) -> Option<String> {
    let cut: Vec<&Stack> = report.stacks.iter().filter(|s| s.truncated).collect();
    if cut.is_empty() {
        return None;
    }
    let bytes: u64 = cut.iter().map(|s| s.bytes).sum();
    let by_frame_pointer = cut
        .iter()
        .all(|s| matches!(s.truncation, None | Some(Truncation::FramePointers)));
    let before_tables = cut.iter().all(|s| s.walk == Some(Walk::NoTable));
    let why = if by_frame_pointer && before_tables {
        "they were walked by frame pointer, before memprof had the process's unwind tables \
         (allocations right after it started or called exec). Their first frame is right; \
         the callers after it may be missing or wrong"
    } else if by_frame_pointer {
        "they were probably cut short by code built without frame pointers (C, C++: \
         -fno-omit-frame-pointer; Rust: -C force-frame-pointers=yes). Their first frame is \
         right; the callers after it may be missing or wrong"
    } else {
        "each says why at its end. The frames shown are right; the outer ones are missing"
    };
    Some(format!(
        "WARNING: {} of {} stacks ({} bytes) end before main or a thread's start: {why}.",
        cut.len(),
        report.stacks.len(),
        bytes
    ))
}

fn lost_data_warning(stats: &Stats) -> String {
    let mut raise = Vec::new();
    if stats.live_map_full > 0 {
        raise.push("--max-live");
    }
    if stats.stack_map_full > 0 {
        raise.push("--max-stacks");
    }
    let lost = stats
        .live_map_full
        .saturating_add(stats.stack_map_full)
        .saturating_add(stats.pending_map_full);
    let mut warning = format!(
        "WARNING: totals are lower bounds: {lost} {} were not counted",
        plural(lost, "allocation", "allocations"),
    );
    if !raise.is_empty() {
        warning.push_str(&format!(
            " because memprof's maps were full; raise {} and run again",
            raise.join(", ")
        ));
    } else if stats.pending_map_full > 0 {
        warning.push_str(" (the kernel was short of memory for memprof's thread records)");
    }
    if stats.forks_not_followed > 0 {
        warning.push_str(&format!(
            "; {} {} not followed (the set of recorded processes was full)",
            stats.forks_not_followed,
            plural(stats.forks_not_followed, "child was", "children were"),
        ));
    }
    warning.push('.');
    warning
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC`; `None` when unset or absurd.
fn utc_timestamp(secs: f64) -> Option<String> {
    if !secs.is_finite() || secs <= 0.0 || secs >= 253_402_300_800.0 {
        return None;
    }
    let secs = secs as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    ))
}

/// The unwinding counters of a text report, when stacks were walked from
/// tables (nothing otherwise).
/// The width of the widest of `named`'s values.
fn value_width(named: &[(&str, u64)]) -> usize {
    named
        .iter()
        .map(|(_, v)| v.to_string().len())
        .max()
        .unwrap_or(1)
}

fn render_unwind_stats(
    stats: &crate::model::UnwindStats,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let named = stats.named();
    if named.iter().all(|&(_, v)| v == 0) {
        return Ok(());
    }
    let width = value_width(&named);
    for (name, value) in named {
        let why = match name {
            "unwind_cfi" => "stacks walked from call frame information (.eh_frame)",
            "unwind_no_table" => {
                "stacks walked by frame pointer: the process had no unwind table yet"
            }
            "unwind_not_mapped" => "stacks ended at a return address outside the process's code",
            "unwind_no_cfi" => "stacks ended in code without call frame information",
            "unwind_unsupported" => "stacks ended at a frame rule memprof cannot follow",
            "unwind_read_failed" => "stacks ended where the stack could not be read",
            _ => "stacks ended at the most frames kept",
        };
        if value != 0 {
            writeln!(out, "  {name:<21} {value:>width$}  {why}")?;
        }
    }
    Ok(())
}

/// The Python counters of a text report, when CPython processes were
/// recorded (nothing otherwise).
fn render_python_stats(
    stats: &crate::model::PythonStats,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let named = stats.named();
    let width = value_width(&named);
    for (name, value) in named {
        let why = match name {
            "py_stacks" => "allocations of CPython processes with their Python frames",
            "py_no_thread" => {
                "allocations of CPython processes by threads without a Python thread state \
                 (native frames only)"
            }
            "py_read_failed" => "Python frame chains cut short at a frame that could not be read",
            _ => "Python frame chains cut short at the most frames kept",
        };
        if value != 0 {
            writeln!(out, "  {name:<21} {value:>width$}  {why}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_stats_line_up_with_the_others() {
        let mut stats = Stats {
            allocs: 128,
            ..Stats::default()
        };
        stats.python.py_stacks = 128;
        let mut out = Vec::new();
        super::stats(&stats, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let column = |name: &str| {
            let line = text.lines().find(|l| l.contains(name)).unwrap();
            line.find("128").unwrap()
        };
        assert_eq!(column("py_stacks"), column("allocs"), "{text}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0.0), None);
        assert_eq!(utc_timestamp(f64::NAN), None);
        assert_eq!(
            utc_timestamp(1.0).as_deref(),
            Some("1970-01-01 00:00:01 UTC")
        );
        assert_eq!(
            utc_timestamp(951_782_400.0).as_deref(),
            Some("2000-02-29 00:00:00 UTC")
        );
        assert_eq!(
            utc_timestamp(1_714_564_800.5).as_deref(),
            Some("2024-05-01 12:00:00 UTC")
        );
    }

    #[test]
    fn frame_lines() {
        let mut f = Frame {
            module_offset: None,
            addr: 0x1234,
            function: Some("leak".into()),
            module: Some("/usr/bin/app".into()),
            file: Some("/src/app.c".into()),
            line: Some(12),
            inlined: false,
        };
        assert_eq!(frame_line(&f), "leak at /src/app.c:12");
        f.file = None;
        f.line = None;
        // A report of an earlier version: no offset in the module.
        assert_eq!(frame_line(&f), "leak (app 0x1234)");
        f.function = None;
        assert_eq!(frame_line(&f), "app@0x1234");
        f.inlined = true;
        assert_eq!(frame_line(&f), "app@0x1234 [inlined]");
        f.module_offset = Some(0x234);
        f.inlined = false;
        assert_eq!(frame_line(&f), "app+0x234");
        f.function = Some("leak".into());
        assert_eq!(frame_line(&f), "leak (app+0x234)");
    }

    #[test]
    fn empty_report() {
        // Allocations seen, all freed.
        let mut report = Report::default();
        report.stats.allocs = 5;
        report.stats.frees = 5;
        let mut out = Vec::new();
        render(&report, &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\nno outstanding allocations were found\n"),
            "{text}"
        );
        assert!(!text.contains("WARNING"), "{text}");
    }

    #[test]
    fn a_run_over_processes_without_allocator_calls_says_so() {
        let report = Report {
            selection: Some("pids 3, 4".to_string()),
            ..Report::default()
        };
        let mut out = Vec::new();
        render(&report, &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("memprof: outstanding memory, pids 3, 4: none\n"),
            "{text}"
        );
        assert!(
            text.contains("the programs may call an allocator that was not probed (-v lists"),
            "{text}"
        );
        assert!(!text.contains("probed: none"), "{text}");
    }

    #[test]
    fn a_run_without_allocator_calls_says_so() {
        let mut report = Report::default();
        report.target.allocator = "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string();
        let mut out = Vec::new();
        render(&report, &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "memprof saw no allocator call at all: the program may call an allocator that \
                 was not probed (probed: /usr/lib/x86_64-linux-gnu/libc.so.6)"
            ),
            "{text}"
        );
        assert!(
            !text.contains("no outstanding allocations were found"),
            "{text}"
        );
    }

    #[test]
    fn a_run_over_many_never_says_a_process_exited_when_none_did() {
        let mut report = Report::default();
        report.stats.allocs = 10;
        report.selection = Some("system-wide".to_string());
        report.released.at_exit = Totals {
            bytes: 4096,
            count: 2,
        };
        let mut out = Vec::new();
        render(&report, &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("the process exited"), "{text}");
        assert!(
            text.contains("those that exited during the run took 4.0 KiB with them"),
            "{text}"
        );
    }

    #[test]
    fn sampled_report_says_it_estimates() {
        use crate::model::{Sampling, Totals};
        let report = Report {
            stacks: vec![Stack {
                bytes: 6_400_000,
                count: 6_400,
                ..Stack::default()
            }],
            totals: Totals {
                bytes: 6_400_000,
                count: 6_400,
            },
            sampling: Some(Sampling {
                rate: 64,
                sampled_count: 100,
                bytes_stderr: 634_980.0,
                count_stderr: 634.98,
                ..Default::default()
            }),
            ..Report::default()
        };
        let mut out = Vec::new();
        render(&report, &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\nsampling:     ESTIMATES from 1-in-64 sampling"),
            "{text}"
        );
        assert!(
            text.contains("in 6400 allocations; oldest 0.00 s, median age 0.00 s; estimate ±9.9% (100 recorded)\n"),
            "{text}"
        );
    }

    #[test]
    fn top_limits_and_summarizes_the_rest() {
        let stack = |bytes| Stack {
            bytes,
            count: 1,
            ..Stack::default()
        };
        let report = Report {
            stacks: vec![stack(1), stack(30), stack(20)],
            ..Report::default()
        };
        let opts = RenderOptions {
            top: 2,
            ..RenderOptions::default()
        };
        let mut out = Vec::new();
        render(&report, &opts, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let first = text.find("#1  30 B").unwrap();
        let second = text.find("#2  20 B").unwrap();
        assert!(first < second, "{text}");
        assert!(!text.contains("#3"), "{text}");
        assert!(text.contains("... and 1 more stack with 1 B (1 bytes) in 1 allocation."));
    }

    fn growth(samples: &[u64], bytes_per_sec: f64, growing: bool) -> Growth {
        Growth {
            samples: samples.to_vec(),
            bytes_per_sec,
            growing,
        }
    }

    #[test]
    fn picks_evenly_with_both_ends() {
        let values: Vec<u64> = (0..10).collect();
        assert_eq!(pick_evenly(&values, 8), [0, 1, 3, 4, 5, 6, 8, 9]);
        assert_eq!(pick_evenly(&values, 2), [0, 9]);
        assert_eq!(pick_evenly(&values, 10), values);
        assert_eq!(pick_evenly(&values[..3], 8), [0, 1, 2]);
        assert_eq!(pick_evenly(&values, 1), [0]);
        assert!(pick_evenly(&[], 8).is_empty());
        let many: Vec<u64> = (0..1000).collect();
        let picked = pick_evenly(&many, 8);
        assert_eq!(picked.len(), 8);
        assert_eq!((picked[0], picked[7]), (0, 999));
    }

    #[test]
    fn rates() {
        assert_eq!(rate(0.0), "+0.0 B/s");
        assert_eq!(rate(0.25), "+0.2 B/s");
        assert_eq!(rate(37.2), "+37 B/s");
        assert_eq!(rate(-1409.25), "-1.4 KiB/s");
        assert_eq!(rate(3.0 * 1024.0 * 1024.0), "+3.0 MiB/s");
        assert_eq!(rate(f64::NAN), "? B/s");
    }

    #[test]
    fn growth_lines() {
        assert_eq!(
            growth_line(&growth(&[0, 1024, 2048], 102.4, true)),
            "growing +102 B/s over 3 snapshots: 0 B, 1.0 KiB, 2.0 KiB"
        );
        assert_eq!(
            growth_line(&growth(&[4096; 20], 0.0, false)),
            "flat at 4.0 KiB over 20 snapshots"
        );
        assert_eq!(
            growth_line(&growth(&[300, 200, 100], -10.0, false)),
            "shrinking -10 B/s over 3 snapshots: 300 B, 200 B, 100 B"
        );
        assert_eq!(
            growth_line(&growth(&[100, 300, 100, 100, 101], 2.5, false)),
            "no steady growth (+2.5 B/s) over 5 snapshots: 100 B, 300 B, 100 B, 100 B, 101 B"
        );
        assert_eq!(
            growth_line(&growth(&[512], 0.0, false)),
            "flat at 512 B over 1 snapshot"
        );
        assert_eq!(growth_line(&growth(&[], 0.0, false)), "no snapshot taken");
        let long: Vec<u64> = (0..12).map(|i| i * 100).collect();
        assert_eq!(
            growth_line(&growth(&long, 40.0, true)),
            "growing +40 B/s over 12 snapshots: \
             0 B, 200 B, 300 B, 500 B, 600 B, 800 B, 900 B, 1.1 KiB (8 of 12 shown)"
        );
    }

    #[test]
    fn growth_summaries() {
        let stack = |name: &str, g: Option<Growth>| Stack {
            frames: vec![Frame {
                function: Some(name.to_string()),
                ..Frame::default()
            }],
            growth: g,
            ..Stack::default()
        };
        let flat = stack("flat", Some(growth(&[1, 1, 1], 0.0, false)));
        assert_eq!(
            growth_summary(&[&flat]),
            "no stack grew steadily over the 3 snapshots"
        );
        assert_eq!(growth_summary(&[]), "no stack grew steadily");

        let grows: Vec<Stack> = [400.0, 300.0, 200.0, 100.0]
            .iter()
            .enumerate()
            .map(|(i, &r)| stack(&format!("f{i}"), Some(growth(&[0, 1], r, true))))
            .collect();
        let lost = Stack {
            frames: vec![],
            ..grows[0].clone()
        };
        let listed: Vec<&Stack> = vec![&lost, &flat, &grows[1], &grows[2], &grows[3]];
        // Ranks are positions in the listing, whatever the growing stacks' order.
        assert_eq!(
            growth_summary(&listed),
            "4 of 5 stacks grow (+1000 B/s in all): #1 [stack lost] +400 B/s, \
             #3 f1 +300 B/s, #4 f2 +200 B/s, and 1 more"
        );
        let one = [&grows[0]];
        assert_eq!(
            growth_summary(&one),
            "1 of 1 stack grows (+400 B/s in all): #1 f0 +400 B/s"
        );
    }

    #[test]
    fn min_age_notes() {
        let younger = Totals {
            bytes: 2048,
            count: 1,
        };
        assert_eq!(
            min_age_note(30.0, Some(younger)),
            "only allocations at least 30.0 s old count as leak suspects; \
             2.0 KiB (2048 bytes) in 1 younger allocation was left out"
        );
        assert_eq!(
            min_age_note(30.0, Some(Totals::default())),
            "only allocations at least 30.0 s old count as leak suspects; \
             no younger allocation was outstanding"
        );
        assert_eq!(
            min_age_note(0.5, None),
            "only allocations at least 0.50 s old count as leak suspects"
        );
    }

    #[test]
    fn min_age_with_nothing_old_enough() {
        let report = Report {
            min_age_secs: Some(60.0),
            younger: Some(Totals {
                bytes: 4096,
                count: 4,
            }),
            ..Report::default()
        };
        let mut out = Vec::new();
        render(&report, &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\nno outstanding allocation is at least 1m00s old\n"),
            "{text}"
        );
        assert!(
            text.contains("4.0 KiB (4096 bytes) in 4 younger allocations were left out"),
            "{text}"
        );
    }

    #[test]
    fn interval_keeps_the_given_order() {
        let stack = |bytes, growing| Stack {
            bytes,
            count: 1,
            growth: Some(growth(&[0, bytes], bytes as f64, growing)),
            ..Stack::default()
        };
        let report = Report {
            interval_secs: Some(1.0),
            stacks: vec![stack(10, true), stack(30, false), stack(20, false)],
            ..Report::default()
        };
        let mut out = Vec::new();
        render(&report, &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let ranks: Vec<usize> = ["#1  10 B", "#2  30 B", "#3  20 B"]
            .iter()
            .map(|h| text.find(h).unwrap())
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("snapshots:    every 1.0 s;"), "{text}");
        assert!(
            text.contains(
                "growth:       1 of 3 stacks grows (+10 B/s in all): #1 [stack lost] +10 B/s\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn sources_have_sections_after_the_heap() {
        use crate::model::SourceReport;
        let mut report = Report {
            mmap: Some(SourceReport {
                description: "anonymous mmap: what it is".to_string(),
                totals: Totals {
                    bytes: 196_608,
                    count: 3,
                },
                stacks: vec![Stack {
                    bytes: 196_608,
                    count: 3,
                    frames: vec![Frame {
                        function: Some("leak_mmap".to_string()),
                        ..Frame::default()
                    }],
                    ..Stack::default()
                }],
                stats: [("maps".to_string(), 3)].into_iter().collect(),
                released: Totals::default(),
            }),
            ..Report::default()
        };
        report.stats.allocs = 1;
        report.stats.frees = 1;
        let mut out = Vec::new();
        render(&report, &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let section = text.find("Anonymous mmap (--mmap)").expect(&text);
        assert!(text.find("no outstanding allocations were found").unwrap() < section);
        assert!(section < text.find("Stats:").unwrap(), "{text}");
        assert!(
            text.contains("outstanding:  192.0 KiB (196608 bytes) in 3 ranges from 1 stack"),
            "{text}"
        );
        assert!(text.contains("#1  192.0 KiB (196608 bytes, 100.0%) in 3 ranges"));
        assert!(text.contains("      leak_mmap"), "{text}");
        assert!(text.contains("counters: maps 3"), "{text}");
        assert!(!text.contains("Kernel (--kernel)"), "{text}");
    }
}
