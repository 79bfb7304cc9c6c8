//! memprof against the C fixture (`tests/fixtures/leaky.c`): exact bytes,
//! counts and function names of every leak, nothing from the churn, and no
//! data lost. Needs root (run through `cargo xtask test`).

use tests::{
    assert_ground_truth, find_word, profile_fixture, profile_json, root_or_skip, unnamed_leaks,
    Kind,
};

#[test]
fn json_report_matches_the_ground_truth() {
    if !root_or_skip() {
        return;
    }
    let report = profile_json(Kind::Leaky);
    assert_ground_truth(&report, Kind::Leaky);
}

#[test]
fn text_report_names_the_leaks_and_starts_with_the_largest() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(Kind::Leaky, &["--format", "text", "--top", "100"]);
    let text = output.stdout_text();
    let truth = Kind::Leaky.truth();

    let missing = unnamed_leaks(text, truth.leaks);
    assert!(
        missing.is_empty(),
        "the text report does not name {missing:?}:\n{text}"
    );
    for clean in truth.clean {
        assert!(
            find_word(text, clean).is_none(),
            "the text report names {clean}, which leaks nothing:\n{text}"
        );
    }
    // The largest stack, 1 MiB from leak_calloc_big, comes first.
    let first = truth
        .leaks
        .iter()
        .filter_map(|l| find_word(text, l.function).map(|at| (at, l.function)))
        .min()
        .map(|(_, f)| f);
    assert_eq!(
        first,
        Some("leak_calloc_big"),
        "the first stack of the text report is not the 1 MiB calloc:\n{text}"
    );
}
