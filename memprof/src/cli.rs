//! Command-line interface: every flag, its default and its help text.

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand};

use crate::config::{Bench, Config, Limits, Profiles, SampleBy, Sampling, Select, Unwind};
use crate::render::{ColorScheme, Format, RenderOptions, Weight};
use crate::sources::Sources;

/// memprof: find the call stacks that hold a running process's memory.
///
/// memprof attaches uprobes to the allocator functions (malloc, calloc, realloc,
/// reallocarray, free, posix_memalign, aligned_alloc, memalign, valloc, pvalloc,
/// C++ new and delete) of the allocator that the target process uses (glibc's,
/// musl's, or jemalloc, tcmalloc, mimalloc..., also jemalloc with a `_rjem_` or
/// `je_` prefix as Rust programs link it), without restarting or pausing it.
/// Every allocation made while attached is recorded with its call stack; when
/// the run ends (after --duration, or on Ctrl-C / SIGTERM) memprof detaches and
/// reports the memory still outstanding, grouped by call stack and ranked by
/// bytes. Allocations made before memprof attached are not seen.
///
/// With `-- PROGRAM ARGS...` instead of -p, memprof starts the program itself, with the probes in
/// place before its first allocation, reports what it still holds when it exits, and exits
/// with the program's exit status (128 + the signal for a program killed by one).
///
/// Many processes at once: -p repeated, --comm, --cgroup, --follow-forks, or no -p at all
/// (every process on the machine). The report then ranks the processes by outstanding bytes
/// and lists each one's stacks.
#[derive(Debug, Parser)]
#[command(
    name = "memprof",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "EXAMPLES:\n  \
    sudo memprof -p 4242 --duration 60                 text report of what pid 4242 still holds after 60 s\n  \
    sudo memprof -p 4242 --duration 60 -o leak.svg     ...and a leak flame graph\n  \
    sudo memprof -p 4242 --duration 300 --interval 10  rank stacks that keep growing above large flat ones\n  \
    sudo memprof -p 4242 --min-age 30                  only allocations older than 30 s count as leak suspects\n  \
    sudo memprof -p 4242 -o leak.svg -o leak.json      stop with Ctrl-C; several outputs, format by extension\n  \
    sudo memprof -p 4242 --format json | jq .totals    machine-readable report on stdout\n  \
    sudo memprof -o leak.svg -- ./myprog --its-args    run a program under memprof; report what it holds at exit\n  \
    sudo memprof --duration 60                         which process on this machine is leaking, and where\n  \
    sudo memprof --comm '^nginx' --duration 60         every nginx process, including new ones\n  \
    sudo memprof --cgroup system.slice/app.service -d 60   the processes of a systemd unit or container\n  \
    sudo memprof -p 4242 --follow-forks -d 60          pid 4242 and the children it forks\n  \
    sudo memprof --follow-forks -- make -j4            a command and every process it starts\n  \
    sudo memprof -p 4242 --every 60 --push http://pyroscope:4040 --metrics 127.0.0.1:9464\n  \
    \x20                                                  continuous: a profile a minute, and metrics\n  \
    sudo memprof check --suppressions ci.supp -- ./tests   CI leak gate: fail when the command leaks\n  \
    memprof diff before.json after.json -o diff.svg    what changed between two runs\n  \
    memprof merge host*.json -o fleet.svg              one report from many processes or hosts\n\n\
    Profiling needs root (or CAP_BPF and CAP_PERFMON) and a kernel with uprobes."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub profile: ProfileArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub continuous: ContinuousArgs,

    /// More log output on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// No progress or log output on stderr, only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// Commands that work on saved JSON reports instead of a live process.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compare two JSON reports: which stacks grew or shrank (text), or a
    /// differential flame graph (-o diff.svg; red = grew, blue = shrank).
    Diff {
        /// The earlier report (`memprof ... -o before.json`).
        before: PathBuf,
        /// The later report.
        after: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// CI leak gate: run COMMAND under memprof, print what it still holds when it exits, and
    /// exit with --exit-code when that, less the suppressed stacks, is more than --max-leak
    /// bytes. A COMMAND that fails passes its own exit status through instead. One-time
    /// allocations of libc, the dynamic loader and libstdc++ are suppressed by a built-in list
    /// (--no-default-suppressions turns it off).
    Check {
        /// The most bytes the command may hold at its exit, suppressed stacks left out.
        #[arg(long, value_name = "BYTES", default_value_t = 0)]
        max_leak: u64,
        /// A suppressions file in LeakSanitizer's format: `leak:PATTERN` lines (`*` matches
        /// anything, `^`/`$` anchor), `#` comments. A stack is suppressed when PATTERN matches
        /// the function, source file or module name of one of its frames. May be repeated.
        #[arg(long, value_name = "FILE")]
        suppressions: Vec<PathBuf>,
        /// Leave out the built-in suppressions of libc, ld.so and libstdc++.
        #[arg(long)]
        no_default_suppressions: bool,
        /// The exit status when the leak is over the budget.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
        exit_code: u8,
        #[command(flatten)]
        profile: Box<ProfileArgs>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Join JSON reports of several processes or hosts into one report; stacks
    /// are matched by their symbolized frames.
    Merge {
        /// The reports to merge.
        #[arg(required = true, num_args = 1..)]
        reports: Vec<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Where continuous mode (`--every`) sends each period's report besides the -o files.
#[derive(Debug, Args)]
pub struct ContinuousArgs {
    /// With --every: keep the N newest files of each -o FILE (0 = all); older ones are removed.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "every")]
    pub keep: usize,

    /// With --every: send each period's pprof profile to a Pyroscope server's ingest API
    /// (http://HOST:PORT, as in `http://pyroscope:4040`; https is not supported), labelled with
    /// --service, the host name, the pid and the command; in a run over many processes, one
    /// profile per process. A push that fails is logged and the run goes on.
    #[arg(long, value_name = "URL", requires = "every")]
    pub push: Option<String>,

    /// With --push: the application name of the profiles [default: the command name].
    #[arg(long, value_name = "NAME", requires = "push")]
    pub service: Option<String>,

    /// With --every: serve Prometheus metrics (outstanding bytes and blocks per process, the
    /// counters of dropped events) at http://ADDR/metrics, updated at each period's end.
    #[arg(long, value_name = "ADDR", requires = "every")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// What to profile and how.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Process id of the target. It must be running; memprof probes the allocator it uses
    /// (glibc's or musl's, or jemalloc, tcmalloc, mimalloc...; a statically linked program only
    /// with musl). Repeat it to record several processes in one run. Without -p, --comm,
    /// --cgroup or a COMMAND, every process on the machine is recorded (system-wide).
    #[arg(short, long, value_name = "PID", conflicts_with = "command")]
    pub pid: Vec<u32>,

    /// Record the processes whose command name (/proc/PID/comm, at most 15 characters) matches
    /// REGEX, those running now and those that start (or exec) during the run; new ones are
    /// recorded from the moment memprof sees them, within a second, and their children
    /// (which share the name) from their first allocation.
    #[arg(long, value_name = "REGEX", conflicts_with = "command")]
    pub comm: Option<String>,

    /// Record only the processes of this cgroup (v2) and the cgroups below it: a container
    /// or a systemd unit. Its directory in the cgroup v2 hierarchy, or its path as
    /// /proc/PID/cgroup shows it (system.slice/nginx.service). The filter runs in the probes.
    /// With -p or --comm, both must match.
    #[arg(long, value_name = "PATH", conflicts_with = "command")]
    pub cgroup: Option<PathBuf>,

    /// Also record the children the recorded processes (or COMMAND) fork during the run, and
    /// theirs, from their first allocation. Without it, children are ignored. A child that
    /// exits during the run takes its memory with it (left out unless --at-exit).
    #[arg(long)]
    pub follow_forks: bool,

    /// Launch mode: run COMMAND under memprof from its first allocation, and report what it
    /// still holds when it exits (as with --at-exit) or at --duration (it then runs on).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,

    /// How long to record, in seconds. Without it, memprof records until Ctrl-C or SIGTERM.
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<f64>,

    /// Take a snapshot of every stack's outstanding bytes every SECS seconds, and rank
    /// stacks that keep growing above stacks that are large but flat.
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs)]
    pub interval: Option<f64>,

    /// Continuous mode: keep the probes attached and report every SECS seconds, until
    /// --duration, Ctrl-C, SIGTERM or the exit of what is recorded (the last, partial period
    /// is reported too). Each period's report is what is outstanding at the period's end:
    /// every block allocated since memprof attached and not freed by then, whatever period
    /// allocated it, so a block is never lost or counted twice between periods, and what a
    /// period added is the difference between two consecutive reports. Each -o FILE is
    /// written per period as FILE-<period>-<UTC time>.EXT (see --keep); see also --push and
    /// --metrics.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, conflicts_with = "interval")]
    pub every: Option<f64>,

    /// Count only allocations at least SECS old at the end of the run as leak suspects
    /// (short-lived memory in use is left out).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub min_age: Option<f64>,

    /// When the target exits during the run, report what it still held at its exit (as
    /// valgrind's leak check does). By default that memory is left out: the kernel took it
    /// back with the process, so it is not a leak any more.
    #[arg(long)]
    pub at_exit: bool,

    /// For CPython processes: show the Python frames and fold away the interpreter's own
    /// native frames (C extensions and the C library stay).
    #[arg(long, conflicts_with = "no_python")]
    pub python_only: bool,

    /// Do not read the Python frames of CPython processes: native stacks only (each
    /// allocation of a CPython process then costs what it costs in any other process).
    #[arg(long)]
    pub no_python: bool,

    /// Leave out stacks that hold fewer than this many outstanding bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub min_size: u64,

    /// Most live allocations tracked at once; beyond it allocations are counted as lost.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_live)]
    pub max_live: u32,

    /// Most distinct call stacks kept; beyond it allocations are still counted, without
    /// their stack [default: 16384 for -p and a command, 65536 system-wide, --comm and
    /// --cgroup (about 64 MiB of kernel memory)]
    #[arg(long, value_name = "N")]
    pub max_stacks: Option<u32>,

    /// How user stacks are walked. `auto`/`dwarf`: from each object's call frame
    /// information (.eh_frame), so code built without frame pointers (most distribution
    /// packages) gets full stacks; objects without it by frame pointer. `fp`: frame
    /// pointers only.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = UnwindArg::Auto)]
    pub unwind: UnwindArg,

    /// Most unwind-table rows in the kernel (8 bytes each), for all objects together.
    #[arg(long, value_name = "N", default_value_t = memprof_common::unwind::DEFAULT_MAX_ROWS)]
    pub unwind_rows: u32,

    /// Record 1 allocation call in N (N >= 2) instead of every call: cheaper for the
    /// target, and the report gives estimates (bytes and counts scaled up) with their
    /// statistical error. Which calls: see --sample-by. Needs Linux 6.13 or later (uprobe
    /// sessions).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(i64::from(Sampling::MIN_RATE)..))]
    pub sample_rate: Option<u32>,

    /// With --sample-rate N, how calls are chosen. `call`: each call independently, with
    /// probability 1/N; every call still traps into the kernel. `window`: every call made
    /// during short windows (2 ms) at random times that cover 1/N of the run; between
    /// windows malloc, calloc and the memalign family carry no probe at all, so they cost
    /// nothing (free and realloc stay probed). About twice as cheap again, for a larger
    /// error on blocks allocated in bursts (the report's error accounts for it).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = SampleBy::Call, requires = "sample_rate")]
    pub sample_by: SampleBy,

    /// Also report the target's anonymous memory mappings (mmap with MAP_ANONYMOUS, and
    /// their munmap and mremap) still mapped at the end, by the stack that mapped them, in a
    /// section of their own. This is memory that malloc never sees (custom allocators, arenas,
    /// thread stacks, JIT code) plus the large blocks glibc's malloc maps itself (128 KiB and
    /// more by default), which the heap report counts too. Uses the syscall tracepoints of
    /// mmap, munmap and mremap: every syscall on the machine takes the kernel's traced path
    /// while attached (a few to 20 ns more per syscall, measured on a getppid loop), and each
    /// mmap or mremap of the target costs a stack walk.
    #[arg(long)]
    pub mmap: bool,

    /// Also report kernel memory (slab objects from kmalloc and kmem_cache_alloc) allocated
    /// while running for the target and not freed at the end, by kernel stack, in a section
    /// of its own: the files, sockets, pipes and other objects the kernel keeps on its behalf,
    /// which no user-space report shows. Costs a kernel stack walk per kernel allocation of
    /// the target, and a map lookup per kernel free anywhere on the machine (frees are not
    /// filtered: the kernel often frees from another context). Kernel stacks are named from
    /// /proc/kallsyms.
    #[arg(long)]
    pub kernel: bool,

    /// An allocation freed within this many milliseconds counts as temporary in the
    /// allocation profile.
    #[arg(long, value_name = "MS", default_value_t = Profiles::TEMPORARY_NS as f64 / 1e6, value_parser = parse_ms)]
    pub temporary_ms: f64,

    /// Do not look for the peak. Finding it sends every allocation and free through a ring
    /// buffer to memprof, which replays them in order (full tracking of `-p` processes or a
    /// launched command; not over the whole machine, `--comm` or `--cgroup`, where what
    /// processes that come and go held at their exit would count for ever).
    #[arg(long)]
    pub no_peak: bool,

    /// Sample the timeline (outstanding bytes, resident memory) every SECS seconds [default:
    /// a hundredth of --duration, 0.1 s at least and 10 s at most; 0.1 s without it; the
    /// --interval when given].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeline_every: Option<f64>,

    /// Knobs for benchmarks only (hidden).
    #[command(flatten)]
    pub bench: BenchArgs,
}

/// Knobs that only benchmarks turn (`cargo xtask bench`): hidden from `--help`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Benchmarking: attach every probe but record nothing (the programs return at
    /// once), to measure the cost of the traps alone.
    #[arg(long, hide = true)]
    pub floor: bool,

    /// Benchmarking: put every probe on the first instruction of its function
    /// instead of the cheapest equivalent one.
    #[arg(long, hide = true)]
    pub probe_at_entry: bool,
}

