//! A long run against a process that churns, keeps meeting new call stacks
//! and leaks at a steady pace: memprof's memory stays flat, no event is
//! lost, and the report is exact at the end. CI runs it for 30 s; `cargo
//! xtask soak` runs it for ten minutes (`MEMPROF_SOAK_SECS`). Needs root
//! (run through `cargo xtask test`).

use std::fs;
use std::time::{Duration, Instant};

use tests::{
    check_leaks, check_no_loss, describe_report, leak, root_or_skip, say, Fixture, Kind, Memprof,
    ATTACH_TIMEOUT, FINISH_TIMEOUT,
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
