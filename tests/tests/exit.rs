//! A target that exits during the run: memprof notices, ends the run by
//! itself, says so in the report, and still symbolizes the stacks from the
//! files it opened when it attached (the process and its /proc entries are
//! gone by then). Needs root (run through `cargo xtask test`).

use std::time::Duration;

use tests::{
    check_leaks, describe_report, root_or_skip, Fixture, Kind, Memprof, ATTACH_TIMEOUT,
    DONE_TIMEOUT, FINISH_TIMEOUT, LEAKY_C, LEAKY_C_CLEAN,
};

#[test]
fn target_exit_ends_the_run_and_stacks_stay_symbolized() {
    if !root_or_skip() {
        return;
    }
    let mut fixture = Fixture::spawn(Kind::Leaky);
    let pid = fixture.pid().to_string();
    // No --duration: only the target's exit can end this run.
    let mut memprof = Memprof::spawn(&["-p", &pid, "--format", "json", "--top", "1000"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    fixture.go();
    fixture.wait_done(DONE_TIMEOUT);
    let status = fixture.finish(Duration::from_secs(10));
    assert!(
        status.success(),
        "the fixture did not exit cleanly: {status}"
    );

    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    assert!(
        output.stderr.contains("exited"),
        "memprof did not say the target exited: {}",
        output.stderr
    );
    let report = output.report();
    let dump = describe_report(&report);
    assert!(
        report.target.exited_after_secs.is_some(),
        "exited_after_secs missing\n{dump}"
    );
    // The process is gone, yet every leak is attributed to its function.
    let problems = check_leaks(&report, LEAKY_C, LEAKY_C_CLEAN, Some(2));
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
}
