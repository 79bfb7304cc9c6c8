//! Stacks of code built without frame pointers, walked from call frame
//! information (`--unwind dwarf`, and `auto`, the default): every leak's
//! full stack down to `main`, the same bytes as with frame pointers, and no
//! frame outside the process's code. Needs root (run through `cargo xtask test`).

use memprof::model::{Truncation, Walk};
use tests::{describe_report, describe_stack, frame_index, profile_fixture, root_or_skip, Kind};

/// leaky.c at `-O2 -fomit-frame-pointer`: each leak's stack, from the
/// leaking function (frames[0], or [1] for reallocarray's tail call) through
/// `main`, complete.
fn assert_full_stacks(args: &[&str]) {
    let mut all = vec!["--format", "json", "--top", "1000"];
    all.extend_from_slice(args);
    let (output, _) = profile_fixture(Kind::LeakyNoFramePointers, &all);
    let report = output.report();
    let dump = describe_report(&report);
    let truth = Kind::LeakyNoFramePointers.truth();
    assert_eq!(report.totals, truth.total(), "{dump}");
    let problems = truth.check_leaks(&report);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    for leak in truth.leaks {
        for stack in report
            .stacks
            .iter()
            .filter(|s| frame_index(s, leak.function).is_some())
        {
            let at = frame_index(stack, leak.function).unwrap_or(usize::MAX);
            let main = frame_index(stack, "main");
            assert!(
                main.is_some_and(|m| m > at),
                "the stack of {} does not reach main: {}\n{dump}",
                leak.function,
                describe_stack(stack)
            );
            assert!(!stack.truncated, "{}\n{dump}", describe_stack(stack));
            // Every frame from call frame information: none has a frame pointer.
            assert_eq!(stack.walk, Some(Walk::Cfi), "{}", describe_stack(stack));
            assert_eq!(stack.truncation, None, "{}", describe_stack(stack));
        }
    }
    assert_eq!(report.stats.unwind.unwind_not_mapped, 0, "{dump}");
    assert_eq!(report.stats.unwind.unwind_unsupported, 0, "{dump}");
}

#[test]
fn stacks_without_frame_pointers_reach_main_with_dwarf() {
    if !root_or_skip() {
        return;
    }
    assert_full_stacks(&["--unwind", "dwarf"]);
}

#[test]
fn stacks_without_frame_pointers_reach_main_by_default() {
    if !root_or_skip() {
        return;
    }
    assert_full_stacks(&[]);
}

/// The text report says how each stack was walked, and sums it up.
#[test]
fn the_text_report_says_how_stacks_were_walked() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(
        Kind::LeakyNoFramePointers,
        &["--format", "text", "--top", "0", "--unwind", "dwarf"],
    );
    let text = output.stdout_text();
    let stacks = text.matches("\n#").count();
    assert!(stacks >= 8, "{text}");
    assert_eq!(text.matches(" [cfi]\n").count(), stacks, "{text}");
    assert!(
        text.contains(&format!(
            "stacks:       walked from call frame information: {stacks} stacks ("
        )) && text.contains("; none cut short\n"),
        "{text}"
    );
}

/// A Python program that grows a list of 1,000-byte `bytearray`s (their
/// buffers come from malloc: more than pymalloc's 512 bytes) after "go".
const PYTHON_GROWS_A_LIST: &str = r#"
import os, sys
os.write(1, b"ready %d\n" % os.getpid())
sys.stdin.readline()
def grow(n):
    return [bytearray(1000) for _ in range(n)]
kept = grow(5000)
os.write(1, b"done\n")
sys.stdin.read()
"#;

/// Debian's own python3.11 (built without frame pointers), attached while
/// it grows a list: the stack of the leak runs through the interpreter's
/// loop (`_PyEval_EvalFrameDefault`) to `Py_BytesMain` (which `main`
/// tail-calls) and libc's start, and is not truncated.
#[test]
fn debian_python_stacks_reach_the_interpreter_loop_and_main() {
    if !root_or_skip() {
        return;
    }
    let python = std::path::Path::new("/usr/bin/python3.11");
    if !python.exists() {
        tests::skip("/usr/bin/python3.11 is not installed (apt-get install python3)");
        return;
    }
    let (report, _) = profile_program(python, &["-c", PYTHON_GROWS_A_LIST], &[]);
    let dump = describe_report(&report);
    // The list's 5,000 buffers, all from one Python line.
    let stack = report
        .stacks
        .iter()
        .filter(|s| frame_index(s, "_PyEval_EvalFrameDefault").is_some())
        .max_by_key(|s| s.bytes)
        .unwrap_or_else(|| panic!("no stack reaches _PyEval_EvalFrameDefault\n{dump}"));
    assert!(stack.count >= 5000, "{}\n{dump}", describe_stack(stack));
    let eval = frame_index(stack, "_PyEval_EvalFrameDefault").unwrap();
    // Debian's main tail-calls Py_BytesMain (`jmp`), so libc's start is
    // Py_BytesMain's caller.
    let bytes_main = frame_index(stack, "Py_BytesMain");
    assert!(
        bytes_main.is_some_and(|m| m > eval),
        "the stack does not reach Py_BytesMain: {}\n{dump}",
        describe_stack(stack)
    );
    assert_eq!(
        frame_index(stack, "__libc_start_call_main"),
        bytes_main.map(|m| m + 1),
        "{}",
        describe_stack(stack)
    );
    assert!(!stack.truncated, "{}", describe_stack(stack));
}

