//! The real-server section of `cargo xtask bench`: what memprof costs servers people run, as
//! Debian packages them. Debian's `redis-server` (linked with jemalloc) under `redis-benchmark`,
//! and `nginx` (glibc's malloc) under `wrk`, both on 127.0.0.1 at a private port, started and
//! stopped here. Each round runs every mode once, in turn; the tables show medians.
//!
//! What memprof costs such a server is decided by where its probes sit: an instruction the kernel
//! emulates costs one trap, any other a trap and a single step. The section prints where each
//! probe went (the report's `probes`) and names the functions that have no emulated instruction
//! before their arguments change.

use std::{net::TcpListener, path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{
    load_average, mark, median, ratio, spawn, thousands, Memprof, Output, Proc, READY_TIMEOUT,
};
use crate::{cmd, demo::interrupt};

/// SET then GET, of values this large, through this many keys: as many as requests, so that
/// about 63% of the SETs make a new key and the blocks the server keeps were allocated
/// throughout the SET test, not in its last moments (sampling by window estimates the
/// former far better).
const REDIS_VALUE: u64 = 4096;
const REDIS_REQUESTS: u64 = 100_000;
const REDIS_KEYS: u64 = 100_000;
const QUICK_REDIS_REQUESTS: u64 = 20_000;
const QUICK_REDIS_KEYS: u64 = 20_000;
/// jemalloc serves a 4 KiB value plus its header from its 5 KiB size class: what the server
/// keeps lies between the values' bytes and this many bytes per key.
const REDIS_KEY_CEILING: u64 = 5120 + 512;
/// A sampled estimate may be off by this many standard errors.
const SIGMAS: f64 = 5.0;
/// The slowdowns aimed at: full tracking at most 2x the unprofiled server, sampling by
/// window at most 1.1x.
const FULL_GOAL: f64 = 2.0;
const WINDOWED_GOAL: f64 = 1.1;
/// How long wrk loads nginx in each run.
const WRK_SECONDS: u64 = 5;
const QUICK_WRK_SECONDS: u64 = 2;

/// memprof's modes in this section, in the order of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    None,
    Full,
    Windowed,
    Floor,
    WindowedFloor,
}

const MODES: [Mode; 5] = [
    Mode::None,
    Mode::Full,
    Mode::Windowed,
    Mode::Floor,
    Mode::WindowedFloor,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Full => "full",
            Mode::Windowed => "windowed",
            Mode::Floor => "floor",
            Mode::WindowedFloor => "windowed-floor",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Mode::None => "no profiler",
            Mode::Full => "`memprof`",
            Mode::Windowed => "`memprof --sample-rate 64 --sample-by window`",
            Mode::Floor => "`memprof --floor` (the traps alone)",
            Mode::WindowedFloor => {
                "`memprof --floor --sample-rate 64 --sample-by window` (the traps windowed mode \
                 keeps: free and realloc always, the rest in windows)"
            }
        }
    }

    fn flags(self) -> Option<&'static [&'static str]> {
        match self {
            Mode::None => None,
            Mode::Full => Some(&[]),
            Mode::Windowed => Some(&["--sample-rate", "64", "--sample-by", "window"]),
            Mode::Floor => Some(&["--floor"]),
            Mode::WindowedFloor => {
                Some(&["--floor", "--sample-rate", "64", "--sample-by", "window"])
            }
        }
    }

    /// True for the modes that record nothing: their reports hold no blocks.
    fn floor(self) -> bool {
        matches!(self, Mode::Floor | Mode::WindowedFloor)
    }
}

/// One column of the tables: a mode, run by the bench's memprof or by the one given with
/// `--baseline` (measured in the same rounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Column {
    mode: Mode,
    baseline: bool,
}

impl Column {
    fn name(self) -> String {
        if self.baseline {
            format!("{} (baseline)", self.mode.name())
        } else {
            self.mode.name().to_string()
        }
    }
}

/// What the section needs from the bench.
pub(super) struct Setup<'a> {
    pub dir: &'a Path,
    pub memprof: &'a Path,
    pub baseline: Option<&'a Path>,
    pub rounds: u32,
    pub quick: bool,
}

