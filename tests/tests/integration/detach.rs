//! No exit path leaves memprof's BPF programs (and so its uprobes) in the
//! kernel: a run that ends by --duration, SIGINT, SIGTERM, an error after the
//! probes were attached, or SIGKILL; with full tracking (uprobe_multi links)
//! and with `--sample-rate` (uprobe session links, made and closed all along
//! with `--sample-by window`). Checked in the kernel's
//! list of loaded programs. Full tracking records the same through the
//! uprobe_multi links as through the perf-event uprobes it falls back to.
//! Needs root (run through `cargo xtask test`).

use std::time::{Duration, Instant};

use aya::programs::links::LinkType;
use tests::{
    assert_ground_truth, root_or_skip, sampling_or_skip, send_signal, Fixture, Kind, Memprof,
    ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT,
};

/// How many programs named `program` the kernel holds (memprof loads one per run).
fn loaded_programs(program: &str) -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(program))
        .count()
}

/// Waits until the kernel has freed the programs of exited runs (freeing a
/// program whose last file descriptor was closed is deferred a little).
fn assert_back_to(program: &str, baseline: usize, how: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = loaded_programs(program);
        if now == baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after memprof ended by {how}, {now} memprof programs are still loaded (baseline {baseline})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The types of the kernel's links whose program is named `program`.
fn link_types(program: &str) -> Vec<LinkType> {
    let ids: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(program))
        .map(|p| p.id())
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|link| ids.contains(&link.program_id()))
        .filter_map(|link| link.link_type().ok())
        .collect()
}

#[test]
fn full_tracking_records_the_same_through_both_kinds_of_uprobe() {
    if !root_or_skip() {
        return;
    }
    let kinds: [(&[&str], LinkType); 2] = [
        (&[], LinkType::UProbeMulti),
        (&["env", "MEMPROF_PERF_UPROBES=1"], LinkType::PerfEvent),
    ];
    for (wrapper, expected) in kinds {
        let mut fixture = Fixture::spawn(Kind::Leaky);
        let pid = fixture.pid().to_string();
        let mut memprof = Memprof::spawn_with(wrapper, &["-p", &pid, "--format", "json"]);
        memprof.wait_attached(ATTACH_TIMEOUT);
        // One link per program with every site of it, or one per probe.
        let links = link_types("malloc_enter");
        assert!(
            !links.is_empty() && links.iter().all(|t| *t == expected),
            "{wrapper:?}: the links of malloc_enter are {links:?}, not all {expected:?}"
        );
        fixture.go();
        fixture.wait_done(DONE_TIMEOUT);
        memprof.interrupt();
        let output = memprof.finish(FINISH_TIMEOUT);
        output.assert_success();
        assert_ground_truth(&output.report(), Kind::Leaky);
        let status = fixture.finish(Duration::from_secs(10));
        assert!(status.success(), "leaky did not exit cleanly: {status}");
    }
}

#[test]
fn every_exit_path_unloads_the_probes() {
    if root_or_skip() {
        check_every_exit_path(&[], "malloc_enter");
    }
}

#[test]
fn every_exit_path_of_a_sampled_run_unloads_the_probes() {
    if sampling_or_skip() {
        check_every_exit_path(&["--sample-rate", "16"], "malloc_sampled");
    }
}

#[test]
fn every_exit_path_of_a_run_sampled_by_window_unloads_the_probes() {
    if sampling_or_skip() {
        // A window every 2 ms x 4 = 8 ms or so: links are made and closed all along.
        check_every_exit_path(
            &["--sample-rate", "4", "--sample-by", "window"],
            "alloc_windowed",
        );
    }
}

/// Ends memprof, run with `mode` and recognised by its `program`, by each exit
/// path in turn, and checks the kernel's list of programs after each.
fn check_every_exit_path(mode: &[&str], program: &str) {
    let fixture = Fixture::spawn(Kind::Leaky);
    let pid = fixture.pid().to_string();
    let baseline = loaded_programs(program);

    type Ender = fn(&Memprof);
    let paths: [(&str, &[&str], Ender, bool); 5] = [
        ("--duration", &["--duration", "1"], |_| {}, true),
        ("SIGINT", &[], |m| send_signal(m.pid(), libc::SIGINT), true),
        (
            "SIGTERM",
            &[],
            |m| send_signal(m.pid(), libc::SIGTERM),
            true,
        ),
        (
            // Opens fine, fails on the first write: after the run.
            "an error after attaching (-o /dev/full)",
            &["--duration", "1", "-o", "/dev/full"],
            |_| {},
            false,
        ),
        (
            "SIGKILL",
            &[],
            |m| send_signal(m.pid(), libc::SIGKILL),
            false,
        ),
    ];
    for (how, extra, end, succeeds) in paths {
        let mut args = vec!["-p", pid.as_str(), "--format", "json"];
        args.extend_from_slice(mode);
        args.extend_from_slice(extra);
        let mut memprof = Memprof::spawn(&args);
        memprof.wait_attached(ATTACH_TIMEOUT);
        assert_eq!(
            loaded_programs(program),
            baseline + 1,
            "memprof attached but its programs are not loaded ({how})"
        );
        end(&memprof);
        let output = memprof.finish(FINISH_TIMEOUT);
        assert_eq!(
            output.status.success(),
            succeeds,
            "exit status after {how}: {:?}\n{}",
            output.status,
            output.stderr
        );
        assert_back_to(program, baseline, how);
    }
}
