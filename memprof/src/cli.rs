//! Command-line interface: every flag, its default and its help text.

use std::path::PathBuf;

use clap::Parser;
use memprof_common::defaults;

use crate::render::{ColorScheme, Format};

/// memprof: find the call stacks that hold a running process's memory.
///
/// memprof attaches uprobes to the allocator functions (malloc, calloc, realloc,
/// reallocarray, free, posix_memalign, aligned_alloc, memalign, valloc, pvalloc)
/// of the libc that the target process maps, without restarting or pausing it.
/// Every allocation made while attached is recorded with its call stack; when
/// the run ends (after --duration, or on Ctrl-C / SIGTERM) memprof detaches and
/// reports the memory still outstanding, grouped by call stack and ranked by
/// bytes. Allocations made before memprof attached are not seen.
#[derive(Debug, Parser)]
#[command(
    name = "memprof",
    version,
    after_help = "EXAMPLES:\n  \
    sudo memprof -p 4242 --duration 60                 text report of what pid 4242 still holds after 60 s\n  \
    sudo memprof -p 4242 --duration 60 -o leak.svg     ...and a leak flame graph\n  \
    sudo memprof -p 4242 -o leak.svg -o leak.json      stop with Ctrl-C; several outputs, format by extension\n  \
    sudo memprof -p 4242 --format json | jq .totals    machine-readable report on stdout\n\n\
    memprof needs root (or CAP_BPF and CAP_PERFMON) and a kernel with uprobes."
)]
pub struct Cli {
    /// Process id of the target. It must be running and map a dynamically linked glibc.
    #[arg(short, long, value_name = "PID")]
    pub pid: u32,

    /// How long to record, in seconds. Without it, memprof records until Ctrl-C or SIGTERM.
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,

    /// Format of the report written to stdout (files given with -o take their format from the extension).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the report to FILE instead of stdout; may be repeated. The format comes from the
    /// extension: .txt, .svg, .folded, .json, .pb.gz/.pprof (else --format).
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<PathBuf>,

    /// Number of stacks shown in the text report (0 = all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,

    /// Leave out stacks that hold fewer than this many outstanding bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub min_size: u64,

    /// Color scheme of the SVG flame graph.
    #[arg(long, value_enum, default_value_t = ColorScheme::default())]
    pub color: ColorScheme,

    /// Title of the flame graph (default: names the target).
    #[arg(long)]
    pub title: Option<String>,

    /// Most live allocations tracked at once; beyond it allocations are counted as lost.
    #[arg(long, value_name = "N", default_value_t = defaults::MAX_LIVE)]
    pub max_live: u32,

    /// Most distinct call stacks kept; beyond it stacks are counted as lost.
    #[arg(long, value_name = "N", default_value_t = defaults::MAX_STACKS)]
    pub max_stacks: u32,

    /// Most threads that can be inside an allocator call at once.
    #[arg(long, value_name = "N", default_value_t = defaults::MAX_THREADS)]
    pub max_threads: u32,

    /// More log output on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// No progress or log output on stderr, only errors.
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("must be a positive number of seconds".into())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_main_use() {
        let cli =
            Cli::try_parse_from(["memprof", "-p", "42", "--duration", "60", "-o", "leak.svg"])
                .unwrap();
        assert_eq!(cli.pid, 42);
        assert_eq!(cli.duration, Some(60.0));
        assert_eq!(cli.output, vec![PathBuf::from("leak.svg")]);
        assert_eq!(cli.format, Format::Text);
        assert_eq!(cli.max_live, defaults::MAX_LIVE);
    }

    #[test]
    fn rejects_bad_durations_and_missing_pid() {
        assert!(Cli::try_parse_from(["memprof", "-p", "1", "--duration", "0"]).is_err());
        assert!(Cli::try_parse_from(["memprof", "-p", "1", "--duration", "-3"]).is_err());
        assert!(Cli::try_parse_from(["memprof", "-p", "1", "--duration", "abc"]).is_err());
        assert!(Cli::try_parse_from(["memprof", "--duration", "5"]).is_err());
        assert!(Cli::try_parse_from(["memprof", "-p", "x"]).is_err());
    }

    #[test]
    fn repeats_outputs() {
        let cli =
            Cli::try_parse_from(["memprof", "-p", "1", "-o", "a.svg", "-o", "b.json"]).unwrap();
        assert_eq!(cli.output.len(), 2);
    }
}
