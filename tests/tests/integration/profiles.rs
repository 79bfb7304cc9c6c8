//! The allocation profile, the peak and the timeline against
//! `tests/fixtures/profiles.c`: every allocation per stack and its
//! temporaries exact in JSON, pprof (decoded here) and the folded stacks of
//! `--weight alloc`; the peak's total and stacks exact; each step of a heap
//! that grows in steps seen in the timeline, in order and not before it
//! happened. Needs root (run through `cargo xtask test`).

use std::collections::HashMap;
use std::fs;
use std::io::Read as _;
use std::time::Duration;

use crate::pprof_proto::Profile;
use memprof::model::AllocStack;
use tests::{
    assert_ground_truth, describe_report, function_is, profile_fixture_with, root_or_skip, Fixture,
    Kind, Memprof, Report, ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT,
};

/// The threshold the tests give (`--temporary-ms`): the fixture frees its
/// temporaries at once and holds the others 200 ms, so that a busy machine
/// that preempts the fixture between a malloc and its free cannot turn a
/// temporary into a lasting block.
const TEMPORARY_MS: &str = "50";

/// The one allocation stack whose first frame is `function`.
fn alloc_stack<'a>(report: &'a Report, function: &str) -> &'a AllocStack {
    let allocations = report
        .allocations
        .as_ref()
        .unwrap_or_else(|| panic!("no allocation profile:\n{}", describe_report(report)));
    let stacks: Vec<&AllocStack> = allocations
        .stacks
        .iter()
        .filter(|s| s.frames.first().is_some_and(|f| function_is(f, function)))
        .collect();
    match stacks.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one allocation stack from {function}, found {}: {:#?}",
            stacks.len(),
            allocations.stacks
        ),
    }
}

/// The first frame's function of each pprof sample, with its values.
fn decode_pprof(gz: &[u8]) -> (Vec<String>, String, HashMap<String, Vec<i64>>) {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("the pprof file does not gunzip");
    let p = <Profile as prost::Message>::decode(&raw[..]).expect("not a pprof Profile");
    let s = |i: i64| p.string_table[i as usize].clone();
    let types = p.sample_type.iter().map(|t| s(t.r#type)).collect();
    let mut by_leaf: HashMap<String, Vec<i64>> = HashMap::new();
    for sample in &p.sample {
        let Some(first) = sample.location_id.first() else {
            continue;
        };
        let location = &p.location[*first as usize - 1];
        let Some(line) = location.line.first() else {
            continue;
        };
        let name = s(p.function[line.function_id as usize - 1].name);
        let sum = by_leaf
            .entry(name)
            .or_insert_with(|| vec![0; sample.value.len()]);
        for (a, v) in sum.iter_mut().zip(&sample.value) {
            *a += v;
        }
    }
    (types, s(p.default_sample_type), by_leaf)
}

#[test]
fn allocations_and_temporaries_are_exact_in_json_pprof_and_folded() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (json, pprof, folded) = (path("r.json"), path("r.pb.gz"), path("r.folded"));
    let kind = Kind::ProfilesRate;
    let (output, _) = profile_fixture_with(
        kind,
        &[kind.profiles_mode()],
        &[
            "--temporary-ms",
            TEMPORARY_MS,
            "--weight",
            "alloc",
            "-o",
            &json,
            "-o",
            &pprof,
            "-o",
            &folded,
        ],
    );
    let report: Report = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    let dump = describe_report(&report);
    assert_ground_truth(&report, kind);

    let allocations = report.allocations.as_ref().expect("no allocation profile");
    assert_eq!(allocations.temporary_secs, 0.05);
    let mut want = (0, 0, 0, 0);
    for truth in Kind::PROFILES_ALLOCS {
        let s = alloc_stack(&report, truth.function);
        assert_eq!(
            (
                s.totals.count,
                s.totals.bytes,
                s.totals.temporary,
                s.totals.temporary_bytes
            ),
            (
                truth.count,
                truth.bytes,
                truth.temporary,
                truth.temporary_bytes
            ),
            "{}: allocations, bytes, temporaries, their bytes\n{dump}",
            truth.function
        );
        want.0 += truth.count;
        want.1 += truth.bytes;
        want.2 += truth.temporary;
        want.3 += truth.temporary_bytes;
    }
    let t = allocations.totals;
    assert_eq!(
        (t.count, t.bytes, t.temporary, t.temporary_bytes),
        want,
        "the fixture makes no other allocation after go: {:#?}",
        allocations.stacks
    );
    // What each stack still holds, beside what it allocated.
    for leak in Kind::ProfilesRate.truth().leaks {
        let s = alloc_stack(&report, leak.function);
        assert_eq!(
            (s.outstanding.count, s.outstanding.bytes),
            (leak.count, leak.bytes)
        );
    }

    // pprof: Go's four heap sample types, in Go's order.
    let (types, default, by_leaf) = decode_pprof(&fs::read(&pprof).unwrap());
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    assert_eq!(default, "inuse_space");
    for truth in Kind::PROFILES_ALLOCS {
        let kept = Kind::ProfilesRate
            .truth()
            .leaks
            .iter()
            .find(|l| l.function == truth.function)
            .map_or((0, 0), |l| (l.count as i64, l.bytes as i64));
        assert_eq!(
            by_leaf.get(truth.function).map(Vec::as_slice),
            Some(&[truth.count as i64, truth.bytes as i64, kept.0, kept.1][..]),
            "pprof values of {}: {by_leaf:?}",
            truth.function
        );
    }

    // The folded stacks of --weight alloc: every allocation's bytes.
    let folded = fs::read_to_string(&folded).unwrap();
    for truth in Kind::PROFILES_ALLOCS {
        let bytes: u64 = folded
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(stack, _)| stack.rsplit(';').next() == Some(truth.function))
            .map(|(_, b)| b.parse::<u64>().unwrap())
            .sum();
        assert_eq!(bytes, truth.bytes, "{}:\n{folded}", truth.function);
    }

    // The text report (stdout, next to files that are not text) has the sections.
    let text = output.stdout_text();
    for needle in [
        "Allocations while recording:",
        "in 1550 allocations; 1200 of them temporary",
        "Peak:",
        "Timeline:",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the text:\n{text}");
    }
}

