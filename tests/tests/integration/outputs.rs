//! One memprof run against the C fixture (`tests/fixtures/leaky.c`) writing
//! every file format at once (`-o leak.svg -o leak.json -o leak.pb.gz -o
//! leak.folded`), each checked against the fixture's ground truth with an
//! independent reader; then `memprof diff` and `memprof merge` on the JSON
//! it wrote. The run is shared by the tests of this module (the first one to
//! need it makes it). Needs root (run through `cargo xtask test`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::pprof_proto::{Location, Profile};
use tests::{
    check_no_loss, describe_report, find_word, frame_index, profile_fixture, root_or_skip,
    run_memprof, unnamed_leaks, Frame, GroundTruth, Kind, Report,
};

const OFFLINE_TIMEOUT: Duration = Duration::from_secs(60);

/// The ground truth of the fixture every test here profiles.
fn truth() -> &'static GroundTruth {
    Kind::Leaky.truth()
}

/// What one profiling run wrote.
struct Run {
    pid: u32,
    /// The `-o` files by name.
    files: HashMap<&'static str, Vec<u8>>,
    /// memprof's stdout: the text report (no `-o` file is text).
    stdout: String,
}

const FILES: [&str; 4] = ["leak.svg", "leak.json", "leak.pb.gz", "leak.folded"];

impl Run {
    fn read(&self, name: &str) -> &[u8] {
        &self.files[name]
    }

    fn text(&self, name: &str) -> &str {
        std::str::from_utf8(self.read(name)).unwrap_or_else(|e| panic!("{name} is not UTF-8: {e}"))
    }

    fn report(&self) -> Report {
        serde_json::from_slice(self.read("leak.json"))
            .unwrap_or_else(|e| panic!("leak.json is not a JSON report: {e}"))
    }
}

/// Profiles the leaky fixture once, writing every format to files, and
/// keeps what it wrote.
fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let paths: Vec<String> = FILES
            .iter()
            .map(|name| dir.path().join(name).to_str().unwrap().to_owned())
            .collect();
        let mut args = Vec::new();
        for path in &paths {
            args.extend(["-o", path.as_str()]);
        }
        let (output, pid) = profile_fixture(Kind::Leaky, &args);
        let files = FILES
            .iter()
            .zip(&paths)
            .map(|(name, path)| {
                let data = fs::read(path).unwrap_or_else(|e| {
                    panic!(
                        "memprof did not write {path}: {e}; stderr:\n{}",
                        output.stderr
                    )
                });
                (*name, data)
            })
            .collect();
        Run {
            pid,
            files,
            stdout: output.stdout_text().to_owned(),
        }
    })
}

/// Every leak of the ground truth checked in every format of one run: running
/// the fixture once per format would take four times as long.
#[test]
fn json_file_matches_the_ground_truth() {
    if !root_or_skip() {
        return;
    }
    let run = run();
    let report = run.report();
    assert_eq!(report.target.pid, run.pid);
    let mut problems = truth().check_leaks(&report);
    problems.extend(check_no_loss(&report.stats));
    assert!(
        problems.is_empty(),
        "leak.json does not match leaky.c's ground truth:\n- {}\n\nreport:\n{}",
        problems.join("\n- "),
        describe_report(&report)
    );
}

/// With only files asked for, the text report still goes to stdout.
#[test]
fn text_report_goes_to_stdout_alongside_the_files() {
    if !root_or_skip() {
        return;
    }
    let text = &run().stdout;
    let want = truth().total();
    assert!(
        text.contains(&format!(
            "({} bytes) in {} allocations",
            want.bytes, want.count
        )),
        "the text report on stdout does not show the totals:\n{text}"
    );
}

#[test]
fn svg_file_draws_every_leak_and_names_the_pid() {
    if !root_or_skip() {
        return;
    }
    let run = run();
    let svg = run.text("leak.svg");
    let pid = run.pid;
    let dump = describe_report(&run.report());
    assert_well_formed("leak.svg", svg);
    let head = svg.trim_start();
    assert!(
        head.starts_with("<?xml") || head.starts_with("<svg"),
        "leak.svg does not start as an SVG: {:?}",
        &head[..head.len().min(80)]
    );
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "leak.svg does not end with </svg>"
    );
    let title = svg_title(svg);
    assert!(
        find_word(&title, &format!("pid {pid}")).is_some(),
        "the flame graph's title does not name pid {pid}: {title:?}"
    );
    let missing = unnamed_leaks(svg, truth().leaks);
    assert!(
        missing.is_empty(),
        "leak.svg does not name {missing:?}; report:\n{dump}"
    );
    for clean in truth().clean {
        assert!(
            find_word(svg, clean).is_none(),
            "leak.svg names {clean}, which leaks nothing"
        );
    }
}

