//! `cargo xtask bench`: what memprof costs a program that allocates, measured side by side with
//! the cost of its traps alone, with probes at function entry, and with bpftrace; and memprof's
//! own memory and the time it takes to report.
//!
//! The workloads are C programs in `xtask/bench/` that speak one protocol: print `ready <pid>`,
//! wait for a line on stdin, do their work, print `done <ns>` (their own timing of the work),
//! then wait for EOF on stdin, so the profiler reports while the process still lives.
//!
//! Within a round every mode runs once, in turn (round-robin), so a slow spell of the machine
//! touches every mode alike; the table shows medians over rounds. Speed is reported, never
//! asserted. memprof and bpftrace are never attached at the same time: two tracers holding
//! uprobes at one address with different reference counter offsets make the second attach fail.
//!
//! Then [`python`] measures the Python frames of a CPython loop, and a last section
//! ([`servers`]) real servers, Debian's redis-server and nginx.

use std::{
    fmt::Write as _,
    fs,
    io::{self, BufRead as _, BufReader, Read, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    cmd::{self, is_root},
    demo::{die_with_xtask, interrupt, ready_pid},
    setup,
};

mod python;
mod servers;
mod traps;
mod unwind;

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Rounds; each runs every mode once, in turn, and the table shows medians over rounds
    /// [default: 5, with --quick 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// malloc/free pairs per thread of the churn workload under the profilers (the unprofiled
    /// run makes 4x as many, the probe-at-entry runs a tenth) [default: 500000, with --quick 50000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(10..))]
    pub pairs: Option<u64>,
    /// A smoke run: one round, fewer pairs, fewer requests to the servers.
    #[arg(long)]
    pub quick: bool,
    /// Only the real-server section (redis-server, nginx).
    #[arg(long)]
    pub servers_only: bool,
    /// Only the stack-walk section (the cost per frame of each `--unwind`).
    #[arg(long, conflicts_with = "servers_only")]
    pub unwind_only: bool,
    /// Only the Python section (ns per allocation of a CPython loop, with and without Python
    /// frames).
    #[arg(long, conflicts_with_all = ["servers_only", "unwind_only"])]
    pub python_only: bool,
    /// Another memprof binary (an earlier build, say), measured beside this one in the
    /// stack-walk and real-server sections, in the same rounds.
    #[arg(long, value_name = "PATH")]
    pub baseline: Option<PathBuf>,
}

const DEFAULT_ROUNDS: u32 = 5;
const DEFAULT_PAIRS: u64 = 500_000;
const QUICK_PAIRS: u64 = 50_000;
/// The unprofiled run makes this many times more pairs, so it lasts long enough to time (~0.2 s).
const NONE_SCALE: u64 = 4;
/// The probe-at-entry runs make this many times fewer pairs: each pair costs them ~10x more.
const ENTRY_DIVISOR: u64 = 10;

/// Built with frame pointers, so every profiler can walk the workloads' stacks.
const CFLAGS: &[&str] = &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"];
const WORKLOADS: &[&str] = &["churn", "live", "stacks"];

/// What churn.c leaks in `bench_leak`, after its churn.
const LEAK_FUNCTION: &str = "bench_leak";
const LEAK_COUNT: u64 = 100;
const LEAK_SIZE: u64 = 1000;
/// The sampled mode records 1 allocation call in this many.
const SAMPLE_RATE: u64 = 64;
const SAMPLE_RATE_ARG: &str = "64";
/// How many standard deviations a sampled estimate of the leak may be off: a
/// 1-in-N estimate of n blocks has a standard deviation of sqrt(n (N - 1)).
const SAMPLE_SIGMAS: f64 = 5.0;
/// What live.c holds: this many blocks of 16 bytes, from `hold_live`.
const LIVE_ALLOCS: u64 = 1_000_000;
const LIVE_SIZE: u64 = 16;
const LIVE_MAX_LIVE: &str = "1100000";
/// stacks.c leaks once from this many distinct call stacks, through `left` and `right`.
const STACKS_LEAVES: u64 = 10_000;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
const REPORT_TIMEOUT: Duration = Duration::from_secs(300);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// memprof logs `attached` just before it installs its SIGINT handler: it gets at least this
/// long before it is sent SIGINT.
const MIN_ATTACHED: Duration = Duration::from_millis(100);
/// bpftrace prints `Attaching N probes...` before it attaches them: the attach is taken as done
/// once it holds N perf events and has opened no other for this long.
const BPFTRACE_SETTLE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Modes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No profiler.
    None,
    /// `memprof --floor --probe-at-entry`.
    FloorEntry,
    /// `memprof --floor`.
    Floor,
    /// `memprof --probe-at-entry`.
    FullEntry,
    /// `memprof`.
    Full,
    /// `memprof --no-peak`: the allocation profile's counters, no peak.
    FullNoPeak,
    /// `memprof --no-peak --temporary-ms 0`: neither the peak nor temporaries.
    FullBare,
    /// `memprof --sample-rate 64`.
    Sampled,
    /// `memprof --sample-rate 64 --sample-by window`.
    Windowed,
    /// A memleak-style bpftrace script.
    Bpftrace,
}

