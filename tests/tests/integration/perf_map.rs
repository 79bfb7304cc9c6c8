//! Names of code in anonymous memory from the perf map its runtime writes
//! (`/tmp/perf-PID.map`): `tests/fixtures/perf_map.c` calls malloc through
//! a trampoline it copied to an anonymous executable page, and names it
//! in its perf map only after memprof attached (as a JIT appends to its
//! map when it compiles). Needs root (run through `cargo xtask test`).

use tests::{describe_report, describe_stack, profile_fixture, root_or_skip, Kind, Report, Stack};

/// What the fixture keeps through the trampoline.
const COUNT: u64 = 40;
const BYTES: u64 = COUNT * 1500;

/// The stack of what the fixture keeps through its trampoline: exact, and
/// the trampoline named innermost.
fn check_trampoline_stack(report: &Report) -> &Stack {
    let dump = describe_report(report);
    let stack = report
        .stacks
        .iter()
        .find(|s| tests::frame_index(s, "leak_through_jit").is_some())
        .unwrap_or_else(|| panic!("no stack of leak_through_jit\n{dump}"));
    let what = describe_stack(stack);
    assert_eq!((stack.bytes, stack.count), (BYTES, COUNT), "{what}\n{dump}");
    assert_eq!(
        stack.frames[0].function.as_deref(),
        Some("jit_trampoline_leak"),
        "{what}"
    );
    stack
}

#[test]
fn code_named_by_a_perf_map_appended_during_the_run() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(Kind::PerfMap, &["--format", "json", "--top", "100"]);
    let report = output.report();
    let stack = check_trampoline_stack(&report);
    let what = describe_stack(stack);
    let names: Vec<Option<&str>> = stack
        .frames
        .iter()
        .take(3)
        .map(|f| f.function.as_deref())
        .collect();
    assert_eq!(
        names,
        [
            Some("jit_trampoline_leak"),
            Some("leak_through_jit"),
            Some("main")
        ],
        "{what}"
    );
    let trampoline = &stack.frames[0];
    assert_eq!(
        trampoline.module.as_deref(),
        Some("[anon]"),
        "the trampoline stays in its anonymous mapping: {what}"
    );
    // Past the `call *%rsi` at offset 4 of the code at 0x100.
    assert_eq!(trampoline.module_offset, Some(0x106), "{what}");
}

/// The same fixture as a container runs it: pid 1 of its own pid namespace,
/// with a `/tmp` of its own, so its map is `/tmp/perf-1.map` there and
/// nowhere on the host. memprof reads it through the process's root.
#[test]
fn a_containers_perf_map_is_read_in_its_namespaces() {
    use std::process::Command;
    if !root_or_skip() {
        return;
    }
    let Some(unshare) = tests::find_program("unshare") else {
        tests::skip("unshare (util-linux) is not installed");
        return;
    };
    // A copy outside /tmp, which the container's own /tmp hides (a
    // checkout under /tmp builds its fixtures there).
    let dir = std::path::PathBuf::from(format!("/var/tmp/memprof-perf-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("perf-map");
    std::fs::copy(Kind::PerfMap.path().unwrap(), &bin).unwrap();
    let script = format!("mount -t tmpfs none /tmp && exec {}", bin.display());
    let mut command = Command::new(unshare);
    command
        .args(["--mount", "--pid", "--fork", "--propagation", "private"])
        .args(["sh", "-c", &script]);
    let report = tests::profile_stdio_program(
        command,
        |child, ready| {
            assert_eq!(ready, "ready 1", "pid 1 of its namespace");
            // The fixture is unshare's only child.
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
                    .unwrap();
            assert!(
                !std::path::Path::new("/tmp/perf-1.map").exists(),
                "the fixture's map is not in its own /tmp"
            );
            children.trim().to_string()
        },
        &["--top", "100"],
    );
    let _ = std::fs::remove_dir_all(&dir);
    check_trampoline_stack(&report);
}
