//! The stack-walk section of `cargo xtask bench`: what one frame of a walk costs, from unwind
//! tables (`--unwind dwarf`, on a program built without frame pointers) next to the
//! frame-pointer walk (`--unwind fp`, on the same program built with them), in the same rounds;
//! what `--unwind auto` costs the program with frame pointers; and the kernel memory and build
//! time of the tables of a real process (Debian's python3).
//!
//! The workload is `xtask/bench/deep.c`: churn.c's malloc/free pairs from the bottom of a
//! recursion, at a stack 2 and 10 frames deep; the cost per frame is the difference over the
//! 8 frames between them. Two figures per run: the workload's wall time per pair (traps
//! included, and whatever else the machine runs), and the CPU time memprof's BPF programs took
//! per pair, from the kernel's BPF statistics (`kernel.bpf_stats_enabled`, switched on for the
//! section): the walk's own cost, steady on a busy machine.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{fmt_ns, median, ratio, Memprof, Workload};
use crate::cmd;

/// The two depths measured: the cost per frame is the difference over the frames between.
const SHALLOW: u32 = 2;
const DEEP: u32 = 10;
/// What deep.c leaks, once per thread, from the bottom of its recursion.
const LEAK_FUNCTION: &str = "churn_here";
const LEAK_BYTES: u64 = 2 * 1000;

/// One configuration of the section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    /// deep.c built with frame pointers.
    fp_build: bool,
    /// memprof's `--unwind`, or None: unprofiled.
    unwind: Option<&'static str>,
    depth: u32,
    /// Run by the `--baseline` memprof.
    baseline: bool,
}

const RUNS: [Run; 7] = [
    Run {
        fp_build: true,
        unwind: None,
        depth: DEEP,
        baseline: false,
    },
    Run {
        fp_build: true,
        unwind: Some("fp"),
        depth: SHALLOW,
        baseline: false,
    },
    Run {
        fp_build: true,
        unwind: Some("fp"),
        depth: DEEP,
        baseline: false,
    },
    Run {
        fp_build: false,
        unwind: Some("dwarf"),
        depth: SHALLOW,
        baseline: false,
    },
    Run {
        fp_build: false,
        unwind: Some("dwarf"),
        depth: DEEP,
        baseline: false,
    },
    Run {
        fp_build: true,
        unwind: Some("auto"),
        depth: SHALLOW,
        baseline: false,
    },
    Run {
        fp_build: true,
        unwind: Some("auto"),
        depth: DEEP,
        baseline: false,
    },
];

impl Run {
    fn binary(self) -> &'static str {
        if self.fp_build {
            "deep-fp"
        } else {
            "deep-nofp"
        }
    }

    fn label(self) -> String {
        let label = match self.unwind {
            None => format!("{} unprofiled, depth {}", self.binary(), self.depth),
            Some(unwind) => format!(
                "{} `--unwind {unwind}`, depth {}",
                self.binary(),
                self.depth
            ),
        };
        if self.baseline {
            label + " (baseline)"
        } else {
            label
        }
    }
}

