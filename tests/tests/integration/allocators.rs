//! Allocators beyond glibc's: the same leaky program linked with jemalloc
//! and tcmalloc (each replaces glibc's malloc), with jemalloc linked
//! into the executable itself, and built against musl (dynamically and
//! statically linked); a Rust program with jemalloc (prefixed `_rjem_`) as
//! its global allocator beside glibc's malloc; and a C++ program whose
//! operator new comes from libstdc++, tcmalloc or mimalloc. memprof must
//! probe the allocator the process really calls, name it, and report the
//! exact ground truth with stacks that start at the caller of malloc or
//! new. Needs root (run through `cargo xtask test`).

use std::time::Duration;

use tests::{
    assert_ground_truth, assert_rust_fixture_has_frame_pointers, describe_report, profile_json,
    root_or_skip, Fixture, Kind, Memprof, Report, ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT,
};

/// `leaky.c` through `kind`: the report matches its ground truth and names
/// `allocator`.
fn leaky_c_through(kind: Kind, allocator: &str) -> Report {
    let report = profile_json(kind);
    assert_ground_truth(&report, kind);
    assert!(
        report.target.allocator.starts_with(allocator),
        "allocator {:?}, expected {allocator}\n{}",
        report.target.allocator,
        describe_report(&report)
    );
    report
}

/// No frame of any stack is an allocator function: stacks start at the
/// allocator's caller.
fn assert_no_allocator_frames(report: &Report, is_allocator: impl Fn(&str) -> bool) {
    for stack in &report.stacks {
        for frame in &stack.frames {
            let function = frame.function.as_deref().unwrap_or("");
            assert!(
                !is_allocator(function),
                "a stack holds the allocator's own frame {function}:\n{}",
                describe_report(report)
            );
        }
    }
}

#[test]
fn jemalloc() {
    if !root_or_skip() {
        return;
    }
    leaky_c_through(Kind::LeakyJemalloc, "jemalloc (");
}

#[test]
fn jemalloc_inside_the_executable() {
    if !root_or_skip() {
        return;
    }
    leaky_c_through(Kind::LeakyJemallocStatic, "jemalloc (");
}

#[test]
fn tcmalloc() {
    if !root_or_skip() {
        return;
    }
    leaky_c_through(Kind::LeakyTcmalloc, "tcmalloc (");
}

/// mimalloc 2.0's malloc, calloc and realloc copy their arguments to other
/// registers and give rdi the thread's heap before their first branch: the
/// probes go to that branch (emulated) and read the arguments from the
/// copies. The sizes are exact, and `-v` and the report say where each
/// probe went and where it reads its arguments.
#[test]
fn mimalloc() {
    if !root_or_skip() {
        return;
    }
    let kind = Kind::LeakyMimalloc;
    let mut fixture = Fixture::spawn(kind);
    let pid = fixture.pid().to_string();
    let mut memprof = Memprof::spawn(&["-p", &pid, "-v", "--format", "json", "--top", "1000"]);
    // With -v, lines about the probes come before recording starts.
    memprof.wait_line("recording until Ctrl-C", ATTACH_TIMEOUT);
    fixture.go();
    fixture.wait_done(DONE_TIMEOUT);
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    assert!(fixture.finish(Duration::from_secs(10)).success());
    let report = output.report();
    assert_ground_truth(&report, kind);
    let dump = describe_report(&report);
    assert!(
        report.target.allocator.starts_with("mimalloc ("),
        "allocator {:?}\n{dump}",
        report.target.allocator
    );
    for (function, arguments) in [
        ("malloc", "argument 1 in "),
        ("calloc", "argument 1 in "),
        ("realloc", "argument 1 in "),
    ] {
        let probe = report
            .probes
            .iter()
            .find(|p| p.functions.iter().any(|f| f == function))
            .unwrap_or_else(|| panic!("no probe on {function}: {:#?}", report.probes));
        assert!(
            probe.emulated && probe.offset > 0,
            "{function} is probed at an instruction the kernel emulates, past its entry: {probe:?}"
        );
        let moved = probe.arguments.as_deref().unwrap_or("");
        assert!(moved.starts_with(arguments), "{function}: {probe:?}");
        // -v says the same.
        let line = format!(
            "probe on {} in {}: +{:#x} ({}, emulated, {moved})",
            probe.functions.join("/"),
            probe.library,
            probe.offset,
            probe.instruction
        );
        assert!(
            output.stderr.contains(&line),
            "-v has no line {line:?}; stderr:\n{}",
            output.stderr
        );
    }
}

