//! The plain data that flows from the snapshot to the renderers.
//!
//! A [`Report`] is what one profiling run found. It is also the JSON schema
//! (`--format json`), so every field is documented and changes bump
//! [`SCHEMA_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the JSON schema written by `--format json`.
///
/// - 3: [`Stack::walk`] and [`Stack::truncation`] (how each stack was walked
///   and why it ended early), [`Frame::module_offset`] (where in its module
///   a frame is, so that frames without a name still read `module+0x...`).
///   Also [`Report::allocations`], [`Report::peak`] and [`Report::timeline`],
///   optional (absent in sampled runs and older reports).
/// - 2: [`Report::processes`], [`Report::selection`] and [`Stack::pid`] for
///   runs over many processes; [`Report::sampling`] (a reader of version 1
///   would take sampled estimates for exact figures).
/// - 1: the first version.
pub const SCHEMA_VERSION: u32 = 3;

/// Everything one run of memprof found about one target, or about the
/// processes of a run over many ([`Report::processes`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub version: u32,
    /// The profiled process. In a run over many processes, `pid` is 0, `comm`
    /// says how many processes held memory and `allocator` lists the
    /// allocators probed; each process is in [`Report::processes`].
    pub target: Target,
    /// In a run over many processes: which ones were recorded, as given on
    /// the command line (`system-wide`, `pids 12, 34`, `comm ~ ^nginx`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    /// In a run over many processes: every process that held outstanding
    /// memory at the end, most bytes first. Its stacks carry its pid
    /// ([`Stack::pid`]) and come in the same order, largest first within each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<Process>,
    /// The machine it ran on.
    #[serde(default, skip_serializing_if = "Host::is_empty")]
    pub host: Host,
    /// When probing started, in seconds since the Unix epoch.
    pub start_unix_secs: f64,
    /// How long the probes were attached, in seconds.
    pub duration_secs: f64,
    /// Sum over all stacks (including the stack-lost bucket).
    pub totals: Totals,
    /// Outstanding allocations grouped by call stack, largest `bytes` first.
    pub stacks: Vec<Stack>,
    /// Counters of everything the probes gave up on or found surprising.
    pub stats: Stats,
    /// `--min-age`: only allocations at least this old at the end were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_secs: Option<f64>,
    /// With `--min-age`: the outstanding allocations left out for being younger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub younger: Option<Totals>,
    /// `--interval`: seconds between the snapshots in [`Stack::growth`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<f64>,
    /// Outstanding allocations left out because their memory went away with
    /// the program that held them: at an exec, or at the process's exit.
    #[serde(default, skip_serializing_if = "Released::is_empty")]
    pub released: Released,
    /// `--sample-rate N`: the figures are estimates from 1-in-N sampling (see
    /// [`Sampling`]). Absent when every allocation was tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// `--mmap`: anonymous mappings (mmap with `MAP_ANONYMOUS`, and their
    /// mremaps) still mapped at the end, apart from the heap. Large blocks
    /// of glibc's malloc are mapped this way, so they are in both. Absent
    /// without `--mmap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmap: Option<SourceReport>,
    /// `--kernel`: kernel slab objects allocated on the target's behalf and
    /// not freed at the end, by kernel stack. Absent without `--kernel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<SourceReport>,
    /// Where each allocator probe went (absent from reports of earlier
    /// builds, and from merged reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbePlacement>,
    /// Every allocation made while recording, freed or not, by stack (full
    /// tracking only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<Allocations>,
    /// The moment the outstanding total was highest, and what held it then
    /// (full tracking only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<Peak>,
    /// Outstanding bytes and resident memory sampled through the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
}

/// Where the probes of one allocator function went, and whether the kernel
/// emulates the probed instruction (cheap) or single-steps it (a second
/// trap per call).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePlacement {
    /// The file, as the target sees it.
    pub library: String,
    /// The probed names at that address.
    pub functions: Vec<String>,
    /// Bytes from the function's entry to the probed instruction.
    pub offset: u64,
    /// The probed instruction's mnemonic (`jne`, `push`, ...).
    pub instruction: String,
    /// True when the kernel emulates the probed instruction.
    pub emulated: bool,
    /// Why the probe could not go to a later, emulated instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The arguments the probe reads from another register than the calling
    /// convention's (`argument 1 in rsi`): the instructions it was moved past
    /// copied them there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// What one optional source (`--mmap`, `--kernel`) found, reported apart
