//! Renderers: turn a [`Report`] into text, folded stacks, an SVG flame graph,
//! JSON or a pprof profile.
//!
//! This is the only library module that writes output, and it writes nothing
//! but the bytes of the report to the `out` it is given. Every renderer is a
//! pure function of the report and the [`RenderOptions`], so the same report
//! always renders to the same bytes (golden tests rely on it).

pub(crate) mod folded;
mod json;
mod pprof;
mod profiles;
pub(crate) mod svg;
mod text;
mod timeline;

pub use profiles::Weight;
pub use timeline::render as render_timeline;

use std::io::Write;
use std::path::Path;

use crate::model::{Report, SampleMethod, Sampling};

/// The output formats of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A human-readable report: header, top stacks, counters.
    Text,
    /// Folded stacks (`root;...;leaf bytes`), the input of flame graph tools.
    Folded,
    /// A flame graph of outstanding bytes, drawn with inferno.
    Svg,
    /// The whole report as JSON (the schema is `memprof::model::Report`).
    Json,
    /// A gzipped pprof `profile.proto` with `inuse_space` and `inuse_objects`.
    Pprof,
}

impl Format {
    /// The format implied by a file name's extension, if any.
    ///
    /// `.txt` text, `.folded`/`.collapsed` folded, `.svg` svg, `.json` json,
    /// `.pb.gz`/`.pprof` pprof. Extensions are matched case-insensitively.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".pb.gz") {
            return Some(Format::Pprof);
        }
        let ext = name.rsplit_once('.')?.1;
        match ext {
            "txt" => Some(Format::Text),
            "folded" | "collapsed" => Some(Format::Folded),
            "svg" => Some(Format::Svg),
            "json" => Some(Format::Json),
            "pprof" => Some(Format::Pprof),
            _ => None,
        }
    }
}

/// How the SVG flame graph is colored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorScheme {
    /// Every frame from inferno's green-blue "mem" palette.
    Mem,
    /// Every frame from inferno's red-yellow "hot" palette (the classic CPU flame graph look).
    Hot,
    /// Allocation call sites (the leaf frames, which called the allocator) in red,
    /// every other frame from the muted "mem" palette, so the leaks stand out.
    #[default]
    Leak,
}

/// Options shared by all renderers; each uses the fields that apply to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Number of stacks shown by the text report, largest first; 0 shows all.
    pub top: usize,
    /// Color scheme of the SVG flame graph.
    pub color: ColorScheme,
    /// Title of the SVG flame graph and the text report, instead of the default
    /// one naming the target.
    pub title: Option<String>,
    /// What the flame graph's and the folded stacks' widths are.
    pub weight: Weight,
}

impl RenderOptions {
    /// Default for [`RenderOptions::top`].
    pub const DEFAULT_TOP: usize = 20;
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            top: Self::DEFAULT_TOP,
            color: ColorScheme::default(),
            title: None,
            weight: Weight::default(),
        }
    }
}

/// Writes `report` to `out` in `format`.
///
/// Nothing is written anywhere else. Errors are those of `out` (and, for SVG,
/// of inferno).
pub fn render(
    report: &Report,
    format: Format,
    opts: &RenderOptions,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        Format::Text => text::render(report, opts, out),
        Format::Folded => folded::render(profiles::weighted(report, opts.weight)?.as_ref(), out),
        Format::Svg => svg::render(profiles::weighted(report, opts.weight)?.as_ref(), opts, out),
        Format::Json => json::render(report, out),
        Format::Pprof => pprof::render(report, out),
    }
}

/// `bytes` in binary units with one decimal (`1.5 MiB`), or exact below 1 KiB (`512 B`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration in seconds, short and human: `0.25 s`, `12.3 s`, `4m05s`, `2h03m`.
pub fn human_secs(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".to_string();
    }
    if secs < 1.0 {
        return format!("{secs:.2} s");
    }
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let whole = secs.round() as u64;
    if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

/// The default title of a report about `report.target`.
fn default_title(report: &Report) -> String {
    let t = &report.target;
    if let Some(selection) = &report.selection {
        let n = report.processes.len();
        let processes = if n == 1 { "process" } else { "processes" };
        if n == 0 {
            format!("memprof: outstanding memory, {selection}: none")
        } else {
            format!("memprof: outstanding memory of {n} {processes} ({selection})")
        }
    } else if t.comm.is_empty() {
        format!("memprof: outstanding memory of pid {}", t.pid)
    } else {
        format!("memprof: outstanding memory of pid {} ({})", t.pid, t.comm)
    }
}

