//! Stack identity: a fixture leaks one block from each of 4096 distinct call
//! stacks; memprof must report 4096 stacks of exactly one block each, none
//! lost and none merged. (The kernel's stack-trace map, keyed by bucket,
//! loses about 470 of them to bucket collisions at its default size.)
//! Needs root (run through `cargo xtask test`).

use std::collections::HashSet;

use tests::{check_no_loss, describe_report, profile_fixture, root_or_skip, Kind};

const LEAVES: usize = 4096;
const LEAF_BYTES: u64 = 100;

#[test]
fn thousands_of_distinct_stacks_are_each_reported_once() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(Kind::Stacks, &["--format", "json"]);
    let report = output.report();
    let dump = describe_report(&report);
    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    assert_eq!(report.stats.stack_collisions, 0, "{dump}");
    assert_eq!(report.totals.count, LEAVES as u64, "{dump}");
    assert_eq!(report.totals.bytes, LEAVES as u64 * LEAF_BYTES, "{dump}");
    assert_eq!(report.stacks.len(), LEAVES, "{dump}");

    let mut paths = HashSet::new();
    for stack in &report.stacks {
        assert_eq!((stack.count, stack.bytes), (1, LEAF_BYTES), "{stack:?}");
        assert_eq!(
            stack.frames.first().and_then(|f| f.function.as_deref()),
            Some("leaf_alloc"),
            "{stack:?}"
        );
        // The left/right turns on the way down, with their call sites.
        let path: Vec<(String, u64)> = stack
            .frames
            .iter()
            .filter(|f| {
                matches!(
                    f.function.as_deref(),
                    Some("branch_left") | Some("branch_right")
                )
            })
            .map(|f| (f.function.clone().unwrap_or_default(), f.addr))
            .collect();
        assert_eq!(path.len(), 12, "{stack:?}");
        paths.insert(path);
    }
    assert_eq!(paths.len(), LEAVES, "two stacks share a path");
}
