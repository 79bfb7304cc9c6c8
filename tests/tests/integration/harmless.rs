//! memprof never changes what a target computes: the self-checking fixture
//! (`tests/fixtures/selfcheck.c`: two threads through every probed allocator
//! function, checking zeroing, alignment, contents kept by realloc, a failed
//! realloc leaving its block intact) writes the same checksum and exits the
//! same way with and without memprof attached, and memprof saw every call.
//! Needs root (run through `cargo xtask test`).

use std::process::ExitStatus;
use std::time::Duration;

use tests::{
    check_no_loss, describe_report, frame_index, root_or_skip, Fixture, Kind, Memprof, Report,
    ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT,
};

/// Rounds of each of the fixture's two threads (`ROUNDS` in selfcheck.c).
const CALLS: u64 = 2 * 3000;

fn run(with_memprof: bool) -> (String, ExitStatus, Option<Report>) {
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result.txt");
    let mut fixture = Fixture::spawn_with(Kind::SelfCheck, &[], &[result.to_str().unwrap()]);
    let pid = fixture.pid().to_string();
    let memprof = with_memprof.then(|| {
        let mut memprof = Memprof::spawn(&["-p", &pid, "--format", "json"]);
        memprof.wait_attached(ATTACH_TIMEOUT);
        memprof
    });
    fixture.go();
    fixture.wait_done(DONE_TIMEOUT);
    let report = memprof.map(|memprof| {
        memprof.interrupt();
        let output = memprof.finish(FINISH_TIMEOUT);
        output.assert_success();
        output.report()
    });
    let status = fixture.finish(Duration::from_secs(10));
    (std::fs::read_to_string(&result).unwrap(), status, report)
}

#[test]
fn the_target_computes_the_same_with_and_without_memprof() {
    if !root_or_skip() {
        return;
    }
    let (plain, plain_status, _) = run(false);
    assert!(
        plain.contains(" errors 0"),
        "the fixture fails on its own: {plain}"
    );
    assert!(plain_status.success(), "{plain_status}");

    let (profiled, profiled_status, report) = run(true);
    assert_eq!(profiled, plain, "memprof changed what the target computed");
    assert_eq!(profiled_status.code(), plain_status.code());

    let report = report.unwrap();
    let dump = describe_report(&report);
    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    // Per round: 9 blocks (malloc, calloc, realloc, reallocarray,
    // posix_memalign, aligned_alloc, memalign, valloc, pvalloc), 9 releases
    // (7 frees, and the blocks realloc and reallocarray moved), 1 failed
    // realloc, and at least one nested call: reallocarray tail-calls realloc
    // (counted once, at the outer call). Thread start-up may add a few
    // allocations of glibc's own; at thread exit glibc hands its per-thread
    // cache (at most 7 blocks in each of 64 bins, and the cache itself: 449)
    // back through free, blocks whose user-visible free memprof already saw.
    let stats = &report.stats;
    assert_eq!(stats.failed_allocs, CALLS, "{dump}");
    assert!(stats.allocs >= 9 * CALLS, "{dump}");
    assert!(stats.frees >= 9 * CALLS, "{dump}");
    assert!(stats.nested_calls >= CALLS, "{dump}");
    assert!(stats.frees_unknown <= 2 * 449, "{dump}");
    assert!(
        report
            .stacks
            .iter()
            .all(|s| frame_index(s, "worker").is_none()),
        "the fixture frees everything it allocates\n{dump}"
    );
}