impl ProfileArgs {
    /// The run these options ask for, in plain types.
    pub fn to_config(&self) -> Config {
        Config {
            select: Select {
                pids: self.pid.clone(),
                comm: self.comm.clone(),
                cgroup: self.cgroup.clone(),
                follow_forks: self.follow_forks,
                command: self.command.clone(),
            },
            duration: self.duration,
            interval: self.interval,
            every: self.every,
            min_age: self.min_age,
            at_exit: self.at_exit,
            python_only: self.python_only,
            no_python: self.no_python,
            min_size: self.min_size,
            limits: Limits {
                max_live: self.max_live,
                max_stacks: self.max_stacks.unwrap_or_else(|| {
                    if self.pid.is_empty() && self.command.is_empty() {
                        Limits::MACHINE_WIDE_MAX_STACKS
                    } else {
                        Limits::default().max_stacks
                    }
                }),
            },
            sampling: self.sample_rate.map(|rate| Sampling {
                rate,
                by: self.sample_by,
            }),
            sources: Sources {
                mmap: self.mmap,
                kernel: self.kernel,
            },
            bench: Bench {
                floor: self.bench.floor,
                probe_at_entry: self.bench.probe_at_entry,
            },
            unwind: self.unwind_config(),
            profiles: Profiles {
                temporary_ns: (self.temporary_ms * 1e6) as u64,
                peak: !self.no_peak,
                timeline_every: self.timeline_every,
            },
        }
    }
}