pub(super) fn run(setup: &Setup<'_>) -> Result<()> {
    super::traps::run(setup.dir, setup.rounds, setup.quick).context("the cost of one trap")?;
    install_if_missing(&[
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
    ])?;
    redis(setup).context("the redis-server runs")?;
    install_if_missing(&[("nginx", "nginx"), ("wrk", "wrk")])?;
    nginx(setup).context("the nginx runs")?;
    Ok(())
}

/// Installs with apt-get the packages whose programs are not on PATH.
fn install_if_missing(programs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| which::which(program).is_err())
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("==> apt-get install -y {}", missing.join(" "));
    cmd::output(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {}", missing.join(" ")))?;
    Ok(())
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("no local address")?.port())
}

fn columns(setup: &Setup<'_>) -> Vec<Column> {
    let mut columns: Vec<Column> = MODES
        .iter()
        .map(|&mode| Column {
            mode,
            baseline: false,
        })
        .collect();
    if setup.baseline.is_some() {
        columns.extend(
            MODES
                .iter()
                .filter(|&&mode| mode != Mode::None)
                .map(|&mode| Column {
                    mode,
                    baseline: true,
                }),
        );
    }
    columns
}

/// A server started for the bench; dropping it kills it.
struct Server {
    proc: Proc,
    _out: Output,
    pid: u32,
}

