//! Allocators beyond glibc's: the same leaky program linked with jemalloc
//! and tcmalloc (each replaces glibc's malloc), and with jemalloc linked
//! into the executable itself, and a C++ program whose
//! operator new comes from libstdc++, tcmalloc or mimalloc. memprof must
//! probe the allocator the process really calls, name it, and report the
//! exact ground truth with stacks that start at the caller of malloc or
//! new. Needs root (run through `cargo xtask test`).

use tests::{
    assert_ground_truth, describe_report, profile_fixture, root_or_skip, Kind, LEAKY_C, LEAKY_CXX,
    LEAKY_CXX_CLEAN, LEAKY_C_CLEAN, LEAKY_C_MIN_CHURN,
};

/// The report names `allocator` and matches `leaky.c`'s ground truth.
fn leaky_c_through(kind: Kind, allocator: &str) {
    if !root_or_skip() {
        return;
    }
    assert_ground_truth(kind, LEAKY_C, LEAKY_C_CLEAN, Some(2), LEAKY_C_MIN_CHURN);
    let (output, _) = profile_fixture(kind, &["--format", "json", "--duration", "1"]);
    let report = output.report();
    assert!(
        report.target.allocator.starts_with(allocator),
        "allocator {:?}, expected {allocator}\n{}",
        report.target.allocator,
        describe_report(&report)
    );
}

#[test]
fn jemalloc() {
    leaky_c_through(Kind::LeakyJemalloc, "jemalloc (");
}

#[test]
fn jemalloc_inside_the_executable() {
    leaky_c_through(Kind::LeakyJemallocStatic, "jemalloc (");
}

#[test]
fn tcmalloc() {
    leaky_c_through(Kind::LeakyTcmalloc, "tcmalloc (");
}

/// C++: every leak at its function (frames[0], not operator new), nothing
/// from the new/delete churn, no delete taken for a leak.
fn leaky_cxx(kind: Kind, allocator: &str) {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(kind, &["--format", "json", "--top", "100"]);
    let report = output.report();
    let dump = describe_report(&report);
    let problems = tests::check_leaks(&report, LEAKY_CXX, LEAKY_CXX_CLEAN, Some(1));
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
    let problems = tests::check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
    // 2,000 churn allocations, each seen once (not again in malloc) and freed once.
    assert!(report.stats.allocs >= 2010, "{dump}");
    assert!(report.stats.frees >= 2000, "{dump}");
    assert_eq!(report.stats.frees_unknown, 0, "{dump}");
    assert!(report.target.allocator.starts_with(allocator), "{dump}");
}

#[test]
fn cxx_new_from_libstdcxx() {
    leaky_cxx(Kind::LeakyCxx, "/");
}

#[test]
fn cxx_new_from_tcmalloc() {
    leaky_cxx(Kind::LeakyCxxTcmalloc, "tcmalloc (");
}

#[test]
fn cxx_new_from_mimalloc() {
    leaky_cxx(Kind::LeakyCxxMimalloc, "mimalloc (");
}