/// `--sample-by`: the values of [`SampleBy`].
impl clap::ValueEnum for SampleBy {
    fn value_variants<'a>() -> &'a [SampleBy] {
        &[SampleBy::Call, SampleBy::Window]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            SampleBy::Call => {
                PossibleValue::new("call").help("Each call independently, with probability 1/N")
            }
            SampleBy::Window => PossibleValue::new("window")
                .help("Every call made during random windows covering 1/N of the time"),
        })
    }
}

/// `--format`: the values of [`Format`].
impl clap::ValueEnum for Format {
    fn value_variants<'a>() -> &'a [Format] {
        &[
            Format::Text,
            Format::Folded,
            Format::Svg,
            Format::Json,
            Format::Pprof,
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Format::Text => PossibleValue::new("text")
                .help("A human-readable report: header, top stacks, counters"),
            Format::Folded => PossibleValue::new("folded")
                .help("Folded stacks (`root;...;leaf bytes`), the input of flame graph tools"),
            Format::Svg => PossibleValue::new("svg")
                .help("A flame graph of outstanding bytes, drawn with inferno"),
            Format::Json => PossibleValue::new("json")
                .help("The whole report as JSON (the schema is `memprof::model::Report`)"),
            Format::Pprof => PossibleValue::new("pprof")
                .help("A gzipped pprof `profile.proto` with `inuse_space` and `inuse_objects`"),
        })
    }
}

