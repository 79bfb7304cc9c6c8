//! Golden-file tests of the text, folded and JSON renderers, and checks of the SVG.
//!
//! Run with `MEMPROF_BLESS=1` to rewrite the files under `tests/golden/` from
//! the current output, then review the diff before committing it.

mod common;

use std::path::PathBuf;

use common::{
    empty_report, growth_report, many_report, min_age_report, profiles_report, sample_report,
};
use memprof::model::{Report, Totals};
use memprof::render::{render, render_timeline, ColorScheme, Format, RenderOptions, Weight};

fn rendered(report: &Report, format: Format, opts: &RenderOptions) -> String {
    let mut out = Vec::new();
    render(report, format, opts, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Compares `actual` with `tests/golden/<name>`, or rewrites it when `MEMPROF_BLESS=1`.
fn check_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("MEMPROF_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with MEMPROF_BLESS=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the output, first at line {}:\n  expected: {:?}\n  actual:   {:?}\n\
             full output:\n{actual}\nrun with MEMPROF_BLESS=1 to accept the new output",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line),
        );
    }
}

#[test]
fn text_golden() {
    let opts = RenderOptions {
        top: 4,
        ..RenderOptions::default()
    };
    check_golden(
        "sample.txt",
        &rendered(&sample_report(), Format::Text, &opts),
    );
}

#[test]
fn text_all_stacks() {
    let opts = RenderOptions {
        top: 0,
        ..RenderOptions::default()
    };
    let text = rendered(&sample_report(), Format::Text, &opts);
    assert!(
        text.contains("\n5 stacks by outstanding bytes:\n"),
        "{text}"
    );
    for rank in 1..=5 {
        assert!(text.contains(&format!("\n#{rank}  ")), "{text}");
    }
    assert!(!text.contains("more stack"), "{text}");
}

#[test]
fn text_empty_golden() {
    let text = rendered(&empty_report(), Format::Text, &RenderOptions::default());
    assert!(text.contains("no outstanding allocations were found"));
    check_golden("empty.txt", &text);
}

#[test]
fn text_growth_golden() {
    let opts = RenderOptions {
        top: 4,
        ..RenderOptions::default()
    };
    let text = rendered(&growth_report(), Format::Text, &opts);
    check_golden("growth.txt", &text);
}

#[test]
fn text_growth_keeps_the_report_order() {
    let opts = RenderOptions {
        top: 0,
        ..RenderOptions::default()
    };
    let text = rendered(&growth_report(), Format::Text, &opts);
    // The slowly growing 1000-byte stack is second, above far larger flat ones.
    let second = text.find("\n#2  1000 B").unwrap();
    let third = text.find("\n#3  256.0 KiB").unwrap();
    assert!(second < third, "{text}");
    assert!(text.contains("\n5 stacks, growing ones first, then by outstanding bytes:\n"));
    // What grows is said before the stacks are listed.
    let summary = text.find("growth:       2 of 5 stacks grow").unwrap();
    assert!(summary < text.find("\n#1  ").unwrap(), "{text}");
    assert!(text.contains("#1 leak_buffer +35.2 KiB/s"), "{text}");
    assert!(
        text.contains("\n    flat at 256.0 KiB over 12 snapshots\n"),
        "{text}"
    );
    assert!(text.contains("    shrinking -1.4 KiB/s over 12 snapshots: 44.0 KiB, "));
}

#[test]
fn text_min_age_golden() {
    let opts = RenderOptions {
        top: 4,
        ..RenderOptions::default()
    };
    let text = rendered(&min_age_report(), Format::Text, &opts);
    assert!(text.contains(
        "min age:      only allocations at least 2.0 s old count as leak suspects; \
         24.6 KiB (25176 bytes) in 11 younger allocations were left out\n"
    ));
    check_golden("min_age.txt", &text);
}

#[test]
fn text_without_new_fields_says_nothing_of_them() {
    let text = rendered(&sample_report(), Format::Text, &RenderOptions::default());
    for absent in ["min age:", "snapshots:", "growth:", "growing", "younger"] {
        assert!(!text.contains(absent), "{absent}: {text}");
    }
}