impl Server {
    /// Starts `cmd` and waits until `ready` says it serves.
    fn start(cmd: &mut Command, name: &'static str, ready: impl Fn() -> bool) -> Result<Server> {
        let (mut proc, pipes) = spawn(cmd, name, false)?;
        let out = Output::new(vec![pipes.stdout, pipes.stderr]);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ready() {
            if let Some(exit) = proc.try_reap()? {
                bail!("{name} exited ({}) before serving", exit.describe());
            }
            if interrupt::happened() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!("{name} did not serve within {}s", READY_TIMEOUT.as_secs());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let pid = u32::try_from(proc.pid).context("pid out of range")?;
        Ok(Server {
            proc,
            _out: out,
            pid,
        })
    }

    fn stop(mut self) -> Result<()> {
        self.proc.signal(libc::SIGTERM)?;
        self.proc.wait_timeout(super::EXIT_TIMEOUT)?;
        Ok(())
    }
}

/// Attaches memprof with `--floor` to `pid` for a moment and returns where its report says
/// each probe went: one line per probed address.
fn placement(setup: &Setup<'_>, pid: u32, name: &str) -> Result<Vec<Placed>> {
    let json = setup
        .dir
        .join("reports")
        .join(format!("{name}-placement.json"));
    let memprof = Memprof::attach(setup.memprof, pid, &["--floor"], &json)?;
    let report = memprof.stop()?.report;
    let probes = report["probes"]
        .as_array()
        .with_context(|| format!("{} has no `probes`", json.display()))?;
    Ok(probes.iter().map(Placed::of).collect())
}

/// One entry of a report's `probes`.
struct Placed {
    functions: String,
    library: String,
    line: String,
    emulated: bool,
}

impl Placed {
    fn of(probe: &Value) -> Placed {
        let functions: Vec<&str> = probe["functions"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let emulated = probe["emulated"].as_bool().unwrap_or(false);
        let why = probe["why"]
            .as_str()
            .map(|why| format!(": {why}"))
            .unwrap_or_default();
        Placed {
            functions: functions.join("/"),
            library: probe["library"].as_str().unwrap_or("?").to_string(),
            line: format!(
                "+{:#x} ({}, {}{why})",
                probe["offset"].as_u64().unwrap_or(0),
                probe["instruction"].as_str().unwrap_or("?"),
                if emulated {
                    "emulated"
                } else {
                    "single-stepped"
                },
            ),
            emulated,
        }
    }
}

fn print_placement(server: &str, placed: &[Placed]) {
    println!("where memprof's probes went in {server} (the report's `probes`):");
    for probe in placed {
        println!("  {} in {}: {}", probe.functions, probe.library, probe.line);
    }
    let stepped: Vec<&str> = placed
        .iter()
        .filter(|probe| !probe.emulated)
        .map(|probe| probe.functions.as_str())
        .collect();
    if stepped.is_empty() {
        println!("every probed function is probed at an instruction the kernel emulates");
    } else {
        println!(
            "no instruction the kernel emulates before the arguments change, so single-stepped \
             at every call: {}",
            stepped.join(", ")
        );
    }
}

/// One run's figures: requests per second of each test, and what the report's check said.
struct RunResult {
    rps: Vec<f64>,
    check: Option<String>,
}

/// The figures of one column over the rounds.
struct Results {
    column: Column,
    /// Per test, per round.
    rps: Vec<Vec<f64>>,
    checks: Vec<String>,
}

fn print_table(title: &str, tests: &[&str], results: &[Results], check_title: &str) {
    println!("\n{title}\n");
    let none: Vec<Option<f64>> = (0..tests.len())
        .map(|t| {
            results
                .iter()
                .find(|r| r.column.mode == Mode::None)
                .and_then(|r| median(&r.rps[t]))
        })
        .collect();
    let none_runs: Option<&Results> = results.iter().find(|r| r.column.mode == Mode::None);
    // Each round's none / this, paired within the round: steadier than the ratio of the
    // medians when the machine's speed drifts from round to round.
    let paired = |result: &Results, t: usize| -> Option<f64> {
        let ratios: Vec<f64> = none_runs?.rps[t]
            .iter()
            .zip(&result.rps[t])
            .filter(|(_, &this)| this > 0.0)
            .map(|(none, this)| none / this)
            .collect();
        median(&ratios)
    };
    let mut header = "| mode | what runs |".to_string();
    let mut rule = "|---|---|".to_string();
    for test in tests {
        header.push_str(&format!(
            " {test} req/s | none / this | median of rounds' none / this |"
        ));
        rule.push_str("---:|---:|---:|");
    }
    header.push_str(&format!(" {check_title} |"));
    rule.push_str("---|");
    println!("{header}\n{rule}");
    for result in results {
        let mut row = format!(
            "| {} | {} |",
            result.column.name(),
            result.column.mode.what()
        );
        for (t, none) in none.iter().enumerate() {
            let rps = median(&result.rps[t]);
            row.push_str(&format!(
                " {} | {} | {} |",
                rps.map(|r| thousands(r.round() as u64))
                    .unwrap_or_else(|| "-".into()),
                ratio(*none, rps),
                ratio(paired(result, t), Some(1.0))
            ));
        }
        let check = if result.checks.is_empty() {
            "-".to_string()
        } else {
            result.checks.join("; ")
        };
        row.push_str(&format!(" {check} |"));
        println!("{row}");
    }
    // The floor's share of full tracking's cost, in time per request.
    let cost = |mode: Mode, t: usize| -> Option<f64> {
        let rps = results
            .iter()
            .find(|r| r.column.mode == mode && !r.column.baseline)
            .and_then(|r| median(&r.rps[t]))?;
        Some(1.0 / rps - 1.0 / none[t]?)
    };
    println!();
    for (t, test) in tests.iter().enumerate() {
        for (mode, floor, goal) in [
            (Mode::Full, Mode::Floor, FULL_GOAL),
            (Mode::Windowed, Mode::WindowedFloor, WINDOWED_GOAL),
        ] {
            if let Some(line) = goal_line(
                test,
                mode,
                floor,
                goal,
                cost(mode, t),
                cost(floor, t),
                none[t],
            ) {
                println!("{line}");
            }
        }
    }
    println!("raw req/s per round:");
    for result in results {
        for (t, test) in tests.iter().enumerate() {
            let values: Vec<String> = result.rps[t].iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "  {:<20} {test:<4} {}",
                result.column.name(),
                values.join("  ")
            );
        }
    }
}

/// What `mode` costs per request against its goal, and the share of that cost its traps alone
/// (`floor`) take: each cost in microseconds per request over the unprofiled server's. A goal
/// is out of reach while the floor alone exceeds it: no work in the BPF programs can make the
/// traps cheaper.
fn goal_line(
    test: &str,
    mode: Mode,
    floor: Mode,
    goal: f64,
    cost: Option<f64>,
    floor_cost: Option<f64>,
    none_rps: Option<f64>,
) -> Option<String> {
    let (cost, floor_cost, none_rps) = (cost?, floor_cost?, none_rps?);
    if cost <= 0.0 || floor_cost <= 0.0 {
        return Some(format!(
            "{test} {}: not measurable here: an unprofiled median was slower than a profiled \
             one (a busy machine: more rounds)",
            mode.name()
        ));
    }
    let base = 1.0 / none_rps;
    let slowdown = (base + cost) / base;
    let floor_slowdown = (base + floor_cost) / base;
    let budget = (goal - 1.0) * base;
    let verdict = if slowdown <= goal {
        "met".to_string()
    } else if floor_slowdown > goal {
        format!(
            "out of reach on this kernel: its traps alone are {floor_slowdown:.2}x, {:.1} us a \
             request against a budget of {:.1} us",
            floor_cost * 1e6,
            budget * 1e6
        )
    } else {
        format!(
            "not met: its traps alone are {floor_slowdown:.2}x, the BPF work on top of them \
             {:.1} us a request",
            (cost - floor_cost) * 1e6
        )
    };
    if floor_cost >= cost {
        return Some(format!(
            "{test} {}: {slowdown:.2}x (goal {goal}x), {verdict}; the traps alone ({}) cost as \
             much here ({:.1} against {:.1} us a request: within noise)",
            mode.name(),
            floor.name(),
            floor_cost * 1e6,
            cost * 1e6
        ));
    }
    Some(format!(
        "{test} {}: {slowdown:.2}x (goal {goal}x), {verdict}; the traps alone ({}) are {:.0}% \
         of its cost per request ({:.1} of {:.1} us)",
        mode.name(),
        floor.name(),
        100.0 * floor_cost / cost,
        floor_cost * 1e6,
        cost * 1e6
    ))
}

// ---------------------------------------------------------------------------------------------
// redis

fn redis_cli(port: u16, args: &[&str]) -> Result<String> {
    cmd::output(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
    )
    .map(|out| out.trim().to_string())
}

fn redis(setup: &Setup<'_>) -> Result<()> {
    let (requests, keys) = if setup.quick {
        (QUICK_REDIS_REQUESTS, QUICK_REDIS_KEYS)
    } else {
        (REDIS_REQUESTS, REDIS_KEYS)
    };
    let port = free_port()?;
    let server = Server::start(
        Command::new("redis-server").args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ]),
        "redis-server",
        || redis_cli(port, &["ping"]).is_ok_and(|out| out == "PONG"),
    )?;
    println!(
        "\n==> redis-server (Debian's, jemalloc) at 127.0.0.1:{port}: redis-benchmark -t set,get \
         -d {REDIS_VALUE} -n {requests} -r {keys}, {} round(s); load average {}",
        setup.rounds,
        load_average()
    );
    print_placement("redis-server", &placement(setup, server.pid, "redis")?);
    let tests = ["SET", "GET"];
    let mut results: Vec<Results> = columns(setup)
        .into_iter()
        .map(|column| Results {
            column,
            rps: vec![Vec::new(); tests.len()],
            checks: Vec::new(),
        })
        .collect();
    for round in 1..=setup.rounds {
        let mut line = format!("round {round}/{}:", setup.rounds);
        for result in &mut results {
            let run = redis_run(setup, &server, port, result.column, requests, keys)
                .with_context(|| format!("round {round}, {}", result.column.name()))?;
            for (t, rps) in run.rps.iter().enumerate() {
                result.rps[t].push(*rps);
            }
            result.checks.extend(run.check);
            line.push_str(&format!(
                " {} {}",
                result.column.name(),
                run.rps
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join("/")
            ));
        }
        println!("{line}");
    }
    println!("load average after the rounds: {}", load_average());
    print_table(
        &format!(
            "==> redis-server: median requests per second of {} round(s), {requests} requests \
             per test, {REDIS_VALUE} B values, {keys} keys",
            setup.rounds
        ),
        &tests,
        &results,
        &format!("report holds DBSIZE x {REDIS_VALUE} B (per round)"),
    );
    server.stop()
}

