//! A target that exits during the run: memprof notices at once, ends the run
//! by itself and says so. What the process held went back to the kernel with
//! it, so it is left out of the report (and counted); with `--at-exit` it is
//! reported, symbolized from the files memprof opened when it attached (the
//! process and its /proc entries are gone by then). A new process that gets
//! the same pid right away is not taken for the target. Needs root (run
//! through `cargo xtask test`).

use std::time::Duration;

use tests::{
    describe_report, root_or_skip, Fixture, Kind, Memprof, Output, ATTACH_TIMEOUT, DONE_TIMEOUT,
    FINISH_TIMEOUT,
};

/// Profiles a leaky fixture until it exits; `then` runs right after the exit.
fn profile_until_exit(memprof_args: &[&str], then: impl FnOnce(u32)) -> Output {
    let mut fixture = Fixture::spawn(Kind::Leaky);
    let pid = fixture.pid();
    let pid_arg = pid.to_string();
    let mut args = vec!["-p", pid_arg.as_str(), "--format", "json", "--top", "1000"];
    args.extend_from_slice(memprof_args);
    // No --duration: only the target's exit can end this run.
    let mut memprof = Memprof::spawn(&args);
    memprof.wait_attached(ATTACH_TIMEOUT);
    fixture.go();
    fixture.wait_done(DONE_TIMEOUT);
    let status = fixture.finish(Duration::from_secs(10));
    assert!(
        status.success(),
        "the fixture did not exit cleanly: {status}"
    );
    then(pid);
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    assert!(
        output.stderr.contains("exited"),
        "memprof did not say the target exited: {}",
        output.stderr
    );
    output
}

#[test]
fn what_an_exited_target_held_is_left_out_and_counted() {
    if !root_or_skip() {
        return;
    }
    let report = profile_until_exit(&[], |_| {}).report();
    let dump = describe_report(&report);
    assert!(
        report.target.exited_after_secs.is_some(),
        "exited_after_secs missing\n{dump}"
    );
    assert!(report.stacks.is_empty(), "{dump}");
    assert_eq!(report.totals.count, 0, "{dump}");
    assert_eq!(
        report.released.at_exit,
        Kind::Leaky.truth().total(),
        "{dump}"
    );
}

#[test]
fn at_exit_reports_what_the_target_held_with_symbols() {
    if !root_or_skip() {
        return;
    }
    let report = profile_until_exit(&["--at-exit"], |_| {}).report();
    let dump = describe_report(&report);
    assert!(
        report.target.exited_after_secs.is_some(),
        "exited_after_secs missing\n{dump}"
    );
    assert_eq!(report.released.at_exit.count, 0, "{dump}");
    // The process is gone, yet every leak is attributed to its function.
    let problems = Kind::Leaky.truth().check_leaks(&report);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
}

/// Starts a Stacks fixture that gets `pid`, by setting the kernel's last
/// allocated pid just below it. Retries when another process takes it first.
fn spawn_with_pid(pid: u32) -> Option<Fixture> {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("writing /proc/sys/kernel/ns_last_pid");
        let fixture = Fixture::spawn(Kind::Stacks);
        if fixture.pid() == pid {
            return Some(fixture);
        }
    }
    None
}

#[test]
fn a_new_process_with_the_targets_pid_is_not_the_target() {
    if !root_or_skip() {
        return;
    }
    let mut impostor = None;
    let output = profile_until_exit(&["--at-exit"], |pid| {
        // The pid is free again: hand it to another leaking process at once.
        let mut fixture = spawn_with_pid(pid).expect("could not start a process with the same pid");
        fixture.go();
        fixture.wait_done(DONE_TIMEOUT);
        impostor = Some(fixture);
    });
    let report = output.report();
    let dump = describe_report(&report);
    assert!(
        report.target.exited_after_secs.is_some(),
        "exited_after_secs missing\n{dump}"
    );
    // Exactly the first process's leaks; nothing of the impostor's leaf_alloc.
    let problems = Kind::Leaky.truth().check_leaks(&report);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
    assert!(!dump.contains("leaf_alloc"), "{dump}");
    drop(impostor);
}
