//! The CI leak gate, `memprof check -- COMMAND`: a clean program passes, a
//! leaking one fails with status 1 (or `--exit-code`), a suppression of its
//! leaking functions or a budget lets it pass again, and a command that
//! fails passes its own status through. Needs root (run through `cargo xtask
//! test`).

use std::time::Duration;

use tests::{root_or_skip, run_memprof, target_dir, Kind, Output};

const TIMEOUT: Duration = Duration::from_secs(120);

/// What `oneshot` holds at its exit (see tests/fixtures/oneshot.c).
const ONESHOT_BYTES: u64 = 8100;
const ONESHOT_BLOCKS: u64 = 9;

fn check(args: &[&str], command: &[&str]) -> Output {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    all.push("--");
    all.extend_from_slice(command);
    run_memprof(&[], &all, TIMEOUT)
}

fn path(kind: Kind) -> String {
    kind.path()
        .unwrap_or_else(|e| panic!("the {kind:?} fixture: {e}"))
        .display()
        .to_string()
}

/// A suppressions file with `lines`, removed on drop.
struct SuppressionsFile(std::path::PathBuf);

impl SuppressionsFile {
    fn new(name: &str, lines: &str) -> SuppressionsFile {
        let path = target_dir().join(format!("{name}-{}.supp", std::process::id()));
        std::fs::write(&path, lines).unwrap();
        SuppressionsFile(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for SuppressionsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_clean_program_passes() {
    if !root_or_skip() {
        return;
    }
    let out = check(&[], &[&path(Kind::Clean), "--now"]);
    out.assert_exit_code(0);
    assert!(
        out.stderr
            .contains("memprof check: passed: 0 B (0 bytes) in 0 blocks leaked"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_leak_fails_the_gate_until_suppressed_or_within_the_budget() {
    if !root_or_skip() {
        return;
    }
    let oneshot = path(Kind::OneShot);
    let leaked = format!("({ONESHOT_BYTES} bytes) in {ONESHOT_BLOCKS} blocks leaked");

    // Over the default budget of 0 bytes: status 1, the leak named.
    let out = check(&[], &[&oneshot, "0"]);
    out.assert_exit_code(1);
    assert!(out.stderr.contains("FAILED"), "{}", out.stderr);
    assert!(out.stderr.contains(&leaked), "{}", out.stderr);
    // The report itself is printed, with the leaking functions.
    let report = out.stdout_text();
    for function in ["oneshot_malloc", "oneshot_calloc", "oneshot_realloc"] {
        assert!(report.contains(function), "{function} missing:\n{report}");
    }

    // A chosen status.
    check(&["--exit-code", "7"], &[&oneshot, "0"]).assert_exit_code(7);

    // Every leaking function suppressed (LeakSanitizer's format).
    let all = SuppressionsFile::new("check-all", "# the fixture's leaks\nleak:^oneshot_\n");
    let out = check(&["--suppressions", &all.arg()], &[&oneshot, "0"]);
    out.assert_exit_code(0);
    let by_rule = format!(
        "suppressed 7.9 KiB ({ONESHOT_BYTES} bytes) in {ONESHOT_BLOCKS} blocks by leak:^oneshot_ ({}:2)",
        all.arg()
    );
    assert!(out.stderr.contains(&by_rule), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("passed: 0 B (0 bytes) in 0 blocks leaked"),
        "{}",
        out.stderr
    );

    // One function suppressed (5000 bytes in 1 block): the other 3100 bytes
    // in 8 blocks are the leak, within a budget of 3100 bytes, over one of 3099.
    let one = SuppressionsFile::new("check-one", "leak:oneshot_realloc\n");
    let out = check(
        &["--suppressions", &one.arg(), "--max-leak", "3100"],
        &[&oneshot, "0"],
    );
    out.assert_exit_code(0);
    assert!(
        out.stderr
            .contains("passed: 3.0 KiB (3100 bytes) in 8 blocks leaked, budget 3100 bytes"),
        "{}",
        out.stderr
    );
    check(
        &["--suppressions", &one.arg(), "--max-leak", "3099"],
        &[&oneshot, "0"],
    )
    .assert_exit_code(1);
}

#[test]
fn a_failing_command_passes_its_status_through() {
    if !root_or_skip() {
        return;
    }
    // oneshot leaks and exits 3: its status wins over the gate's.
    let out = check(&[], &[&path(Kind::OneShot)]);
    out.assert_exit_code(3);
    assert!(
        out.stderr.contains("the command failed (status 3)"),
        "{}",
        out.stderr
    );
    // A clean command killed by a signal: 128 + the signal.
    check(&[], &["/bin/sh", "-c", "kill -TERM $$"]).assert_exit_code(128 + libc::SIGTERM);
}

#[test]
fn a_bad_suppressions_file_is_named() {
    if !root_or_skip() {
        return;
    }
    let bad = SuppressionsFile::new("check-bad", "leak:ok\nrace:foo\n");
    let out = check(
        &["--suppressions", &bad.arg()],
        &[&path(Kind::Clean), "--now"],
    );
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("{}:2", bad.arg())),
        "{}",
        out.stderr
    );
}