/// `--color`: the values of [`ColorScheme`].
impl clap::ValueEnum for ColorScheme {
    fn value_variants<'a>() -> &'a [ColorScheme] {
        &[ColorScheme::Mem, ColorScheme::Hot, ColorScheme::Leak]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            ColorScheme::Mem => PossibleValue::new("mem")
                .help("Every frame from inferno's green-blue \"mem\" palette"),
            ColorScheme::Hot => PossibleValue::new("hot").help(
                "Every frame from inferno's red-yellow \"hot\" palette (the classic CPU flame \
                 graph look)",
            ),
            ColorScheme::Leak => PossibleValue::new("leak").help(
                "Allocation call sites (the leaf frames, which called the allocator) in red, \
                 every other frame from the muted \"mem\" palette, so the leaks stand out",
            ),
        })
    }
}

/// Where and how reports are written.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Format of the report written to stdout (files given with -o take their format from the extension).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Write the report to FILE instead of stdout; may be repeated. The format comes from the
    /// extension: .txt, .svg, .folded, .json, .pb.gz/.pprof (else --format).
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<PathBuf>,

    /// Number of stacks shown in the text report (0 = all).
    #[arg(long, value_name = "N", default_value_t = RenderOptions::DEFAULT_TOP)]
    pub top: usize,

    /// Color scheme of the SVG flame graph.
    #[arg(long, value_enum, default_value_t = ColorScheme::default())]
    pub color: ColorScheme,

    /// Title of the flame graph (default: names the target).
    #[arg(long)]
    pub title: Option<String>,

    /// What the widths of the flame graph (and of folded stacks) are: `outstanding` bytes
    /// at the end, bytes allocated while recording (`alloc`, freed or not), or bytes
    /// outstanding at the `peak`.
    #[arg(long, value_enum, default_value_t = WeightArg::Outstanding)]
    pub weight: WeightArg,

    /// Also draw the timeline (outstanding bytes, the top stacks' and resident memory
    /// through the run) as an SVG chart in FILE.
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,
}