#[test]
fn folded_golden() {
    let folded = rendered(&sample_report(), Format::Folded, &RenderOptions::default());
    for line in folded.lines() {
        let (stack, bytes) = line.rsplit_once(' ').unwrap();
        assert!(bytes.parse::<u64>().is_ok(), "{line}");
        assert!(!stack.contains('\n'), "{line}");
    }
    check_golden("sample.folded", &folded);
}

#[test]
fn many_processes_golden() {
    let report = many_report();
    let opts = RenderOptions::default();
    check_golden("many.txt", &rendered(&report, Format::Text, &opts));
    let folded = rendered(&report, Format::Folded, &opts);
    assert!(folded
        .lines()
        .all(|l| l.starts_with("web (4242);") || l.starts_with("cron job (977);")));
    check_golden("many.folded", &folded);
    let json = rendered(&report, Format::Json, &opts);
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    // --top applies to each process.
    let one = RenderOptions {
        top: 1,
        ..RenderOptions::default()
    };
    let text = rendered(&report, Format::Text, &one);
    assert!(
        text.contains("Top 1 of each process, 2 of 5 stacks"),
        "{text}"
    );
    assert!(text.contains("--- web (4242) ---") && text.contains("--- cron job (977) ---"));
    assert!(text.contains("... and 3 more stacks"), "{text}");
}

#[test]
fn json_golden_round_trips() {
    let report = sample_report();
    let json = rendered(&report, Format::Json, &RenderOptions::default());
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    check_golden("sample.json", &json);
}

/// The growth report with `--min-age` too: every new field set.
fn growth_and_min_age_report() -> Report {
    let mut report = growth_report();
    report.min_age_secs = Some(2.0);
    report.younger = Some(Totals {
        bytes: 4096,
        count: 3,
    });
    report
}

#[test]
fn json_with_growth_and_min_age_round_trips() {
    let report = growth_and_min_age_report();
    let json = rendered(&report, Format::Json, &RenderOptions::default());
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    for key in [
        "\"min_age_secs\": 2.0",
        "\"younger\": {",
        "\"interval_secs\": 2.5",
        "\"growth\": {",
        "\"bytes_per_sec\": 36021.875",
        "\"growing\": true",
    ] {
        assert!(json.contains(key), "missing {key}");
    }
    check_golden("growth.json", &json);
}

#[test]
fn json_without_new_fields_leaves_them_out() {
    let json = rendered(&sample_report(), Format::Json, &RenderOptions::default());
    for key in ["min_age_secs", "younger", "interval_secs", "growth"] {
        assert!(!json.contains(key), "{key}");
    }
}

/// Parses `svg` completely, failing on malformed XML.
fn assert_well_formed(svg: &str) {
    let mut reader = quick_xml::Reader::from_str(svg);
    let mut depth = 0i32;
    let mut elements = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(_)) => {
                depth += 1;
                elements += 1;
            }
            Ok(quick_xml::events::Event::Empty(_)) => elements += 1,
            Ok(quick_xml::events::Event::End(_)) => depth -= 1,
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("malformed SVG at {}: {e}\n{svg}", reader.buffer_position()),
        }
        assert!(depth >= 0);
    }
    assert_eq!(depth, 0, "unclosed elements");
    assert!(elements > 0);
    assert!(svg.contains("<svg"));
}

#[test]
fn svg_of_sample() {
    let svg = rendered(&sample_report(), Format::Svg, &RenderOptions::default());
    assert_well_formed(&svg);
    assert!(
        svg.contains("memprof: outstanding memory of pid 4242 (leaky)"),
        "title"
    );
    assert!(svg.contains("1.3 MiB (1324008 bytes) in 93 allocations outstanding after 30.0 s"));
    assert!(svg.contains("LOWER BOUNDS"));
    // Leaf frames, with their call sites, and their tooltips in bytes.
    for leaf in [
        "leak_buffer (leaky.c:12)",
        "alloc::raw_vec::RawVec&lt;T,A&gt;::grow_one (raw_vec.rs:567)",
        "[stack lost]",
        "&lt;[u8: 16] as leaky::Fill&gt;::fill (fill.rs:7)",
        "libfoo.so.1+0x1234",
    ] {
        assert!(svg.contains(leaf), "missing {leaf}");
    }
    assert!(svg.contains("leak_buffer (leaky.c:12) (1,048,576 bytes, 79.20%)"));
    // Leak scheme: the allocation call sites are red.
    assert!(svg.contains("rgb(220,50,40)"));
}

