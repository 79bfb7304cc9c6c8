//! Project automation for memprof, run as `cargo xtask <command>`.
//!
//! Every command first installs what it needs and is missing (`setup.rs`): `build` and `demo`
//! what building memprof needs, `test` and `soak` also what the test fixtures need, `setup`
//! everything. So a fresh clone needs nothing but `cargo xtask demo` or `cargo xtask test`.

mod bench;
mod cmd;
mod demo;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about,
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing memprof needs: apt packages, the nightly toolchain with
    /// rust-src, and bpf-linker built against the nightly's own LLVM. Quick when all is present.
    Setup,
    /// Install what building needs, then build the whole workspace (the eBPF object is built by
    /// memprof's build.rs).
    Build(BuildArgs),
    /// Install what building and the test fixtures need, then run every check and test: fmt,
    /// clippy (host and eBPF), unit tests, and the integration tests as root (through `sudo -E`
    /// when not root).
    Test,
    /// Install what building needs, build memprof, and profile a bundled leaking program: writes
    /// leak.svg and leak.json.
    Demo(demo::DemoArgs),
    /// Run setup, build memprof in release, and measure what it costs an allocation-heavy
    /// program, side by side with its probes' floor, probes at function entry and bpftrace;
    /// then memprof's own memory and report time. Prints medians and ratios, asserts nothing.
    Bench(bench::BenchArgs),
    /// Install what the tests need, build memprof in release, and profile a process that churns,
    /// meets new stacks
    /// and leaks for ten minutes (the long-run test, which CI runs for 30 s): memprof's memory
    /// over the run, its CPU time, and an exact report.
    Soak(SoakArgs),
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Length of the run in seconds.
    #[arg(long, default_value_t = 600)]
    secs: u64,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cmd::pin_target_dir().and_then(|()| match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => build(&args),
        Command::Test => test::run(),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Soak(args) => test::soak(args.secs),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(args: &BuildArgs) -> anyhow::Result<()> {
    setup::for_build()?;
    let mut build = cmd::cargo();
    build.args(["build", "--workspace", "--exclude", cmd::EBPF_CRATE]);
    if args.release {
        build.arg("--release");
    }
    cmd::step("build", &mut build)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn demo_defaults() {
        let cli = Cli::try_parse_from(["cargo xtask", "demo"]).unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("expected demo, got {:?}", cli.command);
        };
        assert_eq!(args.duration, 8);
        assert!(args.out_dir.is_none());
    }

    #[test]
    fn bench_defaults_and_quick() {
        let cli = Cli::try_parse_from(["cargo xtask", "bench"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("expected bench, got {:?}", cli.command);
        };
        assert_eq!((args.rounds, args.pairs, args.quick), (None, None, false));
        let cli =
            Cli::try_parse_from(["cargo xtask", "bench", "--quick", "--rounds", "3"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("expected bench, got {:?}", cli.command);
        };
        assert_eq!((args.rounds, args.quick), (Some(3), true));
        assert!(Cli::try_parse_from(["cargo xtask", "bench", "--rounds", "0"]).is_err());
        let cli = Cli::try_parse_from(["cargo xtask", "bench", "--python-only"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("expected bench, got {:?}", cli.command);
        };
        assert!(args.python_only);
        assert!(
            Cli::try_parse_from(["cargo xtask", "bench", "--python-only", "--unwind-only"])
                .is_err()
        );
    }

    #[test]
    fn demo_rejects_zero_duration() {
        assert!(Cli::try_parse_from(["cargo xtask", "demo", "--duration", "0"]).is_err());
    }
}