/// Runs `program` with `args` (a fixture speaking the ready/go/done
/// protocol) under `memprof -p PID --format json` and `memprof_args`;
/// returns the report and the program's executable mappings at "done".
fn profile_program(
    program: &std::path::Path,
    args: &[&str],
    memprof_args: &[&str],
) -> (memprof::model::Report, Vec<(u64, u64)>) {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    let pid = ready.strip_prefix("ready ").unwrap().trim().to_owned();
    let mut all = vec!["-p", &pid, "--format", "json", "--top", "1000"];
    all.extend_from_slice(memprof_args);
    let mut memprof = tests::Memprof::spawn(&all);
    memprof.wait_attached(tests::ATTACH_TIMEOUT);
    writeln!(stdin, "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap().trim(), "done");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let code = maps
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect();
    memprof.interrupt();
    let output = memprof.finish(tests::FINISH_TIMEOUT);
    drop(stdin);
    let _ = child.wait();
    output.assert_success();
    (output.report(), code)
}

/// Every frame of every stack of `report` lies in `code`.
fn assert_frames_in_code(report: &memprof::model::Report, code: &[(u64, u64)]) {
    for stack in &report.stacks {
        for frame in &stack.frames {
            assert!(
                code.iter().any(|&(s, e)| s <= frame.addr && frame.addr < e),
                "frame {:#x} lies in no executable mapping: {}\n{}",
                frame.addr,
                describe_stack(stack),
                describe_report(report)
            );
        }
    }
}

/// The stacks of `report` whose first frame is `function`.
fn stacks_from<'a>(
    report: &'a memprof::model::Report,
    function: &str,
) -> Vec<&'a memprof::model::Stack> {
    report
        .stacks
        .iter()
        .filter(|s| frame_index(s, function) == Some(0))
        .collect()
}

/// The bytes and allocations of `stacks`, summed.
fn bytes_and_count(stacks: &[&memprof::model::Stack]) -> (u64, u64) {
    (
        stacks.iter().map(|s| s.bytes).sum(),
        stacks.iter().map(|s| s.count).sum(),
    )
}

/// `tests/fixtures/unwind.c` at -O2 without frame pointers.
fn unwind_fixture() -> std::path::PathBuf {
    let path = tests::c_fixtures_dir().join("unwind-nofp");
    assert!(
        path.exists(),
        "the unwind-nofp fixture was not built: see {}.error",
        path.display()
    );
    path
}

/// A recursion deeper than the frames a stack keeps: the stack is marked
/// truncated (and counted), and every frame is real code.
#[test]
fn a_recursion_deeper_than_a_stack_is_marked_truncated_never_wrong() {
    if !root_or_skip() {
        return;
    }
    let (report, code) = profile_program(&unwind_fixture(), &[], &[]);
    let dump = describe_report(&report);
    assert_frames_in_code(&report, &code);
    let deep: Vec<_> = report
        .stacks
        .iter()
        .filter(|s| frame_index(s, "deep_alloc") == Some(0))
        .collect();
    assert_eq!(deep.len(), 1, "{dump}");
    let stack = deep[0];
    assert_eq!((stack.bytes, stack.count), (3000, 1), "{dump}");
    // Every frame kept is deep_alloc, and the stack says it is cut short.
    assert!(
        stack
            .frames
            .iter()
            .all(|f| tests::function_is(f, "deep_alloc")),
        "{}",
        describe_stack(stack)
    );
    assert!(stack.truncated, "{}", describe_stack(stack));
    assert_eq!(stack.truncation, Some(Truncation::TooDeep), "{dump}");
    assert!(report.stats.unwind.unwind_too_deep >= 1, "{dump}");
}