#[test]
fn svg_is_deterministic_for_every_scheme() {
    for color in [ColorScheme::Mem, ColorScheme::Hot, ColorScheme::Leak] {
        let opts = RenderOptions {
            color,
            title: Some("custom <title>".to_string()),
            ..RenderOptions::default()
        };
        let a = rendered(&sample_report(), Format::Svg, &opts);
        let b = rendered(&sample_report(), Format::Svg, &opts);
        assert_eq!(a, b, "{color:?}");
        assert_well_formed(&a);
        assert!(a.contains("custom &lt;title&gt;"));
        assert_eq!(a.contains("rgb(220,50,40)"), color == ColorScheme::Leak);
    }
}

#[test]
fn svg_subtitle_mentions_min_age_and_snapshots() {
    let svg = rendered(
        &growth_and_min_age_report(),
        Format::Svg,
        &RenderOptions::default(),
    );
    assert_well_formed(&svg);
    // Too long for one line with everything: the exact byte count goes.
    assert!(
        svg.contains(
            "1.3 MiB in 93 allocations outstanding after 30.0 s; \
             only allocations older than 2.0 s; 2 stacks growing (snapshots every 2.5 s); \
             exec at 2.5 s; process exited at 27.2 s; LOWER BOUNDS"
        ),
        "{svg}"
    );
    let plain = rendered(&sample_report(), Format::Svg, &RenderOptions::default());
    assert!(!plain.contains("snapshots every"));
    assert!(!plain.contains("older than"));
}

#[test]
fn svg_of_empty_report() {
    let svg = rendered(&empty_report(), Format::Svg, &RenderOptions::default());
    assert_well_formed(&svg);
    assert!(svg.contains("no outstanding allocations were found"));
    assert!(svg.contains("memprof: outstanding memory of pid 7 (quiet)"));
}

#[test]
fn profiles_text_golden() {
    let report = profiles_report();
    for (name, weight) in [
        ("profiles.txt", Weight::Outstanding),
        ("profiles_alloc.txt", Weight::Alloc),
        ("profiles_peak.txt", Weight::Peak),
    ] {
        let opts = RenderOptions {
            top: 3,
            weight,
            ..RenderOptions::default()
        };
        check_golden(name, &rendered(&report, Format::Text, &opts));
    }
}

#[test]
fn weighted_folded_golden() {
    let report = profiles_report();
    for (name, weight) in [
        ("profiles_alloc.folded", Weight::Alloc),
        ("profiles_peak.folded", Weight::Peak),
    ] {
        let opts = RenderOptions {
            weight,
            ..RenderOptions::default()
        };
        check_golden(name, &rendered(&report, Format::Folded, &opts));
    }
}

#[test]
fn weighted_svg_says_what_its_widths_are() {
    let report = profiles_report();
    let opts = RenderOptions {
        weight: Weight::Alloc,
        ..RenderOptions::default()
    };
    let svg = rendered(&report, Format::Svg, &opts);
    assert!(
        svg.contains("memprof: allocations of pid 4242 (leaky)"),
        "{svg}"
    );
    assert!(svg.contains("parse_request"), "the churn is drawn");
    // A report without the profile says so instead of drawing nothing.
    let mut out = Vec::new();
    let err = render(&sample_report(), Format::Svg, &opts, &mut out).unwrap_err();
    assert!(err.to_string().contains("no allocation profile"), "{err}");
}

#[test]
fn timeline_svg_golden() {
    let mut out = Vec::new();
    render_timeline(&profiles_report(), &RenderOptions::default(), &mut out).unwrap();
    let svg = String::from_utf8(out).unwrap();
    check_golden("timeline.svg", &svg);
    // Well-formed XML, one polyline per series (total, RSS, two stacks).
    let mut reader = quick_xml::Reader::from_str(&svg);
    let mut polylines = 0;
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Eof => break,
            quick_xml::events::Event::Start(e) if e.name().as_ref() == b"polyline" => {
                polylines += 1
            }
            _ => {}
        }
    }
    assert_eq!(polylines, 4, "{svg}");
    let mut out = Vec::new();
    let err = render_timeline(&sample_report(), &RenderOptions::default(), &mut out).unwrap_err();
    assert!(err.to_string().contains("no timeline"), "{err}");
}
