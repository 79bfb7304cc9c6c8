//! memprof against the Rust fixture (the `leaky-rust` binary of this
//! package): exact bytes, counts and function names of every leak through
//! Rust's allocator and libc, nothing from the churn, and no data lost.
//! Needs root (run through `cargo xtask test`) and a fixture compiled with
//! frame pointers (see `tests/build.rs`).

use tests::{
    assert_rust_fixture_has_frame_pointers, check_leaks, check_no_loss, describe_report, find_word,
    profile_fixture, root_or_skip, total, Kind, LEAKY_RUST, LEAKY_RUST_CLEAN, LEAKY_RUST_MIN_CHURN,
};

#[test]
fn json_report_matches_the_ground_truth() {
    if !root_or_skip() {
        return;
    }
    assert_rust_fixture_has_frame_pointers();
    let (output, pid) = profile_fixture(Kind::LeakyRust, &["--format", "json", "--top", "1000"]);
    let report = output.report();
    let dump = describe_report(&report);

    assert_eq!(report.version, memprof::model::SCHEMA_VERSION);
    assert_eq!(report.target.pid, pid);

    // Allocations through std pass alloc::alloc / __rust_alloc / __rdl_alloc
    // frames first (several in an unoptimized build), so the leaking function
    // may be a few frames down: no depth limit, but it must be there.
    let mut problems = check_leaks(&report, LEAKY_RUST, LEAKY_RUST_CLEAN, None);
    problems.extend(check_no_loss(&report.stats));
    let stats = &report.stats;
    if stats.failed_allocs < 1 {
        problems.push(format!(
            "stats.failed_allocs = {}, expected >= 1 (malloc(usize::MAX / 2) failed)",
            stats.failed_allocs
        ));
    }
    if stats.allocs < LEAKY_RUST_MIN_CHURN + total(LEAKY_RUST).count {
        problems.push(format!(
            "stats.allocs = {}, expected >= {} (the churn threads' allocations)",
            stats.allocs,
            LEAKY_RUST_MIN_CHURN + total(LEAKY_RUST).count
        ));
    }
    if stats.frees < LEAKY_RUST_MIN_CHURN {
        problems.push(format!(
            "stats.frees = {}, expected >= {LEAKY_RUST_MIN_CHURN}",
            stats.frees
        ));
    }
    assert!(
        problems.is_empty(),
        "the report does not match leaky-rust's ground truth:\n- {}\n\nreport:\n{dump}",
        problems.join("\n- ")
    );
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
    let missing: Vec<&str> = LEAKY_RUST
        .iter()
        .map(|l| l.function)
        .filter(|f| find_word(text, f).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the text report does not name {missing:?}:\n{text}"
    );
    assert!(
        find_word(text, "churn_worker").is_none(),
        "the text report names churn_worker, which leaks nothing:\n{text}"
    );
}