/// Parses `svg` completely, failing on malformed XML.
fn assert_well_formed(name: &str, svg: &str) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(svg);
    let mut depth = 0i64;
    let mut elements = 0;
    loop {
        match reader.read_event() {
            Ok(Event::Start(_)) => {
                depth += 1;
                elements += 1;
            }
            Ok(Event::Empty(_)) => elements += 1,
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "{name} is malformed at byte {}: {e}",
                reader.buffer_position()
            ),
        }
        assert!(depth >= 0, "{name} closes more elements than it opens");
    }
    assert_eq!(depth, 0, "{name} leaves elements open");
    assert!(elements > 1, "{name} has no elements");
}

/// The text of the flame graph's `<text id="title" ...>` element.
fn svg_title(svg: &str) -> String {
    let start = svg
        .find("id=\"title\"")
        .unwrap_or_else(|| panic!("leak.svg has no title element"));
    let rest = &svg[start..];
    let open = rest.find('>').expect("unterminated title tag") + 1;
    let close = rest[open..].find('<').expect("unterminated title text") + open;
    rest[open..close].to_owned()
}

/// One pprof sample: function names (innermost first), bytes and count.
type Decoded = (Vec<String>, i64, i64);

fn decode_pprof(gz: &[u8]) -> (Profile, Vec<Decoded>) {
    assert!(
        gz.starts_with(&[0x1f, 0x8b]),
        "leak.pb.gz is not gzipped (magic {:02x?})",
        &gz[..gz.len().min(2)]
    );
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("leak.pb.gz does not gunzip");
    let profile = <Profile as prost::Message>::decode(&raw[..])
        .expect("leak.pb.gz is not a perftools.profiles.Profile");
    let string = |i: i64| -> String {
        usize::try_from(i)
            .ok()
            .and_then(|i| profile.string_table.get(i))
            .unwrap_or_else(|| panic!("string index {i} out of the table"))
            .clone()
    };
    let functions: HashMap<u64, String> = profile
        .function
        .iter()
        .map(|f| (f.id, string(f.name)))
        .collect();
    let locations: HashMap<u64, &Location> = profile.location.iter().map(|l| (l.id, l)).collect();
    // With the allocation profile the values are Go's four heap types.
    let index = |name: &str| {
        profile
            .sample_type
            .iter()
            .position(|t| string(t.r#type) == name)
            .unwrap_or_else(|| panic!("no {name} sample type"))
    };
    let (space, objects) = (index("inuse_space"), index("inuse_objects"));
    let samples = profile
        .sample
        .iter()
        .map(|s| {
            assert_eq!(
                s.value.len(),
                profile.sample_type.len(),
                "a sample without a value per type: {s:?}"
            );
            let mut names = Vec::new();
            for id in &s.location_id {
                let location = locations
                    .get(id)
                    .unwrap_or_else(|| panic!("a sample refers to a missing location {id}"));
                for line in &location.line {
                    let name = functions.get(&line.function_id).unwrap_or_else(|| {
                        panic!(
                            "a location refers to a missing function {}",
                            line.function_id
                        )
                    });
                    names.push(name.clone());
                }
            }
            (names, s.value[space], s.value[objects])
        })
        .collect();
    (profile, samples)
}

#[test]
fn pprof_file_sums_to_the_ground_truth() {
    if !root_or_skip() {
        return;
    }
    let run = run();
    let dump = describe_report(&run.report());
    let (profile, samples) = decode_pprof(run.read("leak.pb.gz"));
    let types: Vec<(String, String)> = profile
        .sample_type
        .iter()
        .map(|t| {
            (
                profile.string_table[t.r#type as usize].clone(),
                profile.string_table[t.unit as usize].clone(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects".to_owned(), "count".to_owned()),
            ("alloc_space".to_owned(), "bytes".to_owned()),
            ("inuse_objects".to_owned(), "count".to_owned()),
            ("inuse_space".to_owned(), "bytes".to_owned())
        ]
    );
    assert_eq!(
        profile.string_table[profile.default_sample_type as usize],
        "inuse_space"
    );
    let want = truth().total();
    let bytes: i64 = samples.iter().map(|s| s.1).sum();
    let count: i64 = samples.iter().map(|s| s.2).sum();
    assert_eq!(
        (bytes, count),
        (want.bytes as i64, want.count as i64),
        "pprof inuse_space and inuse_objects summed over the samples; report:\n{dump}"
    );
    for leak in truth().leaks {
        let of_leak = samples
            .iter()
            .filter(|(names, _, _)| names.iter().any(|n| n == leak.function));
        let (bytes, count) = of_leak.fold((0, 0), |(b, c), s| (b + s.1, c + s.2));
        assert_eq!(
            (bytes, count),
            (leak.bytes as i64, leak.count as i64),
            "pprof samples through {}: (inuse_space, inuse_objects)",
            leak.function
        );
    }
    // The churn allocates (alloc_space) but holds nothing (inuse_space).
    for clean in truth().clean {
        assert!(
            samples
                .iter()
                .filter(|(names, _, _)| names.iter().any(|n| n == clean))
                .all(|s| s.1 == 0 && s.2 == 0),
            "the pprof profile has memory in use through {clean}, which leaks nothing"
        );
    }
}

/// `root;...;leaf bytes` lines as (stack, bytes).
fn parse_folded(folded: &str) -> Vec<(&str, u64)> {
    folded
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (stack, bytes) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("folded line without a count: {line:?}"));
            let bytes = bytes
                .parse()
                .unwrap_or_else(|e| panic!("folded line {line:?}: bad count: {e}"));
            (stack, bytes)
        })
        .collect()
}

#[test]
fn folded_file_sums_to_the_ground_truth() {
    if !root_or_skip() {
        return;
    }
    let run = run();
    let dump = describe_report(&run.report());
    let folded = run.text("leak.folded");
    let lines = parse_folded(folded);
    let sum: u64 = lines.iter().map(|l| l.1).sum();
    assert_eq!(
        sum,
        truth().total().bytes,
        "the counts of leak.folded add up to {sum}:\n{folded}\nreport:\n{dump}"
    );
    for leak in truth().leaks {
        let bytes: u64 = lines
            .iter()
            .filter(|(stack, _)| stack.split(';').any(|frame| frame == leak.function))
            .map(|l| l.1)
            .sum();
        assert_eq!(
            bytes, leak.bytes,
            "leak.folded lines through {}:\n{folded}",
            leak.function
        );
    }
    for clean in truth().clean {
        assert!(
            find_word(folded, clean).is_none(),
            "leak.folded names {clean}:\n{folded}"
        );
    }
}

/// The names `memprof diff` and `merge` match stacks by, innermost first.
fn key(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(Frame::display_name).collect()
}

fn write_json(path: &Path, value: &serde_json::Value) {
    fs::write(path, serde_json::to_vec_pretty(value).unwrap())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// `memprof diff` of the run's JSON against a copy in which the stacks of
/// `leak_malloc` hold half as much: the text names `leak_malloc` with the
/// exact change and nothing else, and the differential flame graph draws it
/// as shrunk by exactly that.
#[test]
fn diff_names_the_changed_stack_with_its_exact_delta() {
    if !root_or_skip() {
        return;
    }
    let run = run();
    let dir = tempfile::tempdir().unwrap();
    let before_path = dir.path().join("before.json");
    fs::write(&before_path, run.read("leak.json")).unwrap();
    let mut after: serde_json::Value = serde_json::from_slice(run.read("leak.json")).unwrap();

    // Halve every leak_malloc stack (10 x 1000 B from one call site).
    let (mut halved, mut bytes_cut, mut count_cut) = (0, 0, 0);
    for stack in after["stacks"].as_array_mut().expect("stacks is an array") {
        if stack["frames"][0]["function"].as_str() != Some("leak_malloc") {
            continue;
        }
        let (bytes, count) = (
            stack["bytes"].as_u64().unwrap(),
            stack["count"].as_u64().unwrap(),
        );
        stack["bytes"] = (bytes / 2).into();
        stack["count"] = (count / 2).into();
        bytes_cut += bytes - bytes / 2;
        count_cut += count - count / 2;
        halved += 1;
    }
    assert_eq!(
        (halved, bytes_cut, count_cut),
        (1, 5_000, 5),
        "expected one leak_malloc stack of 10000 B in 10 allocations:\n{}",
        describe_report(&run.report())
    );
    let totals = &mut after["totals"];
    totals["bytes"] = (totals["bytes"].as_u64().unwrap() - bytes_cut).into();
    totals["count"] = (totals["count"].as_u64().unwrap() - count_cut).into();
    let after_path = dir.path().join("after.json");
    write_json(&after_path, &after);

    let before_arg = before_path.to_str().unwrap();
    let after_arg = after_path.to_str().unwrap();
    let output = run_memprof(&[], &["diff", before_arg, after_arg], OFFLINE_TIMEOUT);
    output.assert_success();
    let text = output.stdout_text();
    let want = truth().total();
    assert!(
        text.contains(&format!(
            "1.3 MiB in {} allocations -> 1.3 MiB in {} allocations (-4.9 KiB)",
            want.count,
            want.count - 5
        )),
        "the diff does not show the change of the totals:\n{text}"
    );
    assert!(
        text.contains("1 of 1 changed stacks"),
        "the diff should list exactly one changed stack:\n{text}"
    );
    let heading = text
        .lines()
        .find(|l| l.starts_with("#1"))
        .unwrap_or_else(|| panic!("the diff lists no stack:\n{text}"));
    assert!(
        heading.contains("-4.9 KiB (10000 -> 5000 bytes, 10 -> 5 allocations)"),
        "the changed stack's heading does not give the exact change: {heading:?}\n{text}"
    );
    let block = &text[text.find(heading).unwrap()..];
    assert_eq!(
        block.lines().nth(1).map(str::trim),
        Some("leak_malloc"),
        "the changed stack is not leak_malloc's:\n{text}"
    );

    // The differential flame graph: widths are the later bytes, and only
    // leak_malloc's stack changed (-5000 B of the 1388680 B after).
    let svg_path = dir.path().join("diff.svg");
    let output = run_memprof(
        &[],
        &[
            "diff",
            before_arg,
            after_arg,
            "-o",
            svg_path.to_str().unwrap(),
        ],
        OFFLINE_TIMEOUT,
    );
    output.assert_success();
    let svg = fs::read_to_string(&svg_path)
        .unwrap_or_else(|e| panic!("memprof diff did not write diff.svg: {e}"));
    assert_well_formed("diff.svg", &svg);
    assert!(svg.trim_end().ends_with("</svg>"));
    let after_bytes = (want.bytes - 5_000) as f64;
    let shrunk = format!(
        "leak_malloc (5,000 bytes, {:.2}%; {:+.2}%)",
        100.0 * 5_000.0 / after_bytes,
        -100.0 * 5_000.0 / after_bytes
    );
    assert!(
        svg.contains(&shrunk),
        "diff.svg does not draw leak_malloc as shrunk: no {shrunk:?}"
    );
    let unchanged = format!(
        "leak_calloc_big (1,048,576 bytes, {:.2}%; 0.00%)",
        100.0 * 1_048_576.0 / after_bytes
    );
    assert!(
        svg.contains(&unchanged),
        "diff.svg does not draw leak_calloc_big as unchanged: no {unchanged:?}"
    );

    // A report compared with itself: nothing changed.
    let output = run_memprof(&[], &["diff", before_arg, before_arg], OFFLINE_TIMEOUT);
    output.assert_success();
    assert!(
        output.stdout_text().contains("no stack changed"),
        "{}",
        output.stdout_text()
    );
}

/// `memprof merge a.json a.json`: every stack (matched by frame names, as
/// merge matches them) holds exactly twice the bytes and allocations, and so
/// do the totals and counters.
#[test]
fn merge_of_a_report_with_itself_doubles_everything() {
    if !root_or_skip() {
        return;
    }
    let run = run();
    let report = run.report();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("a.json");
    fs::write(&json, run.read("leak.json")).unwrap();
    let json = json.to_str().unwrap();
    let output = run_memprof(
        &[],
        &["merge", json, json, "--format", "json"],
        OFFLINE_TIMEOUT,
    );
    output.assert_success();
    let merged = output.report();

    let by_key = |r: &Report| -> BTreeMap<Vec<String>, (u64, u64)> {
        let mut map = BTreeMap::new();
        for s in &r.stacks {
            let e: &mut (u64, u64) = map.entry(key(&s.frames)).or_default();
            e.0 += s.bytes;
            e.1 += s.count;
        }
        map
    };
    let want: BTreeMap<Vec<String>, (u64, u64)> = by_key(&report)
        .into_iter()
        .map(|(k, (b, c))| (k, (2 * b, 2 * c)))
        .collect();
    assert_eq!(
        by_key(&merged),
        want,
        "merged stacks (frame names -> bytes, count)\nmerged:\n{}\noriginal:\n{}",
        describe_report(&merged),
        describe_report(&report)
    );
    // Stacks with the same names are joined: each name list appears once.
    assert_eq!(merged.stacks.len(), want.len());
    let sum = truth().total();
    assert_eq!(
        (merged.totals.bytes, merged.totals.count),
        (2 * sum.bytes, 2 * sum.count)
    );
    assert_eq!(merged.stats.allocs, 2 * report.stats.allocs);
    assert_eq!(merged.stats.frees, 2 * report.stats.frees);
    assert_eq!(merged.target.pid, run.pid);
    assert!(
        merged.stacks.windows(2).all(|w| w[0].bytes >= w[1].bytes),
        "merged stacks are not ordered by bytes:\n{}",
        describe_report(&merged)
    );
    // The ground truth, doubled, per leaking function.
    for leak in truth().leaks {
        let (bytes, count) = merged
            .stacks
            .iter()
            .filter(|s| frame_index(s, leak.function).is_some())
            .fold((0, 0), |(b, c), s| (b + s.bytes, c + s.count));
        assert_eq!(
            (bytes, count),
            (2 * leak.bytes, 2 * leak.count),
            "merged stacks through {}",
            leak.function
        );
    }
}
