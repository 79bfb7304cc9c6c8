//! The allocation profile, the peak and the timeline in the renderers: the
//! text report's sections, and the flame graph's weights (`--weight`): a
//! report whose stacks are those of another profile, drawn as the
//! outstanding ones are.
//!
//! The text report sums each profile up in a line or two after the
//! outstanding stacks; `--weight alloc` or `--weight peak` also lists that
//! profile's top stacks, so that the default report stays about leaks (and
//! names no function that only churns).

use std::borrow::Cow;
use std::io::Write;

use super::{human_bytes, human_secs, RenderOptions};
use crate::model::{Report, Stack, Totals};

/// What a flame graph's (or folded stack's) widths are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Weight {
    /// Bytes still outstanding at the end (the leak view).
    #[default]
    Outstanding,
    /// Bytes allocated while recording, freed or not (the churn view).
    Alloc,
    /// Bytes outstanding at the peak.
    Peak,
}

/// Most stacks listed in the text report's allocation and peak sections.
const SECTION_TOP: usize = 10;

/// Indentation of frames, as in the stacks' listing.
const FRAME_INDENT: &str = "      ";

/// `report` with the stacks and totals of `weight` in place of the
/// outstanding ones (and without the optional sources, which have no such
/// profile). Fails when the report has no such profile.
pub(crate) fn weighted(report: &Report, weight: Weight) -> anyhow::Result<Cow<'_, Report>> {
    let (stacks, totals): (Vec<Stack>, Totals) = match weight {
        Weight::Outstanding => return Ok(Cow::Borrowed(report)),
        Weight::Alloc => {
            let Some(a) = &report.allocations else {
                anyhow::bail!(
                    "this report has no allocation profile (a sampled run, or a report of an \
                     older memprof): --weight alloc cannot draw it"
                );
            };
            (
                a.stacks
                    .iter()
                    .map(|s| Stack {
                        bytes: s.totals.bytes,
                        count: s.totals.count,
                        frames: s.frames.clone(),
                        pid: s.pid,
                        ..Stack::default()
                    })
                    .collect(),
                Totals {
                    bytes: a.totals.bytes,
                    count: a.totals.count,
                },
            )
        }
        Weight::Peak => {
            let Some(p) = &report.peak else {
                anyhow::bail!(
                    "this report has no peak (a sampled run, --no-peak, or a report of an older \
                     memprof): --weight peak cannot draw it"
                );
            };
            (
                p.stacks
                    .iter()
                    .map(|s| Stack {
                        bytes: s.bytes,
                        count: s.count,
                        frames: s.frames.clone(),
                        pid: s.pid,
                        ..Stack::default()
                    })
                    .collect(),
                p.totals,
            )
        }
    };
    let mut weighted = report.clone();
    weighted.stacks = stacks;
    weighted.totals = totals;
    weighted.mmap = None;
    weighted.kernel = None;
    weighted.min_age_secs = None;
    weighted.younger = None;
    Ok(Cow::Owned(weighted))
}

/// The title of a flame graph of `weight`, from the `default` one.
pub(crate) fn weight_title(report: &Report, weight: Weight, default: String) -> String {
    let title = match weight {
        Weight::Outstanding => return default,
        Weight::Alloc => default.replacen("outstanding memory", "allocations", 1),
        Weight::Peak => default.replacen("outstanding memory", "memory at the peak", 1),
    };
    if weight == Weight::Peak && report.peak.as_ref().is_some_and(|p| !p.exact) {
        title + " (approximate)"
    } else {
        title
    }
}

/// The subtitle of a flame graph of `weight` (None: the outstanding one).
pub(crate) fn weight_subtitle(report: &Report, weight: Weight) -> Option<String> {
    match weight {
        Weight::Outstanding => None,
        Weight::Alloc => report.allocations.as_ref().map(|a| {
            format!(
                "{} ({} bytes) in {} allocations made in {}, {} of them temporary (freed within {})",
                human_bytes(a.totals.bytes),
                a.totals.bytes,
                a.totals.count,
                human_secs(report.duration_secs),
                a.totals.temporary,
                threshold(a.temporary_secs)
            )
        }),
        Weight::Peak => report.peak.as_ref().map(|p| {
            format!(
                "{} ({} bytes) in {} allocations outstanding at the peak, {} into the run{}",
                human_bytes(p.totals.bytes),
                p.totals.bytes,
                p.totals.count,
                human_secs(p.at_secs),
                if p.exact {
                    String::new()
                } else {
                    format!("; approximate: {} events lost", p.events_lost)
                }
            )
        }),
    }
}