#[test]
fn the_peak_and_its_stacks_are_exact() {
    if !root_or_skip() {
        return;
    }
    let kind = Kind::ProfilesPeak;
    let (output, _) = profile_fixture_with(kind, &[kind.profiles_mode()], &["--format", "json"]);
    let report = output.report();
    let dump = describe_report(&report);
    assert_ground_truth(&report, kind);
    let peak = report.peak.as_ref().expect("no peak in the report");
    assert!(peak.exact && peak.events_lost == 0, "{peak:#?}");
    let bytes: u64 = Kind::PROFILES_PEAK.iter().map(|l| l.bytes).sum();
    let count: u64 = Kind::PROFILES_PEAK.iter().map(|l| l.count).sum();
    assert_eq!(
        (peak.totals.bytes, peak.totals.count),
        (bytes, count),
        "{peak:#?}\n{dump}"
    );
    let held: Vec<(String, u64, u64)> = peak
        .stacks
        .iter()
        .map(|s| {
            let name = s
                .frames
                .first()
                .and_then(|f| f.function.clone())
                .unwrap_or_default();
            (name, s.count, s.bytes)
        })
        .collect();
    let want: Vec<(String, u64, u64)> = Kind::PROFILES_PEAK
        .iter()
        .map(|l| (l.function.to_string(), l.count, l.bytes))
        .collect();
    assert_eq!(held, want, "the stacks at the peak, most bytes first");
    // 100 + 10 + 5 allocations, 100 + 5 + 8 frees, 3 allocations after.
    assert_eq!(peak.events, 100 * 2 + 10 + 5 + 5 + 8 + 3, "{peak:#?}");
    assert!(peak.at_secs > 0.0 && peak.at_secs <= report.duration_secs);
}

#[test]
fn each_step_shows_in_the_timeline_in_order() {
    if !root_or_skip() {
        return;
    }
    let kind = Kind::ProfilesSteps;
    let mut fixture = Fixture::spawn_with(kind, &[], &[kind.profiles_mode()]);
    let pid = fixture.pid().to_string();
    let mut memprof = Memprof::spawn(&["-p", &pid, "--timeline-every", "0.05", "-f", "json"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    fixture.go();
    let mut stamps = Vec::new();
    for k in 0..Kind::PROFILES_STEPS.len() {
        let line = fixture.expect_line("step", DONE_TIMEOUT);
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("step"), "{line:?}");
        assert_eq!(words.next(), Some(k.to_string().as_str()), "{line:?}");
        let ns: u64 = words.next().and_then(|w| w.parse().ok()).unwrap();
        stamps.push(ns as f64 / 1e9);
    }
    fixture.wait_done(DONE_TIMEOUT);
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    assert!(fixture.finish(Duration::from_secs(10)).success());
    let report = output.report();
    assert_ground_truth(&report, kind);
    let timeline = report.timeline.as_ref().expect("no timeline");
    assert_eq!(timeline.every_secs, 0.05);
    let totals: Vec<u64> = timeline.samples.iter().map(|s| s.bytes).collect();
    // The outstanding total only ever takes the levels of the steps.
    let mut levels = vec![0];
    for step in Kind::PROFILES_STEPS {
        levels.push(levels.last().unwrap() + step);
    }
    assert!(
        totals.windows(2).all(|w| w[0] <= w[1]) && totals.iter().all(|t| levels.contains(t)),
        "the total should rise through {levels:?}, it went {totals:?}"
    );
    // Each step is seen, in order, and not before it happened.
    let first_seen: Vec<f64> = levels[1..]
        .iter()
        .map(|level| {
            timeline
                .samples
                .iter()
                .find(|s| s.bytes == *level)
                .unwrap_or_else(|| panic!("no sample at {level} B: {totals:?}"))
                .at_secs
        })
        .collect();
    for k in 1..first_seen.len() {
        let seen = first_seen[k] - first_seen[0];
        let happened = stamps[k] - stamps[0];
        assert!(
            seen >= happened - timeline.every_secs - 0.01,
            "step {k} was seen {seen:.3} s after step 0 but made {happened:.3} s after it"
        );
    }
    // The step stack is one of the series, and ends at the whole of it.
    let series = timeline
        .stacks
        .iter()
        .find(|s| {
            s.frames
                .first()
                .is_some_and(|f| function_is(f, "step_grow"))
        })
        .expect("step_grow's series");
    assert_eq!(series.bytes.len(), timeline.samples.len());
    assert_eq!(series.bytes.last(), levels.last());
    assert!(timeline.samples.iter().any(|s| s.rss_bytes.is_some()));
}