/// The order of the modes within a round.
const MODES: [Mode; 10] = [
    Mode::None,
    Mode::FloorEntry,
    Mode::Floor,
    Mode::FullEntry,
    Mode::Full,
    Mode::FullNoPeak,
    Mode::FullBare,
    Mode::Sampled,
    Mode::Windowed,
    Mode::Bpftrace,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::FloorEntry => "floor-entry",
            Mode::Floor => "floor",
            Mode::FullEntry => "full-entry",
            Mode::Full => "full",
            Mode::FullNoPeak => "full-no-peak",
            Mode::FullBare => "full-bare",
            Mode::Sampled => "sampled",
            Mode::Windowed => "windowed",
            Mode::Bpftrace => "bpftrace",
        }
    }

    /// The letter the brief and the ratios use.
    fn label(self) -> &'static str {
        match self {
            Mode::None => "(a)",
            Mode::FloorEntry => "(b')",
            Mode::Floor => "(b)",
            Mode::FullEntry => "(c')",
            Mode::Full => "(c)",
            Mode::FullNoPeak => "(c-p)",
            Mode::FullBare => "(c-pt)",
            Mode::Sampled => "(d)",
            Mode::Windowed => "(d')",
            Mode::Bpftrace => "(e)",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Mode::None => "no profiler",
            Mode::FloorEntry => {
                "`memprof --floor --probe-at-entry`: the traps alone, probes at entry"
            }
            Mode::Floor => "`memprof --floor`: the traps alone, memprof's probe placement",
            Mode::FullEntry => "`memprof --probe-at-entry`",
            Mode::Full => "`memprof`",
            Mode::FullNoPeak => {
                "`memprof --no-peak`: no event log for the peak (the allocation counters stay)"
            }
            Mode::FullBare => {
                "`memprof --no-peak --temporary-ms 0`: neither the peak nor temporaries counted"
            }
            Mode::Sampled => "`memprof --sample-rate 64`: 1 allocation call in 64 recorded",
            Mode::Windowed => {
                "`memprof --sample-rate 64 --sample-by window`: every call in 2 ms windows \
                 covering 1/64 of the run"
            }
            Mode::Bpftrace => "bpftrace, memleak-style script",
        }
    }

    /// memprof's flags in this mode, or `None` when memprof does not run.
    fn memprof_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Mode::None | Mode::Bpftrace => None,
            Mode::FloorEntry => Some(&["--floor", "--probe-at-entry"]),
            Mode::Floor => Some(&["--floor"]),
            Mode::FullEntry => Some(&["--probe-at-entry"]),
            Mode::Full => Some(&[]),
            Mode::FullNoPeak => Some(&["--no-peak"]),
            Mode::FullBare => Some(&["--no-peak", "--temporary-ms", "0"]),
            Mode::Sampled => Some(&["--sample-rate", SAMPLE_RATE_ARG]),
            Mode::Windowed => Some(&["--sample-rate", SAMPLE_RATE_ARG, "--sample-by", "window"]),
        }
    }

    /// Pairs per thread in this mode, from the `--pairs` base.
    fn pairs(self, base: u64) -> u64 {
        match self {
            Mode::None => base * NONE_SCALE,
            Mode::FloorEntry | Mode::FullEntry => (base / ENTRY_DIVISOR).max(1),
            Mode::Floor
            | Mode::Full
            | Mode::FullNoPeak
            | Mode::FullBare
            | Mode::Sampled
            | Mode::Windowed
            | Mode::Bpftrace => base,
        }
    }

    /// Whether this mode records allocations, so its report must hold the known leak.
    fn checks_leak(self) -> bool {
        matches!(
            self,
            Mode::FullEntry
                | Mode::Full
                | Mode::FullNoPeak
                | Mode::FullBare
                | Mode::Sampled
                | Mode::Windowed
                | Mode::Bpftrace
        )
    }

    fn sampled(self) -> bool {
        matches!(self, Mode::Sampled | Mode::Windowed)
    }
}

/// What a report said about churn.c's known leak.
#[derive(Clone, Debug, PartialEq)]
enum LeakCheck {
    Exact,
    /// A sampled report's estimate, within [`SAMPLE_SIGMAS`] standard deviations.
    Estimated {
        count: u64,
    },
    Wrong {
        count: u64,
        bytes: u64,
        stacks: usize,
    },
}

impl LeakCheck {
    fn new(count: u64, bytes: u64, stacks: usize) -> Self {
        if count == LEAK_COUNT && bytes == LEAK_COUNT * LEAK_SIZE {
            LeakCheck::Exact
        } else {
            LeakCheck::Wrong {
                count,
                bytes,
                stacks,
            }
        }
    }

    /// A sampled report's check: `count` blocks of `LEAK_SIZE` bytes each (to the
    /// rounding of a fractional `scale`), within [`SAMPLE_SIGMAS`] standard deviations of
    /// the truth for a report that multiplied what it recorded by `scale`.
    fn sampled(count: u64, bytes: u64, stacks: usize, scale: f64) -> Self {
        if bytes.abs_diff(count * LEAK_SIZE) < LEAK_SIZE
            && count.abs_diff(LEAK_COUNT) as f64 <= sampled_bound(scale)
        {
            LeakCheck::Estimated { count }
        } else {
            LeakCheck::Wrong {
                count,
                bytes,
                stacks,
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            LeakCheck::Exact => format!("{LEAK_COUNT} x {LEAK_SIZE} B"),
            LeakCheck::Estimated { count } => format!("~{count} x {LEAK_SIZE} B"),
            LeakCheck::Wrong {
                count,
                bytes,
                stacks,
            } => format!("{count} allocations, {bytes} B in {stacks} stacks"),
        }
    }
}

/// One mode's numbers over the rounds.
struct ModeResults {
    mode: Mode,
    pairs: u64,
    ns_per_pair: Vec<f64>,
    leak: Vec<LeakCheck>,
}

impl ModeResults {
    fn median(&self) -> Option<f64> {
        median(&self.ns_per_pair)
    }

