//! The optional sources, against fixtures with known ground truth:
//! `--mmap` on `tests/fixtures/mmaps.c` (exact bytes and ranges per
//! function, in JSON, text and SVG) and `--kernel` on
//! `tests/fixtures/kernel_objects.c` (eventfds kept open are outstanding
//! kernel objects under `do_eventfd`, closed ones are not). Needs root (run
//! through `cargo xtask test`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use tests::{
    describe_stack, frame_index, function_is, profile_fixture, profile_fixture_with, root_or_skip,
    skip, Kind, Report, Stack,
};

/// What `mmaps.c` keeps mapped after "done": function, ranges, bytes.
const MMAPS: &[(&str, u64, u64)] = &[
    ("leak_mmap", 3, 196_608),
    ("trim_front", 1, 196_608),
    ("trim_back", 1, 98_304),
    ("punch_hole", 2, 98_304),
    ("grow_mremap", 1, 262_144),
];

/// Functions of `mmaps.c` that hold no anonymous mapping at the end.
const MMAPS_CLEAN: &[&str] = &["churn_mmap", "map_for_grow", "map_file"];

/// How many eventfds `kernel_objects.c` makes.
const EVENTFDS: u64 = 64;

fn describe(stacks: &[Stack]) -> String {
    stacks
        .iter()
        .map(|s| format!("  {}\n", describe_stack(s)))
        .collect()
}

/// True when `frame` is in the C library (the syscall wrappers).
fn in_libc(stack: &Stack, i: usize) -> bool {
    stack.frames[i]
        .module
        .as_deref()
        .is_some_and(|m| m.contains("libc.so"))
}

#[test]
fn mmap_section_matches_the_ground_truth_in_every_format() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let text_path = dir.path().join("mmap.txt");
    let svg_path = dir.path().join("mmap.svg");
    let json_path = dir.path().join("mmap.json");
    let (output, _) = profile_fixture(
        Kind::Mmaps,
        &[
            "--mmap",
            "-o",
            text_path.to_str().unwrap(),
            "-o",
            svg_path.to_str().unwrap(),
            "-o",
            json_path.to_str().unwrap(),
        ],
    );
    let report: Report = serde_json::from_slice(&fs::read(&json_path).unwrap())
        .unwrap_or_else(|e| panic!("mmap.json is not a JSON report: {e}"));
    let mmap = report
        .mmap
        .as_ref()
        .unwrap_or_else(|| panic!("no mmap section with --mmap:\n{}", output.stderr));
    let all = describe(&mmap.stacks);

    // Each stack belongs to the first frame past libc's syscall wrapper: the
    // function that called mmap or mremap.
    let mut found: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for stack in &mmap.stacks {
        let first = (0..stack.frames.len())
            .find(|&i| !in_libc(stack, i))
            .unwrap_or_else(|| panic!("a stack with only libc frames:\n{all}"));
        let name = stack.frames[first].display_name();
        let entry = found.entry(name).or_default();
        entry.0 += stack.count;
        entry.1 += stack.bytes;
    }
    let want: BTreeMap<String, (u64, u64)> = MMAPS
        .iter()
        .map(|&(f, count, bytes)| (f.to_string(), (count, bytes)))
        .collect();
    assert_eq!(
        found, want,
        "outstanding anonymous mappings by calling function (count, bytes):\n{all}"
    );
    for clean in MMAPS_CLEAN {
        assert!(
            mmap.stacks.iter().all(|s| frame_index(s, clean).is_none()),
            "{clean} holds no mapping at the end, yet it is in a stack:\n{all}"
        );
    }
    assert_eq!(mmap.totals.bytes, 851_968, "{all}");
    assert_eq!(mmap.totals.count, 8, "{all}");
    let stat = |name: &str| mmap.stats.get(name).copied().unwrap_or(u64::MAX);
    for (name, want) in [
        ("maps", 3 + 200 + 4),
        ("unmaps", 200 + 3),
        ("unmaps_partial", 3),
        ("holes", 1),
        ("remaps", 1),
        ("unmaps_untracked", 0),
        ("events_lost", 0),
        ("stack_lost", 0),
        ("failed_calls", 0),
    ] {
        assert_eq!(stat(name), want, "counter {name}: {:?}", mmap.stats);
    }
    // Apart from the heap: the fixture calls no allocator after "go".
    assert_eq!(report.totals.count, 0, "heap totals: {:?}", report.totals);
    assert!(report.kernel.is_none());

    let text = fs::read_to_string(&text_path).unwrap();
    let section = text
        .find("Anonymous mmap (--mmap)")
        .unwrap_or_else(|| panic!("no mmap section in the text report:\n{text}"));
    assert!(
        text[section..]
            .contains("outstanding:  832.0 KiB (851968 bytes) in 8 ranges from 5 stacks"),
        "{text}"
    );
    assert!(text[section..].contains("grow_mremap"), "{text}");
    assert!(section < text.find("Stats:").unwrap(), "{text}");

    let svg = fs::read_to_string(&svg_path).unwrap();
    for name in ["[anonymous mmap]", "leak_mmap", "grow_mremap"] {
        assert!(svg.contains(name), "the SVG does not show {name}");
    }
}