/// `--weight`: the values of [`Weight`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightArg {
    /// Bytes still outstanding at the end (what leaks).
    #[default]
    Outstanding,
    /// Bytes allocated while recording, freed or not (what churns).
    Alloc,
    /// Bytes outstanding at the peak of the run (what an OOM would have seen).
    Peak,
}

impl OutputArgs {
    /// The renderers' options.
    pub fn render_options(&self) -> RenderOptions {
        RenderOptions {
            top: self.top,
            color: self.color,
            title: self.title.clone(),
            weight: match self.weight {
                WeightArg::Outstanding => Weight::Outstanding,
                WeightArg::Alloc => Weight::Alloc,
                WeightArg::Peak => Weight::Peak,
            },
        }
    }
}

fn parse_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err("must be a number of milliseconds, 0 or more".into())
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("must be a positive number of seconds".into())
    }
}

/// `--unwind`: how user stacks are walked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindArg {
    /// From call frame information wherever an object has it, except in
    /// objects built with frame pointers, walked by them (cheaper, and the
    /// same frames at a return address); frame pointers where there is no
    /// call frame information.
    #[default]
    Auto,
    /// Frame pointers only: the cheapest, and one frame deep in code built
    /// without them.
    Fp,
    /// From call frame information (`.eh_frame`) wherever an object has it.
    Dwarf,
}