/// Builds deep.c both ways and measures every [`RUNS`] entry `rounds` times, round-robin; with
/// a `baseline` memprof, its `--unwind fp` and `dwarf` runs too.
pub(super) fn run(
    dir: &Path,
    memprof: &Path,
    baseline: Option<&Path>,
    rounds: u32,
    pairs: u64,
) -> Result<()> {
    let mut runs = RUNS.to_vec();
    if baseline.is_some() {
        runs.extend(
            RUNS.iter()
                .filter(|r| matches!(r.unwind, Some("fp" | "dwarf")))
                .map(|r| Run {
                    baseline: true,
                    ..*r
                }),
        );
    }
    let source = cmd::root().join("xtask/bench/deep.c");
    for (name, flag) in [
        ("deep-fp", "-fno-omit-frame-pointer"),
        ("deep-nofp", "-fomit-frame-pointer"),
    ] {
        cmd::step(
            &format!("compile {name}"),
            Command::new("gcc")
                .args(["-O2", "-g", flag, "-pthread", "-o"])
                .arg(dir.join(name))
                .arg(&source),
        )?;
    }
    println!(
        "\n==> stack walks: deep.c, 2 threads x {pairs} malloc/free pairs from a stack {SHALLOW} \
         and {DEEP} frames deep, {rounds} round(s)"
    );
    let stats = BpfStats::enable();
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut bpf: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut walked: Vec<String> = vec![String::new(); runs.len()];
    for round in 1..=rounds {
        let mut line = format!("round {round}/{rounds}:");
        for (i, run) in runs.iter().enumerate() {
            let bin = match (run.baseline, baseline) {
                (true, Some(baseline)) => baseline,
                _ => memprof,
            };
            let (took, bpf_ns, check) = one(dir, bin, *run, pairs, round)
                .with_context(|| format!("round {round}, {}", run.label()))?;
            ns[i].push(took);
            if let Some(b) = bpf_ns {
                bpf[i].push(b);
            }
            if let Some(check) = check {
                walked[i] = check;
            }
            line.push_str(&format!(" {}", fmt_ns(took)));
        }
        println!("{line}");
    }
    drop(stats);
    let med: Vec<Option<f64>> = ns.iter().map(|v| median(v)).collect();
    let bpf_med: Vec<Option<f64>> = bpf.iter().map(|v| median(v)).collect();
    let find = |unwind: Option<&str>, depth: u32| {
        runs.iter()
            .position(|r| r.unwind == unwind && r.depth == depth && !r.baseline)
            .and_then(|i| med[i])
    };
    let find_bpf = |unwind: &str, depth: u32| {
        runs.iter()
            .position(|r| r.unwind == Some(unwind) && r.depth == depth && !r.baseline)
            .and_then(|i| bpf_med[i])
    };
    let none = find(None, DEEP);
    println!(
        "\n| run | median ns/pair | x unprofiled | BPF ns/pair | BPF x fp, same depth | the leak's stack |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for (i, run) in runs.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            run.label(),
            med[i].map(fmt_ns).unwrap_or_else(|| "-".into()),
            ratio(med[i], none),
            bpf_med[i].map(fmt_ns).unwrap_or_else(|| "-".into()),
            ratio(bpf_med[i], find_bpf("fp", run.depth)),
            if walked[i].is_empty() {
                "-"
            } else {
                &walked[i]
            }
        );
    }
    let per_frame = |unwind: &str| {
        let (shallow, deep) = (find(Some(unwind), SHALLOW)?, find(Some(unwind), DEEP)?);
        Some((deep - shallow) / f64::from(DEEP - SHALLOW))
    };
    let cost = |unwind: &str| Some(find(Some(unwind), DEEP)? - none?);
    println!();
    for unwind in ["fp", "dwarf", "auto"] {
        println!(
            "per frame, `--unwind {unwind}`: {} ns; memprof's cost per pair at depth {DEEP}: {} ns",
            per_frame(unwind).map(fmt_ns).unwrap_or_else(|| "-".into()),
            cost(unwind).map(fmt_ns).unwrap_or_else(|| "-".into()),
        );
    }
    println!(
        "tables (no frame pointers) / frame pointers, at depth {DEEP}: {} per pair, {} of memprof's \
         cost, {} per frame; auto on the frame-pointer build / fp: {} per pair",
        ratio(find(Some("dwarf"), DEEP), find(Some("fp"), DEEP)),
        ratio(cost("dwarf"), cost("fp")),
        ratio(per_frame("dwarf"), per_frame("fp")),
        ratio(find(Some("auto"), DEEP), find(Some("fp"), DEEP)),
    );
    let bpf_per_frame = |unwind: &str| {
        Some((find_bpf(unwind, DEEP)? - find_bpf(unwind, SHALLOW)?) / f64::from(DEEP - SHALLOW))
    };
    for unwind in ["fp", "dwarf", "auto"] {
        println!(
            "BPF time, `--unwind {unwind}`: {} ns per pair at depth {DEEP}, {} ns per frame",
            find_bpf(unwind, DEEP)
                .map(fmt_ns)
                .unwrap_or_else(|| "-".into()),
            bpf_per_frame(unwind)
                .map(fmt_ns)
                .unwrap_or_else(|| "-".into()),
        );
    }
    println!(
        "BPF time, tables / frame pointers at depth {DEEP}: {} per pair, {} per frame; auto on \
         the frame-pointer build / fp: {} per pair",
        ratio(find_bpf("dwarf", DEEP), find_bpf("fp", DEEP)),
        ratio(bpf_per_frame("dwarf"), bpf_per_frame("fp")),
        ratio(find_bpf("auto", DEEP), find_bpf("fp", DEEP)),
    );
    tables_of_python(dir, memprof)
}