#[test]
fn without_flags_there_are_no_source_sections() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(Kind::Mmaps, &["--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in ["mmap", "kernel"] {
        assert!(json.get(key).is_none(), "{key} in a report without --{key}");
    }
    let report: Report = output.report();
    assert!(report.mmap.is_none() && report.kernel.is_none());
}

fn kernel_or_skip() -> bool {
    if !root_or_skip() {
        return false;
    }
    if !Path::new("/sys/kernel/tracing/events/kmem/kmalloc").exists() {
        skip("--kernel needs the kmem tracepoints in /sys/kernel/tracing");
        return false;
    }
    true
}

/// Profiles `kernel_objects MODE` with `--kernel`; returns the report and the
/// kernel stacks with `do_eventfd` on them.
fn eventfd_run(mode: &str) -> (Report, Vec<Stack>) {
    let (output, _) = profile_fixture_with(
        Kind::KernelObjects,
        &[mode],
        &["--kernel", "--format", "json"],
    );
    let report = output.report();
    let kernel = report
        .kernel
        .as_ref()
        .unwrap_or_else(|| panic!("no kernel section with --kernel:\n{}", output.stderr));
    let eventfd: Vec<Stack> = kernel
        .stacks
        .iter()
        .filter(|s| frame_index(s, "do_eventfd").is_some())
        .cloned()
        .collect();
    (report, eventfd)
}

#[test]
fn kernel_section_holds_the_objects_of_open_eventfds() {
    if !kernel_or_skip() {
        return;
    }
    let (report, eventfd) = eventfd_run("keep");
    let kernel = report.kernel.as_ref().unwrap();
    let all = describe(&kernel.stacks);
    let count: u64 = eventfd.iter().map(|s| s.count).sum();
    assert!(
        count >= EVENTFDS,
        "{count} outstanding kernel objects under do_eventfd, fewer than the {EVENTFDS} open \
         eventfds:\n{all}"
    );
    // Each eventfd's context is kmalloc'ed by do_eventfd itself: frame 0 is
    // the allocator, frame 1 do_eventfd, once per eventfd.
    let contexts: Vec<&Stack> = eventfd
        .iter()
        .filter(|s| {
            s.frames
                .get(1)
                .is_some_and(|f| function_is(f, "do_eventfd"))
        })
        .collect();
    let contexts_count: u64 = contexts.iter().map(|s| s.count).sum();
    assert_eq!(
        contexts_count, EVENTFDS,
        "objects allocated by do_eventfd itself:\n{all}"
    );
    assert!(contexts.iter().all(|s| s.bytes >= s.count * 8), "{all}");
    // Kernel stacks reach the syscall entry.
    assert!(
        contexts
            .iter()
            .all(|s| frame_index(s, "do_syscall_64").is_some()),
        "{all}"
    );
    let stat = |name: &str| kernel.stats.get(name).copied().unwrap_or(u64::MAX);
    assert_eq!(stat("live_map_full"), 0, "{:?}", kernel.stats);
    assert_eq!(stat("stack_lost"), 0, "{:?}", kernel.stats);
    assert!(stat("allocs") >= count, "{:?}", kernel.stats);
    assert_eq!(report.totals.count, 0, "heap totals: {:?}", report.totals);
    assert!(report.mmap.is_none());
}

#[test]
fn kernel_objects_go_away_when_the_eventfds_are_closed() {
    if !kernel_or_skip() {
        return;
    }
    let (report, eventfd) = eventfd_run("close");
    let kernel = report.kernel.as_ref().unwrap();
    let all = describe(&kernel.stacks);
    let count: u64 = eventfd.iter().map(|s| s.count).sum();
    // What may stay is the slab's own bookkeeping for new slabs (a few
    // objects), never one object per eventfd.
    assert!(
        count < EVENTFDS,
        "{count} kernel objects under do_eventfd are still outstanding after closing every \
         eventfd:\n{all}"
    );
    assert!(
        eventfd.iter().all(|s| !s
            .frames
            .get(1)
            .is_some_and(|f| function_is(f, "do_eventfd"))),
        "an eventfd context is still outstanding after close:\n{all}"
    );
    let frees = kernel.stats.get("frees").copied().unwrap_or(0);
    assert!(frees >= EVENTFDS, "{:?}", kernel.stats);
}
