//! No exit path leaves memprof's BPF programs (and so its uprobes) in the
//! kernel: a run that ends by --duration, SIGINT, SIGTERM, an error after the
//! probes were attached, or SIGKILL. Checked in the kernel's list of loaded
//! programs. Needs root (run through `cargo xtask test`).

use std::time::{Duration, Instant};

use tests::{root_or_skip, send_signal, Fixture, Kind, Memprof, ATTACH_TIMEOUT, FINISH_TIMEOUT};

/// How many of memprof's entry programs the kernel holds (one per run).
fn loaded_memprof_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("malloc_enter"))
        .count()
}

/// Waits until the kernel has freed the programs of exited runs (freeing a
/// program whose last file descriptor was closed is deferred a little).
fn assert_back_to(baseline: usize, how: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = loaded_memprof_programs();
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

#[test]
fn every_exit_path_unloads_the_probes() {
    if !root_or_skip() {
        return;
    }
    let fixture = Fixture::spawn(Kind::Leaky);
    let pid = fixture.pid().to_string();
    let baseline = loaded_memprof_programs();

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
        args.extend_from_slice(extra);
        let mut memprof = Memprof::spawn(&args);
        memprof.wait_attached(ATTACH_TIMEOUT);
        assert_eq!(
            loaded_memprof_programs(),
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
        assert_back_to(baseline, how);
    }
}
