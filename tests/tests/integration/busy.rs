//! System-wide on a busy machine: while short-lived programs come and go,
//! each exiting with blocks outstanding from many distinct stacks (more
//! than the stack map holds), a process that leaks a known ground truth is
//! reported exactly, under its pid, as alive; nothing is dropped. A process
//! that exits after recording stopped, while memprof reads the maps, was
//! alive at the end of the run and is reported so. With `--at-exit`, what
//! the short-lived programs held is reported, each exactly, every stack
//! whole, although it left the maps as each exited. Needs root (run
//! through `cargo xtask test`).

use tests::{
    describe_report, function_is, root_or_skip, say, Fixture, Kind, Memprof, Output, Report,
    ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT,
};

/// The processes of `report`, for messages.
fn describe(report: &Report) -> String {
    let processes: Vec<String> = report
        .processes
        .iter()
        .map(|p| format!("{} {} B in {}", p.label(), p.totals.bytes, p.totals.count))
        .collect();
    format!("processes: {processes:?}\n{}", describe_report(report))
}

/// No allocation was left out of the totals. (Other counters, such as
/// stacks that could not be walked, depend on whatever else the machine
/// runs meanwhile.)
fn assert_nothing_dropped(report: &Report, dump: &str) {
    let stats = &report.stats;
    assert_eq!(
        (
            stats.live_map_full,
            stats.stack_map_full,
            stats.pending_map_full
        ),
        (0, 0, 0),
        "{dump}"
    );
}