    /// The table's ✓/✗ cell: ✓ only if every round's report was exact (sampled:
    /// within the stated error).
    fn leak_cell(&self) -> String {
        if !self.mode.checks_leak() {
            return "-".into();
        }
        if self.mode.sampled() && !self.leak.is_empty() {
            let estimates: Vec<String> = self.leak.iter().map(LeakCheck::describe).collect();
            let ok = self
                .leak
                .iter()
                .all(|check| matches!(check, LeakCheck::Estimated { .. }));
            return format!(
                "{} estimates {} (1 in {SAMPLE_RATE}: within {SAMPLE_SIGMAS} sd = ±{:.0} blocks \
                 of {LEAK_COUNT} expected)",
                mark(ok),
                estimates.join(", "),
                sampled_bound(SAMPLE_RATE as f64)
            );
        }
        let wrong: Vec<String> = self
            .leak
            .iter()
            .enumerate()
            .filter(|(_, check)| **check != LeakCheck::Exact)
            .map(|(round, check)| format!("round {}: {}", round + 1, check.describe()))
            .collect();
        match (self.leak.is_empty(), wrong.is_empty()) {
            (true, _) => "-".into(),
            (false, true) => format!("✓ ({}/{} rounds)", self.leak.len(), self.ns_per_pair.len()),
            (false, false) => format!(
                "✗ expected {LEAK_COUNT} x {LEAK_SIZE} B; {}",
                wrong.join("; ")
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Bench {
    dir: PathBuf,
    memprof: PathBuf,
    bpftrace: Option<PathBuf>,
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    interrupt::catch().context("cannot install the Ctrl-C handler")?;
    if !is_root() {
        bail!(
            "cargo xtask bench needs root: memprof and bpftrace attach uprobes, and the bench \
             reads memprof's /proc/PID/fdinfo. Run it as root (e.g. `sudo -E cargo xtask bench`)"
        );
    }
    let rounds = args
        .rounds
        .unwrap_or(if args.quick { 1 } else { DEFAULT_ROUNDS });
    let pairs = args.pairs.unwrap_or(if args.quick {
        QUICK_PAIRS
    } else {
        DEFAULT_PAIRS
    });

    setup::run()?;
    let built = cmd::build_release_memprof()?;
    let target = cmd::target_dir();
    let dir = target.join("bench");
    fs::create_dir_all(dir.join("reports"))
        .with_context(|| format!("cannot create {}", dir.join("reports").display()))?;
    // Every run uses this copy, so a build of memprof during the bench cannot swap binaries
    // between rounds.
    let memprof = dir.join("memprof");
    if memprof.symlink_metadata().is_ok() {
        // Replaced, not overwritten: a leftover memprof may still run the old file.
        fs::remove_file(&memprof)
            .with_context(|| format!("cannot remove {}", memprof.display()))?;
    }
    fs::copy(&built, &memprof)
        .with_context(|| format!("cannot copy {} to {}", built.display(), memprof.display()))?;
    let (server_dir, server_memprof) = (dir.clone(), memprof.clone());
    let servers = servers::Setup {
        dir: &server_dir,
        memprof: &server_memprof,
        baseline: args.baseline.as_deref(),
        rounds,
        quick: args.quick,
    };
    if args.servers_only {
        return servers::run(&servers);
    }
    if args.unwind_only {
        return unwind::run(&dir, &memprof, args.baseline.as_deref(), rounds, pairs);
    }
    if args.python_only {
        return python::run(&dir, &memprof, rounds, python::allocs(args.quick));
    }
    for name in WORKLOADS {
        let source = cmd::root().join(format!("xtask/bench/{name}.c"));
        cmd::step(
            &format!("compile {name}"),
            Command::new("gcc")
                .args(CFLAGS)
                .arg("-o")
                .arg(dir.join(name))
                .arg(&source),
        )?;
    }
    let bpftrace = match find_bpftrace() {
        Ok(path) => {
            println!("bpftrace: {}", path.display());
            Some(path)
        }
        Err(reason) => {
            println!("bpftrace: not installable here ({reason}); its column is left out");
            None
        }
    };
    let mut bench = Bench {
        dir,
        memprof,
        bpftrace,
    };

    println!(
        "==> churn: 2 threads x malloc/free pairs of 16 B..4 KiB, {rounds} round(s), \
         {pairs} pairs per thread under the profilers; load average {}",
        load_average()
    );
    let mut results: Vec<ModeResults> = MODES
        .iter()
        .map(|&mode| ModeResults {
            mode,
            pairs: mode.pairs(pairs),
            ns_per_pair: Vec::new(),
            leak: Vec::new(),
        })
        .collect();
    for round in 1..=rounds {
        let mut line = format!("round {round}/{rounds}:");
        for result in &mut results {
            if result.mode == Mode::Bpftrace && bench.bpftrace.is_none() {
                continue;
            }
            match bench.churn(result.mode, result.pairs, round) {
                Ok((ns, leak)) => {
                    result.ns_per_pair.push(ns);
                    if let Some(leak) = leak {
                        result.leak.push(leak);
                    }
                    let _ = write!(line, " {} {}", result.mode.name(), fmt_ns(ns));
                }
                Err(err) if result.mode == Mode::Bpftrace && !interrupt::happened() => {
                    println!("bpftrace: failed ({err:#}); its column is left out");
                    bench.bpftrace = None;
                    result.ns_per_pair.clear();
                }
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("round {round}, mode {}", result.mode.name()))
                }
            }
        }
        println!("{line}");
    }
    results.retain(|r| !r.ns_per_pair.is_empty());
    println!("load average after the rounds: {}", load_average());
    print_churn(&results, rounds, pairs);

    println!("\n==> memprof's own cost: memory, and the time from SIGINT to its exit");
    let live = bench
        .memory_run(
            "live",
            &["--max-live", LIVE_MAX_LIVE],
            &format!("{} live allocations", thousands(LIVE_ALLOCS)),
        )
        .context("the 1M live allocations run")?;
    let stacks = bench
        .memory_run(
            "stacks",
            &[],
            &format!("{} leaking stacks", thousands(STACKS_LEAVES)),
        )
        .context("the 10,000 stacks run")?;
    print_memory(&[live, stacks]);
    python::run(
        &bench.dir,
        &bench.memprof,
        rounds,
        python::allocs(args.quick),
    )?;
    unwind::run(
        &bench.dir,
        &bench.memprof,
        args.baseline.as_deref(),
        rounds,
        pairs,
    )?;
    servers::run(&servers)
}

impl Bench {
    /// One run of churn.c in `mode`: its ns per pair, and what the report said of the known leak.
    fn churn(&self, mode: Mode, pairs: u64, round: u32) -> Result<(f64, Option<LeakCheck>)> {
        let mut workload = Workload::start(&self.dir.join("churn"), &[pairs.to_string()])?;
        let json = self
            .dir
            .join("reports")
            .join(format!("churn-{}.json", mode.name()));
        let mut tracer = match (mode, mode.memprof_flags()) {
            (_, Some(flags)) => Some(Tracer::Memprof(Memprof::attach(
                &self.memprof,
                workload.pid,
                flags,
                &json,
            )?)),
            (Mode::Bpftrace, None) => {
                let bin = self
                    .bpftrace
                    .as_deref()
                    .context("bpftrace is not available")?;
                let script = self.dir.join("memleak.bt");
                Some(Tracer::Bpftrace(Bpftrace::attach(
                    bin,
                    workload.pid,
                    &script,
                )?))
            }
            _ => None,
        };
        workload.go()?;
        let ns = workload.wait_done()?;
        let leak = match tracer.take() {
            Some(Tracer::Memprof(memprof)) => {
                let stopped = memprof.stop()?;
                mode.checks_leak()
                    .then(|| match mode {
                        Mode::Sampled | Mode::Windowed => sampled_leak_in_report(&stopped.report),
                        _ => leak_in_report(&stopped.report),
                    })
                    .transpose()
                    .with_context(|| format!("reading {}", json.display()))?
            }
            Some(Tracer::Bpftrace(bpftrace)) => Some(bpftrace.stop()?),
            None => None,
        };
        workload.finish()?;
        if let Some(LeakCheck::Wrong { .. }) = &leak {
            println!(
                "    note: round {round}, {}: the known leak is reported as {} \
                 (expected {LEAK_COUNT} x {LEAK_SIZE} B{})",
                mode.name(),
                leak.as_ref().map(LeakCheck::describe).unwrap_or_default(),
                if mode.sampled() {
                    format!(" within ±{:.0} blocks", sampled_bound(SAMPLE_RATE as f64))
                } else {
                    String::new()
                }
            );
        }
        Ok((ns, leak))
    }

    /// A run of a workload under plain memprof that measures memprof itself.
    fn memory_run(&self, workload: &str, memprof_args: &[&str], title: &str) -> Result<MemoryRun> {
        let json = self.dir.join("reports").join(format!("{workload}.json"));
        let mut process = Workload::start(&self.dir.join(workload), &[])?;
        let memprof = Memprof::attach(&self.memprof, process.pid, memprof_args, &json)?;
        process.go()?;
        process.wait_done()?;
        let rss_attached_kib = proc_status_kib(memprof.proc.pid, "VmRSS")?;
        let bpf_memlock = bpf_map_memlock(memprof.proc.pid)?;
        let stopped = memprof.stop()?;
        process.finish()?;
        let check = match workload {
            "live" => check_live(&stopped.report),
            _ => check_stacks(&stopped.report),
        }
        .with_context(|| format!("reading {}", json.display()))?;
        let run = MemoryRun {
            title: title.to_string(),
            rss_attached_kib,
            peak_rss_kib: stopped.peak_rss_kib,
            bpf_memlock,
            report_time: stopped.report_time,
            check,
        };
        println!(
            "{title}: peak RSS {}, BPF maps {}, SIGINT to exit {:.2} s; {}",
            fmt_kib(run.peak_rss_kib),
            fmt_bytes(run.bpf_memlock),
            run.report_time.as_secs_f64(),
            run.check
        );
        Ok(run)
    }
}

struct MemoryRun {
    title: String,
    rss_attached_kib: u64,
    peak_rss_kib: u64,
    bpf_memlock: u64,
    report_time: Duration,
    check: String,
}

// ---------------------------------------------------------------------------------------------
// Output

fn print_churn(results: &[ModeResults], rounds: u32, pairs: u64) {
    let none = find(results, Mode::None).and_then(ModeResults::median);
    println!(
        "\n==> churn: median of {rounds} round(s); ns per pair = the churn's wall time / the pairs both threads made \
         (they run at once; {} CPUs here)\n",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| mode | what runs | pairs/thread | median ns/pair | x none | reports the known leak exactly |"
    );
    println!("|---|---|---:|---:|---:|---|");
    for result in results {
        let median = result.median();
        println!(
            "| {} {} | {} | {} | {} | {} | {} |",
            result.mode.label(),
            result.mode.name(),
            result.mode.what(),
            thousands(result.pairs),
            median.map(fmt_ns).unwrap_or_else(|| "-".into()),
            ratio(median, none),
            result.leak_cell()
        );
    }

    let median = |mode| find(results, mode).and_then(ModeResults::median);
    let full = median(Mode::Full);
    println!();
    for (what, value) in [
        (
            "(c)/(b)  full / floor: the BPF work on top of the traps",
            ratio(full, median(Mode::Floor)),
        ),
        (
            "(c)/(a)  full / none: memprof's slowdown of this workload",
            ratio(full, none),
        ),
        (
            "(d)/(a)  sampled / none: memprof's slowdown with --sample-rate 64",
            ratio(median(Mode::Sampled), none),
        ),
        (
            "(c)/(d)  full / sampled: how much cheaper sampling is",
            ratio(full, median(Mode::Sampled)),
        ),
        (
            "(d')/(a) sampled by window / none: memprof's slowdown with --sample-by window",
            ratio(median(Mode::Windowed), none),
        ),
        (
            "(c)/(d') full / sampled by window: how much cheaper sampling by window is",
            ratio(full, median(Mode::Windowed)),
        ),
        (
            "(d)/(b)  sampled / floor: sampling against the traps of full tracking",
            ratio(median(Mode::Sampled), median(Mode::Floor)),
        ),
        (
            "(c)/(c-pt) full / full-bare: the cost of the peak's event log and of counting temporaries",
            ratio(full, median(Mode::FullBare)),
        ),
        (
            "(c)/(c-p) full / full-no-peak: the cost of the peak's event log",
            ratio(full, median(Mode::FullNoPeak)),
        ),
        (
            "(c-p)/(c-pt) full-no-peak / full-bare: the cost of counting temporaries",
            ratio(median(Mode::FullNoPeak), median(Mode::FullBare)),
        ),
        (
            "(c')/(c) full-entry / full: placement gain",
            ratio(median(Mode::FullEntry), full),
        ),
        (
            "(b')/(b) floor-entry / floor: placement gain of the traps alone",
            ratio(median(Mode::FloorEntry), median(Mode::Floor)),
        ),
    ] {
        println!("{what}: {value}");
    }
    match median(Mode::Bpftrace) {
        Some(bpftrace) => println!("(c)/(e)  full / bpftrace: {}", ratio(full, Some(bpftrace))),
        None => println!("(c)/(e)  full / bpftrace: - (bpftrace did not run)"),
    }

    println!("\nraw ns/pair per round (pairs per thread: base {pairs}, none x{NONE_SCALE}, entry modes /{ENTRY_DIVISOR}):");
    for result in results {
        let values: Vec<String> = result.ns_per_pair.iter().map(|&ns| fmt_ns(ns)).collect();
        println!("  {:<12} {}", result.mode.name(), values.join("  "));
    }
}

fn print_memory(runs: &[MemoryRun]) {
    println!(
        "\n| run | memprof peak RSS (VmHWM) | RSS while attached | BPF maps (memlock) | SIGINT to exit | report |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for run in runs {
        println!(
            "| {} | {} | {} | {} | {:.2} s | {} |",
            run.title,
            fmt_kib(run.peak_rss_kib),
            fmt_kib(run.rss_attached_kib),
            fmt_bytes(run.bpf_memlock),
            run.report_time.as_secs_f64(),
            run.check
        );
    }
}

fn find(results: &[ModeResults], mode: Mode) -> Option<&ModeResults> {
    results.iter().find(|r| r.mode == mode)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            if r >= 10.0 {
                format!("{r:.0}x")
            } else {
                format!("{r:.2}x")
            }
        }
        _ => "-".into(),
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

fn fmt_kib(kib: u64) -> String {
    fmt_bytes(kib * 1024)
}

fn fmt_bytes(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.split_whitespace().take(3).collect();
            (fields.len() == 3).then(|| fields.join(" "))
        })
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// Reading reports

fn stacks(report: &Value) -> Result<&Vec<Value>> {
    report["stacks"]
        .as_array()
        .context("the report has no `stacks` array")
}

fn has_function(stack: &Value, names: &[&str]) -> bool {
    stack["frames"].as_array().is_some_and(|frames| {
        frames.iter().any(|f| {
            f["function"]
                .as_str()
                .is_some_and(|name| names.contains(&name))
        })
    })
}

/// The outstanding count and bytes of the stacks that pass through `names`, and how many.
fn held_by(report: &Value, names: &[&str]) -> Result<(u64, u64, usize)> {
    let mut total = (0, 0, 0);
    for stack in stacks(report)? {
        if has_function(stack, names) {
            total.0 += stack["count"].as_u64().context("a stack without `count`")?;
            total.1 += stack["bytes"].as_u64().context("a stack without `bytes`")?;
            total.2 += 1;
        }
    }
    Ok(total)
}

fn leak_in_report(report: &Value) -> Result<LeakCheck> {
    let (count, bytes, stacks) = held_by(report, &[LEAK_FUNCTION])?;
    Ok(LeakCheck::new(count, bytes, stacks))
}

/// [`SAMPLE_SIGMAS`] standard deviations of an estimate of [`LEAK_COUNT`] blocks that
/// recorded each with probability 1/`scale`: sqrt(n (scale - 1)) each. At 1 in 64 a 100-block
/// leak has about 1.6 blocks recorded, so the bound is wide (and includes 0). With
/// `--sample-by window` the leak's blocks are made PAIRS/50 pairs apart, far more than a
/// window lasts, so they are recorded one by one as well.
fn sampled_bound(scale: f64) -> f64 {
    SAMPLE_SIGMAS * (LEAK_COUNT as f64 * (scale - 1.0).max(0.0)).sqrt()
}

/// The leak in a sampled report, which must say it is sampled at [`SAMPLE_RATE`].
fn sampled_leak_in_report(report: &Value) -> Result<LeakCheck> {
    let rate = report["sampling"]["rate"].as_u64();
    if rate != Some(SAMPLE_RATE) {
        bail!("the report of a sampled run does not say 1-in-{SAMPLE_RATE} sampling: {rate:?}");
    }
    let scale = report["sampling"]["scale"]
        .as_f64()
        .filter(|&s| s > 0.0)
        .unwrap_or(SAMPLE_RATE as f64);
    let (count, bytes, stacks) = held_by(report, &[LEAK_FUNCTION])?;
    Ok(LeakCheck::sampled(count, bytes, stacks, scale))
}

fn stat(report: &Value, name: &str) -> u64 {
    report["stats"][name].as_u64().unwrap_or(0)
}

fn check_live(report: &Value) -> Result<String> {
    let (count, bytes, _) = held_by(report, &["hold_live"])?;
    let exact = count == LIVE_ALLOCS && bytes == LIVE_ALLOCS * LIVE_SIZE;
    Ok(format!(
        "{} {} x {LIVE_SIZE} B held by hold_live (live_map_full {})",
        mark(exact),
        thousands(count),
        thousands(stat(report, "live_map_full"))
    ))
}

fn check_stacks(report: &Value) -> Result<String> {
    let (count, _, stacks) = held_by(report, &["left", "right"])?;
    Ok(format!(
        "{} {} stacks (>= {} expected) holding {} of {} leaves; stack_lost {}",
        mark(stacks as u64 >= STACKS_LEAVES),
        thousands(stacks as u64),
        thousands(STACKS_LEAVES),
        thousands(count),
        thousands(STACKS_LEAVES),
        thousands(stat(report, "stack_lost"))
    ))
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

/// Parses bpftrace's dump of `@live` at exit: entries `@live[ADDR]: (SIZE, <stack lines>)`.
fn leak_in_bpftrace(lines: &[String]) -> LeakCheck {
    let (mut count, mut bytes, mut in_entry, mut entry_size, mut entry_leak) =
        (0, 0, false, 0, false);
    for line in lines {
        if let Some(rest) = line.strip_prefix("@live[") {
            in_entry = true;
            entry_leak = false;
            entry_size = rest
                .split_once("]: (")
                .and_then(|(_, value)| value.split(',').next())
                .and_then(|size| size.trim().parse::<u64>().ok())
                .unwrap_or(0);
        } else if in_entry && line.trim() == ")" {
            in_entry = false;
            if entry_leak {
                count += 1;
                bytes += entry_size;
            }
        } else if in_entry && line.trim().starts_with(LEAK_FUNCTION) {
            entry_leak = true;
        }
    }
    LeakCheck::new(count, bytes, usize::from(count > 0))
}

// ---------------------------------------------------------------------------------------------
// /proc

/// A `kB` field of /proc/PID/status, such as VmRSS.
fn proc_status_kib(pid: libc::pid_t, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .with_context(|| format!("{path} has no {field} line"))
}

/// The memory the kernel charges for the process's BPF maps: the `memlock:` lines of the
/// fdinfo of every fd that is a BPF map.
fn bpf_map_memlock(pid: libc::pid_t) -> Result<u64> {
    let fd_dir = format!("/proc/{pid}/fd");
    let mut total = 0;
    let entries = fs::read_dir(&fd_dir).with_context(|| format!("cannot list {fd_dir}"))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {fd_dir}"))?;
        // An fd closed since the listing has no link: skip it.
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:bpf-map" {
            continue;
        }
        let info_path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(&info_path) else {
            continue;
        };
        total += info
            .lines()
            .find_map(|line| line.strip_prefix("memlock:")?.trim().parse::<u64>().ok())
            .with_context(|| format!("{info_path} has no memlock line"))?;
    }
    Ok(total)
}

/// The perf events a process holds open (bpftrace holds one per attached probe).
fn perf_events(pid: libc::pid_t) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|link| link.as_os_str() == "anon_inode:[perf_event]")
                .count()
        })
        .unwrap_or(0)
}

