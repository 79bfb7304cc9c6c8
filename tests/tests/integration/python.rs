//! Python frames of the allocations of CPython processes: a script
//! (`tests/fixtures/pygrow.py`) leaks `bytes(4096)` in `handle` (line 4,
//! malloc) and small strings in a dict from `remember` (line 7); the
//! report names each at its function, file and line, merged into the
//! native stack where the interpreter's evaluation loop ran them. Debian's
//! `python3.11` first, then every pyenv version installed. Needs root (run
//! through `cargo xtask test`).

use std::path::{Path, PathBuf};

use memprof::model::{Report, Stack};
use tests::{describe_report, describe_stack, frame_index, root_or_skip};

/// The script's blocks of `bytes(4096)`: 2,000, each 4,096 bytes plus the
/// bytes object's 33-byte header.
pub(crate) const HANDLE_COUNT: u64 = 2000;
pub(crate) const HANDLE_BYTES: u64 = HANDLE_COUNT * (4096 + 33);

pub(crate) fn fixture() -> PathBuf {
    tests::workspace_root().join("tests/fixtures/pygrow.py")
}

/// Runs `python fixture` (ready/go/done on stdio) under `memprof -p PID
/// --format json` and `memprof_args`; returns the report.
fn profile_script(python: &Path, memprof_args: &[&str]) -> Report {
    let mut command = std::process::Command::new(python);
    command.arg(fixture());
    let mut all = vec!["--top", "1000"];
    all.extend_from_slice(memprof_args);
    tests::profile_stdio_program(command, tests::ready_pid, &all)
}

/// The index of the Python frame `function` at `line` of the fixture.
pub(crate) fn python_frame(stack: &Stack, function: &str, line: u32) -> Option<usize> {
    stack.frames.iter().position(|f| {
        f.function.as_deref() == Some(function)
            && f.line == Some(line)
            && f.file.as_deref().is_some_and(|p| p.ends_with("pygrow.py"))
    })
}

/// The one stack whose innermost Python frame is `function` at `line`.
fn stack_of<'a>(report: &'a Report, function: &str, line: u32) -> &'a Stack {
    let dump = describe_report(report);
    let found: Vec<&Stack> = report
        .stacks
        .iter()
        .filter(|s| python_frame(s, function, line).is_some())
        .collect();
    assert!(
        !found.is_empty(),
        "no stack with {function} (pygrow.py:{line})\n{dump}"
    );
    found.into_iter().max_by_key(|s| s.bytes).unwrap()
}

/// Every check on a report of the fixture; `merged` when native frames
/// are expected around the Python ones (not with `--python-only`), None
/// when they may be cut short (a launched command's first moments are
/// walked by frame pointer until its unwind tables are in).
fn check(report: &Report, merged: Option<bool>) {
    let dump = describe_report(report);
    let handle = stack_of(report, "handle", 4);
    let what = describe_stack(handle);
    assert_eq!(
        (handle.bytes, handle.count),
        (HANDLE_BYTES, HANDLE_COUNT),
        "{what}\n{dump}"
    );
    let at = python_frame(handle, "handle", 4).unwrap();
    let module = python_frame(handle, "<module>", 11);
    assert!(
        module.is_some_and(|m| m > at),
        "handle's caller is the module's line 11: {what}"
    );
    let remember = stack_of(report, "remember", 7);
    let at_remember = python_frame(remember, "remember", 7).unwrap();
    assert!(
        python_frame(remember, "<module>", 12).is_some_and(|m| m > at_remember),
        "{}",
        describe_stack(remember)
    );
    if merged == Some(true) {
        // Inside the allocation's native frames, under the evaluation loop:
        // 3.11+ runs both Python frames in one call of it, older versions
        // one call each.
        let eval = frame_index(handle, "_PyEval_EvalFrameDefault");
        assert!(
            eval == module.map(|m| m + 1) || eval == Some(at + 1),
            "{what}"
        );
        assert!(at > 0, "native frames inside handle: {what}");
        assert!(!handle.truncated, "{what}");
    } else if merged == Some(false) {
        assert_eq!(module, Some(at + 1), "{what}");
        assert_eq!(
            frame_index(handle, "_PyEval_EvalFrameDefault"),
            None,
            "{what}"
        );
    }
    assert!(report.stats.python.py_stacks >= HANDLE_COUNT, "{dump}");
}