/// Runs memprof system-wide while the spawner's children come and go,
/// lets the leaker leak once they have filled a stack map's worth, then
/// interrupts memprof. With `exit_after_stop`, the leaker exits as soon as
/// recording stopped, while memprof reads the maps; else it lives until
/// memprof is done. Returns memprof's output and the leaker's pid.
fn busy_run(exit_after_stop: bool) -> (Output, u32) {
    let mut leaky = Fixture::spawn(Kind::Leaky);
    let mut spawner = Fixture::spawn(Kind::Spawner);
    let mut memprof = Memprof::spawn(&["--format", "json", "--top", "0"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    spawner.go();
    spawner.expect_line("spawned", DONE_TIMEOUT);
    leaky.go();
    leaky.wait_done(DONE_TIMEOUT);
    let leaky_pid = leaky.pid();
    memprof.interrupt();
    if exit_after_stop {
        memprof.wait_line("received: detaching", FINISH_TIMEOUT);
        assert!(leaky.finish(DONE_TIMEOUT).success());
        assert!(spawner.finish(DONE_TIMEOUT).success());
        let output = memprof.finish(FINISH_TIMEOUT);
        output.assert_success();
        return (output, leaky_pid);
    }
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    assert!(leaky.finish(DONE_TIMEOUT).success());
    assert!(spawner.finish(DONE_TIMEOUT).success());
    (output, leaky_pid)
}

#[test]
fn a_leaker_is_exact_while_short_lived_programs_come_and_go() {
    if !root_or_skip() {
        return;
    }
    let (output, leaky_pid) = busy_run(false);
    let report = output.report();
    let dump = describe(&report);
    assert_nothing_dropped(&report, &dump);
    // What the children held left the maps when they exited: every stack
    // of the leaker found room (other processes of the machine may have
    // met more stacks than their share).
    let no_room: Vec<_> = report
        .stacks
        .iter()
        .filter(|s| s.pid == Some(leaky_pid))
        .filter(|s| {
            s.frames.first().and_then(|f| f.function.as_deref())
                == Some(memprof::model::NO_ROOM_FRAME)
        })
        .collect();
    assert!(no_room.is_empty(), "{no_room:?}\n{dump}");
    assert!(report.stats.stacks_freed >= 16_384, "{dump}");
    let process = report
        .processes
        .iter()
        .find(|p| p.pid == leaky_pid)
        .unwrap_or_else(|| panic!("pid {leaky_pid} is not in the report\n{dump}"));
    assert!(!process.exited, "{dump}");
    let truth = Kind::Leaky.truth();
    assert_eq!(process.totals, truth.total(), "{dump}");
    let mine = Report {
        stacks: report
            .stacks
            .iter()
            .filter(|s| s.pid == Some(leaky_pid))
            .cloned()
            .collect(),
        totals: process.totals,
        ..report.clone()
    };
    let problems = truth.check_leaks(&mine);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
    // The children's blocks went with them.
    assert!(report.released.at_exit.count >= 40 * 512, "{dump}");
}

#[test]
fn a_process_that_exits_after_recording_stopped_was_alive() {
    if !root_or_skip() {
        return;
    }
    let (output, leaky_pid) = busy_run(true);
    let report = output.report();
    let dump = describe(&report);
    assert_nothing_dropped(&report, &dump);
    let process = report
        .processes
        .iter()
        .find(|p| p.pid == leaky_pid)
        .unwrap_or_else(|| panic!("pid {leaky_pid} is not in the report\n{dump}"));
    assert!(!process.exited, "{dump}");
    assert_eq!(process.totals, Kind::Leaky.truth().total(), "{dump}");
}

/// spawner.c: what each child holds at its exit, from as many stacks.
const CHILD_LEAKS: u64 = 512;
const CHILD_BYTES: u64 = 64;

#[test]
fn at_exit_reports_short_lived_programs_whose_stacks_left_the_maps() {
    if !root_or_skip() {
        return;
    }
    // Room for 16,384 stacks; the first 40 children alone meet 20,480.
    let mut spawner = Fixture::spawn(Kind::Spawner);
    let mut memprof = Memprof::spawn(&[
        "--at-exit",
        "--max-stacks",
        "16384",
        "--format",
        "json",
        "--top",
        "0",
    ]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    spawner.go();
    spawner.expect_line("spawned", DONE_TIMEOUT);
    let spawner_pid = spawner.pid();
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    assert!(spawner.finish(DONE_TIMEOUT).success());
    let report = output.report();
    let dump = describe(&report);
    assert_nothing_dropped(&report, &dump);
    // The children: forks of the spawner that exited holding their blocks,
    // known by what they hold (512 stacks of one 64-byte block each): most
    // live too briefly for memprof to read them while they run, so only
    // those it read have names (their stacks symbolized from the files it
    // held open for them).
    let stacks_of = |pid: u32| -> Vec<_> {
        report
            .stacks
            .iter()
            .filter(|s| s.pid == Some(pid))
            .collect()
    };
    let children: Vec<_> = report
        .processes
        .iter()
        .filter(|p| p.pid != spawner_pid && p.exited)
        .filter(|p| {
            let stacks = stacks_of(p.pid);
            stacks.len() as u64 == CHILD_LEAKS
                && stacks
                    .iter()
                    .all(|s| (s.count, s.bytes) == (1, CHILD_BYTES))
        })
        .collect();
    assert!(
        children.len() >= 40,
        "{} children reported\n{dump}",
        children.len()
    );
    let mut named = 0;
    for child in &children {
        assert_eq!(
            (child.totals.count, child.totals.bytes),
            (CHILD_LEAKS, CHILD_LEAKS * CHILD_BYTES),
            "pid {}\n{dump}",
            child.pid
        );
        if child.comm != "spawner" {
            continue;
        }
        named += 1;
        for stack in stacks_of(child.pid) {
            assert!(
                stack
                    .frames
                    .first()
                    .is_some_and(|f| function_is(f, "child_leaf")),
                "pid {}: {stack:?}",
                child.pid
            );
        }
    }
    say(&format!(
        "{} children reported exactly, {named} of them read while they ran",
        children.len()
    ));
    assert!(report.stats.stacks_freed >= 20_480 - 16_384, "{dump}");
}
