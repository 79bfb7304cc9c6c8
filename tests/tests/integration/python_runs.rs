//! Python frames beyond one fully tracked process: under `--sample-rate`
//! (uprobe session programs) and in a whole-machine run (no `-p`), where
//! every CPython process gets its frames, one started during the run too.
//! The script is `tests/fixtures/pygrow.py` (see the `python` tests), run
//! by Debian's `python3.11`. Needs root (run through `cargo xtask test`).

use std::io::{BufRead as _, BufReader, Lines, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use memprof::model::{Report, Stack};
use tests::{describe_report, describe_stack, frame_index, root_or_skip, sampling_or_skip};

use super::python::{fixture, python_frame, HANDLE_BYTES, HANDLE_COUNT};

const PYTHON: &str = "/usr/bin/python3.11";

/// 1 in N.
const RATE: u64 = 16;
/// How many standard deviations a sampled estimate may be off (as in the
/// `sampling` tests: a correct memprof fails about once in 1.7 million runs).
const SIGMAS: f64 = 5.0;

/// The script, running, waiting for its go line. Killed on drop.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl Script {
    /// Starts the script, or None (with a printed reason) without Debian's python3.11.
    fn start() -> Option<Script> {
        if !Path::new(PYTHON).exists() {
            tests::skip(&format!(
                "{PYTHON} is not installed (cargo xtask setup installs it)"
            ));
            return None;
        }
        let mut child = Command::new(PYTHON)
            .arg(fixture())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PYTHON}: {e}"));
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().unwrap().unwrap();
        let pid = ready
            .strip_prefix("ready ")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Some(Script {
            child,
            stdin,
            lines,
            pid,
        })
    }

    /// Lets it keep its blocks, and waits until it has.
    fn go_and_wait_done(&mut self) {
        writeln!(self.stdin.as_mut().unwrap(), "go").unwrap();
        assert_eq!(self.lines.next().unwrap().unwrap().trim(), "done");
    }

    /// Closes its stdin; it exits 0.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{PYTHON} exited with {status}");
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The stacks whose innermost Python frame is `handle` at line 4, each
/// with `<module>` at line 11 as its caller and the evaluation loop's
/// native frame outside both.
fn handle_stacks(stacks: &[&Stack], dump: &str) -> Vec<Stack> {
    let found: Vec<Stack> = stacks
        .iter()
        .filter(|s| python_frame(s, "handle", 4).is_some())
        .map(|&s| s.clone())
        .collect();
    assert!(
        !found.is_empty(),
        "no stack of handle (pygrow.py:4)\n{dump}"
    );
    for stack in &found {
        let what = describe_stack(stack);
        let at = python_frame(stack, "handle", 4).unwrap();
        let module = python_frame(stack, "<module>", 11);
        assert!(module.is_some_and(|m| m > at), "{what}");
        assert!(
            frame_index(stack, "_PyEval_EvalFrameDefault").is_some_and(|e| e > at),
            "{what}"
        );
    }
    found
}

/// `--sample-rate 16`: the Python frames are those of full tracking, and
/// the figures are what sampling guarantees: multiples of the rate, exactly
/// 4,129 bytes a block, the count within the bound of the truth.
#[test]
fn sampled_python_allocations_are_named_at_their_python_line() {
    if !sampling_or_skip() {
        return;
    }
    let Some(mut script) = Script::start() else {
        return;
    };
    let pid = script.pid.to_string();
    let rate = RATE.to_string();
    let mut memprof = tests::Memprof::spawn(&[
        "-p",
        &pid,
        "--sample-rate",
        &rate,
        "--format",
        "json",
        "--top",
        "1000",
    ]);
    memprof.wait_attached(tests::ATTACH_TIMEOUT);
    script.go_and_wait_done();
    memprof.interrupt();
    let output = memprof.finish(tests::FINISH_TIMEOUT);
    script.finish();
    output.assert_success();
    let report = output.report();
    let dump = describe_report(&report);
    assert_eq!(report.sampling.map(|s| s.rate), Some(RATE), "{dump}");
    let stacks: Vec<&Stack> = report.stacks.iter().collect();
    let handle = handle_stacks(&stacks, &dump);
    let (count, bytes) = handle
        .iter()
        .fold((0, 0), |(c, b), s| (c + s.count, b + s.bytes));
    assert_eq!(count % RATE, 0, "{dump}");
    assert_eq!(bytes, count * (HANDLE_BYTES / HANDLE_COUNT), "{dump}");
    let bound = SIGMAS * (HANDLE_COUNT as f64 * (RATE - 1) as f64).sqrt();
    assert!(
        (count as f64 - HANDLE_COUNT as f64).abs() <= bound,
        "{count} blocks estimated, {HANDLE_COUNT} kept (bound {bound:.0})\n{dump}"
    );
    // Recorded (not scaled): one walk of the Python frames per sample.
    assert!(
        report.stats.python.py_stacks * RATE >= count,
        "{:?}\n{dump}",
        report.stats.python
    );
}

/// A whole-machine run (no `-p`): the script, started after memprof
/// attached, gets its Python frames, and its blocks are exact.
#[test]
fn system_wide_run_names_python_lines_of_a_new_process() {
    if !root_or_skip() {
        return;
    }
    if !Path::new(PYTHON).exists() {
        tests::skip(&format!(
            "{PYTHON} is not installed (cargo xtask setup installs it)"
        ));
        return;
    }
    let mut memprof = tests::Memprof::spawn(&["--format", "json", "--top", "1000"]);
    memprof.wait_attached(tests::ATTACH_TIMEOUT);
    let Some(mut script) = Script::start() else {
        return;
    };
    let pid = script.pid;
    // memprof looks at new processes every second.
    memprof.wait_line(&format!("pid {pid} runs CPython"), tests::ATTACH_TIMEOUT);
    script.go_and_wait_done();
    memprof.interrupt();
    let output = memprof.finish(tests::FINISH_TIMEOUT);
    script.finish();
    output.assert_success();
    let report: Report = output.report();
    let dump = describe_report(&report);
    assert_eq!(report.selection.as_deref(), Some("system-wide"), "{dump}");
    let mine: Vec<&Stack> = report
        .stacks
        .iter()
        .filter(|s| s.pid == Some(pid))
        .collect();
    let handle = handle_stacks(&mine, &dump);
    assert_eq!(handle.len(), 1, "{dump}");
    assert_eq!(
        (handle[0].bytes, handle[0].count),
        (HANDLE_BYTES, HANDLE_COUNT),
        "{dump}"
    );
}
