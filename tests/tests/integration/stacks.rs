//! Stack identity: a fixture leaks one block from each of 4096 distinct call
//! stacks; memprof must report 4096 stacks of exactly one block each, none
//! lost and none merged. (The kernel's stack-trace map, keyed by bucket,
//! loses about 470 of them to bucket collisions at its default size.)
//!
//! Stacks that nothing outstanding uses are freed during the run, so a
//! process that meets far more distinct stacks than the maps hold is still
//! profiled exactly; and when the maps do fill, a block whose stack finds no
//! room is still counted (under a stack that says so), so the totals stay
//! exact, and a full live map is counted and makes the totals lower bounds.
//! Over many processes, one that meets more distinct live stacks than the
//! maps hold takes no more than its share of them: a leaker beside it keeps
//! every stack. Needs root (run through `cargo xtask test`).

use std::collections::HashSet;

use tests::{
    check_no_loss, describe_report, profile_fixture, root_or_skip, Fixture, Kind, Leak, Memprof,
    Report, ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT,
};

/// `transient.c`: rounds, and distinct transient stacks per round.
const TRANSIENT_ROUNDS: u64 = 5;
const TRANSIENT_PER_ROUND: u64 = 1500;

/// The one leaking function of `kind`'s ground truth, which leaves one block
/// on each of its stacks, and the size of a block.
fn one_leak(kind: Kind) -> (Leak, u64) {
    let [leak] = kind.truth().leaks else {
        panic!("the {kind:?} fixture leaks through more than one function");
    };
    (*leak, leak.bytes / leak.count)
}

