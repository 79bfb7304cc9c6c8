//! Long runs. Against a process that churns, keeps meeting new call stacks
//! and leaks at a steady pace: memprof's memory stays flat, no event is
//! lost, and the report is exact at the end. System-wide while short-lived
//! processes come and go, each exiting with blocks outstanding from many
//! distinct stacks, beside a leaker with a known ground truth: the leaker is
//! exact, nothing is dropped, and memprof's memory and the maps' use stay
//! flat. CI runs each for 30 s; `cargo xtask soak` runs them for ten minutes
//! (`MEMPROF_SOAK_SECS`). Needs root (run through `cargo xtask test`).

use std::fs;
use std::time::{Duration, Instant};

use tests::{
    check_leaks, check_no_loss, describe_report, leak, root_or_skip, say, Fixture, Kind, Memprof,
    Report, ATTACH_TIMEOUT, DONE_TIMEOUT, FINISH_TIMEOUT,
};

/// soak.c leaks this many 1000-byte blocks per second of its run.
const LEAKS_PER_SEC: u64 = 20;
const LEAK_BYTES: u64 = 1000;
/// Room for fewer stacks than the run meets (200 new ones a second).
const MAX_STACKS: &str = "1024";
/// How much memprof's resident memory may grow between the first sample
/// and the end: a leak of even a few bytes per event would pass it within
/// seconds (the churn makes about a million events a second).
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

fn run_secs() -> u64 {
    std::env::var("MEMPROF_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// `VmRSS` of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User plus system CPU time of a process, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz as f64)
}

#[test]
fn a_long_run_stays_bounded_and_exact() {
    if !root_or_skip() {
        return;
    }
    let secs = run_secs();
    let mut fixture = Fixture::spawn_with(Kind::Soak, &[], &[&secs.to_string()]);
    let pid = fixture.pid().to_string();
    let mut memprof = Memprof::spawn(&["-p", &pid, "--format", "json", "--max-stacks", MAX_STACKS]);
    memprof.wait_attached(ATTACH_TIMEOUT);
    fixture.go();
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(SAMPLE_EVERY);
        if let Some(kib) = rss_kib(memprof.pid()) {
            rss.push((started.elapsed().as_secs(), kib));
        }
    }
    fixture.wait_done(Duration::from_secs(120));
    let cpu = cpu_secs(memprof.pid());
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let report = output.report();
    let dump = describe_report(&report);
    let status = fixture.finish(Duration::from_secs(10));
    assert!(status.success(), "the soak fixture failed: {status}");

    let series: Vec<String> = rss.iter().map(|(t, kib)| format!("{t}s:{kib}")).collect();
    say(&format!(
        "long run of {secs} s: memprof RSS (KiB) {}; CPU {:.1} s; {} allocs, {} frees, {} stacks \
         freed",
        series.join(" "),
        cpu.unwrap_or(f64::NAN),
        report.stats.allocs,
        report.stats.frees,
        report.stats.stacks_freed
    ));
    let problems = check_no_loss(&report.stats);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
    let count = secs * LEAKS_PER_SEC;
    let problems = check_leaks(
        &report,
        &[leak("soak_leak", count, count * LEAK_BYTES)],
        &["churn_worker", "transient_alloc"],
        Some(1),
    );
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
    assert!(report.stats.stacks_freed > 0, "{dump}");
    if let (Some(&(_, first)), Some(&(_, last))) = (rss.first(), rss.last()) {
        assert!(
            last <= first + RSS_GROWTH_LIMIT_KIB,
            "memprof's RSS grew from {first} KiB to {last} KiB: {series:?}"
        );
    }
}

/// How much memprof's resident memory may exceed, in the second half of a
/// system-wide run, its most in the first half.
const SYSTEM_RSS_SLACK_KIB: u64 = 8 * 1024;
/// How many entries a map may hold, in the second half of a system-wide
/// run, above its most in the first half: a few of the spawner's children
/// (512 blocks and stacks each), plus what the machine's other processes
/// start or stop holding meanwhile.
const SYSTEM_MAP_SLACK: u64 = 8 * 1024;

/// The most of `values` in their first half and in their second half.
fn halves_max(values: &[u64]) -> (u64, u64) {
    let (first, second) = values.split_at(values.len() / 2);
    (
        first.iter().copied().max().unwrap_or(0),
        second.iter().copied().max().unwrap_or(0),
    )
}

/// The numbers `-v` prints each second, in order, from lines that contain
/// `marker` followed by the number (`stacks: 1234 in AGG`, `LIVE held 5678
/// blocks`).
fn logged_counts(stderr: &str, marker: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|line| line.split_once(marker))
        .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Whether the report holds `pid` with exactly `kind`'s ground truth, every