/// from the heap: its figures are never added to [`Report::totals`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// What the source measures and how it overlaps with the heap, in one paragraph.
    pub description: String,
    /// Sum over all its stacks (including those below `--min-size`).
    pub totals: Totals,
    /// Outstanding memory by call stack (user stacks for mmap, kernel stacks
    /// for kernel), largest first. For mmap a count is a number of address ranges.
    pub stacks: Vec<Stack>,
    /// The source's own counters, by name (see the text report for their meaning).
    pub stats: BTreeMap<String, u64>,
    /// Left out because the program that held it ended (exec, or exit
    /// without `--at-exit`).
    #[serde(default, skip_serializing_if = "Totals::is_zero")]
    pub released: Totals,
}

impl Report {
    /// The label of the process of `stack` in a run over many processes
    /// (`comm (pid)`), for the root frame of flame graphs; None otherwise.
    pub fn process_label(&self, stack: &Stack) -> Option<String> {
        let pid = stack.pid?;
        Some(
            self.processes
                .iter()
                .find(|p| p.pid == pid)
                .map(Process::label)
                .unwrap_or_else(|| format!("pid {pid}")),
        )
    }
}

/// How the figures of a sampled run (`--sample-rate N`) were estimated.
///
/// # Estimates
/// Each allocation call was recorded with probability 1/N, independently of
/// every other (a random draw per call, in the kernel). Every recorded block
/// still outstanding stands for N blocks: the bytes and counts of each stack,
/// [`Report::totals`], [`Report::younger`], [`Report::released`] and the
/// [`Growth`] series are the recorded figures times N, which are unbiased
/// (Horvitz-Thompson) estimates of the true figures. [`Report::stats`] are not
/// scaled: they count what the probes saw; the frees of blocks that were not
/// sampled are not counted at all (not even as `frees_unknown`).
///
/// # Error
/// A stack that holds n outstanding blocks of sizes s_1..s_n has k of them
/// recorded, k ~ Binomial(n, 1/N). So:
/// - the estimated count N·k has a standard error of sqrt(n·(N-1)): a relative
///   standard error of sqrt((N-1)/n), which the report estimates from what it
///   saw as sqrt((1-1/N)/k), about 1/sqrt(k) ([`Sampling::relative_error`]).
///   With k = 100 recorded blocks a stack's figure is within about ±10% (one
///   standard error; within ±20% 19 times in 20);
/// - the estimated bytes have a standard error of sqrt((N-1)·Σs_i²), estimated
///   as sqrt(N·(N-1)·Σ s_i²) over the recorded blocks: the count's relative
///   error when the sizes are equal, more when they vary;
/// - a stack is missing from the report with probability (1-1/N)^n, about
///   e^(-n/N): stacks with far fewer than N outstanding blocks are often not
///   seen at all, and the figures of stacks with a few recorded blocks are rough.
///
/// # Known bias
/// glibc moves or frees the old block of `realloc(p, n)` without calling the
/// probed `free`, so an unsampled realloc forgets `p` at its entry (else a
/// sampled block realloc'ed by an unsampled call would stay outstanding
/// forever). When that realloc fails (returns NULL, `p` stays allocated), `p`
/// is no longer counted: the estimates are low by the sampled blocks whose
/// realloc failed, which is nothing in a program whose reallocs succeed.
///
/// # Sampling by windows (`--sample-by window`)
/// Every call made during short windows at random times was recorded, and no
/// other. The figures are the recorded ones times [`Sampling::scale`], the
/// run's length over the windows' total length. The calls of one window are
/// recorded together, so the standard errors are those of a cluster sample:
/// sqrt(s·(s-1)·Σ x_w²) over the windows w, where x_w is what the window
/// recorded (bytes, or blocks) and s the scale. Blocks allocated in bursts
/// have larger errors than with sampling by call, blocks allocated steadily
/// about the same. The known bias of `realloc` is the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// N: each allocation call was recorded with probability 1/N (by call),
    /// or the windows were to cover 1/N of the run (by window).
    pub rate: u64,
    /// How calls were chosen.
    #[serde(default)]
    pub method: SampleMethod,
    /// What every recorded figure was multiplied by: N by call; by window,
    /// the target's frees over those it made in windows (what the windows
    /// saw of its work, however much recording slowed it down there), or
    /// with too few frees the run's length over the windows' (see
    /// [`SampleWindows`]). 0 in reports older than this field, where it is
    /// `rate`.
    #[serde(default)]
    pub scale: f64,
    /// By window: how many there were and how long they were open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<SampleWindows>,
    /// Outstanding blocks actually recorded in [`Report::totals`] (k, before scaling).
    pub sampled_count: u64,
    /// Estimated standard error of `totals.bytes`, in bytes.
    pub bytes_stderr: f64,
    /// Estimated standard error of `totals.count`.
    pub count_stderr: f64,
}

