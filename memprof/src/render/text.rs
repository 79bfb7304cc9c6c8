//! The human-readable report: what was profiled, how much is outstanding,
//! the largest stacks, and how complete the data is.

use std::io::Write;

use super::{default_title, human_bytes, human_secs, stacks_by_bytes, RenderOptions};
use crate::model::{Frame, Report, Stack, Stats};

/// Indentation of the frames under a stack's heading.
const FRAME_INDENT: &str = "      ";

pub(crate) fn render(
    report: &Report,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    header(report, opts, out)?;
    stacks(report, opts, out)?;
    stats(&report.stats, out)?;
    Ok(())
}

fn header(report: &Report, opts: &RenderOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let t = &report.target;
    let title = opts.title.clone().unwrap_or_else(|| default_title(report));
    writeln!(out, "{title}")?;
    writeln!(out, "{}", "=".repeat(title.chars().count()))?;
    if !t.cmdline.is_empty() {
        writeln!(out, "command:      {}", t.cmdline)?;
    }
    if !t.allocator.is_empty() {
        writeln!(out, "allocator:    {}", t.allocator)?;
    }
    if let Some(start) = utc_timestamp(report.start_unix_secs) {
        writeln!(out, "started:      {start}")?;
    }
    writeln!(out, "duration:     {}", human_secs(report.duration_secs))?;
    if let Some(exited) = t.exited_after_secs {
        writeln!(
            out,
            "process:      exited {} after memprof attached",
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
    if report.stats.lost_data() {
        writeln!(out, "{}", lost_data_warning(&report.stats))?;
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

fn stacks(report: &Report, opts: &RenderOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    if report.stacks.is_empty() {
        let totals = report.totals;
        if totals.bytes == 0 && totals.count == 0 {
            writeln!(out, "no outstanding allocations were found")?;
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
    let sorted = stacks_by_bytes(report);
    let shown = if opts.top == 0 {
        sorted.len()
    } else {
        opts.top.min(sorted.len())
    };
    if shown == sorted.len() {
        writeln!(
            out,
            "{} {} by outstanding bytes:",
            sorted.len(),
            plural(sorted.len() as u64, "stack", "stacks")
        )?;
    } else {
        writeln!(
            out,
            "Top {shown} of {} stacks by outstanding bytes:",
            sorted.len()
        )?;
    }
    // Percentages are of the totals, or of the sum over the stacks if that is
    // larger (an inconsistent report), so they never exceed 100%.
    let listed: u64 = sorted.iter().map(|s| s.bytes).fold(0, u64::saturating_add);
    let sum = listed.max(report.totals.bytes);
    for (rank, stack) in sorted.iter().take(shown).enumerate() {
        writeln!(out)?;
        stack_block(rank + 1, stack, sum, out)?;
    }
    let rest = &sorted[shown..];
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

fn stack_block(rank: usize, stack: &Stack, sum: u64, out: &mut dyn Write) -> anyhow::Result<()> {
    let pct = if sum == 0 {
        0.0
    } else {
        100.0 * stack.bytes as f64 / sum as f64
    };
    writeln!(
        out,
        "#{rank}  {} ({} bytes, {pct:.1}%) in {} {}; oldest {}, median age {}",
        human_bytes(stack.bytes),
        stack.bytes,
        stack.count,
        plural(stack.count, "allocation", "allocations"),
        human_secs(stack.oldest_age_secs),
        human_secs(stack.median_age_secs),
    )?;
    if stack.frames.is_empty() {
        writeln!(
            out,
            "{FRAME_INDENT}[stack lost: the kernel could not walk this stack]"
        )?;
    }
    for frame in &stack.frames {
        writeln!(out, "{FRAME_INDENT}{}", frame_line(frame))?;
    }
    Ok(())
}

/// One frame: `function at file:line`, or `function (module 0xaddr)` without
/// debug information, or `module@0xaddr` when not even the function is known.
fn frame_line(frame: &Frame) -> String {
    let mut line = frame.display_name();
    match (frame.location(), &frame.function, &frame.module) {
        (Some(loc), _, _) => {
            line.push_str(" at ");
            line.push_str(&loc);
        }
        (None, Some(_), Some(module)) => {
            line.push_str(&format!(" ({module} {:#x})", frame.addr));
        }
        (None, Some(_), None) => {
            line.push_str(&format!(" ({:#x})", frame.addr));
        }
        // display_name() already is module@addr or the address.
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
            "frees of memory allocated before memprof attached (expected, not an error)"
        }
        "nested_calls" => {
            "allocator calls made from inside another one, counted once at the outer call"
        }
        "live_map_full" => "allocations NOT tracked: the live-allocation map was full (--max-live)",
        "live_map_full_bytes" => "bytes of the allocations not tracked because of live_map_full",
        "stack_lost" => "allocations whose stack could not be walked, shown as [stack lost]",
        "stack_map_full" => "allocations NOT counted: the stack map was full (--max-stacks)",
        "return_without_entry" => {
            "allocator returns without a matching entry (calls in flight at attach time)"
        }
        "pending_map_full" => {
            "allocations NOT tracked: the per-thread call map was full (--max-threads)"
        }
        "pending_stale" => "allocator calls whose return never came (thread exited or longjmp)",
        _ => return None,
    })
}

/// The warning printed when some allocations were not counted at all.
fn lost_data_warning(stats: &Stats) -> String {
    let mut raise = Vec::new();
    if stats.live_map_full > 0 {
        raise.push("--max-live");
    }
    if stats.stack_map_full > 0 {
        raise.push("--max-stacks");
    }
    if stats.pending_map_full > 0 {
        raise.push("--max-threads");
    }
    let lost = stats
        .live_map_full
        .saturating_add(stats.stack_map_full)
        .saturating_add(stats.pending_map_full);
    format!(
        "WARNING: totals are lower bounds: {lost} {} were not counted because memprof's \
         maps were full; raise {} and run again.",
        plural(lost, "allocation", "allocations"),
        raise.join(", ")
    )
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(frame_line(&f), "leak (/usr/bin/app 0x1234)");
        f.function = None;
        assert_eq!(frame_line(&f), "app@0x1234");
        f.inlined = true;
        assert_eq!(frame_line(&f), "app@0x1234 [inlined]");
    }

    #[test]
    fn empty_report() {
        let mut out = Vec::new();
        render(&Report::default(), &RenderOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\nno outstanding allocations were found\n"),
            "{text}"
        );
        assert!(!text.contains("WARNING"), "{text}");
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
}