impl ProfileArgs {
    /// `--unwind` and `--unwind-rows`.
    fn unwind_config(&self) -> Unwind {
        if self.unwind == UnwindArg::Fp {
            return Unwind::FramePointers;
        }
        Unwind::Tables {
            rows: self.unwind_rows,
            fp_objects: self.unwind == UnwindArg::Auto,
        }
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
        assert!(cli.command.is_none());
        assert_eq!(cli.profile.pid, vec![42]);
        assert_eq!(cli.profile.duration, Some(60.0));
        assert_eq!(cli.output.output, vec![PathBuf::from("leak.svg")]);
        assert_eq!(cli.output.format, Format::Text);
        assert_eq!(cli.profile.max_live, memprof_common::defaults::MAX_LIVE);
        assert_eq!(cli.output.top, RenderOptions::DEFAULT_TOP);
    }

    #[test]
    fn the_stack_map_is_sized_for_what_is_selected() {
        let max_stacks = |args: &[&str]| {
            let argv = std::iter::once("memprof").chain(args.iter().copied());
            Cli::try_parse_from(argv)
                .unwrap()
                .profile
                .to_config()
                .limits
                .max_stacks
        };
        let one = memprof_common::defaults::MAX_STACKS;
        assert_eq!(max_stacks(&["-p", "42"]), one);
        assert_eq!(max_stacks(&["--", "ls"]), one);
        assert_eq!(max_stacks(&[]), Limits::MACHINE_WIDE_MAX_STACKS);
        assert_eq!(
            max_stacks(&["--comm", "nginx"]),
            Limits::MACHINE_WIDE_MAX_STACKS
        );
        assert_eq!(max_stacks(&["--max-stacks", "1000"]), 1000);
        assert_eq!(max_stacks(&["-p", "42", "--max-stacks", "1000"]), 1000);
    }