/// How a sampled run chose the calls it recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleMethod {
    /// Each call independently, with probability 1/N.
    #[default]
    Call,
    /// Every call made during random windows.
    Window,
}

/// The windows of a run sampled by window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleWindows {
    /// How many windows opened.
    pub count: u64,
    /// How long they were open in all, in seconds.
    pub open_secs: f64,
    /// Links that could not be made for a window (a process that exited
    /// meanwhile, or a kernel error): those windows recorded nothing there.
    #[serde(default)]
    pub failed_links: u64,
    /// The run's length over the windows': the scale of a target that runs
    /// as fast in the windows as outside them, or of allocations that follow
    /// the clock. 0 in reports older than this field.
    #[serde(default)]
    pub time_scale: f64,
    /// The target's frees while recording, and those made in windows (`free`
    /// stays probed between windows). 0 in reports older than these fields.
    #[serde(default)]
    pub frees: u64,
    #[serde(default)]
    pub frees_in_windows: u64,
    /// How fast the target ran in the windows against outside them (its
    /// frees per second in windows over outside): below 1 when recording
    /// slowed it down. None without frees on either side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace: Option<f64>,
    /// True when [`Sampling::scale`] is the target's frees over its frees in
    /// windows (enough frees were seen in the windows), false when it is
    /// `time_scale`.
    #[serde(default)]
    pub scaled_by_frees: bool,
}

/// How one stack's figures were estimated, in a sampled run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StackEstimate {
    /// Outstanding blocks recorded (before scaling).
    pub recorded: u64,
    /// Estimated standard error of the stack's bytes.
    pub bytes_stderr: f64,
    /// Estimated standard error of the stack's count.
    pub count_stderr: f64,
}

impl Sampling {
    /// What every recorded figure was multiplied by.
    pub fn factor(&self) -> f64 {
        if self.scale > 0.0 {
            self.scale
        } else {
            self.rate as f64
        }
    }

    /// Estimated relative standard error of the count (and, for blocks of
    /// equal sizes, of the bytes) of a stack with `estimated_count`
    /// outstanding blocks (k = estimated_count / N recorded): sqrt((1-1/N)/k).
    /// `None` when nothing was recorded.
    pub fn relative_error(&self, estimated_count: u64) -> Option<f64> {
        let rate = self.rate.max(1) as f64;
        let k = estimated_count as f64 / rate;
        (k > 0.0).then(|| ((1.0 - 1.0 / rate) / k).sqrt())
    }

    /// The sampling of a report merged from reports with these samplings:
    /// `None` when none was sampled; else the largest rate, the recorded
    /// blocks added up and the standard errors combined (as independent).
    pub fn merged(samplings: impl IntoIterator<Item = Option<Sampling>>) -> Option<Sampling> {
        samplings.into_iter().flatten().reduce(|a, b| Sampling {
            rate: a.rate.max(b.rate),
            method: if a.method == b.method {
                a.method
            } else {
                SampleMethod::Window
            },
            scale: a.factor().max(b.factor()),
            windows: match (a.windows, b.windows) {
                (Some(x), Some(y)) => Some(SampleWindows {
                    count: x.count + y.count,
                    open_secs: x.open_secs + y.open_secs,
                    failed_links: x.failed_links + y.failed_links,
                    time_scale: x.time_scale.max(y.time_scale),
                    frees: x.frees + y.frees,
                    frees_in_windows: x.frees_in_windows + y.frees_in_windows,
                    pace: None,
                    scaled_by_frees: x.scaled_by_frees || y.scaled_by_frees,
                }),
                (x, y) => x.or(y),
            },
            sampled_count: a.sampled_count.saturating_add(b.sampled_count),
            bytes_stderr: a.bytes_stderr.hypot(b.bytes_stderr),
            count_stderr: a.count_stderr.hypot(b.count_stderr),
        })
    }
}

