//! The cost of Python frames: ns per allocation of a CPython loop
//! (Debian's python3.11, `bytes(1000)` kept in a short list, so each is a
//! malloc and a free) unprofiled, under memprof with native stacks only
//! (`--no-python`) and with the Python frames, in full tracking and
//! sampled 1 in 64 (`--sample-rate 64`). `cargo xtask bench --python-only`
//! runs this section alone.

use super::*;

/// The interpreter measured (installed by `cargo xtask setup`).
const PYTHON: &str = "/usr/bin/python3.11";

/// The workload: the bench protocol (`ready <pid>`, a line, `done <ns>`, EOF).
const WORKLOAD: &str = r#"
import os, sys, time
def work(n):
    kept = []
    for _ in range(n):
        kept.append(bytes(1000))
        if len(kept) == 100:
            kept = []
n = int(sys.argv[1])
os.write(1, b"ready %d\n" % os.getpid())
sys.stdin.readline()
start = time.perf_counter_ns()
work(n)
os.write(1, b"done %d\n" % (time.perf_counter_ns() - start))
sys.stdin.read()
"#;

/// The modes: a name and memprof's flags (None: not profiled).
const MODES: [(&str, Option<&[&str]>); 5] = [
    ("unprofiled", None),
    ("native stacks", Some(&["--no-python"])),
    ("Python frames", Some(&[])),
    (
        "sampled native",
        Some(&["--no-python", "--sample-rate", "64"]),
    ),
    ("sampled Python", Some(&["--sample-rate", "64"])),
];

/// Allocations per run.
pub(super) fn allocs(quick: bool) -> u64 {
    if quick {
        20_000
    } else {
        200_000
    }
}

/// Runs the section: `rounds` rounds of every mode, `allocs` allocations each.
pub(super) fn run(bench_dir: &Path, memprof: &Path, rounds: u32, allocs: u64) -> Result<()> {
    println!(
        "\n==> Python: {PYTHON} allocating bytes(1000) in a loop, {allocs} allocations, \
         {rounds} round(s)"
    );
    if !Path::new(PYTHON).exists() {
        println!("{PYTHON} is not installed: section skipped (cargo xtask setup installs it)");
        return Ok(());
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    for round in 1..=rounds {
        let mut line = format!("round {round}/{rounds}:");
        for (i, (name, flags)) in MODES.iter().enumerate() {
            let per = one_run(bench_dir, memprof, *flags, allocs)
                .with_context(|| format!("Python round {round}, {name}"))?;
            ns[i].push(per);
            let _ = write!(line, " {name} {}", fmt_ns(per));
        }
        println!("{line}");
    }
    let medians: Vec<Option<f64>> = ns.iter().map(|v| median(v)).collect();
    println!("{:<16} {:>12}", "mode", "ns/alloc");
    for ((name, _), m) in MODES.iter().zip(&medians) {
        println!("{name:<16} {:>12}", m.map(fmt_ns).unwrap_or_default());
    }
    println!(
        "Python frames cost {} the native-stack run's time per allocation ({} the unprofiled run's)",
        ratio(medians[2], medians[1]),
        ratio(medians[2], medians[0])
    );
    println!(
        "sampled 1 in 64: Python frames cost {} the native-stack run's time ({} the unprofiled run's)",
        ratio(medians[4], medians[3]),
        ratio(medians[4], medians[0])
    );
    Ok(())
}

/// One run of the workload; ns per allocation (with its free).
fn one_run(dir: &Path, memprof: &Path, flags: Option<&[&str]>, allocs: u64) -> Result<f64> {
    let json = dir.join("reports").join("python.json");
    let args = vec!["-c".to_string(), WORKLOAD.to_string(), allocs.to_string()];
    let mut process = Workload::start(Path::new(PYTHON), &args)?;
    let attached = match flags {
        Some(flags) => Some(Memprof::attach(memprof, process.pid, flags, &json)?),
        None => None,
    };
    process.go()?;
    let ns = process.wait_done()?;
    if let Some(memprof) = attached {
        memprof.stop()?;
    }
    process.finish()?;
    Ok(ns / allocs as f64)
}