    #[test]
    fn defaults_are_the_configs() {
        let cli = Cli::try_parse_from(["memprof"]).unwrap();
        // System-wide: the stack map is sized for the machine.
        let mut machine = Config::default();
        machine.limits.max_stacks = Limits::MACHINE_WIDE_MAX_STACKS;
        assert_eq!(cli.profile.to_config(), machine);
        let cli = Cli::try_parse_from([
            "memprof",
            "-p",
            "7",
            "--floor",
            "--probe-at-entry",
            "--mmap",
            "--min-size",
            "100",
        ])
        .unwrap();
        let config = cli.profile.to_config();
        assert_eq!(config.select.pids, vec![7]);
        assert_eq!(
            config.bench,
            Bench {
                floor: true,
                probe_at_entry: true
            }
        );
        assert!(config.sources.mmap && !config.sources.kernel);
        assert_eq!(config.min_size, 100);
        assert_eq!(config.sampling, None);
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in ["0", "-3", "abc", "inf", "NaN"] {
            assert!(
                Cli::try_parse_from(["memprof", "-p", "1", "--duration", bad]).is_err(),
                "{bad}"
            );
            assert!(
                Cli::try_parse_from(["memprof", "-p", "1", "--interval", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["memprof", "-p", "x"]).is_err());
    }

    #[test]
    fn parses_how_to_sample() {
        let cli = Cli::try_parse_from(["memprof", "-p", "1", "--sample-rate", "8"]).unwrap();
        assert_eq!(cli.profile.sample_by, SampleBy::Call);
        let cli = Cli::try_parse_from([
            "memprof",
            "-p",
            "1",
            "--sample-rate",
            "8",
            "--sample-by",
            "window",
        ])
        .unwrap();
        assert_eq!(cli.profile.sample_by, SampleBy::Window);
        assert_eq!(
            cli.profile.to_config().sampling,
            Some(Sampling {
                rate: 8,
                by: SampleBy::Window
            })
        );
        // Without a rate, there is nothing to sample.
        assert!(Cli::try_parse_from(["memprof", "-p", "1", "--sample-by", "window"]).is_err());
        assert!(Cli::try_parse_from(["memprof", "-p", "1", "--sample-window-ms", "2"]).is_err());
    }

    #[test]
    fn parses_the_sample_rate() {
        let cli = Cli::try_parse_from(["memprof", "-p", "1"]).unwrap();
        assert_eq!(cli.profile.sample_rate, None);
        let cli = Cli::try_parse_from(["memprof", "-p", "1", "--sample-rate", "64"]).unwrap();
        assert_eq!(cli.profile.sample_rate, Some(64));
        for bad in ["0", "1", "-2", "x"] {
            assert!(
                Cli::try_parse_from(["memprof", "-p", "1", "--sample-rate", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn selects_many_processes() {
        let cli = Cli::try_parse_from(["memprof", "-p", "1", "-p", "2", "--follow-forks"]).unwrap();
        assert_eq!(cli.profile.pid, vec![1, 2]);
        assert!(cli.profile.follow_forks);
        let cli = Cli::try_parse_from(["memprof", "--comm", "^nginx$", "--cgroup", "a/b"]).unwrap();
        assert_eq!(cli.profile.comm.as_deref(), Some("^nginx$"));
        assert_eq!(cli.profile.cgroup, Some(PathBuf::from("a/b")));
        assert!(Cli::try_parse_from(["memprof", "--comm", "x", "--", "ls"]).is_err());
    }

    #[test]
    fn repeats_outputs() {
        let cli =
            Cli::try_parse_from(["memprof", "-p", "1", "-o", "a.svg", "-o", "b.json"]).unwrap();
        assert_eq!(cli.output.output.len(), 2);
    }

    #[test]
    fn parses_diff_and_merge() {
        let cli =
            Cli::try_parse_from(["memprof", "diff", "a.json", "b.json", "-o", "d.svg"]).unwrap();
        match cli.command {
            Some(Command::Diff {
                before,
                after,
                output,
            }) => {
                assert_eq!(before, PathBuf::from("a.json"));
                assert_eq!(after, PathBuf::from("b.json"));
                assert_eq!(output.output, vec![PathBuf::from("d.svg")]);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["memprof", "merge", "a.json", "b.json", "c.json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Merge { reports, .. }) if reports.len() == 3));
        assert!(Cli::try_parse_from(["memprof", "merge"]).is_err());
        assert!(Cli::try_parse_from(["memprof", "-p", "1", "diff", "a", "b"]).is_err());
    }

    #[test]
    fn parses_continuous_mode() {
        let cli = Cli::try_parse_from([
            "memprof",
            "-p",
            "1",
            "--every",
            "60",
            "--push",
            "http://pyroscope:4040",
            "--service",
            "api",
            "--metrics",
            "127.0.0.1:9464",
            "-o",
            "leak.svg",
            "--keep",
            "24",
        ])
        .unwrap();
        assert_eq!(cli.profile.to_config().every, Some(60.0));
        assert_eq!(cli.continuous.keep, 24);
        assert_eq!(
            cli.continuous.push.as_deref(),
            Some("http://pyroscope:4040")
        );
        assert_eq!(cli.continuous.service.as_deref(), Some("api"));
        assert_eq!(
            cli.continuous.metrics,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        // Their outputs need periods; --every and --interval exclude each other.
        for without_every in [
            &["memprof", "-p", "1", "--keep", "3"][..],
            &["memprof", "-p", "1", "--push", "http://x:1"],
            &["memprof", "-p", "1", "--metrics", "127.0.0.1:1"],
            &["memprof", "-p", "1", "--every", "5", "--interval", "1"],
        ] {
            assert!(
                Cli::try_parse_from(without_every).is_err(),
                "{without_every:?}"
            );
        }
    }

    #[test]
    fn parses_the_leak_gate() {
        let cli = Cli::try_parse_from([
            "memprof",
            "check",
            "--max-leak",
            "4096",
            "--suppressions",
            "a.supp",
            "--suppressions",
            "b.supp",
            "--exit-code",
            "23",
            "-o",
            "leak.json",
            "--",
            "./app",
            "--flag",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Check {
                max_leak,
                suppressions,
                no_default_suppressions,
                exit_code,
                profile,
                output,
            }) => {
                assert_eq!(max_leak, 4096);
                assert_eq!(suppressions.len(), 2);
                assert!(!no_default_suppressions);
                assert_eq!(exit_code, 23);
                assert_eq!(profile.command, ["./app", "--flag"]);
                assert_eq!(output.output, [PathBuf::from("leak.json")]);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["memprof", "check", "--", "true"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Check {
                max_leak: 0,
                exit_code: 1,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["memprof", "check", "--exit-code", "0", "--", "x"]).is_err());
    }
}