/// Allocations that were outstanding when the program holding them ended.
/// They are not leaks: the kernel took the whole address space back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// Made by the program(s) that the target replaced by calling exec.
    #[serde(default)]
    pub at_exec: Totals,
    /// Held by the target when it exited (left out unless `--at-exit`).
    #[serde(default)]
    pub at_exit: Totals,
}

impl Released {
    /// True when nothing was left out.
    pub fn is_empty(&self) -> bool {
        *self == Released::default()
    }
}

/// The machine a report was taken on: with the pid and the process start
/// time, it tells reports of many hosts apart (`memprof merge`, profile stores).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// `uname -n`.
    #[serde(default)]
    pub hostname: String,
    /// `/proc/sys/kernel/random/boot_id`: changes at every boot.
    #[serde(default)]
    pub boot_id: String,
    /// `uname -r`.
    #[serde(default)]
    pub kernel: String,
}

impl Host {
    /// The machine memprof runs on.
    pub fn this() -> Host {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Host {
            hostname: read("/proc/sys/kernel/hostname"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            kernel: read("/proc/sys/kernel/osrelease"),
        }
    }

    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        *self == Host::default()
    }
}

/// The process a report is about.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub pid: u32,
    /// Short command name (`/proc/PID/comm`).
    pub comm: String,
    /// Full command line, arguments joined by spaces.
    pub cmdline: String,
    /// The allocator library that was probed (path inside the target's mount namespace).
    pub allocator: String,
    /// Set when the process exited before the end of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_after_secs: Option<f64>,
    /// Launch mode: the command's exit status as a shell gives it (its exit
    /// code, or 128 + the signal that killed it), when it ended during the
    /// run. memprof exits with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// When the process started, in seconds since the Unix epoch. With the
    /// pid, it names the process even after the pid is reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_secs: Option<f64>,
    /// How many times the process called exec during the run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub execs: u64,
    /// Seconds into the run of its latest exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_after_secs: Option<f64>,
}

/// One process of a run over many, with what it held at the end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Short command name (`/proc/PID/comm`), at the end of the run or when
    /// memprof last saw the process.
    pub comm: String,
    /// Full command line, arguments joined by spaces.
    #[serde(default)]
    pub cmdline: String,
    /// The allocator probed for it (see [`Target::allocator`]); empty when
    /// unknown (a process that exited before memprof read its mappings).
    #[serde(default)]
    pub allocator: String,
    /// When the process started, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_secs: Option<f64>,
    /// True when the process exited during the run (its memory is listed
    /// only with `--at-exit`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
    /// How many times the process called exec during the run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub execs: u64,
    /// Outstanding bytes and allocations of its listed and unlisted stacks.
    pub totals: Totals,
}