/// rbp holding text at the allocation: the walk from call frame
/// information does not need it, and reaches main.
#[test]
fn a_junk_frame_pointer_does_not_derail_the_walk() {
    if !root_or_skip() {
        return;
    }
    let (report, code) = profile_program(&unwind_fixture(), &[], &[]);
    let dump = describe_report(&report);
    assert_frames_in_code(&report, &code);
    let junk = stacks_from(&report, "junk_rbp_alloc");
    assert_eq!(bytes_and_count(&junk), (8000, 4), "{dump}");
    for stack in junk {
        assert!(
            frame_index(stack, "main") == Some(1),
            "{}",
            describe_stack(stack)
        );
        assert!(!stack.truncated, "{}", describe_stack(stack));
    }
    // By frame pointer the same stack ends at its first frame, and still
    // shows nothing outside the process's code.
    let (report, code) = profile_program(&unwind_fixture(), &[], &["--unwind", "fp"]);
    assert_frames_in_code(&report, &code);
}

/// A library whose constructor allocates as soon as `dlopen` mapped it,
/// before memprof's next look at the process's mappings: its blocks are
/// each from a stack that starts at the allocating function (walked by
/// frame pointer and counted as without a table until the table knows the
/// library), none lost, and no frame outside the process's code.
#[test]
fn code_mapped_since_the_last_look_still_has_its_stacks() {
    if !root_or_skip() {
        return;
    }
    let lib = tests::c_fixtures_dir().join("libctorleak.so");
    assert!(lib.exists(), "{} was not built", lib.display());
    let lib = lib.display().to_string();
    let (report, code) = profile_program(&unwind_fixture(), &["dlopen", &lib], &[]);
    let dump = describe_report(&report);
    assert_frames_in_code(&report, &code);
    let ctor = stacks_from(&report, "lib_ctor_leak");
    assert_eq!(bytes_and_count(&ctor), (3333, 3), "{dump}");
    assert_eq!(report.stats.stack_lost, 0, "{dump}");
}

/// `fp` and `nofp`, the same program built with and without frame
/// pointers: the same leaks, exactly, and each leak's stack runs through
/// `serve` (four frames of it) to `main`, complete; the build without frame
/// pointers is walked from call frame information alone.
fn assert_full_stacks_like_with_frame_pointers(fp: Kind, nofp: Kind) {
    for kind in [fp, nofp] {
        let report = tests::profile_json(kind);
        let dump = describe_report(&report);
        tests::assert_ground_truth(&report, kind);
        for leak in kind.truth().leaks {
            for stack in report
                .stacks
                .iter()
                .filter(|s| frame_index(s, leak.function).is_some())
            {
                let at = frame_index(stack, leak.function).unwrap_or(usize::MAX);
                let serve: Vec<usize> = stack
                    .frames
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| tests::function_is(f, "serve"))
                    .map(|(i, _)| i)
                    .collect();
                let main = frame_index(stack, "main");
                assert!(
                    serve.len() == 4 && serve[0] > at && main.is_some_and(|m| m > serve[3]),
                    "{kind:?}: the stack of {} does not run through serve to main: {}\n{dump}",
                    leak.function,
                    describe_stack(stack)
                );
                assert!(!stack.truncated, "{kind:?}: {}", describe_stack(stack));
                if kind == nofp {
                    assert_eq!(stack.walk, Some(Walk::Cfi), "{}", describe_stack(stack));
                }
            }
        }
    }
}

/// A system-wide run (no `-p`): the processes found at the start get unwind
/// tables too, so the fixture without frame pointers has every leak's
/// stack complete, through `main`, with its exact bytes.
#[test]
fn system_wide_runs_walk_stacks_from_tables() {
    use tests::{Fixture, Memprof, ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT};
    if !root_or_skip() {
        return;
    }
    let mut fixture = Fixture::spawn(Kind::LeakyNoFramePointers);
    let pid = fixture.pid();
    let mut memprof = Memprof::spawn(&["--format", "json", "--top", "1000"]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    fixture.go();
    fixture.wait_done(DONE_TIMEOUT);
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let mut report = output.report();
    assert_eq!(report.selection.as_deref(), Some("system-wide"));
    let dump = describe_report(&report);
    report.stacks.retain(|s| s.pid == Some(pid));
    report.totals = report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} is not in the report\n{dump}"))
        .totals;
    let truth = Kind::LeakyNoFramePointers.truth();
    let problems = truth.check_leaks(&report);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    for leak in truth.leaks {
        for stack in report
            .stacks
            .iter()
            .filter(|s| frame_index(s, leak.function).is_some())
        {
            let at = frame_index(stack, leak.function).unwrap_or(usize::MAX);
            assert!(
                frame_index(stack, "main").is_some_and(|m| m > at),
                "pid {pid}: the stack of {} does not reach main: {}\n{dump}",
                leak.function,
                describe_stack(stack)
            );
            assert!(!stack.truncated, "{}\n{dump}", describe_stack(stack));
        }
    }
}