#[test]
fn thousands_of_distinct_stacks_are_each_reported_once() {
    if !root_or_skip() {
        return;
    }
    let (leaves, leaf_bytes) = one_leak(Kind::Stacks);
    let (output, _) = profile_fixture(Kind::Stacks, &["--format", "json"]);
    let report = output.report();
    let dump = describe_report(&report);
    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    assert_eq!(report.stats.stack_collisions, 0, "{dump}");
    assert_eq!(report.totals.count, leaves.count, "{dump}");
    assert_eq!(report.totals.bytes, leaves.bytes, "{dump}");
    assert_eq!(report.stacks.len() as u64, leaves.count, "{dump}");

    let mut paths = HashSet::new();
    for stack in &report.stacks {
        assert_eq!((stack.count, stack.bytes), (1, leaf_bytes), "{stack:?}");
        assert_eq!(
            stack.frames.first().and_then(|f| f.function.as_deref()),
            Some(leaves.function),
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
    assert_eq!(paths.len() as u64, leaves.count, "two stacks share a path");
}

#[test]
fn stacks_nothing_uses_are_freed_so_new_ones_fit() {
    if !root_or_skip() {
        return;
    }
    let (leaks, leaf_bytes) = one_leak(Kind::Transient);
    // Room for 2048 stacks; the fixture meets 7,550 distinct ones, at most
    // 1,550 of them within one round.
    let (output, _) = profile_fixture(
        Kind::Transient,
        &["--format", "json", "--top", "0", "--max-stacks", "2048"],
    );
    let report = output.report();
    let dump = describe_report(&report);
    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    assert_eq!(report.stats.stack_collisions, 0, "{dump}");
    assert_eq!(report.totals.count, leaks.count, "{dump}");
    assert_eq!(report.totals.bytes, leaks.bytes, "{dump}");
    assert_eq!(report.stacks.len() as u64, leaks.count, "{dump}");
    for stack in &report.stacks {
        assert_eq!((stack.count, stack.bytes), (1, leaf_bytes), "{stack:?}");
        assert_eq!(
            stack.frames.first().and_then(|f| f.function.as_deref()),
            Some(leaks.function),
            "{stack:?}"
        );
    }
    // Every round but the last was idle long enough to be freed.
    assert!(
        report.stats.stacks_freed >= (TRANSIENT_ROUNDS - 1) * TRANSIENT_PER_ROUND,
        "only {} stacks freed\n{dump}",
        report.stats.stacks_freed
    );
    // The freed stacks' allocations stay in the allocation profile: every
    // transient block, once.
    let allocations = report.allocations.as_ref().expect("no allocation profile");
    let transient = allocations
        .stacks
        .iter()
        .filter(|s| {
            s.frames
                .first()
                .is_some_and(|f| f.function.as_deref() == Some("transient_alloc"))
        })
        .fold((0, 0), |(c, b), s| (c + s.totals.count, b + s.totals.bytes));
    let made = TRANSIENT_ROUNDS * TRANSIENT_PER_ROUND;
    assert_eq!(transient, (made, made * leaf_bytes));
    assert_eq!(allocations.totals.count, report.stats.allocs);
}

#[test]
fn a_full_live_map_is_counted_and_the_totals_called_lower_bounds() {
    if !root_or_skip() {
        return;
    }
    let (leaves, leaf_bytes) = one_leak(Kind::Stacks);
    let (output, _) = profile_fixture(Kind::Stacks, &["--format", "json", "--max-live", "1000"]);
    let report = output.report();
    let dump = describe_report(&report);
    let stats = report.stats;
    assert!(stats.live_map_full > 0, "{dump}");
    // Every leaked block is either tracked or counted as not tracked.
    assert_eq!(
        report.totals.count + stats.live_map_full,
        leaves.count,
        "{dump}"
    );
    assert_eq!(
        stats.live_map_full_bytes,
        stats.live_map_full * leaf_bytes,
        "{dump}"
    );
    assert!(report.totals.count <= 1000, "{dump}");

    let (output, _) = profile_fixture(Kind::Stacks, &["--max-live", "1000"]);
    let text = output.stdout_text();
    assert!(text.contains("WARNING: totals are lower bounds"), "{text}");
    assert!(text.contains("--max-live"), "{text}");
}

#[test]
fn a_process_with_more_stacks_than_the_map_holds_keeps_exact_totals() {
    if !root_or_skip() {
        return;
    }
    let (leaves, leaf_bytes) = one_leak(Kind::Stacks);
    let (output, _) = profile_fixture(
        Kind::Stacks,
        &["--format", "json", "--top", "0", "--max-stacks", "1000"],
    );
    let report = output.report();
    let dump = describe_report(&report);
    let stats = report.stats;
    // Nothing dropped: a block whose stack found no room is counted all the
    // same, under a stack that says so.
    let problems = check_no_loss(&stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    assert_eq!(report.totals.count, leaves.count, "{dump}");
    assert_eq!(report.totals.bytes, leaves.bytes, "{dump}");
    let is_no_room = |s: &&memprof::model::Stack| {
        s.frames.first().and_then(|f| f.function.as_deref()) == Some(memprof::model::NO_ROOM_FRAME)
    };
    let no_room: Vec<_> = report.stacks.iter().filter(is_no_room).collect();
    assert_eq!(no_room.len(), 1, "{dump}");
    // Every stack the map held is a whole one; the rest are under no room.
    let stored = report.stacks.len() as u64 - 1;
    assert!(stored > 0 && stored <= 1000, "{dump}");
    assert_eq!(no_room[0].count, leaves.count - stored, "{dump}");
    assert_eq!(no_room[0].bytes, no_room[0].count * leaf_bytes, "{dump}");
    assert_eq!(stats.stack_no_room, no_room[0].count, "{dump}");
    for stack in report.stacks.iter().filter(|s| !is_no_room(s)) {
        assert_eq!((stack.count, stack.bytes), (1, leaf_bytes), "{stack:?}");
        assert_eq!(
            stack.frames.first().and_then(|f| f.function.as_deref()),
            Some(leaves.function),
            "{stack:?}"
        );
    }

    let (output, _) = profile_fixture(Kind::Stacks, &["--max-stacks", "1000"]);
    let text = output.stdout_text();
    assert!(!text.contains("lower bounds"), "{text}");
    assert!(text.contains("found no room in the stack map"), "{text}");
}

/// The stacks of `report` that belong to `pid`, as a report of their own.
fn stacks_of(report: &Report, pid: u32) -> Report {
    let totals = report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .map(|p| p.totals)
        .unwrap_or_default();
    Report {
        stacks: report
            .stacks
            .iter()
            .filter(|s| s.pid == Some(pid))
            .cloned()
            .collect(),
        totals,
        ..report.clone()
    }
}

#[test]
fn a_process_with_endless_stacks_leaves_room_for_the_others() {
    if !root_or_skip() {
        return;
    }
    // 4096 live stacks against maps of 1024: without a share each, the
    // stacks fixture would fill them and the leaker's stacks find no room.
    let mut stacks = Fixture::spawn(Kind::Stacks);
    let mut leaky = Fixture::spawn(Kind::Leaky);
    let mut memprof = Memprof::spawn(&[
        "--comm",
        "^(stacks|leaky)$",
        "--format",
        "json",
        "--top",
        "0",
        "--max-stacks",
        "1024",
    ]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    stacks.go();
    stacks.wait_done(DONE_TIMEOUT);
    leaky.go();
    leaky.wait_done(DONE_TIMEOUT);
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let (stacks_pid, leaky_pid) = (stacks.pid(), leaky.pid());
    assert!(stacks.finish(DONE_TIMEOUT).success());
    assert!(leaky.finish(DONE_TIMEOUT).success());
    let report = output.report();
    let dump = describe_report(&report);
    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");

    // The leaker: exact, every leak under its own stack.
    let leaker = stacks_of(&report, leaky_pid);
    let truth = Kind::Leaky.truth();
    assert_eq!(leaker.totals, truth.total(), "{dump}");
    let problems = truth.check_leaks(&leaker);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");

    // The stacks fixture: exact, what did not fit under no room, and no
    // more stacks stored than half the maps.
    let (leaves, _) = one_leak(Kind::Stacks);
    let mine = stacks_of(&report, stacks_pid);
    assert_eq!(
        (mine.totals.count, mine.totals.bytes),
        (leaves.count, leaves.bytes),
        "{dump}"
    );
    let no_room = mine
        .stacks
        .iter()
        .find(|s| {
            s.frames.first().and_then(|f| f.function.as_deref())
                == Some(memprof::model::NO_ROOM_FRAME)
        })
        .unwrap_or_else(|| panic!("no stack of pid {stacks_pid} is under no room\n{dump}"));
    let stored = mine.stacks.len() as u64 - 1;
    assert!(stored <= 512 + 8, "{stored} stacks stored\n{dump}");
    assert_eq!(no_room.count, leaves.count - stored, "{dump}");
    assert_eq!(report.stats.stack_no_room, no_room.count, "{dump}");
}