impl Process {
    /// `comm (pid)`: how flame graphs and headings name the process.
    pub fn label(&self) -> String {
        format!("{} ({})", self.comm, self.pid)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Outstanding bytes and allocation count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub bytes: u64,
    pub count: u64,
}

impl Totals {
    /// True when nothing is counted.
    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// Outstanding memory attributed to one call stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    /// Outstanding bytes (sum of requested sizes) allocated from this stack.
    pub bytes: u64,
    /// Number of outstanding allocations from this stack.
    pub count: u64,
    /// Age of the oldest outstanding allocation, in seconds at the end of the run.
    pub oldest_age_secs: f64,
    /// Median age of the outstanding allocations, in seconds.
    pub median_age_secs: f64,
    /// Frames, innermost first: `frames[0]` is the code that called the allocator.
    /// Empty when the kernel could not walk the stack.
    pub frames: Vec<Frame>,
    /// True when the walk ended before reaching the start of the program or
    /// of a thread (`__libc_start_call_main`, `start_thread`, ...): the stack
    /// was probably cut short by code built without frame pointers, so its
    /// outer frames are missing (or, past the first frame, wrong).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// How the stack was walked: from call frame information, by frame
    /// pointer, or both (absent from reports of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub walk: Option<Walk>,
    /// When [`Stack::truncated`]: why the walk ended where it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation: Option<Truncation>,
    /// With `--interval`: how this stack's outstanding bytes evolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth: Option<Growth>,
    /// In a run over many processes: the process (in [`Report::processes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// In a sampled run: how `bytes` and `count` were estimated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<StackEstimate>,
    /// The allocator that served the blocks: `pymalloc` for CPython's small
    /// objects; absent for the malloc family (malloc, calloc, realloc,
    /// `operator new`, ...).
    #[serde(default, skip_serializing_if = "HeapAllocator::is_malloc")]
    pub allocator: HeapAllocator,
}

/// Which allocator served the blocks of a stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeapAllocator {
    /// The malloc family of the process's allocator (glibc, jemalloc, ...).
    #[default]
    Malloc,
    /// CPython's allocator of small objects (1 to 512 bytes), in its own arenas.
    Pymalloc,
    /// pymalloc's arenas (1 MiB from CPython 3.10, 256 KiB before), in an
    /// interpreter that inlines pymalloc: each under the allocation that
    /// opened it.
    PymallocArena,
}

impl HeapAllocator {
    /// True for the malloc family (not said in reports).
    pub fn is_malloc(&self) -> bool {
        *self == HeapAllocator::Malloc
    }

    /// `malloc`, `pymalloc` or `pymalloc arena`.
    pub fn label(self) -> &'static str {
        match self {
            HeapAllocator::Malloc => "malloc",
            HeapAllocator::Pymalloc => "pymalloc",
            HeapAllocator::PymallocArena => "pymalloc arena",
        }
    }
}

/// How a stack was walked (`--unwind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Walk {
    /// Every frame from call frame information (`.eh_frame`): complete
    /// stacks without frame pointers.
    Cfi,
    /// Every frame by frame pointer (`--unwind fp`, or code without a table).
    FramePointers,
    /// Some frames from call frame information, others by frame pointer
    /// (code without a table, such as JIT code).
    Mixed,
    /// By frame pointer because the process had no unwind table yet (it
    /// had just started or called exec).
    NoTable,
}

impl Walk {
    /// The word the text report shows (`cfi`, `frame pointers`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Walk::Cfi => "cfi",
            Walk::FramePointers => "frame pointers",
            Walk::Mixed => "cfi + frame pointers",
            Walk::NoTable => "frame pointers, no table yet",
        }
    }
}

/// Why a stack's walk ended before the start of the program or thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Truncation {
    /// The next return address lay in no executable mapping (it was not
    /// recorded).
    NotMapped,
    /// No call frame information covers the last frame's code.
    NoCfi,
    /// A rule the unwinder cannot follow (a DWARF expression).
    UnsupportedRule,
    /// The stack could not be read.
    ReadFailed,
    /// More frames than a stack keeps (126).
    TooDeep,
    /// A frame pointer that did not move up the stack.
    BadFramePointer,
    /// The walk by frame pointer ended without reaching `main` or a
    /// thread's start: code without frame pointers on the way.
    FramePointers,
    /// A cause this version of memprof does not name.
    #[serde(other)]
    Other,
}

impl Truncation {
    /// What the text report says at the end of the stack.
    pub fn describe(self) -> &'static str {
        match self {
            Truncation::NotMapped => "the next return address is in no code of the process",
            Truncation::NoCfi => "no call frame information for this code",
            Truncation::UnsupportedRule => "an unwind rule memprof cannot follow",
            Truncation::ReadFailed => "the stack could not be read",
            Truncation::TooDeep => "more frames than a stack keeps",
            Truncation::BadFramePointer => "a frame pointer that does not move up the stack",
            Truncation::FramePointers => {
                "walked by frame pointer, before main or a thread's start: no frame pointers?"
            }
            Truncation::Other => "the walk ended early",
        }
    }
}