/// The libc that `pid` maps, as the path /proc/PID/maps gives.
fn libc_path(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/maps");
    let maps = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|file| {
            let name = file.rsplit('/').next().unwrap_or(file);
            name.starts_with("libc.so") || (name.starts_with("libc-") && name.ends_with(".so"))
        })
        .map(str::to_string)
        .with_context(|| format!("pid {pid} maps no libc ({path})"))
}

// ---------------------------------------------------------------------------------------------
// bpftrace

/// bpftrace's path: on PATH, or installed once with apt-get. The error is the reason it is not.
fn find_bpftrace() -> std::result::Result<PathBuf, String> {
    let bin = match which::which("bpftrace") {
        Ok(path) => path,
        Err(_) => {
            if which::which("apt-get").is_err() {
                return Err("not on PATH, and no apt-get to install it".into());
            }
            println!("==> bpftrace is not on PATH: apt-get install -y bpftrace");
            cmd::output(
                Command::new("apt-get")
                    .args(["install", "-y", "bpftrace"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .map_err(|err| format!("{err:#}"))?;
            which::which("bpftrace")
                .map_err(|_| "apt-get installed bpftrace, but it is not on PATH".to_string())?
        }
    };
    // bpftrace needs tracefs.
    let tracing = Path::new("/sys/kernel/tracing");
    let empty = fs::read_dir(tracing)
        .map(|mut entries| entries.next().is_none())
        .map_err(|err| format!("cannot list {}: {err}", tracing.display()))?;
    if empty {
        println!("==> mount tracefs for bpftrace: mount -t tracefs nodev /sys/kernel/tracing");
        cmd::output(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
            .map_err(|err| format!("tracefs is not mounted and mounting it failed: {err:#}"))?;
    }
    Ok(bin)
}

/// The memleak-style script: malloc's size per thread at entry; at return the block's size
/// and stack in `@live` and per-stack sums; `free` deletes the block.
fn bpftrace_script(libc: &str, pid: u32) -> String {
    format!(
        "uprobe:{libc}:malloc /pid == {pid}/ {{ @size[tid] = arg0; }}\n\
         uretprobe:{libc}:malloc /pid == {pid}/ {{\n\
         \x20   $size = @size[tid];\n\
         \x20   @live[retval] = ($size, ustack);\n\
         \x20   @bytes[ustack] = sum($size);\n\
         \x20   delete(@size[tid]);\n\
         }}\n\
         uprobe:{libc}:free /pid == {pid}/ {{ delete(@live[arg0]); }}\n"
    )
}

struct Bpftrace {
    proc: Proc,
    out: Output,
}

impl Bpftrace {
    fn attach(bin: &Path, pid: u32, script_path: &Path) -> Result<Self> {
        let script = bpftrace_script(&libc_path(pid)?, pid);
        fs::write(script_path, script)
            .with_context(|| format!("cannot write {}", script_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p").arg(pid.to_string()).arg(script_path);
        let (proc, pipes) = spawn(&mut cmd, "bpftrace", false)?;
        let mut out = Output::new(vec![pipes.stdout, pipes.stderr]);
        let mut bpftrace = Bpftrace {
            proc,
            out: Output::empty(),
        };
        let probes = out.wait_for(
            &mut bpftrace.proc,
            ATTACH_TIMEOUT,
            "`Attaching N probes`",
            |line| {
                let rest = line.trim().strip_prefix("Attaching ")?;
                rest.split_whitespace().next()?.parse::<usize>().ok()
            },
        )?;
        bpftrace.out = out;
        // The probes are attached once their perf events are all open and no more come.
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let (mut seen, mut since) = (0, Instant::now());
        loop {
            let now = perf_events(bpftrace.proc.pid);
            if now != seen {
                (seen, since) = (now, Instant::now());
            } else if seen >= probes && since.elapsed() >= BPFTRACE_SETTLE {
                return Ok(bpftrace);
            }
            if let Some(exit) = bpftrace.proc.try_reap()? {
                bail!(
                    "bpftrace exited ({}) while attaching: {}",
                    exit.describe(),
                    bpftrace.out.tail()
                );
            }
            if interrupt::happened() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!(
                    "bpftrace attached only {seen} of {probes} probes within {}s",
                    ATTACH_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops bpftrace (SIGINT; it then prints its maps) and checks its `@live` for the leak.
    fn stop(mut self) -> Result<LeakCheck> {
        // bpftrace has been seen to miss a SIGINT: ask twice before the guard kills it.
        for _ in 0..2 {
            self.proc.signal(libc::SIGINT)?;
            if let Some(exit) = self.proc.wait_timeout(REPORT_TIMEOUT / 10)? {
                self.out.drain_until_closed(EXIT_TIMEOUT);
                if !exit.success() {
                    bail!("bpftrace failed ({}): {}", exit.describe(), self.out.tail());
                }
                return Ok(leak_in_bpftrace(&self.out.seen));
            }
        }
        bail!("bpftrace did not exit after SIGINT")
    }
}

// ---------------------------------------------------------------------------------------------
// memprof

struct Memprof {
    proc: Proc,
    /// Its stderr (the log) and stdout (the text report).
    out: Output,
    json: PathBuf,
    attached: Instant,
}

struct Stopped {
    report: Value,
    /// Every line memprof wrote (its log, then the text report).
    log: Vec<String>,
    /// From SIGINT to memprof's exit: detach, read the maps, symbolize, render.
    report_time: Duration,
    /// Peak RSS over memprof's life (VmHWM, as wait4's ru_maxrss).
    peak_rss_kib: u64,
}

impl Memprof {
    /// Starts memprof on `pid` and waits until it says `attached`.
    fn attach(bin: &Path, pid: u32, flags: &[&str], json: &Path) -> Result<Self> {
        if json.symlink_metadata().is_ok() {
            fs::remove_file(json).with_context(|| format!("cannot remove {}", json.display()))?;
        }
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(pid.to_string())
            .args(["--format", "json", "-o"])
            .arg(json)
            .args(flags);
        let (proc, pipes) = spawn(&mut cmd, "memprof", false)?;
        // stdout carries the text report: read it too, so memprof never writes to a closed pipe.
        let mut out = Output::new(vec![pipes.stderr, pipes.stdout]);
        let mut memprof = Memprof {
            proc,
            out: Output::empty(),
            json: json.to_path_buf(),
            attached: Instant::now(),
        };
        out.wait_for(&mut memprof.proc, ATTACH_TIMEOUT, "`attached`", |line| {
            line.contains("attached").then_some(())
        })?;
        memprof.out = out;
        memprof.attached = Instant::now();
        Ok(memprof)
    }

    /// SIGINT, then waits for the report.
    fn stop(mut self) -> Result<Stopped> {
        let since = self.attached.elapsed();
        if since < MIN_ATTACHED {
            thread::sleep(MIN_ATTACHED - since);
        }
        let start = Instant::now();
        self.proc.signal(libc::SIGINT)?;
        let exit = self.proc.wait_timeout(REPORT_TIMEOUT)?.with_context(|| {
            format!(
                "memprof did not exit within {}s of SIGINT",
                REPORT_TIMEOUT.as_secs()
            )
        })?;
        let report_time = start.elapsed();
        self.out.drain_until_closed(EXIT_TIMEOUT);
        if !exit.success() {
            bail!("memprof failed ({}): {}", exit.describe(), self.out.tail());
        }
        let text = fs::read_to_string(&self.json).with_context(|| {
            format!(
                "memprof succeeded but {} is unreadable",
                self.json.display()
            )
        })?;
        let report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", self.json.display()))?;
        Ok(Stopped {
            report,
            log: std::mem::take(&mut self.out.seen),
            report_time,
            peak_rss_kib: exit.max_rss_kib,
        })
    }
}

enum Tracer {
    Memprof(Memprof),
    Bpftrace(Bpftrace),
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// A running workload; dropping it kills and reaps it.
struct Workload {
    proc: Proc,
    stdin: Option<ChildStdin>,
    out: Output,
    pid: u32,
}

impl Workload {
    /// Starts the workload and waits for its `ready <pid>` line.
    fn start(bin: &Path, args: &[String]) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        let (proc, pipes) = spawn(&mut cmd, "workload", true)?;
        let mut out = Output::new(vec![pipes.stdout, pipes.stderr]);
        let mut workload = Workload {
            proc,
            stdin: pipes.stdin,
            out: Output::empty(),
            pid: 0,
        };
        workload.pid = out.wait_for(
            &mut workload.proc,
            READY_TIMEOUT,
            "`ready <pid>`",
            ready_pid,
        )?;
        workload.out = out;
        Ok(workload)
    }

    fn go(&mut self) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the workload's stdin is closed")?;
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .context("cannot send `go` to the workload")
    }

    /// Waits for `done <ns>` and returns the number.
    fn wait_done(&mut self) -> Result<f64> {
        self.out
            .wait_for(&mut self.proc, RUN_TIMEOUT, "`done <ns>`", |line| {
                line.trim()
                    .strip_prefix("done ")?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
    }

    /// Closes stdin (the workload then exits) and reaps it.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let exit = self
            .proc
            .wait_timeout(EXIT_TIMEOUT)?
            .context("the workload did not exit after its stdin was closed")?;
        if !exit.success() {
            bail!("the workload failed ({})", exit.describe());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// How a child ended.
#[derive(Clone, Copy, Debug)]
struct Exit {
    /// The raw wait status.
    status: libc::c_int,
    /// Its peak resident set size, in KiB (`ru_maxrss`, the same number as VmHWM).
    max_rss_kib: u64,
}

impl Exit {
    fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

/// A child process; dropping it kills (SIGKILL) and reaps it unless it was reaped already.
/// Reaped with wait4 rather than std's `Child`, for its peak RSS.
struct Proc {
    pid: libc::pid_t,
    name: &'static str,
    exit: Option<Exit>,
}

struct Pipes {
    stdin: Option<ChildStdin>,
    stdout: Option<Box<dyn Read + Send>>,
    stderr: Option<Box<dyn Read + Send>>,
}

/// Starts `cmd` in its own process group (Ctrl-C at the terminal reaches xtask only, whose
/// guards then stop the children), tied to xtask's life, with stdout and stderr piped and, for
/// a workload, stdin piped (else null).
fn spawn(cmd: &mut Command, name: &'static str, stdin: bool) -> Result<(Proc, Pipes)> {
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_xtask(cmd);
    let shown = cmd::display(cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let proc = Proc {
        pid: libc::pid_t::try_from(child.id()).context("pid out of range")?,
        name,
        exit: None,
    };
    let pipes = Pipes {
        stdin: child.stdin.take(),
        stdout: child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        stderr: child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    };
    // `child` is dropped without waiting (std neither kills nor reaps on drop): `proc` reaps.
    Ok((proc, pipes))
}

impl Proc {
    /// Reaps the child if it has exited.
    fn try_reap(&mut self) -> Result<Option<Exit>> {
        if self.exit.is_some() {
            return Ok(self.exit);
        }
        let mut status = 0;
        // SAFETY: rusage is plain integers, valid when zeroed.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals; the pid is our unreaped child.
        let reaped = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == self.pid {
            self.exit = Some(Exit {
                status,
                max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            });
            return Ok(self.exit);
        }
        if reaped == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(None);
        }
        Err(err).with_context(|| format!("cannot wait for {} (pid {})", self.name, self.pid))
    }

    /// Waits up to `timeout` for the child to exit, checking every millisecond.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Exit>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_reap()? {
                return Ok(Some(exit));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            if interrupt::happened() {
                bail!("interrupted");
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_reap()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped, so the pid
        // still names it.
        if unsafe { libc::kill(self.pid, signal) } == -1 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot signal {} (pid {})", self.name, self.pid));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        // SAFETY: as in `signal` and `try_reap`; a null rusage pointer is allowed.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            while libc::wait4(self.pid, &mut status, 0, std::ptr::null_mut()) == -1
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
    }
}

/// Lines from a child's pipes, read on threads (which keep draining, so the child never blocks
/// on a full pipe), with every line kept for error messages and parsing.
struct Output {
    rx: Option<Receiver<String>>,
    seen: Vec<String>,
}

impl Output {
    fn new(pipes: Vec<Option<Box<dyn Read + Send>>>) -> Self {
        let (tx, rx) = mpsc::channel();
        for pipe in pipes.into_iter().flatten() {
            let tx: Sender<String> = tx.clone();
            thread::spawn(move || {
                // A read error ends the stream like EOF; once the receiver is gone, lines are
                // drained and dropped.
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
        }
        Output {
            rx: Some(rx),
            seen: Vec::new(),
        }
    }

    fn empty() -> Self {
        Output {
            rx: None,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that `parse` accepts; fails if `proc` exits first or time runs out.
    fn wait_for<T>(
        &mut self,
        proc: &mut Proc,
        timeout: Duration,
        what: &str,
        mut parse: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let rx = self.rx.as_ref().context("no output to read")?;
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let parsed = parse(&line);
                    self.seen.push(line);
                    if let Some(value) = parsed {
                        return Ok(value);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let exit = proc.wait_timeout(EXIT_TIMEOUT)?;
                    let how = exit.map_or("closed its output".into(), |e| {
                        format!("exited ({})", e.describe())
                    });
                    bail!(
                        "{} {how} before printing {what}: {}",
                        proc.name,
                        self.tail()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    if interrupt::happened() {
                        bail!(
                            "interrupted while waiting for {} to print {what}",
                            proc.name
                        );
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "{} printed no {what} within {}s: {}",
                            proc.name,
                            timeout.as_secs(),
                            self.tail()
                        );
                    }
                }
            }
        }
    }

    /// Collects the remaining lines, until the pipes close or the timeout.
    fn drain_until_closed(&mut self, timeout: Duration) {
        let Some(rx) = &self.rx else { return };
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
    }

    /// The last lines seen, for an error message.
    fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(8);
        let lines = &self.seen[start..];
        if lines.is_empty() {
            "(no output)".into()
        } else {
            lines.join(" | ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(ratio(Some(50.0), Some(2.0)), "25x");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50x");
        assert_eq!(ratio(None, Some(2.0)), "-");
    }

    #[test]
    fn mode_pairs() {
        assert_eq!(Mode::None.pairs(500_000), 2_000_000);
        assert_eq!(Mode::Full.pairs(500_000), 500_000);
        assert_eq!(Mode::FullEntry.pairs(500_000), 50_000);
        assert_eq!(Mode::FloorEntry.pairs(5), 1);
    }

    #[test]
    fn finds_the_leak_in_a_report() {
        let report: Value = serde_json::json!({
            "stacks": [
                {"bytes": 100000, "count": 100,
                 "frames": [{"function": "bench_leak"}, {"function": "main"}]},
                {"bytes": 544, "count": 2, "frames": [{"function": "calloc"}]},
                {"bytes": 7, "count": 1, "frames": []},
            ]
        });
        assert_eq!(leak_in_report(&report).unwrap(), LeakCheck::Exact);
        let short: Value = serde_json::json!({
            "stacks": [{"bytes": 99000, "count": 99, "frames": [{"function": "bench_leak"}]}]
        });
        assert_eq!(
            leak_in_report(&short).unwrap(),
            LeakCheck::Wrong {
                count: 99,
                bytes: 99000,
                stacks: 1
            }
        );
        assert!(leak_in_report(&serde_json::json!({})).is_err());
    }

    #[test]
    fn checks_a_sampled_estimate_of_the_leak() {
        let report = |count: u64| {
            serde_json::json!({
                "sampling": {"rate": SAMPLE_RATE},
                "stacks": [{"bytes": count * LEAK_SIZE, "count": count,
                            "frames": [{"function": "bench_leak"}]}]
            })
        };
        assert_eq!(
            sampled_leak_in_report(&report(128)).unwrap(),
            LeakCheck::Estimated { count: 128 }
        );
        assert_eq!(
            sampled_leak_in_report(&report(0)).unwrap(),
            LeakCheck::Estimated { count: 0 }
        );
        // 5 x sqrt(100 x 63) = 396.9: 8 x 64 = 512 blocks is too far off, 7 x 64 is not.
        assert!(matches!(
            sampled_leak_in_report(&report(512)).unwrap(),
            LeakCheck::Wrong { .. }
        ));
        assert!(sampled_leak_in_report(&serde_json::json!({"stacks": []})).is_err());
        // By window: a fractional scale, bytes rounded apart from count x size.
        let windowed = serde_json::json!({
            "sampling": {"rate": SAMPLE_RATE, "method": "window", "scale": 70.4},
            "stacks": [{"bytes": 140_800, "count": 141,
                        "frames": [{"function": "bench_leak"}]}]
        });
        assert_eq!(
            sampled_leak_in_report(&windowed).unwrap(),
            LeakCheck::Estimated { count: 141 }
        );
    }

    #[test]
    fn finds_the_leak_in_bpftrace_output() {
        let mut lines = vec!["Attaching 3 probes...".to_string(), String::new()];
        lines.extend(
            ["@bytes[", "    bench_leak+26", "    main+342", "]: 100000"].map(String::from),
        );
        for i in 0..LEAK_COUNT {
            lines.push(format!("@live[{}]: ({LEAK_SIZE}, ", 9400 + i));
            lines.extend(["        bench_leak+26", "        main+342", ")"].map(String::from));
        }
        lines.extend(["@live[1]: (16, ", "        churn+55", ")"].map(String::from));
        assert_eq!(leak_in_bpftrace(&lines), LeakCheck::Exact);
        assert_eq!(
            leak_in_bpftrace(&lines[..lines.len() - 6]),
            LeakCheck::Wrong {
                count: LEAK_COUNT - 1,
                bytes: (LEAK_COUNT - 1) * LEAK_SIZE,
                stacks: 1
            }
        );
    }

    #[test]
    fn bpftrace_script_names_libc_and_pid() {
        let script = bpftrace_script("/usr/lib/x86_64-linux-gnu/libc.so.6", 42);
        assert!(script.contains("uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:malloc /pid == 42/"));
        assert!(script.contains("uretprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:malloc"));
        assert!(script.contains("@live[retval] = ($size, ustack);"));
        assert!(script.contains("uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:free"));
    }
}
