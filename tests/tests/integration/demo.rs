//! memprof against the demo service (`tests/fixtures/demo.c`, the program of
//! `cargo xtask demo`) with `--duration`: the report shows the two leaks and
//! not the per-request churn. Needs root (run through `cargo xtask test`).

use std::time::Duration;

use tests::{
    check_no_loss, describe_report, frame_index, root_or_skip, Fixture, Kind, Memprof, Report,
    Totals, ATTACH_TIMEOUT, FINISH_TIMEOUT,
};

/// Outstanding bytes and count over the stacks that contain `function`.
fn through(report: &Report, function: &str) -> Totals {
    let mut sum = Totals::default();
    for stack in report
        .stacks
        .iter()
        .filter(|s| frame_index(s, function).is_some())
    {
        sum.bytes += stack.bytes;
        sum.count += stack.count;
    }
    sum
}

#[test]
fn duration_run_finds_both_leaks() {
    if !root_or_skip() {
        return;
    }
    // The demo serves for 60 s, far longer than the run: memprof must stop
    // on its own at the end of --duration.
    let fixture = Fixture::spawn_with(Kind::Demo, &[], &["60"]);
    let pid = fixture.pid().to_string();
    let mut memprof = Memprof::spawn(&["-p", &pid, "--duration", "3", "--format", "json"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let report = output.report();
    let dump = describe_report(&report);

    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    // The demo only calls malloc and free, from one thread, without pause: the
    // maps must reflect a moment when every probe was attached (recording is
    // switched on after attaching and off before detaching, one probe at a time
    // takes a while). At most the one call in flight when recording began may
    // return without its entry, and at most one request's blocks (allocated
    // before recording) may be freed unseen.
    let stats = &report.stats;
    assert_eq!(stats.nested_calls, 0, "{dump}");
    assert_eq!(stats.pending_stale, 0, "{dump}");
    assert!(stats.return_without_entry <= 1, "{dump}");
    assert!(stats.frees_unknown <= 6, "{dump}");
    assert!(stats.frees > 0 && stats.allocs > stats.frees, "{dump}");
    // About 300 requests a second for 3 s: each leaks a cache entry, its key
    // and its page; every 25th leaks a log buffer.
    for (function, at_least) in [
        ("cache_insert", 200),
        ("render_page", 100),
        ("log_buffer_append", 4),
    ] {
        let got = through(&report, function);
        assert!(
            got.count >= at_least && got.bytes > 0,
            "{function}: {} B in {} allocs, expected at least {at_least} allocs\n{dump}",
            got.bytes,
            got.count
        );
    }
    // A request parsed when the probes detached may still be in flight (at
    // most its 4 blocks); everything else parse_request allocates is freed.
    let parsed = through(&report, "parse_request");
    assert!(
        parsed.count <= 4,
        "parse_request: {} allocs outstanding, expected at most one request's 4\n{dump}",
        parsed.count
    );
    assert!(
        report.duration_secs >= 2.5 && report.duration_secs < 30.0,
        "duration_secs = {}, expected about 3",
        report.duration_secs
    );
    // xmalloc is inlined into its callers at -O1: the inlined frame's line
    // must be inside xmalloc, the caller's line the call of xmalloc.
    let source: Vec<&str> = include_str!("../../fixtures/demo.c").lines().collect();
    let line_text = |line: Option<u32>| {
        line.and_then(|l| source.get(l as usize - 1))
            .copied()
            .unwrap_or_default()
    };
    let mut inlined_seen = 0;
    for stack in &report.stacks {
        for pair in stack.frames.windows(2) {
            if pair[0].inlined && pair[0].function.as_deref() == Some("xmalloc") {
                inlined_seen += 1;
                let (inner, outer) = (line_text(pair[0].line), line_text(pair[1].line));
                assert!(
                    outer.contains("xmalloc("),
                    "caller line {:?} of the inlined xmalloc is not its call: {outer:?}\n{dump}",
                    pair[1].line
                );
                assert!(
                    !inner.contains("xmalloc(") && !inner.trim().is_empty(),
                    "inlined xmalloc line {:?} is not inside xmalloc: {inner:?}\n{dump}",
                    pair[0].line
                );
            }
        }
    }
    assert!(
        inlined_seen > 0,
        "no inlined xmalloc frame in the report\n{dump}"
    );
    // The demo keeps working after memprof detached, and stops cleanly.
    fixture.signal(libc::SIGTERM);
    let status = fixture.finish(Duration::from_secs(10));
    assert!(status.success(), "the demo did not exit cleanly: {status}");
}