/// One run: ns per pair, memprof's BPF ns per pair, and (profiled) how the leak's stack was
/// walked.
fn one(
    dir: &Path,
    memprof: &Path,
    run: Run,
    pairs: u64,
    round: u32,
) -> Result<(f64, Option<f64>, Option<String>)> {
    let pairs = if run.unwind.is_none() {
        pairs * super::NONE_SCALE
    } else {
        pairs
    };
    let mut workload = Workload::start(
        &dir.join(run.binary()),
        &[pairs.to_string(), run.depth.to_string()],
    )?;
    let json = dir.join("reports").join(format!(
        "{}-{}-{}{}.json",
        run.binary(),
        run.unwind.unwrap_or("none"),
        run.depth,
        if run.baseline { "-baseline" } else { "" }
    ));
    let tracer = match run.unwind {
        Some(unwind) => Some(Memprof::attach(
            memprof,
            workload.pid,
            &["--unwind", unwind],
            &json,
        )?),
        None => None,
    };
    workload.go()?;
    let ns = workload.wait_done()?;
    let bpf_ns = tracer
        .as_ref()
        .and_then(|m| bpf_run_time_ns(m.proc.pid))
        .map(|t| t as f64 / (2 * pairs) as f64);
    let check = match tracer {
        Some(memprof) => {
            let stopped = memprof.stop()?;
            let check = leak_stack(&stopped.report, run.depth);
            if round == 1 && !check.starts_with('✓') {
                println!("    note: {}: the leak's stack: {check}", run.label());
            }
            Some(check)
        }
        None => None,
    };
    workload.finish()?;
    Ok((ns, bpf_ns, check))
}

/// `kernel.bpf_stats_enabled` on while it lives, as it was after.
struct BpfStats(Option<String>);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> BpfStats {
        let old = fs::read_to_string(BPF_STATS).ok();
        if fs::write(BPF_STATS, "1").is_err() {
            println!("note: cannot switch on {BPF_STATS}: no BPF time figures");
        }
        BpfStats(old)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = fs::write(BPF_STATS, old.trim());
        }
    }
}

/// The CPU time the BPF programs of process `pid` have run, from their fdinfo (0 unless
/// `kernel.bpf_stats_enabled` was on).
fn bpf_run_time_ns(pid: libc::pid_t) -> Option<u64> {
    let mut total = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let Ok(entry) = entry else { continue };
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(info) else {
            continue;
        };
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("run_time_ns:")?.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (total > 0).then_some(total)
}

/// Whether the report holds deep.c's leak, whole: its bytes, and a stack from `churn_here` to
/// `thread_main` with every `descend` between.
fn leak_stack(report: &Value, depth: u32) -> String {
    let Some(stacks) = report["stacks"].as_array() else {
        return "✗ no stacks in the report".into();
    };
    let names = |s: &Value| -> Vec<String> {
        s["frames"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|f| f["function"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let leak: Vec<&Value> = stacks
        .iter()
        .filter(|s| names(s).iter().any(|n| n == LEAK_FUNCTION))
        .collect();
    let bytes: u64 = leak.iter().filter_map(|s| s["bytes"].as_u64()).sum();
    let Some(stack) = leak.first() else {
        return format!("✗ no stack through {LEAK_FUNCTION}");
    };
    let names = names(stack);
    let descends = names.iter().filter(|n| *n == "descend").count() as u32;
    let whole = names.iter().any(|n| n == "thread_main") && descends == depth.saturating_sub(2);
    format!(
        "{} {} B, {} frames{}",
        if whole && bytes == LEAK_BYTES {
            "✓"
        } else {
            "✗"
        },
        bytes,
        names.len(),
        if whole {
            ""
        } else {
            " (not down to thread_main)"
        }
    )
}

/// Attaches memprof (default `--unwind`) to an idle python3 and prints what its unwind tables
/// took: the log line memprof writes when it detaches.
fn tables_of_python(dir: &Path, memprof: &Path) -> Result<()> {
    let Ok(python) = which("python3.11").or_else(|_| which("python3")) else {
        println!("unwind tables of python3: python3 is not installed; left out");
        return Ok(());
    };
    let script = "import os, sys\n\
                  sys.stdout.write(f'ready {os.getpid()}\\n'); sys.stdout.flush()\n\
                  sys.stdin.readline()\n\
                  sys.stdout.write('done 0\\n'); sys.stdout.flush()\n\
                  sys.stdin.read()\n";
    let mut workload = Workload::start(&python, &["-c".to_string(), script.to_string()])?;
    let json = dir.join("reports").join("python-tables.json");
    let tracer = Memprof::attach(memprof, workload.pid, &[], &json)?;
    workload.go()?;
    workload.wait_done()?;
    let stopped = tracer.stop()?;
    workload.finish()?;
    match stopped
        .log
        .iter()
        .find_map(|l| l.split_once("unwind tables: "))
    {
        Some((_, what)) => println!("unwind tables of {} at attach: {what}", python.display()),
        None => println!("unwind tables of {}: memprof logged none", python.display()),
    }
    Ok(())
}

/// The resolved path of `name` in /usr/bin or on PATH (Debian's own before a user's shims).
fn which(name: &str) -> Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(std::path::PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .map(|p| fs::canonicalize(&p).unwrap_or(p))
        .with_context(|| format!("{name} is not on PATH"))
}
