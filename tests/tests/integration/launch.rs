//! Launch mode, `memprof -- COMMAND ARGS...`: the command runs under memprof
//! from its first allocation, and the report is what it still held when it
//! exited, exactly, with symbols (the command is gone by then). Commands
//! that cannot be profiled fail clearly. Needs root (run through `cargo xtask
//! test`).

use std::time::Duration;

use tests::{describe_report, root_or_skip, run_memprof, target_dir, Kind, Report, Totals};

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_launched_command_is_reported_as_it_was_at_its_exit() {
    if !root_or_skip() {
        return;
    }
    let bin = Kind::OneShot.path().expect("the oneshot fixture");
    let json = target_dir().join(format!("launch-{}.json", std::process::id()));
    let json_arg = json.display().to_string();
    let bin_arg = bin.display().to_string();
    let output = run_memprof(&[], &["-o", &json_arg, "--", &bin_arg], TIMEOUT);
    // The command's exit status (oneshot returns 3) is memprof's, its own
    // output passes through, and its exit status is told.
    output.assert_exit_code(3);
    assert!(
        output.stdout_text().contains("oneshot done"),
        "{}",
        output.stdout_text()
    );
    assert!(
        output.stderr.contains("exited with status 3"),
        "{}",
        output.stderr
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    let report: Report = serde_json::from_str(&text).expect("a JSON report");
    let dump = describe_report(&report);
    assert_eq!(report.target.comm, "oneshot", "{dump}");
    assert!(report.target.cmdline.ends_with("oneshot"), "{dump}");
    assert!(report.target.exited_after_secs.is_some(), "{dump}");
    assert_eq!(report.target.exit_status, Some(3), "{dump}");
    // Its own exec is not one it made.
    assert_eq!(report.target.execs, 0, "{dump}");
    // Where and what it ran, for reports gathered from many hosts.
    let read = |path: &str| std::fs::read_to_string(path).unwrap().trim().to_string();
    assert_eq!(report.host.hostname, read("/proc/sys/kernel/hostname"));
    assert_eq!(report.host.boot_id, read("/proc/sys/kernel/random/boot_id"));
    assert_eq!(report.host.kernel, read("/proc/sys/kernel/osrelease"));
    assert!(report.target.started_unix_secs.is_some(), "{dump}");
    let problems = Kind::OneShot.truth().check_leaks(&report);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
    assert!(report.stats.frees >= 1000, "{dump}");
}

#[test]
fn a_static_command_is_refused_before_it_runs() {
    if !root_or_skip() {
        return;
    }
    let bin = match Kind::Static.path() {
        Ok(bin) => bin,
        Err(e) => panic!("the static fixture is not built: {e}"),
    };
    let output = run_memprof(&[], &["--", &bin.display().to_string()], TIMEOUT);
    assert!(!output.status.success(), "{}", output.stderr);
    assert!(
        output.stderr.contains("statically linked"),
        "{}",
        output.stderr
    );
}

#[test]
fn a_missing_command_is_named() {
    if !root_or_skip() {
        return;
    }
    let output = run_memprof(&[], &["--", "/nonexistent/memprof-test-command"], TIMEOUT);
    assert!(!output.status.success());
    assert!(
        output
            .stderr
            .contains("cannot run /nonexistent/memprof-test-command"),
        "{}",
        output.stderr
    );
    let output = run_memprof(&[], &["--", "memprof-no-such-command-anywhere"], TIMEOUT);
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("not found in PATH"),
        "{}",
        output.stderr
    );
}

/// Runs `memprof -- COMMAND` through `wrapper` (e.g. `env LD_PRELOAD=...`)
/// and returns its JSON report.
fn launch_json(wrapper: &[&str], command: &str) -> Report {
    let json = target_dir().join(format!(
        "launch-allocator-{}-{}.json",
        std::process::id(),
        wrapper.len()
    ));
    let json_arg = json.display().to_string();
    let output = run_memprof(wrapper, &["-o", &json_arg, "--", command], TIMEOUT);
    // The oneshot fixtures return 3, which memprof passes on.
    output.assert_exit_code(3);
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("a JSON report")
}

/// `report` with only the stacks that pass through a function of
/// `kind`'s ground truth: the libraries a command loads allocate when they
/// start and hold it until exit (libstdc++, which jemalloc and tcmalloc
/// link, its exception-handling pool of 72,704 bytes; tcmalloc a few blocks
/// through setenv), which is no part of the fixture's ground truth.
fn the_fixtures_own(mut report: Report, kind: Kind) -> Report {
    let truth = kind.truth();
    let functions: Vec<&str> = truth
        .leaks
        .iter()
        .map(|leak| leak.function)
        .chain(truth.clean.iter().copied())
        .collect();
    report
        .stacks
        .retain(|s| functions.iter().any(|f| tests::frame_index(s, f).is_some()));
    report.totals = report.stacks.iter().fold(Totals::default(), |t, s| Totals {
        bytes: t.bytes + s.bytes,
        count: t.count + s.count,
    });
    report
}

/// A command that links another allocator (`DT_NEEDED`): the probes go on
/// the allocator it will call, which the child held before exec does not
/// map yet; the report is the oneshot ground truth, naming the allocator.
fn launched_through(kind: Kind, allocator: &str) {
    let bin = kind.path().expect("the fixture");
    let report = launch_json(&[], &bin.display().to_string());
    let dump = describe_report(&report);
    assert!(
        report.target.allocator.starts_with(allocator),
        "allocator {:?}, expected {allocator}\n{dump}",
        report.target.allocator
    );
    let report = the_fixtures_own(report, kind);
    let problems = kind.truth().check_leaks(&report);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
    assert!(report.stats.frees >= 1000, "{dump}");
}

#[test]
fn a_command_linked_with_jemalloc_is_profiled_through_it() {
    if !root_or_skip() {
        return;
    }
    launched_through(Kind::OneShotJemalloc, "jemalloc (");
}

#[test]
fn a_command_linked_with_tcmalloc_is_profiled_through_it() {
    if !root_or_skip() {
        return;
    }
    launched_through(Kind::OneShotTcmalloc, "tcmalloc (");
}

#[test]
fn an_allocator_preloaded_into_a_command_is_profiled() {
    if !root_or_skip() {
        return;
    }
    let bin = Kind::OneShot.path().expect("the oneshot fixture");
    let preload = "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4";
    assert!(
        std::path::Path::new(preload).exists(),
        "{preload} is missing (apt package libgoogle-perftools-dev)"
    );
    let env = format!("LD_PRELOAD={preload}");
    let report = launch_json(&["env", &env], &bin.display().to_string());
    let dump = describe_report(&report);
    assert_eq!(
        report.target.allocator,
        format!("tcmalloc ({preload})"),
        "{dump}"
    );
    let problems = Kind::OneShot
        .truth()
        .check_leaks(&the_fixtures_own(report, Kind::OneShot));
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
}

/// Like strace, time and valgrind, `memprof -- COMMAND` exits with the
/// command's status, 128 + the signal for a command killed by one, so that a
/// script or CI step that wraps a command still sees it fail.
#[test]
fn the_command_s_exit_status_is_memprof_s() {
    if !root_or_skip() {
        return;
    }
    for (script, code) in [("exit 0", 0), ("exit 7", 7), ("kill -SEGV $$", 128 + 11)] {
        let output = run_memprof(
            &[],
            &["--format", "json", "--", "/bin/sh", "-c", script],
            TIMEOUT,
        );
        output.assert_exit_code(code);
        // The report is still written.
        let report = output.report();
        assert_eq!(report.target.exit_status, Some(code), "{script}");
    }
}
