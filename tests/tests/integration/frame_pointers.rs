//! Stacks of code built without frame pointers walked by frame pointer
//! (`--unwind fp`): memprof cannot walk past the first frame reliably, so it
//! must say so instead of presenting short or wrong stacks as complete. The same leaky.c, built with and without
//! frame pointers. Needs root (run through `cargo xtask test`).

use memprof::model::{Truncation, Walk};
use tests::{describe_report, profile_fixture, root_or_skip, Kind};

#[test]
fn stacks_cut_short_by_missing_frame_pointers_are_flagged() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(
        Kind::LeakyNoFramePointers,
        &["--format", "json", "--unwind", "fp"],
    );
    let report = output.report();
    let dump = describe_report(&report);
    // Attribution suffers; the counting does not.
    let truth = Kind::LeakyNoFramePointers.truth();
    assert_eq!(report.totals, truth.total(), "{dump}");
    // Walked by frame pointer, and those cut short say so.
    for stack in &report.stacks {
        assert_eq!(stack.walk, Some(Walk::FramePointers), "{dump}");
        if stack.truncated {
            assert_eq!(stack.truncation, Some(Truncation::FramePointers), "{dump}");
        }
    }
    let cut = report.stacks.iter().filter(|s| s.truncated).count();
    assert!(
        cut * 2 >= report.stacks.len() && cut > 0,
        "only {cut} of {} stacks flagged as cut short\n{dump}",
        report.stacks.len()
    );

    let (output, _) = profile_fixture(
        Kind::LeakyNoFramePointers,
        &["--format", "text", "--unwind", "fp"],
    );
    let text = output.stdout_text();
    assert!(
        text.contains("built without frame pointers") && text.contains("the walk ended here"),
        "the text report does not warn about cut stacks:\n{text}"
    );
    assert!(
        text.contains(" [frame pointers]\n")
            && text.contains("stacks:       by frame pointer: ")
            && text.contains("; cut short: "),
        "the text report does not say how stacks were walked:\n{text}"
    );
}

#[test]
fn complete_stacks_are_not_flagged() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(Kind::Leaky, &["--format", "text", "--top", "0"]);
    let text = output.stdout_text();
    assert!(text.contains("none cut short"), "{text}");
    assert!(!text.contains("the walk ended here"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
    let (output, _) = profile_fixture(Kind::Leaky, &["--format", "json"]);
    let report = output.report();
    assert!(
        report.stacks.iter().all(|s| !s.truncated),
        "{}",
        describe_report(&report)
    );
}