/// Outstanding bytes of one stack over the run, from periodic snapshots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// Outstanding bytes at each snapshot, the last one at the end of the run.
    pub samples: Vec<u64>,
    /// Least-squares slope of `samples` over time, in bytes per second.
    pub bytes_per_sec: f64,
    /// True when the bytes kept rising since the stack first held memory:
    /// higher at the end than at that first snapshot, within 10% of the
    /// highest snapshot at the end, and rising in at least half of the intervals.
    pub growing: bool,
}

/// The name of [`Frame::no_room`].
pub const NO_ROOM_FRAME: &str = "[no room for the stack: raise --max-stacks]";

/// One symbolized frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Absolute address in the target process.
    pub addr: u64,
    /// Demangled function name, when it could be resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Binary or library containing the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Where the address is in [`Frame::module`]: its ELF virtual address
    /// (what `nm`, `objdump` and `addr2line -e MODULE` use), the same in
    /// every run whatever the load address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_offset: Option<u64>,
    /// Source file, when debug information was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Source line, when debug information was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// True for frames of functions inlined into the next frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl Frame {
    /// The one frame of the allocations counted without their stack because
    /// the stack maps had no room for it (`stats.stack_no_room`).
    pub fn no_room() -> Frame {
        Frame {
            addr: 0,
            function: Some(NO_ROOM_FRAME.to_string()),
            module: None,
            module_offset: None,
            file: None,
            line: None,
            inlined: false,
        }
    }

    /// The name shown for this frame: the function, else `module+0xoffset`
    /// (the ELF address in the module), else `module@0xaddress` (reports of
    /// earlier versions), else the address.
    pub fn display_name(&self) -> String {
        match (&self.function, self.module_name()) {
            (Some(f), _) => f.clone(),
            (None, Some(m)) => match self.module_offset {
                Some(offset) => format!("{m}+{offset:#x}"),
                None => format!("{m}@{:#x}", self.addr),
            },
            (None, None) => format!("{:#x}", self.addr),
        }
    }

    /// The file name of [`Frame::module`], without its directory.
    pub fn module_name(&self) -> Option<&str> {
        let m = self.module.as_deref()?;
        Some(m.rsplit('/').next().unwrap_or(m))
    }

    /// `file:line` when known.
    pub fn location(&self) -> Option<String> {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => Some(format!("{f}:{l}")),
            (Some(f), None) => Some(f.clone()),
            _ => None,
        }
    }
}

/// What the probes counted besides the allocations themselves.
///
/// Every path on which memprof loses or cannot attribute data increments one of
/// these, so a report can say how complete it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Successful allocations seen.
    pub allocs: u64,
    /// Frees (and reallocs that released a block) of tracked pointers.
    pub frees: u64,
    /// Allocation calls that returned NULL (nothing recorded).
    pub failed_allocs: u64,
    /// Frees of pointers allocated before memprof attached (or lost): not errors.
    pub frees_unknown: u64,
    /// Allocator calls made from inside another allocator call (counted once, at the outer call).
    pub nested_calls: u64,
    /// Allocations not tracked because the live-allocation map was full.
    pub live_map_full: u64,
    /// Bytes of the allocations not tracked because the live-allocation map was full.
    pub live_map_full_bytes: u64,
    /// Allocations whose stack could not be captured or stored (counted under an unknown stack).
    pub stack_lost: u64,
    /// Allocations not aggregated because the per-stack map was full.
    pub stack_map_full: u64,
    /// Allocations counted without their stack (under a stack that says
    /// so) because the stack maps had no room for it: in the totals.
    #[serde(default)]
    pub stack_no_room: u64,
    /// Return probes that fired without a matching entry (attached mid-call).
    pub return_without_entry: u64,
    /// Allocator entries not tracked because the kernel could not allocate
    /// the thread's call record (task storage). The name is that of the
    /// per-thread map of earlier versions.
    pub pending_map_full: u64,
    /// Per-thread entries replaced because their return never came.
    pub pending_stale: u64,
    /// Allocations whose stack hashed like a different stored stack (so were
    /// counted under that one). Expected to stay 0: the hash has 63 bits.
    #[serde(default)]
    pub stack_collisions: u64,
    /// Stacks freed during the run because nothing outstanding used them any
    /// more, which keeps the stack maps from filling up on long runs.
    #[serde(default)]
    pub stacks_freed: u64,
    /// `--follow-forks`: children of recorded processes that could not be
    /// added to the recorded set (it was full): their allocations are missing.
    #[serde(default)]
    pub forks_not_followed: u64,
    /// Exits of recorded processes that could not be noted: such a process
    /// may be reported as alive at the end.
    #[serde(default)]
    pub exits_not_noted: u64,
    /// Allocations and frees not sent to the replay that finds the peak (its
    /// ring buffer was full): the peak is then approximate ([`Peak::exact`]).
    /// Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heap_events_lost: u64,
    /// How stacks were walked (`--unwind`): see [`UnwindStats`].
    #[serde(flatten)]
    pub unwind: UnwindStats,
    /// Python frames of CPython processes: see [`PythonStats`].
    #[serde(flatten)]
    pub python: PythonStats,
}

