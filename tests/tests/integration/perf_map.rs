//! Names of code in anonymous memory from the perf map its runtime writes
//! (`/tmp/perf-PID.map`): `tests/fixtures/perf_map.c` calls malloc through
//! a trampoline it copied to an anonymous executable page, and names it
//! in its perf map only after memprof attached (as a JIT appends to its
//! map when it compiles). Needs root (run through `cargo xtask test`).

use tests::{describe_report, describe_stack, profile_fixture, root_or_skip, Kind};

/// What the fixture keeps through the trampoline.
const COUNT: u64 = 40;
const BYTES: u64 = COUNT * 1500;

#[test]
fn code_named_by_a_perf_map_appended_during_the_run() {
    if !root_or_skip() {
        return;
    }
    let (output, _) = profile_fixture(Kind::PerfMap, &["--format", "json", "--top", "100"]);
    let report = output.report();
    let dump = describe_report(&report);
    let stack = report
        .stacks
        .iter()
        .find(|s| tests::frame_index(s, "leak_through_jit").is_some())
        .unwrap_or_else(|| panic!("no stack of leak_through_jit\n{dump}"));
    let what = describe_stack(stack);
    assert_eq!((stack.bytes, stack.count), (BYTES, COUNT), "{what}\n{dump}");
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