/// musl's calloc calls malloc, its memalign, valloc and reallocarray
/// tail-call aligned_alloc and realloc: each allocation is counted once, at
/// the call the program made, and no free is taken for an unknown block.
fn leaky_musl(kind: Kind, libc_suffix: &str) {
    if !root_or_skip() {
        return;
    }
    let report = leaky_c_through(kind, "musl (/");
    let dump = describe_report(&report);
    assert!(
        report.target.allocator.ends_with(libc_suffix),
        "allocator {:?}, expected it to end with {libc_suffix:?}\n{dump}",
        report.target.allocator
    );
    // Every allocation after the go line seen once, and every free: the
    // fixture frees all but the leaks. musl hands a block that realloc
    // released to the next thread that asks, even before realloc returns:
    // realloc's old block leaves the books at its entry, so that block's new
    // owner is never taken for it (when it left at the return, this saw 11-16
    // frees of unknown blocks a run).
    let stats = &report.stats;
    assert_eq!(stats.allocs, stats.frees + report.totals.count, "{dump}");
    assert_eq!(stats.frees_unknown, 0, "{dump}");
    assert_eq!(report.stats.return_without_entry, 0, "{dump}");
    assert_eq!(report.stats.pending_stale, 0, "{dump}");
    assert!(report.stats.nested_calls > 0, "calloc calls malloc\n{dump}");
    assert_no_allocator_frames(&report, |f| {
        [
            "malloc",
            "calloc",
            "realloc",
            "reallocarray",
            "posix_memalign",
            "aligned_alloc",
            "memalign",
            "valloc",
            "__libc_malloc_impl",
            "__libc_realloc",
        ]
        .contains(&f)
    });
}

#[test]
fn musl() {
    // The interpreter /lib/ld-musl-x86_64.so.1 is musl's libc.so (Debian:
    // a link to /usr/lib/x86_64-linux-musl/libc.so, the path in the maps).
    leaky_musl(Kind::LeakyMusl, "/libc.so)");
}

#[test]
fn musl_statically_linked() {
    let exe = Kind::LeakyMuslStatic.path().unwrap();
    leaky_musl(Kind::LeakyMuslStatic, &format!("({})", exe.display()));
}

/// A Rust program whose global allocator is jemalloc with the `_rjem_`
/// prefix, inside its executable: every Rust allocation goes through
/// `_rjem_malloc`, `_rjem_calloc`, `_rjem_realloc`, `_rjem_mallocx` or
/// `_rjem_rallocx` and every free through `_rjem_sdallocx`, while
/// `libc::malloc` still reaches glibc's: both are probed.
#[test]
fn rust_with_jemalloc_as_global_allocator() {
    if !root_or_skip() {
        return;
    }
    assert_rust_fixture_has_frame_pointers();
    let report = profile_json(Kind::LeakyRustJemalloc);
    assert_ground_truth(&report, Kind::LeakyRustJemalloc);
    let dump = describe_report(&report);
    let exe = Kind::LeakyRustJemalloc.path().unwrap();
    let allocator = &report.target.allocator;
    assert!(
        allocator.starts_with(&format!("jemalloc (_rjem_* in {}) and /", exe.display()))
            && allocator.ends_with("/libc.so.6"),
        "allocator {allocator:?}\n{dump}"
    );
    // The churn's frees all reached a probed function: allocations and
    // frees balance, less what is outstanding (std frees a few blocks it
    // allocated before the go line: frees_unknown).
    let stats = &report.stats;
    assert_eq!(stats.allocs, stats.frees + report.totals.count, "{dump}");
    assert_no_allocator_frames(&report, |f| f.starts_with("_rjem_") || f == "malloc");
}

/// C++: every leak at its function (frames[0], not operator new), nothing
/// from the new/delete churn (each allocation seen once, not again in
/// malloc, and freed once), no delete taken for a leak.
fn leaky_cxx(kind: Kind, allocator: &str) {
    if !root_or_skip() {
        return;
    }
    let report = profile_json(kind);
    assert_ground_truth(&report, kind);
    let dump = describe_report(&report);
    assert_eq!(report.stats.frees_unknown, 0, "{dump}");
    assert!(report.target.allocator.starts_with(allocator), "{dump}");
}

#[test]
fn cxx_new_from_libstdcxx() {
    leaky_cxx(Kind::LeakyCxx, "/");
}

#[test]
fn cxx_new_from_tcmalloc() {
    leaky_cxx(Kind::LeakyCxxTcmalloc, "tcmalloc (");
}

#[test]
fn cxx_new_from_mimalloc() {
    leaky_cxx(Kind::LeakyCxxMimalloc, "mimalloc (");
}
