//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.
//!
//! The eBPF crate is left out of the host steps (`--workspace --exclude memprof-ebpf`): built for
//! the host, cargo's feature unification gives memprof-common the `user` feature (aya, hence std)
//! and the eBPF binary's `#[panic_handler]` then collides with std's. It is linted on its own,
//! for its real target, in the `clippy-ebpf` step, and built by memprof's build.rs.

use std::{env, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, is_root, EBPF_CRATE},
    setup,
};

pub(crate) fn run() -> Result<()> {
    setup::for_tests()?;
    if let Ok(ci) = env::var("CI") {
        println!("CI={ci} (passed through to the tests)");
    }

    let mut steps = [
        ("fmt", cargo(&["fmt", "--all", "--", "--check"])),
        (
            "clippy",
            cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        ("clippy-ebpf", clippy_ebpf()),
        (
            "build",
            cargo(&["build", "--workspace", "--exclude", EBPF_CRATE, "--bins"]),
        ),
        (
            "unit tests",
            cargo(&[
                "test",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--exclude",
                "tests",
            ]),
        ),
        // Built before running, so a missing sudo fails now rather than after the long steps.
        ("integration tests", integration_tests()?),
    ];

    let total = steps.len();
    for (i, (name, cmd)) in steps.iter_mut().enumerate() {
        println!("==> [{}/{total}] {name}: {}", i + 1, cmd::display(cmd));
        cmd::run(cmd).with_context(|| format!("step {}/{total} `{name}` failed", i + 1))?;
    }
    println!("==> all {total} steps passed");
    Ok(())
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = cmd::cargo();
    cmd.args(args);
    cmd
}

/// Clippy for the eBPF crate on its real target; needs nightly for `-Z build-std=core`.
fn clippy_ebpf() -> Command {
    let mut cmd = cmd::nightly_cargo();
    cmd.args([
        "clippy",
        "-p",
        EBPF_CRATE,
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]);
    cmd
}

/// The integration tests (the tests package's one test binary, and its harness's unit tests)
/// load BPF programs, so they run as root: directly when xtask is root, else cargo builds them as
/// this user and runs each test binary through `sudo -E` (its runner), which keeps `CI` and the
/// rest of the environment.
fn integration_tests() -> Result<Command> {
    let mut cmd = cargo(&["test", "-p", "tests", "--", "--test-threads=1"]);
    // The binary the `build` step just made, rather than whichever of debug and release is newer.
    cmd.env("MEMPROF_BIN", cmd::target_dir().join("debug/memprof"));
    as_root(cmd)
}

/// The test binary that holds every integration test (`tests/tests/integration/`).
const INTEGRATION_TESTS: &str = "integration";

/// `cargo xtask soak`: the long-run integration tests (the `long_run` module of the integration
/// tests: a churning target, and a system-wide run while short-lived processes come and go) for
/// `secs` seconds each against a release build, printing memprof's memory and the maps' use over
/// the run.
pub(crate) fn soak(secs: u64) -> Result<()> {
    setup::for_tests()?;
    let bin = cmd::build_release_memprof()?;
    let mut cmd = cargo(&[
        "test",
        "-p",
        "tests",
        "--test",
        INTEGRATION_TESTS,
        "--",
        "--test-threads=1",
        "--nocapture",
        "long_run::",
    ]);
    cmd.env("MEMPROF_BIN", bin)
        .env("MEMPROF_SOAK_SECS", secs.to_string());
    let mut cmd = as_root(cmd)?;
    println!("==> soak: {secs} s: {}", cmd::display(&cmd));
    cmd::run(&mut cmd)
}

/// `cmd` (a `cargo test`) with its test binaries run as root: directly when xtask is root,
/// else through `sudo -E` as cargo's runner.
fn as_root(mut cmd: Command) -> Result<Command> {
    if is_root() {
        return Ok(cmd);
    }
    if which::which("sudo").is_err() {
        bail!(
            "the integration tests load BPF programs and need root, and sudo is not installed: \
             run `cargo xtask test` as root"
        );
    }
    let host = host_triple()?;
    let runner = format!(
        "CARGO_TARGET_{}_RUNNER",
        host.to_uppercase().replace(['-', '.'], "_")
    );
    println!("not root: the integration test binaries will run through `sudo -E`");
    cmd.env(runner, "sudo -E");
    Ok(cmd)
}

/// The host triple of the toolchain `cargo` runs, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let version = cmd::output(Command::new("rustc").arg("-vV").current_dir(cmd::root()))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("host:"))
        .map(|host| host.trim().to_owned())
        .context("`rustc -vV` prints no `host:` line")
}