/// The text report's sections: allocations, peak, timeline.
pub(crate) fn text_sections(
    report: &Report,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let top = match opts.top {
        0 => usize::MAX,
        n => n.min(SECTION_TOP),
    };
    if let Some(a) = &report.allocations {
        let t = a.totals;
        writeln!(
            out,
            "Allocations while recording: {} ({} bytes) in {} allocations; {} of them temporary \
             (freed within {}), {} ({} bytes).",
            human_bytes(t.bytes),
            t.bytes,
            t.count,
            t.temporary,
            threshold(a.temporary_secs),
            human_bytes(t.temporary_bytes),
            t.temporary_bytes,
        )?;
        let listed = if opts.weight == Weight::Alloc { top } else { 0 };
        if a.stacks.is_empty() {
            // Nothing to list.
        } else if listed == 0 {
            writeln!(
                out,
                "  ({} stacks allocated: --weight alloc lists them and draws them)",
                a.stacks.len()
            )?;
        } else {
            writeln!(
                out,
                "Top {} of {} stacks by bytes allocated (freed or not):\n",
                top.min(a.stacks.len()),
                a.stacks.len()
            )?;
        }
        for (i, s) in a.stacks.iter().take(listed).enumerate() {
            writeln!(
                out,
                "#{}  {} ({} bytes) in {} allocations, {} temporary; {} ({} bytes) in {} still \
                 outstanding{}",
                i + 1,
                human_bytes(s.totals.bytes),
                s.totals.bytes,
                s.totals.count,
                s.totals.temporary,
                human_bytes(s.outstanding.bytes),
                s.outstanding.bytes,
                s.outstanding.count,
                pid_note(s.pid),
            )?;
            frames(&s.frames, out)?;
            writeln!(out)?;
        }
        if a.stacks.is_empty() || listed == 0 {
            writeln!(out)?;
        }
    }
    if let Some(p) = &report.peak {
        writeln!(
            out,
            "Peak: {} ({} bytes) in {} allocations outstanding {} into the run; {}.",
            human_bytes(p.totals.bytes),
            p.totals.bytes,
            p.totals.count,
            human_secs(p.at_secs),
            if p.exact {
                format!(
                    "exact ({} allocations and frees replayed in order)",
                    p.events
                )
            } else {
                format!(
                    "APPROXIMATE: {} allocations and frees were lost (the ring buffer was full)",
                    p.events_lost
                )
            }
        )?;
        let listed = if opts.weight == Weight::Peak { top } else { 0 };
        if p.stacks.is_empty() {
            // Nothing to list.
        } else if listed == 0 {
            writeln!(
                out,
                "  ({} stacks held memory then: --weight peak lists them and draws them)",
                p.stacks.len()
            )?;
        } else {
            writeln!(
                out,
                "Top {} of {} stacks at the peak:\n",
                top.min(p.stacks.len()),
                p.stacks.len()
            )?;
        }
        for (i, s) in p.stacks.iter().take(listed).enumerate() {
            writeln!(
                out,
                "#{}  {} ({} bytes) in {} allocations{}",
                i + 1,
                human_bytes(s.bytes),
                s.bytes,
                s.count,
                pid_note(s.pid),
            )?;
            frames(&s.frames, out)?;
            writeln!(out)?;
        }
        if p.stacks.is_empty() || listed == 0 {
            writeln!(out)?;
        }
    }
    if let Some(t) = &report.timeline {
        if let Some(line) = timeline_line(t) {
            writeln!(out, "{line}\n")?;
        }
    }
    Ok(())
}

/// The timeline in one line: how many samples, the highest outstanding and
/// resident figures and when, a few values through the run.
fn timeline_line(t: &crate::model::Timeline) -> Option<String> {
    let last = t.samples.last()?;
    let max = t.samples.iter().max_by_key(|s| s.bytes)?;
    let rss = t
        .samples
        .iter()
        .filter_map(|s| s.rss_bytes.map(|r| (r, s.at_secs)))
        .max_by_key(|(r, _)| *r);
    let n = t.samples.len();
    let shown: Vec<String> = (0..n.min(8))
        .map(|i| {
            let s = &t.samples[if n <= 8 { i } else { i * (n - 1) / 7 }];
            format!("{} {}", human_secs(s.at_secs), human_bytes(s.bytes))
        })
        .collect();
    Some(format!(
        "Timeline: {n} samples every {}: outstanding highest {} at {}, {} at the end{}\n  {}",
        human_secs(t.every_secs),
        human_bytes(max.bytes),
        human_secs(max.at_secs),
        human_bytes(last.bytes),
        match rss {
            Some((r, at)) => format!(
                "; resident memory highest {} at {}",
                human_bytes(r),
                human_secs(at)
            ),
            None => String::new(),
        },
        shown.join(", ")
    ))
}

/// The temporary threshold: `1 ms`, `0.5 ms`, `2.0 s`.
fn threshold(secs: f64) -> String {
    if secs < 1.0 {
        let ms = secs * 1e3;
        if ms.fract() == 0.0 {
            format!("{ms:.0} ms")
        } else {
            format!("{ms} ms")
        }
    } else {
        human_secs(secs)
    }
}

fn pid_note(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

fn frames(frames: &[crate::model::Frame], out: &mut dyn Write) -> anyhow::Result<()> {
    if frames.is_empty() {
        writeln!(
            out,
            "{FRAME_INDENT}[stack lost: the kernel could not walk this stack]"
        )?;
    }
    for frame in frames {
        writeln!(out, "{FRAME_INDENT}{}", super::text::frame_line(frame))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Peak, Report};

    #[test]
    fn thresholds_read_as_people_write_them() {
        assert_eq!(threshold(0.001), "1 ms");
        assert_eq!(threshold(0.0005), "0.5 ms");
        assert_eq!(threshold(0.05), "50 ms");
        assert_eq!(threshold(2.0), "2.0 s");
    }

    #[test]
    fn a_peak_with_lost_events_is_called_approximate() {
        let mut report = Report::default();
        let title = || "memprof: outstanding memory of pid 1 (x)".to_string();
        assert_eq!(
            weight_title(&report, Weight::Alloc, title()),
            "memprof: allocations of pid 1 (x)"
        );
        report.peak = Some(Peak {
            exact: false,
            events_lost: 3,
            ..Peak::default()
        });
        assert_eq!(
            weight_title(&report, Weight::Peak, title()),
            "memprof: memory at the peak of pid 1 (x) (approximate)"
        );
        assert!(weight_subtitle(&report, Weight::Peak)
            .unwrap()
            .contains("approximate: 3 events lost"));
        assert!(weighted(&report, Weight::Alloc).is_err());
        assert!(weighted(&report, Weight::Peak).is_ok());
    }
}