/// Allocations of CPython processes and their Python frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonStats {
    /// Allocations whose Python frames were read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub py_stacks: u64,
    /// Allocations by a thread whose Python thread state was not found
    /// (a thread that never ran Python): native frames only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub py_no_thread: u64,
    /// Python frame chains cut short where a frame could not be read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub py_read_failed: u64,
    /// Python frame chains cut short at the most frames kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub py_too_deep: u64,
}

impl PythonStats {
    /// Every counter with its name, for renderers.
    pub fn named(&self) -> [(&'static str, u64); 4] {
        [
            ("py_stacks", self.py_stacks),
            ("py_no_thread", self.py_no_thread),
            ("py_read_failed", self.py_read_failed),
            ("py_too_deep", self.py_too_deep),
        ]
    }

    /// The sum of both, counter by counter.
    pub fn merged(&self, other: &PythonStats) -> PythonStats {
        PythonStats {
            py_stacks: self.py_stacks.saturating_add(other.py_stacks),
            py_no_thread: self.py_no_thread.saturating_add(other.py_no_thread),
            py_read_failed: self.py_read_failed.saturating_add(other.py_read_failed),
            py_too_deep: self.py_too_deep.saturating_add(other.py_too_deep),
        }
    }
}

/// Stacks walked from unwind tables, and why some ended early (each such
/// stack is complete up to its last frame, and marked truncated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnwindStats {
    /// Allocations whose stack was walked from unwind tables.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unwind_cfi: u64,
    /// Allocations of processes without tables yet, walked by frame pointer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unwind_no_table: u64,
    /// Walks ended at a return address in no executable mapping.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unwind_not_mapped: u64,
    /// Walks ended at code without call frame information.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unwind_no_cfi: u64,
    /// Walks ended at a rule the unwinder cannot follow.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unwind_unsupported: u64,
    /// Walks ended because the stack could not be read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unwind_read_failed: u64,
    /// Walks ended at the most frames a stack keeps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unwind_too_deep: u64,
}

impl UnwindStats {
    /// Every counter with its name, for renderers.
    pub fn named(&self) -> [(&'static str, u64); 7] {
        [
            ("unwind_cfi", self.unwind_cfi),
            ("unwind_no_table", self.unwind_no_table),
            ("unwind_not_mapped", self.unwind_not_mapped),
            ("unwind_no_cfi", self.unwind_no_cfi),
            ("unwind_unsupported", self.unwind_unsupported),
            ("unwind_read_failed", self.unwind_read_failed),
            ("unwind_too_deep", self.unwind_too_deep),
        ]
    }

    /// The sum of both, counter by counter.
    pub fn merged(&self, other: &UnwindStats) -> UnwindStats {
        UnwindStats {
            unwind_cfi: self.unwind_cfi.saturating_add(other.unwind_cfi),
            unwind_no_table: self.unwind_no_table.saturating_add(other.unwind_no_table),
            unwind_not_mapped: self
                .unwind_not_mapped
                .saturating_add(other.unwind_not_mapped),
            unwind_no_cfi: self.unwind_no_cfi.saturating_add(other.unwind_no_cfi),
            unwind_unsupported: self
                .unwind_unsupported
                .saturating_add(other.unwind_unsupported),
            unwind_read_failed: self
                .unwind_read_failed
                .saturating_add(other.unwind_read_failed),
            unwind_too_deep: self.unwind_too_deep.saturating_add(other.unwind_too_deep),
        }
    }
}

impl Stats {
    /// True when some allocation was not counted in the totals, so they are lower bounds.
    pub fn lost_data(&self) -> bool {
        self.live_map_full > 0
            || self.stack_map_full > 0
            || self.pending_map_full > 0
            || self.forks_not_followed > 0
    }

