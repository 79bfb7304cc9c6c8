//! What one profiling run is asked to do, in plain types: the command line
//! converted at the edge ([`crate::cli`]), so that no module below it needs
//! to know how the options were spelled. Defaults live here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use memprof_common::defaults;

/// A profiling run. The defaults are those of the command line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    /// Which processes to record.
    pub select: Select,
    /// End after this many seconds (else on Ctrl-C, SIGTERM or the exit of
    /// what is recorded).
    pub duration: Option<f64>,
    /// Take a snapshot of every stack's outstanding bytes this often (seconds).
    pub interval: Option<f64>,
    /// Continuous mode: report what is outstanding this often (seconds),
    /// the probes staying attached.
    pub every: Option<f64>,
    /// Only allocations at least this old (seconds) at the end count.
    pub min_age: Option<f64>,
    /// Report what a process that exited held at its exit.
    pub at_exit: bool,
    /// CPython processes: Python frames without the interpreter's native ones.
    pub python_only: bool,
    /// CPython processes: no Python frames (`--no-python`).
    pub no_python: bool,
    /// Stacks below this many outstanding bytes are not listed.
    pub min_size: u64,
    /// Sizes of the BPF maps.
    pub limits: Limits,
    /// `None`: every allocation call is recorded.
    pub sampling: Option<Sampling>,
    /// Sources besides the heap.
    pub sources: crate::sources::Sources,
    /// Knobs for benchmarks only.
    pub bench: Bench,
    /// How user stacks are walked (`--unwind`).
    pub unwind: Unwind,
    /// The allocation profile, the peak and the timeline.
    pub profiles: Profiles,
}

/// What the allocation profile, the peak and the timeline record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profiles {
    /// A block freed within this many ns of its allocation is a temporary.
    pub temporary_ns: u64,
    /// Find the peak (full tracking only): every allocation and free goes
    /// through a ring buffer to a replay in memprof.
    pub peak: bool,
    /// Sample the timeline this often (seconds); else [`Profiles::timeline_every`].
    pub timeline_every: Option<f64>,
}

impl Profiles {
    /// The default threshold of a temporary allocation: 1 ms.
    pub const TEMPORARY_NS: u64 = 1_000_000;
    /// Fewest and most seconds between timeline samples by default.
    pub const MIN_EVERY: f64 = 0.1;
    pub const MAX_EVERY: f64 = 10.0;
    /// Seconds between timeline samples without a duration.
    pub const OPEN_ENDED_EVERY: f64 = 0.1;

    /// Seconds between timeline samples: as given, else a hundredth of the
    /// run (0.1 s at least, 10 s at most), else 0.1 s.
    pub fn timeline_every(&self, duration: Option<f64>) -> f64 {
        self.timeline_every.unwrap_or_else(|| match duration {
            Some(d) => (d / 100.0).clamp(Self::MIN_EVERY, Self::MAX_EVERY),
            None => Self::OPEN_ENDED_EVERY,
        })
    }
}

impl Default for Profiles {
    fn default() -> Profiles {
        Profiles {
            temporary_ns: Profiles::TEMPORARY_NS,
            peak: true,
            timeline_every: None,
        }
    }
}

/// How user stacks are walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwind {
    /// From each object's call frame information (`.eh_frame`), with room
    /// for this many unwind-table rows; by frame pointer where an object
    /// has none, and with `fp_objects` in objects built with frame pointers
    /// (`--unwind auto`).
    Tables { rows: u32, fp_objects: bool },
    /// By frame pointer only.
    FramePointers,
}

impl Default for Unwind {
    fn default() -> Self {
        Unwind::Tables {
            rows: memprof_common::unwind::DEFAULT_MAX_ROWS,
            fp_objects: true,
        }
    }
}

impl Unwind {
    /// The room for unwind rows, or None when stacks are walked by frame pointer.
    pub fn rows(self) -> Option<u32> {
        match self {
            Unwind::Tables { rows, .. } => Some(rows),
            Unwind::FramePointers => None,
        }
    }
}

/// Which processes a run records. Nothing given: every process on the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Select {
    /// Processes by id, each required to exist at the start.
    pub pids: Vec<u32>,
    /// A regex over command names (`/proc/PID/comm`).
    pub comm: Option<String>,
    /// A cgroup (v2): its directory, or its path from the hierarchy's root.
    pub cgroup: Option<PathBuf>,
    /// Children forked during the run are recorded too.
    pub follow_forks: bool,
    /// A command to start under memprof (then no pid, comm or cgroup).
    pub command: Vec<OsString>,
}

/// Sizes of the BPF maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most live allocations tracked at once.
    pub max_live: u32,
    /// Most distinct call stacks kept.
    pub max_stacks: u32,
}

impl Limits {
    /// The default `max_stacks` of runs that may record the whole machine
    /// (system-wide, `--comm`, `--cgroup`): every process's stacks are
    /// distinct, and many processes share the map.
    pub const MACHINE_WIDE_MAX_STACKS: u32 = 1 << 16;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_live: defaults::MAX_LIVE,
            max_stacks: defaults::MAX_STACKS,
        }
    }
}

/// Recording 1 allocation call in `rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// At least 2.
    pub rate: u32,
    /// How the recorded calls are chosen.
    pub by: SampleBy,
}

impl Sampling {
    /// The length of a sampling window ([`SampleBy::Window`]).
    pub const WINDOW: Duration = Duration::from_millis(2);

    /// The smallest rate that samples.
    pub const MIN_RATE: u32 = 2;

    /// With [`SampleBy::Window`]: how long each window lasts.
    pub fn window(&self) -> Option<Duration> {
        (self.by == SampleBy::Window).then_some(Sampling::WINDOW)
    }
}

/// How sampling chooses the calls it records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SampleBy {
    /// Each call independently, with probability 1/rate.
    #[default]
    Call,
    /// Every call made during random windows covering 1/rate of the time.
    Window,
}

/// Knobs that only benchmarks turn: they measure parts of the cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bench {
    /// Attach every probe but record nothing (the programs return at once).
    pub floor: bool,
    /// Put every probe on the first instruction of its function instead of
    /// the cheapest equivalent one.
    pub probe_at_entry: bool,
}
