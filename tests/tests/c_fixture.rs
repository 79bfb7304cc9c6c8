//! memprof against the C fixture (`tests/fixtures/leaky.c`): exact bytes,
//! counts and function names of every leak, nothing from the churn, and no
//! data lost. Needs root (run through `cargo xtask test`).

use tests::{
    check_leaks, check_no_loss, describe_report, find_word, profile_fixture, root_or_skip, total,
    Kind, LEAKY_C, LEAKY_C_CLEAN, LEAKY_C_MIN_CHURN,
};

#[test]
fn json_report_matches_the_ground_truth() {
    if !root_or_skip() {
        return;
    }
    let (output, pid) = profile_fixture(Kind::Leaky, &["--format", "json", "--top", "1000"]);
    let report = output.report();
    let dump = describe_report(&report);

    assert_eq!(report.version, memprof::model::SCHEMA_VERSION);
    assert_eq!(report.target.pid, pid);

    // Stacks are taken where the allocator returns, so the leaking function
    // is frames[0]; frames[1] is tolerated for libc functions that call
    // another allocator function (reallocarray tail-calls realloc).
    let mut problems = check_leaks(&report, LEAKY_C, LEAKY_C_CLEAN, Some(2));
    problems.extend(check_no_loss(&report.stats));
    let stats = &report.stats;
    if stats.failed_allocs < 1 {
        problems.push(format!(
            "stats.failed_allocs = {}, expected >= 1 (malloc(SIZE_MAX / 2) failed)",
            stats.failed_allocs
        ));
    }
    // The churn must have been seen, or "no churn_worker stack" proves nothing.
    if stats.allocs < LEAKY_C_MIN_CHURN + total(LEAKY_C).count {
        problems.push(format!(
            "stats.allocs = {}, expected >= {} (the churn threads' mallocs)",
            stats.allocs,
            LEAKY_C_MIN_CHURN + total(LEAKY_C).count
        ));
    }
    if stats.frees < LEAKY_C_MIN_CHURN {
        problems.push(format!(
            "stats.frees = {}, expected >= {LEAKY_C_MIN_CHURN}",
            stats.frees
        ));
    }
    assert!(
        problems.is_empty(),
        "the report does not match leaky.c's ground truth:\n- {}\n\nreport:\n{dump}",
        problems.join("\n- ")
    );
}

#[test]
fn text_report_names_the_leaks_and_starts_with_the_largest() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(Kind::Leaky, &["--format", "text", "--top", "100"]);
    let text = output.stdout_text();

    let missing: Vec<&str> = LEAKY_C
        .iter()
        .map(|l| l.function)
        .filter(|f| find_word(text, f).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the text report does not name {missing:?}:\n{text}"
    );
    for clean in LEAKY_C_CLEAN {
        assert!(
            find_word(text, clean).is_none(),
            "the text report names {clean}, which leaks nothing:\n{text}"
        );
    }
    // The largest stack, 1 MiB from leak_calloc_big, comes first.
    let first = LEAKY_C
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
