//! A leak flame graph, drawn by `inferno::flamegraph`.
//!
//! Widths are outstanding bytes. Frames are named `function (file.c:12)` when
//! the source location is known (the file's base name: the full path is in the
//! text and JSON reports), so the allocation call site is readable on the graph
//! and in its tooltip; frames without debug information keep
//! [`Frame::display_name`]. Colors are chosen deterministically from the
//! frame name, so the same report always gives the same SVG.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::Context as _;
use inferno::flamegraph::color::{BackgroundColor, BasicPalette, Color, PaletteMap};
use inferno::flamegraph::{self, Options, Palette};

use super::folded::{fold_all, sanitize_frame_name, STACK_LOST};
use super::{default_title, human_bytes, human_secs, ColorScheme, RenderOptions};
use crate::model::{Frame, Report};

/// What an SVG of a report without stacks says.
pub(crate) const NO_ALLOCATIONS: &str = "no outstanding allocations were found";

/// Written into the SVG as a comment (so it must not contain `--`).
const NOTES: &str = "memprof leak flame graph: widths are outstanding bytes at the end of \
                     the run; allocations made before memprof attached are not seen";

/// Color of the allocation call sites in [`ColorScheme::Leak`].
const LEAK_RED: Color = Color {
    r: 0xdc,
    g: 0x32,
    b: 0x28,
};

pub(crate) fn render(
    report: &Report,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let title = opts.title.clone().unwrap_or_else(|| {
        super::profiles::weight_title(report, opts.weight, default_title(report))
    });
    let subtitle =
        super::profiles::weight_subtitle(report, opts.weight).unwrap_or_else(|| subtitle(report));
    let lines: Vec<String> = fold_all(report, frame_label)
        .into_iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(stack, bytes)| format!("{stack} {bytes}"))
        .collect();
    if lines.is_empty() {
        let message = if report.stacks.is_empty()
            && report.totals.count == 0
            && report.released.at_exit.count > 0
        {
            "nothing is outstanding: the process exited and its memory went with it (--at-exit)"
        } else if report.stacks.is_empty() && report.totals.count == 0 {
            NO_ALLOCATIONS
        } else if report.totals.bytes == 0 {
            "the outstanding allocations add up to 0 bytes"
        } else {
            "no stack to draw: all outstanding allocations are in stacks below --min-size"
        };
        return message_svg(&title, Some(&subtitle), message, out);
    }
    let extra = super::extra_sources(report);
    let leaves: BTreeSet<String> = report
        .stacks
        .iter()
        .chain(extra.iter().flat_map(|e| e.source.stacks.iter()))
        .map(|s| match s.frames.first() {
            Some(f) => sanitize_frame_name(&frame_label(f)),
            None => STACK_LOST.to_string(),
        })
        .collect();
    flamegraph(&lines, title, Some(subtitle), opts.color, &leaves, out)
}

/// The name of `frame` on the flame graph: `function (file.c:12)` when the
/// source location is known, else [`Frame::display_name`].
pub(crate) fn frame_label(frame: &Frame) -> String {
    let name = frame.display_name();
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => {
            let base = file.rsplit('/').next().unwrap_or(file);
            format!("{name} ({base}:{line})")
        }
        (Some(file), None) => {
            let base = file.rsplit('/').next().unwrap_or(file);
            format!("{name} ({base})")
        }
        _ => name,
    }
}

/// About as many characters as fit on the subtitle's line.
const SUBTITLE_CHARS: usize = 160;

/// One line under the title: totals and duration, which allocations count
/// (`--min-age`), how many stacks grew (`--interval`), and whether the totals
/// are complete. Kept short: it is drawn centered on one line of a 1200 px wide
/// image, so the exact byte count is left out when everything else is said.
fn subtitle(report: &Report) -> String {
    let outstanding = |exact: bool| {
        let exact = if exact {
            format!(" ({} bytes)", report.totals.bytes)
        } else {
            String::new()
        };
        format!(
            "{}{exact} in {} allocations outstanding after {}",
            human_bytes(report.totals.bytes),
            report.totals.count,
            human_secs(report.duration_secs),
        )
    };
    let notes = subtitle_notes(report);
    let s = outstanding(true) + &notes;
    if s.chars().count() > SUBTITLE_CHARS {
        outstanding(false) + &notes
    } else {
        s
    }
}

/// The `; ...` parts of the subtitle after the totals.
fn subtitle_notes(report: &Report) -> String {
    let mut s = String::new();
    if let Some(min_age) = report.min_age_secs {
        s.push_str(&format!(
            "; only allocations older than {}",
            human_secs(min_age)
        ));
    }
    if let Some(interval) = report.interval_secs {
        let growing = report
            .stacks
            .iter()
            .filter(|st| st.growth.as_ref().is_some_and(|g| g.growing))
            .count();
        let stacks = match growing {
            0 => "no stack".to_string(),
            1 => "1 stack".to_string(),
            n => format!("{n} stacks"),
        };
        s.push_str(&format!(
            "; {stacks} growing (snapshots every {})",
            human_secs(interval)
        ));
    }
    if let Some(exec) = report.target.exec_after_secs {
        s.push_str(&format!("; exec at {}", human_secs(exec)));
    }
    if let Some(exited) = report.target.exited_after_secs {
        s.push_str(&format!("; process exited at {}", human_secs(exited)));
    }
    if let Some(sampling) = report.sampling {
        s.push_str(&format!(
            "; ESTIMATES from {} ({} in bytes)",
            super::sampling_short(&sampling),
            super::relative(sampling.bytes_stderr, report.totals.bytes)
        ));
    }
    if report.stats.lost_data() {
        s.push_str("; LOWER BOUNDS: memprof's maps were full");
    }
    for e in super::extra_sources(report) {
        s.push_str(&format!(
            "; {} {}",
            e.root,
            human_bytes(e.source.totals.bytes)
        ));
    }
    s
}