/// Attaches the memprof of `column` (this build or the baseline) to `server`,
/// writing its JSON report under `reports/`; None for the unprofiled column.
fn profile_server(
    setup: &Setup<'_>,
    server: &Server,
    column: Column,
    name: &str,
) -> Result<Option<Memprof>> {
    let json = setup.dir.join("reports").join(format!(
        "{name}-{}.json",
        column.name().replace([' ', '(', ')'], "")
    ));
    let bin = if column.baseline {
        setup.baseline.context("no baseline memprof")?
    } else {
        setup.memprof
    };
    column
        .mode
        .flags()
        .map(|flags| Memprof::attach(bin, server.pid, flags, &json))
        .transpose()
}

fn redis_run(
    setup: &Setup<'_>,
    server: &Server,
    port: u16,
    column: Column,
    requests: u64,
    keys: u64,
) -> Result<RunResult> {
    redis_cli(port, &["flushall"])?;
    let memprof = profile_server(setup, server, column, "redis")?;
    let csv = cmd::output(Command::new("redis-benchmark").args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "set,get",
        "-d",
        &REDIS_VALUE.to_string(),
        "-n",
        &requests.to_string(),
        "-r",
        &keys.to_string(),
        "--csv",
    ]))?;
    let rps = ["SET", "GET"]
        .iter()
        .map(|test| csv_rps(&csv, test))
        .collect::<Result<Vec<f64>>>()?;
    let dbsize: u64 = redis_cli(port, &["dbsize"])?
        .parse()
        .context("DBSIZE is not a number")?;
    let check = match memprof {
        None => None,
        Some(memprof) => {
            let stopped = memprof.stop()?;
            (!column.mode.floor()).then(|| redis_check(&stopped.report, dbsize))
        }
    };
    Ok(RunResult { rps, check })
}