    /// Every counter with its name, in a fixed order, for renderers.
    pub fn named(&self) -> [(&'static str, u64); 17] {
        [
            ("allocs", self.allocs),
            ("frees", self.frees),
            ("failed_allocs", self.failed_allocs),
            ("frees_unknown", self.frees_unknown),
            ("nested_calls", self.nested_calls),
            ("live_map_full", self.live_map_full),
            ("live_map_full_bytes", self.live_map_full_bytes),
            ("stack_lost", self.stack_lost),
            ("stack_map_full", self.stack_map_full),
            ("stack_no_room", self.stack_no_room),
            ("return_without_entry", self.return_without_entry),
            ("pending_map_full", self.pending_map_full),
            ("pending_stale", self.pending_stale),
            ("stack_collisions", self.stack_collisions),
            ("stacks_freed", self.stacks_freed),
            ("forks_not_followed", self.forks_not_followed),
            ("exits_not_noted", self.exits_not_noted),
        ]
    }
}

/// The allocation profile: every allocation made while recording, freed or
/// not, by stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Allocations {
    /// A block freed within this many seconds of its allocation is a temporary.
    pub temporary_secs: f64,
    /// Over every stack.
    pub totals: AllocTotals,
    /// Most bytes allocated first.
    pub stacks: Vec<AllocStack>,
}

/// Allocations made, and how many of them were temporaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocTotals {
    /// Allocations made while recording (a realloc that moves or resizes a
    /// block counts as one).
    pub count: u64,
    /// Their requested bytes.
    pub bytes: u64,
    /// Those freed within [`Allocations::temporary_secs`].
    pub temporary: u64,
    pub temporary_bytes: u64,
}

/// The allocations of one stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocStack {
    #[serde(flatten)]
    pub totals: AllocTotals,
    /// What of it was still outstanding at the end.
    pub outstanding: Totals,
    /// Innermost first, as in [`Stack::frames`].
    pub frames: Vec<Frame>,
    /// In a run over many processes: the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// The highest outstanding total of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// Seconds into the run.
    pub at_secs: f64,
    /// Outstanding then (over every recorded process).
    pub totals: Totals,
    /// Exact: every allocation and free was replayed in order. False when
    /// events were lost (`events_lost`): the figures are then approximate.
    pub exact: bool,
    /// Events the ring buffer had no room for.
    pub events_lost: u64,
    /// Events replayed.
    pub events: u64,
    /// The stacks that held memory then, most bytes first.
    pub stacks: Vec<PeakStack>,
}

/// What one stack held at the peak.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeakStack {
    pub bytes: u64,
    pub count: u64,
    pub frames: Vec<Frame>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Outstanding memory and resident memory over the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Seconds between samples.
    pub every_secs: f64,
    /// In order; the last one at the end of the run.
    pub samples: Vec<TimelineSample>,
    /// The stacks that held the most at any sample, with their bytes at
    /// each sample (the same length as `samples`).
    pub stacks: Vec<TimelineStack>,
}

/// One moment of the [`Timeline`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineSample {
    /// Seconds into the run.
    pub at_secs: f64,
    /// Outstanding bytes and allocations (every recorded process).
    pub bytes: u64,
    pub count: u64,
    /// Resident set size of the recorded processes (`/proc/PID/statm`), when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// One stack's outstanding bytes over the [`Timeline`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineStack {
    pub bytes: Vec<u64>,
    pub frames: Vec<Frame>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}
