//! memprof's time-aware options against the phases fixture
//! (`tests/fixtures/phases.c`): `--interval` ranks the stack that keeps
//! growing above a larger flat one, and `--min-age` leaves out what was
//! allocated just before the end. Needs root (run through `cargo xtask test`).
//!
//! The fixture's phases are seconds apart, and only facts that hold with
//! such margins are asserted: exact outstanding bytes (which do not depend
//! on timing at all), which stack grows, and which allocations are older
//! than one second. No wall-clock duration is asserted.

use tests::{
    assert_ground_truth, check_leaks, check_no_loss, describe_report, frame_index,
    profile_fixture_with, root_or_skip, Kind, Report, Stack, Totals,
};

/// The one stack of `report` through `function` (the fixture allocates from
/// one call site per function).
fn stack_of<'a>(report: &'a Report, function: &str) -> &'a Stack {
    let stacks: Vec<&Stack> = report
        .stacks
        .iter()
        .filter(|s| frame_index(s, function).is_some())
        .collect();
    match stacks.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one stack through {function}, found {}:\n{}",
            stacks.len(),
            describe_report(report)
        ),
    }
}

/// Panics with the report unless `problems` is empty and memprof lost no
/// data ([`check_no_loss`]).
fn assert_no_problems(mut problems: Vec<String>, report: &Report) {
    problems.extend(check_no_loss(&report.stats));
    assert!(
        problems.is_empty(),
        "the report does not match phases.c's ground truth:\n- {}\n\nreport:\n{}",
        problems.join("\n- "),
        describe_report(report)
    );
}

/// The churn and the freed blocks were seen, or their absence proves nothing.
fn assert_churn_seen(report: &Report) {
    let truth = Kind::Phases.truth();
    let min_allocs = truth.total().count + truth.min_churn;
    let min_frees = truth.min_churn;
    assert!(
        report.stats.allocs >= min_allocs && report.stats.frees >= min_frees,
        "stats: {} allocs and {} frees, expected at least {min_allocs} and {min_frees}",
        report.stats.allocs,
        report.stats.frees
    );
}

#[test]
fn interval_ranks_the_growing_stack_above_a_larger_flat_one() {
    if !root_or_skip() {
        return;
    }
    let (output, pid) = profile_fixture_with(
        Kind::Phases,
        &[],
        &["--interval", "0.5", "--format", "json"],
    );
    let report = output.report();
    let dump = describe_report(&report);
    assert_eq!(report.target.pid, pid);
    assert_eq!(report.interval_secs, Some(0.5));
    assert_eq!((report.min_age_secs, report.younger), (None, None));

    // Exact outstanding bytes: grow_steadily and hold_flat only; free_later
    // was freed and the churn left nothing.
    assert_ground_truth(&report, Kind::Phases);

    let grow = stack_of(&report, "grow_steadily");
    let hold = stack_of(&report, "hold_flat");
    assert!(
        hold.bytes > grow.bytes,
        "hold_flat should hold more than grow_steadily:\n{dump}"
    );
    assert!(
        frame_index(&report.stacks[0], "grow_steadily").is_some(),
        "the growing stack (grow_steadily) is not ranked first:\n{dump}"
    );

    let growth = |stack: &Stack, name: &str| {
        stack
            .growth
            .clone()
            .unwrap_or_else(|| panic!("{name}'s stack has no growth with --interval:\n{dump}"))
    };
    let g = growth(grow, "grow_steadily");
    // 30 blocks over >= 3 s, sampled every 0.5 s, plus the end of the run.
    assert!(
        g.samples.len() >= 4,
        "grow_steadily: {} samples over a run of {:.1} s at --interval 0.5: {g:?}",
        g.samples.len(),
        report.duration_secs
    );
    assert!(
        g.samples.windows(2).all(|w| w[0] <= w[1]),
        "grow_steadily never frees, yet its samples go down: {g:?}"
    );
    assert_eq!(g.samples.last(), Some(&grow.bytes), "{g:?}");
    assert!(
        g.growing && g.bytes_per_sec > 0.0,
        "grow_steadily is not growing: {g:?}"
    );

    let h = growth(hold, "hold_flat");
    assert!(
        h.samples.iter().all(|&b| b == 0 || b == hold.bytes),
        "hold_flat allocates once, yet its samples are {:?}",
        h.samples
    );
    assert_eq!(h.samples.last(), Some(&hold.bytes), "{h:?}");
    assert!(!h.growing, "hold_flat is flat, yet growing: {h:?}");
}

#[test]
fn min_age_leaves_out_the_young_blocks() {
    if !root_or_skip() {
        return;
    }
    // With --young the fixture waits 3 s after the other phases, then
    // allocates young_blocks and says done at once: at the end of the run
    // everything else is >= 3 s old, young_blocks far less than 1 s.
    let (output, _) = profile_fixture_with(
        Kind::Phases,
        &["--young"],
        &["--min-age", "1", "--format", "json"],
    );
    let report = output.report();
    let dump = describe_report(&report);
    assert_eq!(report.min_age_secs, Some(1.0));
    assert_eq!(report.interval_secs, None);
    assert_eq!(
        report.younger,
        Some(Totals {
            bytes: Kind::PHASES_YOUNG.bytes,
            count: Kind::PHASES_YOUNG.count
        }),
        "younger should be exactly the young_blocks:\n{dump}"
    );
    // The old stacks are counted in full; young_blocks is not listed.
    let truth = Kind::Phases.truth();
    let mut clean = truth.clean.to_vec();
    clean.push(Kind::PHASES_YOUNG.function);
    assert_no_problems(
        check_leaks(&report, truth.leaks, &clean, truth.max_depth),
        &report,
    );
    assert_churn_seen(&report);
    for stack in &report.stacks {
        assert!(
            stack.oldest_age_secs >= 1.0 && stack.median_age_secs >= 1.0,
            "a stack younger than --min-age 1 is listed:\n{dump}"
        );
    }
}
