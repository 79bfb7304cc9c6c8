//! The timeline as an SVG chart of its own (`--timeline FILE.svg`): the
//! outstanding total, the resident memory of the recorded processes and the
//! top stacks' outstanding bytes against time, one polyline each, with the
//! peak marked. Written by hand (a few dozen elements), deterministic for a
//! given report, so that a golden file can hold it.

use std::fmt::Write as _;
use std::io::Write;

use super::{default_title, human_bytes, human_secs, RenderOptions};
use crate::model::{Report, Timeline};

const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 520.0;
/// The plot's area inside the image.
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 150.0;
/// Horizontal grid lines (and y labels) above the zero line.
const Y_TICKS: u32 = 4;
/// Labels along the time axis.
const X_TICKS: u32 = 6;

/// Colors of the top stacks' lines, in rank order.
const STACK_COLORS: [&str; 5] = ["#e6550d", "#31a354", "#756bb1", "#3182bd", "#de2d26"];

/// Writes the chart of `report`'s timeline; fails when it has none.
pub fn render(report: &Report, opts: &RenderOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(timeline) = &report.timeline else {
        anyhow::bail!(
            "this report has no timeline (a sampled run, or a report of an older memprof): \
             --timeline cannot draw it"
        );
    };
    let title = opts.title.clone().unwrap_or_else(|| {
        default_title(report).replacen("outstanding memory", "memory over time", 1)
    });
    out.write_all(chart(report, timeline, &title).as_bytes())?;
    Ok(())
}

/// One series: its legend, its color, whether dashed, and its values.
struct Series<'a> {
    name: String,
    color: &'a str,
    dashed: bool,
    width: f64,
    values: Vec<Option<u64>>,
}

fn chart(report: &Report, t: &Timeline, title: &str) -> String {
    let times: Vec<f64> = t.samples.iter().map(|s| s.at_secs).collect();
    let mut series = vec![Series {
        name: "outstanding (heap, every stack)".to_string(),
        color: "#000000",
        dashed: false,
        width: 2.5,
        values: t.samples.iter().map(|s| Some(s.bytes)).collect(),
    }];
    if t.samples.iter().any(|s| s.rss_bytes.is_some()) {
        series.push(Series {
            name: "resident memory (RSS)".to_string(),
            color: "#636363",
            dashed: true,
            width: 2.0,
            values: t.samples.iter().map(|s| s.rss_bytes).collect(),
        });
    }
    for (i, stack) in t.stacks.iter().enumerate() {
        let name = stack
            .frames
            .iter()
            .find(|f| f.function.is_some())
            .or(stack.frames.first())
            .map(|f| f.display_name())
            .unwrap_or_else(|| "[stack lost]".to_string());
        series.push(Series {
            name: format!("#{} {}", i + 1, truncate(&name, 60)),
            color: STACK_COLORS[i % STACK_COLORS.len()],
            dashed: false,
            width: 1.5,
            values: stack.bytes.iter().map(|&b| Some(b)).collect(),
        });
    }
    let max_t = times.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    let max_y = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .max()
        .unwrap_or(0);
    let max_y = nice_ceiling(max_y.max(1));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |secs: f64| LEFT + plot_w * (secs / max_t);
    let y = |bytes: u64| TOP + plot_h * (1.0 - bytes as f64 / max_y as f64);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Verdana, sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>
<text x="{}" y="28" font-size="17" text-anchor="middle">{}</text>"##,
        WIDTH / 2.0,
        escape(title)
    );
    let last = t.samples.last();
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="50" fill="#555555" text-anchor="middle">{} samples every {}; {} outstanding at the end of {}</text>"##,
        WIDTH / 2.0,
        t.samples.len(),
        escape(&human_secs(t.every_secs)),
        escape(&human_bytes(last.map_or(0, |s| s.bytes))),
        escape(&human_secs(report.duration_secs)),
    );
    // Grid and axes.
    for i in 0..=Y_TICKS {
        let bytes = max_y / u64::from(Y_TICKS) * u64::from(i);
        let yy = y(bytes);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{}" stroke-width="1"/>
<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            if i == 0 { "#000000" } else { "#e0e0e0" },
            LEFT - 8.0,
            yy + 4.0,
            escape(&human_bytes(bytes))
        );
    }
    for i in 0..=X_TICKS {
        let secs = max_t * f64::from(i) / f64::from(X_TICKS);
        let xx = x(secs);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#000000" stroke-width="1"/>
<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 20.0,
            escape(&human_secs(secs))
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555555">seconds into the run</text>"##,
        LEFT + plot_w / 2.0,
        TOP + plot_h + 38.0
    );
    // The peak, when known.
    if let Some(peak) = &report.peak {
        let (px, py) = (x(peak.at_secs.min(max_t)), y(peak.totals.bytes.min(max_y)));
        let _ = writeln!(
            svg,
            r##"<circle cx="{px:.1}" cy="{py:.1}" r="4" fill="#de2d26"/>
<text x="{:.1}" y="{:.1}" fill="#de2d26">peak {} at {}{}</text>"##,
            px + 6.0,
            (py - 6.0).max(TOP + 10.0),
            escape(&human_bytes(peak.totals.bytes)),
            escape(&human_secs(peak.at_secs)),
            if peak.exact { "" } else { " (approximate)" }
        );
    }
    // The series, the largest last so that it is drawn on top.
    for s in series.iter().rev() {
        let points: Vec<String> = times
            .iter()
            .zip(&s.values)
            .filter_map(|(&secs, v)| v.map(|b| format!("{:.1},{:.1}", x(secs), y(b))))
            .collect();
        if points.is_empty() {
            continue;
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="{}"{} points="{}"><title>{}</title></polyline>"#,
            s.color,
            s.width,
            if s.dashed {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            },
            points.join(" "),
            escape(&s.name)
        );
    }
    // Legend, in two columns under the axis.
    for (i, s) in series.iter().enumerate() {
        let (col, row) = (i % 2, i / 2);
        let lx = LEFT + col as f64 * (plot_w / 2.0);
        let ly = TOP + plot_h + 62.0 + row as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="{}"{}/>
<text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 4.0,
            lx + 24.0,
            ly - 4.0,
            s.color,
            s.width,
            if s.dashed {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            },
            lx + 30.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2 or 5 times a power of 1024 or 10 at or above `v`,
/// so that the y axis has round labels.
fn nice_ceiling(v: u64) -> u64 {
    let mut unit = 1u64;
    while unit.saturating_mul(1024) <= v {
        unit *= 1024;
    }
    let mut step = unit;
    loop {
        for m in [1u64, 2, 4, 5, 8] {
            let c = step.saturating_mul(m);
            if c >= v {
                return c;
            }
        }
        step = step.saturating_mul(10);
        if step == u64::MAX {
            return v;
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ceilings() {
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 4);
        assert_eq!(nice_ceiling(1000), 1000);
        assert_eq!(nice_ceiling(1025), 2048);
        assert_eq!(nice_ceiling(5_000_000), 5 * 1024 * 1024);
        assert!(nice_ceiling(u64::MAX / 3) >= u64::MAX / 3);
    }
}