#[test]
fn cxx_without_frame_pointers_has_full_stacks() {
    if !root_or_skip() {
        return;
    }
    assert_full_stacks_like_with_frame_pointers(Kind::Containers, Kind::ContainersNoFramePointers);
}

#[test]
fn rust_without_frame_pointers_has_full_stacks() {
    if !root_or_skip() {
        return;
    }
    assert_full_stacks_like_with_frame_pointers(
        Kind::LeakyRustFramePointers,
        Kind::LeakyRustNoFramePointers,
    );
}

/// A sampled run (`--sample-rate`, uprobe session programs loaded with the
/// object's BTF) walks from tables too: every sampled leak's stack of the
/// fixture without frame pointers reaches `main`.
#[test]
fn sampled_runs_walk_stacks_from_tables() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(
        Kind::LeakyNoFramePointers,
        &["--format", "json", "--top", "1000", "--sample-rate", "2"],
    );
    let report = output.report();
    let dump = describe_report(&report);
    let truth = Kind::LeakyNoFramePointers.truth();
    let mut leaks = 0;
    for leak in truth.leaks {
        for stack in report
            .stacks
            .iter()
            .filter(|s| frame_index(s, leak.function).is_some())
        {
            leaks += 1;
            let at = frame_index(stack, leak.function).unwrap_or(usize::MAX);
            assert!(
                frame_index(stack, "main").is_some_and(|m| m > at),
                "the stack of {} does not reach main: {}\n{dump}",
                leak.function,
                describe_stack(stack)
            );
            assert!(!stack.truncated, "{}\n{dump}", describe_stack(stack));
        }
    }
    assert!(leaks > 0, "no leak was sampled\n{dump}");
    assert!(report.stats.unwind.unwind_cfi > 0, "{dump}");
    assert_eq!(report.stats.unwind.unwind_no_table, 0, "{dump}");
}

/// A launched command's first allocations, in its library's constructor
/// (run by the dynamic loader before the program's entry) and its own
/// (before main): each walked from call frame information, none by frame
/// pointer for want of a table, the bytes exact. memprof writes the tables
/// while the command is held at its exec and after its loader mapped its
/// libraries.
#[test]
fn a_launched_commands_first_allocations_are_walked_from_tables() {
    if !root_or_skip() {
        return;
    }
    let bin = tests::c_fixtures_dir().join("ctorleak-nofp");
    assert!(
        bin.exists(),
        "the ctorleak-nofp fixture was not built: see {}.error",
        bin.display()
    );
    let bin_arg = bin.display().to_string();
    for unwind in ["auto", "dwarf"] {
        let output = tests::run_memprof(
            &[],
            &[
                "--format", "json", "--top", "1000", "--unwind", unwind, "--", &bin_arg,
            ],
            std::time::Duration::from_secs(120),
        );
        output.assert_success();
        let report = output.report();
        let dump = describe_report(&report);
        assert_eq!(
            (report.totals.bytes, report.totals.count),
            (11_110, 6),
            "{dump}"
        );
        assert_eq!(report.stats.unwind.unwind_no_table, 0, "{dump}");
        // (function, bytes, count, the caller that ran it)
        for (function, bytes, count, runner) in [
            ("lib_ctor_leak", 3333, 3, "_dl_init"),
            ("exe_ctor_leak", 4444, 2, "__libc_start_main_impl"),
            ("main_leak", 3333, 1, "__libc_start_main_impl"),
        ] {
            let stacks: Vec<_> = report
                .stacks
                .iter()
                .filter(|s| frame_index(s, function) == Some(0))
                .collect();
            assert_eq!(
                (
                    stacks.iter().map(|s| s.bytes).sum::<u64>(),
                    stacks.iter().map(|s| s.count).sum::<u64>()
                ),
                (bytes, count),
                "{function}\n{dump}"
            );
            for stack in stacks {
                assert_eq!(stack.walk, Some(Walk::Cfi), "{}", describe_stack(stack));
                assert!(
                    frame_index(stack, runner).is_some(),
                    "the stack of {function} does not reach {runner}: {}",
                    describe_stack(stack)
                );
            }
        }
    }
}