/// `±9.9%`: a standard error relative to `value`, or `±?` when `value` is 0.
fn relative(stderr: f64, value: u64) -> String {
    if value == 0 {
        return "±?".to_string();
    }
    format!("±{:.1}%", 100.0 * stderr / value as f64)
}

/// What a sampled report's figures are, in one sentence (text header, pprof
/// comment); `None` when every allocation was tracked.
fn sampling_statement(report: &Report) -> Option<String> {
    let s = report.sampling?;
    let totals = report.totals;
    let blocks = if s.sampled_count == 1 {
        "block"
    } else {
        "blocks"
    };
    let errors = format!(
        "Standard error of the totals: {} ({}) in bytes, {:.0} ({}) in allocations",
        human_bytes(s.bytes_stderr.round() as u64),
        relative(s.bytes_stderr, totals.bytes),
        s.count_stderr,
        relative(s.count_stderr, totals.count),
    );
    if s.method == SampleMethod::Window {
        let windows = s.windows.unwrap_or_default();
        let failed = match windows.failed_links {
            0 => String::new(),
            n => format!(
                " WARNING: {n} of the windows' probe links could not be made (a process \
                 that exited, or a kernel error; see -v): those windows recorded nothing there, \
                 so the figures of what those links probe are low."
            ),
        };
        let scaled = if windows.scaled_by_frees {
            format!(
                ", the share of the target's frees made in them (1 in {scale:.1}; it ran at \
                 {pace:.0}% of its speed outside while every call was recorded). Allocations \
                 that follow the clock rather than the target's work are over-estimated by \
                 {over:.2}x (the run over the windows: 1 in {time:.1})",
                scale = s.factor(),
                pace = windows.pace.unwrap_or(1.0) * 100.0,
                over = s.factor() / windows.time_scale.max(f64::MIN_POSITIVE),
                time = windows.time_scale,
            )
        } else {
            String::new()
        };
        return Some(format!(
            "ESTIMATES from sampling by windows: every allocation call made during {count} \
             {windows_word} at random times ({open} in all, 1/{time_scale:.1} of the run) was \
             recorded, and every byte and allocation figure is the recorded one times \
             {scale:.1}{scaled} ({recorded} outstanding {blocks} recorded). {errors}, counting \
             the blocks of one window together; each stack shows its own, and stacks that \
             allocate rarely may be missing. The stats below are not scaled.{failed}",
            time_scale = if windows.time_scale > 0.0 {
                windows.time_scale
            } else {
                s.factor()
            },
            count = windows.count,
            windows_word = if windows.count == 1 {
                "window"
            } else {
                "windows"
            },
            open = human_secs(windows.open_secs),
            scale = s.factor(),
            recorded = s.sampled_count,
        ));
    }
    Some(format!(
        "ESTIMATES from 1-in-{rate} sampling: each allocation call was recorded with \
         probability 1/{rate} and every byte and allocation figure is the recorded one times \
         {rate} ({recorded} outstanding {blocks} recorded). {errors}; a stack with k recorded \
         blocks is off by about 1/sqrt(k) (one standard error, more if its sizes vary), and \
         stacks holding far fewer than {rate} blocks may be missing. The stats below are not \
         scaled.",
        rate = s.rate,
        recorded = s.sampled_count,
    ))
}

/// A sampled report's method in a few words, for titles: "1-in-64
/// sampling", "sampling windows (1/63.2 of the run)".
fn sampling_short(s: &Sampling) -> String {
    match s.method {
        SampleMethod::Call => format!("1-in-{} sampling", s.rate),
        SampleMethod::Window => match s.windows {
            Some(w) if w.scaled_by_frees => format!(
                "sampling windows (1/{:.1} of the run, x{:.1} by frees)",
                w.time_scale,
                s.factor()
            ),
            _ => format!("sampling windows (1/{:.1} of the run)", s.factor()),
        },
    }
}

/// One optional source of a report, as the renderers show it.
pub(crate) struct ExtraSource<'a> {
    /// Root frame of its stacks on flame graphs and folded output; its pprof label.
    pub root: &'static str,
    /// Heading of its section in the text report.
    pub title: &'static str,
    /// What one of its counts is: `range` (mmap) or `object` (kernel).
    pub unit: &'static str,
    /// Its plural.
    pub units: &'static str,
    pub source: &'a crate::model::SourceReport,
}

/// Root frame of the heap's stacks when a report has other sources.
pub(crate) const HEAP_ROOT: &str = "[heap]";