/// Requests per second of `test` in redis-benchmark's `--csv` output.
fn csv_rps(csv: &str, test: &str) -> Result<f64> {
    let quoted = format!("\"{test}\"");
    csv.lines()
        .find_map(|line| {
            let mut fields = line.split(',');
            (fields.next()? == quoted).then(|| fields.next())?
        })
        .and_then(|rps| rps.trim_matches('"').parse().ok())
        .with_context(|| format!("redis-benchmark printed no {test} line: {csv}"))
}

/// Whether the report holds what the server keeps: `dbsize` values of [`REDIS_VALUE`] bytes,
/// each in jemalloc's size class with its key (a sampled report: within [`SIGMAS`] standard
/// errors).
fn redis_check(report: &Value, dbsize: u64) -> String {
    let bytes = report["totals"]["bytes"].as_u64().unwrap_or(0);
    let low = dbsize * REDIS_VALUE;
    let high = dbsize * REDIS_KEY_CEILING;
    let slack = report["sampling"]["bytes_stderr"]
        .as_f64()
        .map_or(0, |sd| (SIGMAS * sd) as u64);
    let ok = bytes + slack >= low && bytes.saturating_sub(slack) <= high;
    let per_key = bytes.checked_div(dbsize).unwrap_or(0);
    if slack > 0 {
        format!(
            "{} ~{} B (±{} B) for {} keys",
            mark(ok),
            thousands(bytes),
            thousands(slack),
            thousands(dbsize)
        )
    } else {
        format!(
            "{} {} B for {} keys ({per_key} B/key)",
            mark(ok),
            thousands(bytes),
            thousands(dbsize)
        )
    }
}

// ---------------------------------------------------------------------------------------------
// nginx

