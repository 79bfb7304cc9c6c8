//! System-wide on a busy machine: while short-lived programs come and go,
//! each exiting with blocks outstanding from many distinct stacks (more
//! than the stack map holds), a process that leaks a known ground truth is
//! reported exactly, under its pid, as alive; nothing is dropped. A process
//! that exits after recording stopped, while memprof reads the maps, was
//! alive at the end of the run and is reported so. Needs root (run through
//! `cargo xtask test`).

use tests::{
    check_no_loss, describe_report, root_or_skip, Fixture, Kind, Memprof, ATTACH_TIMEOUT,
    DONE_TIMEOUT, FINISH_TIMEOUT,
};

#[test]
fn a_leaker_is_exact_and_alive_while_short_lived_programs_fill_the_maps() {
    if !root_or_skip() {
        return;
    }
    let mut leaky = Fixture::spawn(Kind::Leaky);
    let mut spawner = Fixture::spawn(Kind::Spawner);
    let mut memprof = Memprof::spawn(&["--format", "json", "--top", "0"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    // The children have met more stacks than the map holds before the
    // leaker starts leaking.
    spawner.go();
    spawner.expect_line("spawned", DONE_TIMEOUT);
    leaky.go();
    leaky.wait_done(DONE_TIMEOUT);
    let leaky_pid = leaky.pid();
    memprof.interrupt();
    // Recording has stopped: the leaker exits now, before memprof is done
    // reading the maps. It was alive for the whole run.
    memprof.wait_line("received: detaching", FINISH_TIMEOUT);
    assert!(leaky.finish(DONE_TIMEOUT).success());
    assert!(spawner.finish(DONE_TIMEOUT).success());
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let report = output.report();
    let dump = describe_report(&report);
    let processes: Vec<String> = report
        .processes
        .iter()
        .map(|p| format!("{} {} B in {}", p.label(), p.totals.bytes, p.totals.count))
        .collect();
    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    let process = report
        .processes
        .iter()
        .find(|p| p.pid == leaky_pid)
        .unwrap_or_else(|| panic!("pid {leaky_pid} is not in the report: {processes:?}\n{dump}"));
    assert!(!process.exited, "{processes:?}");
    assert_eq!(process.totals, Kind::Leaky.truth().total(), "{processes:?}");
    // The children filled the stack map: what found no room is counted.
    assert!(
        report.stats.stack_no_room > 0 || report.stats.stacks_freed > 0,
        "{dump}"
    );
}
