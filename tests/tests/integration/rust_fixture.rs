//! memprof against the Rust fixture (the `leaky-rust` binary of this
//! package): exact bytes, counts and function names of every leak through
//! Rust's allocator and libc, nothing from the churn, and no data lost.
//! Needs root (run through `cargo xtask test`) and a fixture compiled with
//! frame pointers (see `tests/build.rs`).

use tests::{
    assert_ground_truth, assert_rust_fixture_has_frame_pointers, find_word, profile_fixture,
    profile_json, root_or_skip, unnamed_leaks, Kind,
};

#[test]
fn json_report_matches_the_ground_truth() {
    if !root_or_skip() {
        return;
    }
    assert_rust_fixture_has_frame_pointers();
    // Allocations through std pass alloc::alloc / __rust_alloc / __rdl_alloc
    // frames first (several in an unoptimized build), so the leaking function
    // may be a few frames down: no depth limit, but it must be there.
    let report = profile_json(Kind::LeakyRust);
    assert_ground_truth(&report, Kind::LeakyRust);
}

#[test]
fn text_report_names_the_leaks() {
    if !root_or_skip() {
        return;
    }
    assert_rust_fixture_has_frame_pointers();
    let (output, _) = profile_fixture(Kind::LeakyRust, &["--format", "text", "--top", "100"]);
    let text = output.stdout_text();
    // Demangled: `leaky_rust::leak_boxes`, found as the word `leak_boxes`.
    let missing = unnamed_leaks(text, Kind::LeakyRust.truth().leaks);
    assert!(
        missing.is_empty(),
        "the text report does not name {missing:?}:\n{text}"
    );
    assert!(
        find_word(text, "churn_worker").is_none(),
        "the text report names churn_worker, which leaks nothing:\n{text}"
    );
}
