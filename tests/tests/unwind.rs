//! Stacks of code built without frame pointers, walked from call frame
//! information (`--unwind dwarf`, and `auto`, the default): every leak's
//! full stack down to `main`, the same bytes as with frame pointers, and no
//! frame outside the process's code. Needs root (run through `cargo xtask test`).

use tests::{
    check_leaks, describe_report, describe_stack, frame_index, profile_fixture, root_or_skip,
    total, Kind, LEAKY_C, LEAKY_C_CLEAN,
};

/// leaky.c at `-O2 -fomit-frame-pointer`: each leak's stack, from the
/// leaking function (frames[0], or [1] for reallocarray's tail call) through
/// `main`, complete.
fn assert_full_stacks(args: &[&str]) {
    let mut all = vec!["--format", "json", "--top", "1000"];
    all.extend_from_slice(args);
    let (output, _) = profile_fixture(Kind::LeakyNoFramePointers, &all);
    let report = output.report();
    let dump = describe_report(&report);
    assert_eq!(report.totals, total(LEAKY_C), "{dump}");
    let problems = check_leaks(&report, LEAKY_C, LEAKY_C_CLEAN, Some(2));
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    for leak in LEAKY_C {
        for stack in report
            .stacks
            .iter()
            .filter(|s| frame_index(s, leak.function).is_some())
        {
            let at = frame_index(stack, leak.function).unwrap_or(usize::MAX);
            let main = frame_index(stack, "main");
            assert!(
                main.is_some_and(|m| m > at),
                "the stack of {} does not reach main: {}\n{dump}",
                leak.function,
                describe_stack(stack)
            );
            assert!(!stack.truncated, "{}\n{dump}", describe_stack(stack));
        }
    }
    assert_eq!(report.stats.unwind.unwind_not_mapped, 0, "{dump}");
    assert_eq!(report.stats.unwind.unwind_unsupported, 0, "{dump}");
}

#[test]
fn stacks_without_frame_pointers_reach_main_with_dwarf() {
    if !root_or_skip() {
        return;
    }
    assert_full_stacks(&["--unwind", "dwarf"]);
}

#[test]
fn stacks_without_frame_pointers_reach_main_by_default() {
    if !root_or_skip() {
        return;
    }
    assert_full_stacks(&[]);
}