/// Debian's python3.11 (the interpreter linked into the executable, no
/// frame pointers) attached with `-p`.
#[test]
fn debian_python_allocations_are_named_at_their_python_line() {
    if !root_or_skip() {
        return;
    }
    let python = Path::new("/usr/bin/python3.11");
    if !python.exists() {
        tests::skip("/usr/bin/python3.11 is not installed (cargo xtask setup installs it)");
        return;
    }
    check(&profile_script(python, &[]), Some(true));
}

/// `--python-only` folds the interpreter's native frames away.
#[test]
fn python_only_folds_the_interpreter_away() {
    if !root_or_skip() {
        return;
    }
    let python = Path::new("/usr/bin/python3.11");
    if !python.exists() {
        tests::skip("/usr/bin/python3.11 is not installed (cargo xtask setup installs it)");
        return;
    }
    check(&profile_script(python, &["--python-only"]), Some(false));
}

/// The same script launched by memprof (`memprof -- python3.11 script`):
/// no stdin, so it runs straight through; what it holds at its exit is the
/// report.
#[test]
fn launched_python_script_is_named_at_its_python_line() {
    if !root_or_skip() {
        return;
    }
    let python = Path::new("/usr/bin/python3.11");
    if !python.exists() {
        tests::skip("/usr/bin/python3.11 is not installed (cargo xtask setup installs it)");
        return;
    }
    let script = fixture();
    let json = tests::target_dir().join(format!("python-launch-{}.json", std::process::id()));
    let json_arg = json.display().to_string();
    let output = tests::run_memprof(
        &[],
        &[
            "-o",
            &json_arg,
            "--top",
            "1000",
            "--",
            "/usr/bin/python3.11",
            script.to_str().unwrap(),
        ],
        tests::FINISH_TIMEOUT,
    );
    output.assert_success();
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    let report: Report = serde_json::from_str(&text).expect("a JSON report");
    check(&report, None);
}

/// Every CPython 3 that pyenv installed, with its interpreter in
/// `libpython3.X.so`: the same report; a version memprof knows must name
/// the lines, one it does not know is said so, and its native stacks stay.
#[test]
fn pyenv_pythons_are_named_at_their_python_line() {
    if !root_or_skip() {
        return;
    }
    let root = Path::new("/root/.pyenv/versions");
    let Ok(dirs) = std::fs::read_dir(root) else {
        tests::skip("no pyenv versions in /root/.pyenv/versions");
        return;
    };
    let mut versions: Vec<PathBuf> = dirs.filter_map(|d| Some(d.ok()?.path())).collect();
    versions.sort();
    for dir in versions {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let minor: Option<u32> = name
            .strip_prefix("3.")
            .and_then(|r| r.split('.').next())
            .and_then(|m| m.parse().ok());
        let Some(minor) = minor.filter(|&m| m >= 5) else {
            tests::say(&format!("pyenv {name}: not CPython 3.5+, skipped"));
            continue;
        };
        let python = dir.join(format!("bin/python3.{minor}"));
        if !python.exists() {
            tests::say(&format!("pyenv {name}: no {}, skipped", python.display()));
            continue;
        }
        tests::say(&format!("pyenv {name}"));
        let report = profile_script(&python, &[]);
        if (8..=13).contains(&minor) {
            check(&report, Some(true));
        } else {
            // Not a version memprof knows: native stacks, exact bytes.
            let dump = describe_report(&report);
            assert_eq!(report.stats.python.py_stacks, 0, "{dump}");
            assert!(
                report
                    .stacks
                    .iter()
                    .any(|s| s.bytes == HANDLE_BYTES && s.count == HANDLE_COUNT),
                "{dump}"
            );
        }
    }
}