/// leak under its own function: the problems found.
fn check_process_exact(report: &Report, pid: u32, kind: Kind) -> Vec<String> {
    let Some(process) = report.processes.iter().find(|p| p.pid == pid) else {
        return vec![format!("pid {pid} is not in the report")];
    };
    let truth = kind.truth();
    let mut problems = Vec::new();
    if process.exited {
        problems.push(format!("pid {pid} is reported as exited"));
    }
    if process.totals != truth.total() {
        problems.push(format!(
            "pid {pid} holds {:?}, expected {:?}",
            process.totals,
            truth.total()
        ));
    }
    let mine = Report {
        stacks: report
            .stacks
            .iter()
            .filter(|s| s.pid == Some(pid))
            .cloned()
            .collect(),
        totals: process.totals,
        ..report.clone()
    };
    problems.extend(truth.check_leaks(&mine));
    problems
}

#[test]
fn a_system_wide_run_with_short_lived_processes_stays_flat() {
    if !root_or_skip() {
        return;
    }
    let secs = run_secs();
    let sample_every = Duration::from_secs((secs / 60).max(1));
    let mut leaky = Fixture::spawn(Kind::Leaky);
    let mut spawner = Fixture::spawn(Kind::Spawner);
    let mut memprof = Memprof::spawn(&["-v", "--format", "json", "--top", "0"]);
    // Not `wait_attached`: with -v, lines about probes attached come before
    // recording starts.
    memprof.wait_line("recording until Ctrl-C", ATTACH_TIMEOUT);
    spawner.go();
    leaky.go();
    leaky.wait_done(DONE_TIMEOUT);
    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(sample_every);
        if let Some(kib) = rss_kib(memprof.pid()) {
            rss.push((started.elapsed().as_secs(), kib));
        }
    }
    let cpu = cpu_secs(memprof.pid());
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let leaky_pid = leaky.pid();
    assert!(leaky.finish(DONE_TIMEOUT).success());
    assert!(spawner.finish(DONE_TIMEOUT).success());
    let report = output.report();
    let dump = describe_report(&report);

    let rss_kib: Vec<u64> = rss.iter().map(|&(_, kib)| kib).collect();
    let stacks = logged_counts(&output.stderr, "stacks: ");
    let live = logged_counts(&output.stderr, "LIVE held ");
    let series: Vec<String> = rss.iter().map(|(t, kib)| format!("{t}s:{kib}")).collect();
    let (rss_first, rss_second) = halves_max(&rss_kib);
    let (stacks_first, stacks_second) = halves_max(&stacks);
    let (live_first, live_second) = halves_max(&live);
    say(&format!(
        "system-wide run of {secs} s: memprof RSS (KiB) {}; CPU {:.1} s; most in the first and \
         second halves: RSS {rss_first} / {rss_second} KiB, stacks in AGG {stacks_first} / \
         {stacks_second}, blocks in LIVE {live_first} / {live_second}; {} allocs, {} frees, {} \
         stacks freed, {} blocks released at exit",
        series.join(" "),
        cpu.unwrap_or(f64::NAN),
        report.stats.allocs,
        report.stats.frees,
        report.stats.stacks_freed,
        report.released.at_exit.count
    ));
    let stats = &report.stats;
    assert_eq!(
        (
            stats.live_map_full,
            stats.stack_map_full,
            stats.pending_map_full
        ),
        (0, 0, 0),
        "allocations dropped\n{dump}"
    );
    let problems = check_process_exact(&report, leaky_pid, Kind::Leaky);
    assert!(problems.is_empty(), "{problems:#?}\n{dump}");
    // The children's blocks went with them, during the run.
    assert!(report.stats.stacks_freed > 0, "{dump}");
    assert!(
        rss_kib.len() >= 4,
        "too few samples of memprof's RSS: {series:?}"
    );
    assert!(
        stacks.len() >= 4 && live.len() >= 4,
        "memprof -v printed too few counts of the maps: stacks {stacks:?}, LIVE {live:?}"
    );
    assert!(
        rss_second <= rss_first + SYSTEM_RSS_SLACK_KIB,
        "memprof's RSS grew: {series:?}"
    );
    assert!(
        stacks_second <= stacks_first + SYSTEM_MAP_SLACK,
        "the stacks in AGG grew: {stacks:?}"
    );
    assert!(
        live_second <= live_first + SYSTEM_MAP_SLACK,
        "the blocks in LIVE grew: {live:?}"
    );
}