/// The optional sources present in `report` (`--mmap`, `--kernel`), in report order.
pub(crate) fn extra_sources(report: &Report) -> Vec<ExtraSource<'_>> {
    let mut out = Vec::new();
    if let Some(source) = &report.mmap {
        out.push(ExtraSource {
            root: "[anonymous mmap]",
            title: "Anonymous mmap (--mmap)",
            unit: "range",
            units: "ranges",
            source,
        });
    }
    if let Some(source) = &report.kernel {
        out.push(ExtraSource {
            root: "[kernel]",
            title: "Kernel (--kernel)",
            unit: "object",
            units: "objects",
            source,
        });
    }
    out
}

/// The stacks of `report` by outstanding bytes, largest first; ties keep report order.
fn stacks_by_bytes(report: &Report) -> Vec<&crate::model::Stack> {
    let mut stacks: Vec<_> = report.stacks.iter().collect();
    stacks.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.count.cmp(&a.count)));
    stacks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_path() {
        let cases = [
            ("out.txt", Some(Format::Text)),
            ("a/b/out.folded", Some(Format::Folded)),
            ("out.collapsed", Some(Format::Folded)),
            ("OUT.SVG", Some(Format::Svg)),
            ("report.json", Some(Format::Json)),
            ("heap.pb.gz", Some(Format::Pprof)),
            ("heap.pprof", Some(Format::Pprof)),
            ("archive.tar.gz", None),
            ("noext", None),
            ("", None),
        ];
        for (path, want) in cases {
            assert_eq!(Format::from_path(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_secs(0.25), "0.25 s");
        assert_eq!(human_secs(12.34), "12.3 s");
        assert_eq!(human_secs(245.0), "4m05s");
        assert_eq!(human_secs(7380.0), "2h03m");
        assert_eq!(human_secs(f64::NAN), "?");
    }

    #[test]
    fn sampled_reports_say_so() {
        use crate::model::{Sampling, Totals};
        let mut report = Report {
            totals: Totals {
                bytes: 6_400_000,
                count: 6_400,
            },
            ..Report::default()
        };
        assert_eq!(sampling_statement(&report), None);
        report.sampling = Some(Sampling {
            rate: 64,
            sampled_count: 100,
            bytes_stderr: 634_980.0,
            count_stderr: 634.98,
            ..Default::default()
        });
        let text = sampling_statement(&report).unwrap();
        assert!(
            text.starts_with("ESTIMATES from 1-in-64 sampling"),
            "{text}"
        );
        assert!(text.contains("(100 outstanding blocks recorded)"), "{text}");
        assert!(
            text.contains("620.1 KiB (±9.9%) in bytes, 635 (±9.9%)"),
            "{text}"
        );
        assert!(text.contains("1/sqrt(k)"), "{text}");
        report.sampling = Some(Sampling {
            rate: 64,
            method: SampleMethod::Window,
            scale: 63.25,
            windows: Some(crate::model::SampleWindows {
                count: 12,
                open_secs: 0.025,
                failed_links: 0,
                ..crate::model::SampleWindows::default()
            }),
            sampled_count: 100,
            bytes_stderr: 634_980.0,
            count_stderr: 634.98,
        });
        let text = sampling_statement(&report).unwrap();
        assert!(
            text.starts_with(
                "ESTIMATES from sampling by windows: every allocation call made during 12 \
                 windows at random times (0.03 s in all, 1/63.2 of the run) was recorded"
            ),
            "{text}"
        );
        assert!(
            text.contains("times 63.2 (100 outstanding blocks"),
            "{text}"
        );
        assert!(
            text.contains("counting the blocks of one window together"),
            "{text}"
        );
        assert_eq!(
            sampling_short(&report.sampling.unwrap()),
            "sampling windows (1/63.2 of the run)"
        );
        assert!(!text.contains("WARNING"), "{text}");
        if let Some(w) = report.sampling.as_mut().and_then(|s| s.windows.as_mut()) {
            w.failed_links = 3;
        }
        let text = sampling_statement(&report).unwrap();
        assert!(
            text.contains("WARNING: 3 of the windows' probe links could not be made"),
            "{text}"
        );
    }

    #[test]
    fn defaults() {
        let opts = RenderOptions::default();
        assert_eq!(opts.top, RenderOptions::DEFAULT_TOP);
        assert_eq!(opts.color, ColorScheme::Leak);
        assert_eq!(opts.title, None);
    }
}