/// Draws folded `lines` (sorted or not, one or two counts each) with inferno.
///
/// `leaves` are the frame names drawn in red by [`ColorScheme::Leak`].
/// Differential lines (two counts) are colored by their delta whatever the scheme.
pub(crate) fn flamegraph(
    lines: &[String],
    title: String,
    subtitle: Option<String>,
    color: ColorScheme,
    leaves: &BTreeSet<String>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut palette_map = PaletteMap::default();
    let mut options = Options::default();
    options.title = title;
    options.subtitle = subtitle;
    options.count_name = "bytes".to_string();
    options.deterministic = true;
    options.notes = NOTES.to_string();
    match color {
        ColorScheme::Mem => options.colors = Palette::Basic(BasicPalette::Mem),
        ColorScheme::Hot => options.colors = Palette::Basic(BasicPalette::Hot),
        ColorScheme::Leak => {
            options.colors = Palette::Basic(BasicPalette::Mem);
            options.bgcolors = Some(BackgroundColor::Grey);
            for leaf in leaves {
                palette_map.insert(leaf, LEAK_RED);
            }
            options.palette_map = Some(&mut palette_map);
        }
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .context("inferno could not draw the flame graph")
}

/// A minimal, valid SVG that shows `title`, `subtitle` and `message`: what is
/// drawn when there is nothing for inferno to draw (it refuses empty input).
pub(crate) fn message_svg(
    title: &str,
    subtitle: Option<&str>,
    message: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    writeln!(out, r#"<?xml version="1.0" standalone="no"?>"#)?;
    writeln!(
        out,
        r#"<svg version="1.1" width="1200" height="130" viewBox="0 0 1200 130" xmlns="http://www.w3.org/2000/svg">"#
    )?;
    writeln!(
        out,
        r##"<rect x="0" y="0" width="100%" height="100%" fill="#f8f8f8"/>"##
    )?;
    writeln!(
        out,
        r#"<text id="title" x="50%" y="32" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>"#,
        xml_escape(title)
    )?;
    if let Some(subtitle) = subtitle {
        writeln!(
            out,
            r#"<text id="subtitle" x="50%" y="58" text-anchor="middle" font-family="Verdana" font-size="12">{}</text>"#,
            xml_escape(subtitle)
        )?;
    }
    writeln!(
        out,
        r#"<text id="message" x="50%" y="100" text-anchor="middle" font-family="Verdana" font-size="15">{}</text>"#,
        xml_escape(message)
    )?;
    writeln!(out, "</svg>")?;
    Ok(())
}

fn xml_escape(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Control characters other than tab and newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\t' && c != '\n' => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let mut f = Frame {
            module_offset: None,
            addr: 0x10,
            function: Some("leak".into()),
            module: Some("/bin/app".into()),
            file: Some("/src/dir/app.c".into()),
            line: Some(7),
            inlined: false,
        };
        assert_eq!(frame_label(&f), "leak (app.c:7)");
        f.line = None;
        assert_eq!(frame_label(&f), "leak (app.c)");
        f.file = None;
        assert_eq!(frame_label(&f), "leak");
    }

    #[test]
    fn subtitles() {
        use crate::model::{Growth, Stack, Totals};
        let stack = |growing| Stack {
            growth: Some(Growth {
                samples: vec![0, 1],
                bytes_per_sec: 1.0,
                growing,
            }),
            ..Stack::default()
        };
        let mut report = Report {
            duration_secs: 60.0,
            totals: Totals {
                bytes: 2048,
                count: 2,
            },
            ..Report::default()
        };
        assert_eq!(
            subtitle(&report),
            "2.0 KiB (2048 bytes) in 2 allocations outstanding after 1m00s"
        );
        report.min_age_secs = Some(30.0);
        report.interval_secs = Some(5.0);
        report.stacks = vec![stack(true), stack(false)];
        assert_eq!(
            subtitle(&report),
            "2.0 KiB (2048 bytes) in 2 allocations outstanding after 1m00s; \
             only allocations older than 30.0 s; 1 stack growing (snapshots every 5.0 s)"
        );
        report.stacks = vec![stack(false)];
        report.min_age_secs = None;
        assert_eq!(
            subtitle(&report),
            "2.0 KiB (2048 bytes) in 2 allocations outstanding after 1m00s; \
             no stack growing (snapshots every 5.0 s)"
        );
        report.interval_secs = None;
        report.sampling = Some(crate::model::Sampling {
            rate: 64,
            sampled_count: 1,
            bytes_stderr: 1024.0,
            count_stderr: 63.5,
            ..Default::default()
        });
        assert_eq!(
            subtitle(&report),
            "2.0 KiB (2048 bytes) in 2 allocations outstanding after 1m00s; \
             ESTIMATES from 1-in-64 sampling (±50.0% in bytes)"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(
            xml_escape("a<b>&\"c'\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&apos; "
        );
    }
}
