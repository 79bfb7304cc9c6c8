//! What one uprobe costs on this kernel, by the instruction it replaces: the figures that decide
//! what memprof can cost a server whatever its BPF programs do. `xtask/bench/traps.c` calls a
//! function that starts with one kind of instruction in a loop, unprobed and under a bpftrace
//! uprobe (or uretprobe) whose program only counts; the difference is the probe's cost per call.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use super::{find_bpftrace, median, CFLAGS};
use crate::cmd;

/// Calls per run: a single-stepped probe costs tens of microseconds on a virtual machine.
const CALLS: u64 = 200_000;
const QUICK_CALLS: u64 = 50_000;

/// (the function's first instruction, the probe, what the row says).
const CASES: [(&str, &str, &str); 6] = [
    (
        "push",
        "uprobe",
        "`push %rbp`: emulated (memprof's probe on glibc's malloc)",
    ),
    (
        "jcc",
        "uprobe",
        "`jne`: emulated (memprof's probes moved to a first branch: jemalloc's and glibc's free)",
    ),
    (
        "mov",
        "uprobe",
        "`mov %rdi,%rax`: single-stepped out of line (a probe left at such an entry)",
    ),
    (
        "ret",
        "uprobe",
        "`ret`: single-stepped (a probe on a function's `ret` instead of a return probe)",
    ),
    (
        "push",
        "uretprobe",
        "`push %rbp` with a return probe (the entry's trap, then the return's)",
    ),
    (
        "nop5",
        "uprobe",
        "a 5-byte nop: the kernel turns the probe into a call (optimized uprobe)",
    ),
];

pub(super) fn run(dir: &Path, rounds: u32, quick: bool) -> Result<()> {
    let bpftrace = match find_bpftrace() {
        Ok(path) => path,
        Err(reason) => {
            println!(
                "\n==> the cost of one trap: left out, bpftrace is not usable here ({reason})"
            );
            return Ok(());
        }
    };
    let bin = dir.join("traps");
    cmd::step(
        "compile traps",
        Command::new("gcc")
            .args(CFLAGS)
            .arg("-o")
            .arg(&bin)
            .arg(cmd::root().join("xtask/bench/traps.c")),
    )?;
    let calls = if quick { QUICK_CALLS } else { CALLS };
    println!(
        "\n==> the cost of one uprobe on this kernel, by the instruction it replaces: {calls} \
         calls of a function that starts with it, unprobed and under bpftrace (a program that \
         only counts), {rounds} round(s)"
    );
    // Per case: (unprobed, probed) ns per call, per round.
    let mut figures: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); CASES.len()];
    for _ in 0..rounds {
        for (case, (kind, probe, _)) in CASES.iter().enumerate() {
            let none = ns_per_call(Command::new(&bin).arg(kind).arg(calls.to_string()))?;
            let script = format!(
                "{probe}:{}:f_{kind} {{ @n = count(); }} END {{ clear(@n); }}",
                bin.display()
            );
            let probed = ns_per_call(Command::new(&bpftrace).args([
                "-q",
                "-e",
                &script,
                "-c",
                &format!("{} {kind} {calls}", bin.display()),
            ]))?;
            figures[case].0.push(none);
            figures[case].1.push(probed);
        }
    }
    println!("\n| probed instruction | ns per call, unprobed | probed | the probe's cost, ns |");
    println!("|---|---:|---:|---:|");
    for ((_, _, what), (none, probed)) in CASES.iter().zip(&figures) {
        let (none, probed) = (median(none), median(probed));
        let cost = match (none, probed) {
            (Some(none), Some(probed)) => format!("{:.0}", probed - none),
            _ => "-".to_string(),
        };
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        println!("| {what} | {} | {} | {cost} |", cell(none), cell(probed));
    }
    Ok(())
}

/// Runs `cmd` (the workload, perhaps under bpftrace) and reads its `N ns per call` line.
fn ns_per_call(cmd: &mut Command) -> Result<f64> {
    let out = cmd::output(cmd)?;
    parse(&out).with_context(|| format!("no `ns per call` line in: {out}"))
}

fn parse(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|line| line.trim().strip_suffix(" ns per call"))
        .and_then(|ns| ns.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_time_per_call() {
        assert_eq!(
            super::parse("Attaching 2 probes...\n1504.2 ns per call\n"),
            Some(1504.2)
        );
        assert_eq!(super::parse("nothing"), None);
    }
}