fn nginx(setup: &Setup<'_>) -> Result<()> {
    let seconds = if setup.quick {
        QUICK_WRK_SECONDS
    } else {
        WRK_SECONDS
    };
    let port = free_port()?;
    let dir = setup.dir.join("nginx");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log stderr warn;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             \x20   uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             \x20   server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }}\n\
             }}\n"
        ),
    )
    .with_context(|| format!("cannot write {}", conf.display()))?;
    let server = Server::start(
        Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf),
        "nginx",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    )?;
    println!(
        "\n==> nginx (Debian's, glibc's malloc; one process) at 127.0.0.1:{port}: wrk -t2 -c16 \
         -d{seconds}s, {} round(s); load average {}",
        setup.rounds,
        load_average()
    );
    print_placement("nginx", &placement(setup, server.pid, "nginx")?);
    let tests = ["GET"];
    let mut results: Vec<Results> = columns(setup)
        .into_iter()
        .map(|column| Results {
            column,
            rps: vec![Vec::new()],
            checks: Vec::new(),
        })
        .collect();
    for round in 1..=setup.rounds {
        let mut line = format!("round {round}/{}:", setup.rounds);
        for result in &mut results {
            let rps = nginx_run(setup, &server, port, result.column, seconds)
                .with_context(|| format!("round {round}, {}", result.column.name()))?;
            result.rps[0].push(rps);
            line.push_str(&format!(" {} {rps:.0}", result.column.name()));
        }
        println!("{line}");
    }
    println!("load average after the rounds: {}", load_average());
    print_table(
        &format!(
            "==> nginx: median requests per second of {} round(s), {seconds} s of wrk each",
            setup.rounds
        ),
        &tests,
        &results,
        "report",
    );
    server.stop()
}

fn nginx_run(
    setup: &Setup<'_>,
    server: &Server,
    port: u16,
    column: Column,
    seconds: u64,
) -> Result<f64> {
    let memprof = profile_server(setup, server, column, "nginx")?;
    let out = cmd::output(Command::new("wrk").args([
        "-t2",
        "-c16",
        &format!("-d{seconds}s"),
        &format!("http://127.0.0.1:{port}/"),
    ]))?;
    if let Some(memprof) = memprof {
        memprof.stop()?;
    }
    out.lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|rps| rps.trim().parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec: {out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"15827.79\",\"2.251\"\n\
                   \"GET\",\"15114.87\",\"2.157\"\n";
        assert_eq!(csv_rps(csv, "SET").unwrap(), 15827.79);
        assert_eq!(csv_rps(csv, "GET").unwrap(), 15114.87);
        assert!(csv_rps(csv, "INCR").is_err());
    }

    #[test]
    fn says_whether_a_goal_is_in_reach() {
        // Unprofiled: 100,000 req/s, 10 us a request.
        let none = Some(100_000.0);
        let line = goal_line(
            "SET",
            Mode::Full,
            Mode::Floor,
            2.0,
            Some(30e-6),
            Some(12e-6),
            none,
        );
        assert_eq!(
            line.unwrap(),
            "SET full: 4.00x (goal 2x), out of reach on this kernel: its traps alone are 2.20x, \
             12.0 us a request against a budget of 10.0 us; the traps alone (floor) are 40% of \
             its cost per request (12.0 of 30.0 us)"
        );
        let line = goal_line(
            "SET",
            Mode::Full,
            Mode::Floor,
            2.0,
            Some(15e-6),
            Some(5e-6),
            none,
        );
        assert!(line
            .unwrap()
            .contains("not met: its traps alone are 1.50x, the BPF work"));
        let line = goal_line(
            "GET",
            Mode::Windowed,
            Mode::WindowedFloor,
            1.1,
            Some(0.5e-6),
            Some(0.4e-6),
            none,
        );
        assert!(line
            .unwrap()
            .starts_with("GET windowed: 1.05x (goal 1.1x), met;"));
        assert!(goal_line(
            "GET",
            Mode::Full,
            Mode::Floor,
            2.0,
            Some(-1e-6),
            Some(1e-6),
            none
        )
        .unwrap()
        .contains("not measurable"));
        assert_eq!(
            goal_line("GET", Mode::Full, Mode::Floor, 2.0, None, Some(1e-6), none),
            None
        );
    }

    #[test]
    fn checks_what_redis_keeps() {
        let report: Value = serde_json::from_str(r#"{"totals": {"bytes": 41700000}}"#).unwrap();
        assert!(redis_check(&report, 10_000).starts_with('✓'));
        let report: Value = serde_json::from_str(r#"{"totals": {"bytes": 4170000}}"#).unwrap();
        assert!(redis_check(&report, 10_000).starts_with('✗'));
        let sampled: Value = serde_json::from_str(
            r#"{"totals": {"bytes": 30000000}, "sampling": {"bytes_stderr": 3000000}}"#,
        )
        .unwrap();
        assert!(redis_check(&sampled, 10_000).starts_with('✓'));
    }
}
