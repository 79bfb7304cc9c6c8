//! Types shared by the memprof BPF programs and user space.
//!
//! Everything here is `#[repr(C)]`, made of integers only, and has no hidden
//! padding (asserted at compile time), so both sides agree on the layout.
#![no_std]

pub mod python;
pub mod unwind;

/// Key of the `LIVE` map: a block is named by its process and its address
/// (one run may record many processes, whose address spaces overlap).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LiveKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}
const _: () = assert!(core::mem::size_of::<LiveKey>() == 16);

/// What happened to a recorded process during the run, in `PROCS` by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvents {
    /// How many times it called exec.
    pub execs: u64,
    /// `bpf_ktime_get_ns()` of its latest exec: older allocations belonged to
    /// the program it replaced.
    pub last_exec_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ProcEvents>() == 16);

/// A live allocation, keyed by its process and address in the `LIVE` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocInfo {
    /// Requested size in bytes.
    pub size: u64,
    /// `bpf_ktime_get_ns()` when the allocation returned.
    pub timestamp_ns: u64,
    /// Key in the `STACKS` map (a hash of the frames, never negative), or
    /// [`STACK_LOST`] when the stack could not be captured or stored.
    pub stack_id: i64,
}
const _: () = assert!(core::mem::size_of::<AllocInfo>() == 24);

/// Outstanding bytes and allocations of one stack, in the per-CPU `AGG`
/// map: each CPU adds what is allocated on it and subtracts what is freed on
/// it, so a CPU's own figures may wrap below zero; their wrapping sum over the
/// CPUs is the stack's ([`StackAgg::sum`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackAgg {
    pub bytes: u64,
    pub count: u64,
    /// `bpf_ktime_get_ns()` of the latest allocation from this stack on this
    /// CPU. User space frees a stack only when it has had nothing outstanding
    /// for a while.
    pub last_ns: u64,
    /// Allocations from this stack on this CPU since the entry was made
    /// (never decreases): the first one on a CPU makes sure the frames are
    /// stored.
    pub allocs: u64,
    /// Bytes of [`Self::allocs`] (never decreases): with it, the allocation
    /// profile (every allocation made while recording, freed or not).
    pub alloc_bytes: u64,
    /// Allocations from this stack freed on this CPU within
    /// [`globals::TEMPORARY_NS`] of their allocation (temporaries), and their bytes.
    pub temps: u64,
    pub temp_bytes: u64,
    /// The process whose allocations these are (a stack's id hashes its
    /// process in; 0 for the reserved entries, which every process shares).
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<StackAgg>() == 64);

impl StackAgg {
    /// The stack's figures from its per-CPU values: bytes and count added
    /// up (wrapping), the latest time, every allocation.
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a StackAgg>) -> StackAgg {
        values
            .into_iter()
            .fold(StackAgg::default(), |s, v| StackAgg {
                bytes: s.bytes.wrapping_add(v.bytes),
                count: s.count.wrapping_add(v.count),
                last_ns: s.last_ns.max(v.last_ns),
                allocs: s.allocs.wrapping_add(v.allocs),
                alloc_bytes: s.alloc_bytes.wrapping_add(v.alloc_bytes),
                temps: s.temps.wrapping_add(v.temps),
                temp_bytes: s.temp_bytes.wrapping_add(v.temp_bytes),
                tgid: s.tgid.max(v.tgid),
                _pad: 0,
            })
    }
}

/// An allocator call between its entry and its return, keyed by thread in `PENDING`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCall {
    /// Requested size in bytes (already multiplied out for calloc/reallocarray).
    pub size: u64,
    /// Stack pointer at entry: a call made from inside this one has a lower one.
    pub sp: u64,
    /// realloc: the old pointer; posix_memalign: where the result will be stored.
    pub ptr: u64,
    /// Allocator calls entered from inside this one (or tail-called by it) and
    /// not yet returned: their returns are not this call's.
    pub depth: u64,
    /// Nonzero when the return records the block. Always set when every call
    /// is tracked; with sampling, 0 marks an unsampled call that is only
    /// pending so that the probed calls glibc makes from inside it (realloc(NULL,
    /// n) calls malloc, reallocarray calls realloc, ...) do not get a second
    /// chance to be sampled.
    pub record: u32,
    /// With sampling by windows: the window ([`control::WINDOW`]) the call
    /// entered in, 0 outside any. A call still pending from an earlier window
    /// lost its return when that window's probes were detached: it is stale,
    /// whatever the stack pointers say.
    pub window: u32,
    /// realloc: the old block, taken out of `LIVE` at the entry (so that
    /// another thread that gets its address before this call returns is not
    /// confused with it), and put back if the call fails. Its `stack_id` is
    /// meaningful only when `old_tracked` is nonzero.
    pub old: AllocInfo,
    /// Nonzero when `old` was tracked.
    pub old_tracked: u64,
}
const _: () = assert!(core::mem::size_of::<PendingCall>() == 72);

/// `AllocInfo::stack_id` of allocations whose user stack could not be captured.
pub const STACK_LOST: i64 = -1;

/// `AllocInfo::stack_id` of allocations whose stack found no room in the
/// stack maps (`AGG` was full): they are still counted, for their process,
/// under this id. User space reserves its `AGG` entry (and
/// [`STACK_LOST`]'s) at load time, so that these two always have room.
pub const STACK_NO_ROOM: i64 = -2;

/// `AGG` entries reserved for [`STACK_LOST`] and [`STACK_NO_ROOM`], on top
/// of the stacks it holds.
pub const AGG_RESERVED: u32 = 2;

/// Most frames kept of a user stack (the kernel's `PERF_MAX_STACK_DEPTH`
/// less the word that says how the stack was walked).
pub const MAX_FRAMES: usize = 126;

/// A captured user stack, in the `STACKS` map keyed by a hash of its frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackTrace {
    /// Number of valid entries in `ips`.
    pub len: u64,
    /// How the stack was walked and whether it is complete: see [`unwind::walk`].
    pub walk: u64,
    /// Instruction pointers, innermost first; zero past `len`.
    pub ips: [u64; MAX_FRAMES],
}
const _: () = assert!(core::mem::size_of::<StackTrace>() == 1024);

/// One allocation or free of a recorded block, sent through
/// [`maps::HEAP_EVENTS`] with full tracking so that user space can replay
/// the outstanding total in order and find its peak exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapEvent {
    /// `bpf_ktime_get_ns()` of the event.
    pub timestamp_ns: u64,
    /// The block's requested size.
    pub size: u64,
    /// The block's stack (as in `LIVE`).
    pub stack_id: i64,
    /// The process (tgid).
    pub tgid: u32,
    /// One of [`heap_event`].
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<HeapEvent>() == 32);

/// Kinds of [`HeapEvent`].
pub mod heap_event {
    /// A block entered `LIVE`.
    pub const ALLOC: u32 = 1;
    /// A block left `LIVE` (freed, moved by realloc, or replaced).
    pub const FREE: u32 = 2;
}

/// Names of the maps, shared so that user space and BPF cannot drift apart.
pub mod maps {
    /// `RingBuf` of [`super::HeapEvent`]s (full tracking with
    /// [`super::globals::LOG_EVENTS`]), drained during the run.
    pub const HEAP_EVENTS: &str = "HEAP_EVENTS";
    pub const LIVE: &str = "LIVE";
    pub const AGG: &str = "AGG";
    pub const STACKS: &str = "STACKS";
    pub const PENDING: &str = "PENDING";
    pub const STATS: &str = "STATS";
    /// `Array<u32>` indexed by [`super::control`]: switches user space flips.
    pub const CONTROL: &str = "CONTROL";
    /// `LruHashMap<u32, ProcEvents>`: what happened to each recorded process.
    pub const PROCS: &str = "PROCS";
    /// `HashMap<u32, u32>`: the processes (tgids) recorded with [`super::filter::SET`].
    pub const TARGETS: &str = "TARGETS";
    /// `LruHashMap<u32, u64>`: processes that called exec (tgid -> time), any
    /// process, while [`super::globals::WATCH_EXECS`] is set: user space checks
    /// their new command name (`--comm`).
    pub const EXECS: &str = "EXECS";
    /// `LruHashMap<u32, u64>`: recorded processes that exited while memprof
    /// recorded (tgid -> `bpf_ktime_get_ns()` of the exit of its last
    /// thread). A process not in it was alive when recording stopped.
    pub const EXITS: &str = "EXITS";
    /// Per-CPU `u64` counters of the target's frees with sampling by
    /// windows, indices in [`super::window_frees`].
    pub const WINDOW_FREES: &str = "WINDOW_FREES";
}

/// Entries of the [`maps::WINDOW_FREES`] counters: how fast the target ran
/// in the sampling windows against the whole run. `free` stays probed
/// between windows, so its calls are counted everywhere.
pub mod window_frees {
    /// The target's calls of `free` (and the other releases) while recording.
    pub const ALL: u32 = 0;
    /// Those made while a window was open.
    pub const IN_WINDOWS: u32 = 1;
    /// Number of entries.
    pub const LEN: u32 = 2;
}

/// The per-process share of the stack maps (memprof-ebpf's `share.rs`).
pub mod share {
    /// `HashMap<i64, u32>`: the process (tgid) that stored each stack.
    pub const STACK_OWNERS: &str = "STACK_OWNERS";
    /// `HashMap<u32, u64>`: stacks each process holds.
    pub const PROC_STACKS: &str = "PROC_STACKS";
    /// `Array<u64>` indexed by [`FILL`] and [`ADDED`].
    pub const SHARE_FILL: &str = "SHARE_FILL";
    /// Stacks held at user space's last count.
    pub const FILL: u32 = 0;
    /// Stacks stored since.
    pub const ADDED: u32 = 1;
    /// Entries of `SHARE_FILL`.
    pub const LEN: u32 = 2;
    /// Global `u64`: stacks a process may hold once the maps hold
    /// [`STACK_SHARE_FROM`]; 0: no share.
    pub const STACK_SHARE: &str = "STACK_SHARE";
    /// Global `u64`: stacks the maps hold before shares apply.
    pub const STACK_SHARE_FROM: &str = "STACK_SHARE_FROM";
}

/// Entries of the [`maps::CONTROL`] array.
pub mod control {
    /// Nonzero while the probes record.
    pub const RECORDING: u32 = 0;
    /// With sampling by windows ([`super::globals::SAMPLE_BY_WINDOW`]): the
    /// number of the window open now (1, 2, ...), 0 between windows.
    pub const WINDOW: u32 = 1;
    /// Number of entries.
    pub const LEN: u32 = 2;
}

/// Values of [`globals::FILTER`]: which processes the probes record.
pub mod filter {
    /// The one process [`super::globals::TARGET_TGID`].
    pub const ONE: u32 = 0;
    /// The processes in the `TARGETS` map.
    pub const SET: u32 = 1;
    /// Every process but memprof itself ([`super::globals::SELF_TGID`]).
    pub const ALL: u32 = 2;
}

/// Names of the load-time globals.
pub mod globals {
    /// `u32`: which processes are recorded, one of [`super::filter`].
    pub const FILTER: &str = "FILTER";
    /// `u32`: with [`super::filter::ONE`], the process (tgid) whose calls are recorded.
    pub const TARGET_TGID: &str = "TARGET_TGID";
    /// `u32`: memprof's own tgid, never recorded.
    pub const SELF_TGID: &str = "SELF_TGID";
    /// `u64`: when nonzero, only tasks in this cgroup (v2 id) or below it are
    /// recorded; [`CGROUP_LEVEL`] is its depth under the root.
    pub const CGROUP_ID: &str = "CGROUP_ID";
    /// `u32`: depth of [`CGROUP_ID`] (the root is 0).
    pub const CGROUP_LEVEL: &str = "CGROUP_LEVEL";
    /// `u32`: nonzero to add the children that recorded processes fork to `TARGETS`.
    pub const FOLLOW_FORKS: &str = "FOLLOW_FORKS";
    /// `u32`: nonzero to note every exec in `EXECS`.
    pub const WATCH_EXECS: &str = "WATCH_EXECS";
    /// `u32`: offset of `child_pid` in the `sched_process_fork` tracepoint's
    /// record (from its format file: it moved between kernel versions).
    pub const FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";
    /// `u32`: with sampling, each allocation call is recorded with probability
    /// 1/SAMPLE_RATE (only read by the sampled-mode programs; 0 and 1 record all).
    pub const SAMPLE_RATE: &str = "SAMPLE_RATE";
    /// `u32`: nonzero to sample by time windows instead of by call: the
    /// sampled-mode programs record every call made while
    /// [`super::control::WINDOW`] is nonzero, and no other.
    pub const SAMPLE_BY_WINDOW: &str = "SAMPLE_BY_WINDOW";
    /// `u64`: a block freed within this many ns of its allocation counts as
    /// temporary ([`super::StackAgg::temps`]).
    pub const TEMPORARY_NS: &str = "TEMPORARY_NS";
    /// `u32`: nonzero to send every allocation and free of a recorded block
    /// through [`super::maps::HEAP_EVENTS`] (the peak).
    pub const LOG_EVENTS: &str = "LOG_EVENTS";
    /// `u32`: a launched command whose main thread is stopped (for its
    /// tracer, memprof) each time its dynamic loader changes the set of
    /// loaded objects, so that their unwind tables are in before their code
    /// runs; 0: none.
    pub const HOLD_TGID: &str = "HOLD_TGID";
}

/// Size of [`maps::HEAP_EVENTS`] when the events are not sent (the smallest allowed).
pub const HEAP_EVENTS_OFF_BYTES: u32 = 4096;
/// Size of [`maps::HEAP_EVENTS`] when they are sent: 262,144 events of 32
/// bytes (with their 8-byte headers, 209,715), drained every 20 ms.
pub const HEAP_EVENTS_BYTES: u32 = 8 << 20;

/// Names of the programs that record every call (plain uprobes and
/// uretprobes), and of the process-event programs that every mode loads.
pub mod programs {
    /// `malloc(size)`, `valloc(size)`, `pvalloc(size)`: entry.
    pub const MALLOC_ENTER: &str = "malloc_enter";
    /// `calloc(nmemb, size)`: entry.
    pub const CALLOC_ENTER: &str = "calloc_enter";
    /// `realloc(ptr, size)`: entry.
    pub const REALLOC_ENTER: &str = "realloc_enter";
    /// `reallocarray(ptr, nmemb, size)`: entry.
    pub const REALLOCARRAY_ENTER: &str = "reallocarray_enter";
    /// `posix_memalign(memptr, alignment, size)`: entry.
    pub const POSIX_MEMALIGN_ENTER: &str = "posix_memalign_enter";
    /// `aligned_alloc(alignment, size)`, `memalign(alignment, size)`: entry.
    pub const MEMALIGN_ENTER: &str = "memalign_enter";
    /// `free(ptr)`, in every mode (sampled ones too).
    pub const FREE_ENTER: &str = "free_enter";
    /// Return of the functions that return the new block.
    pub const ALLOC_EXIT: &str = "alloc_exit";
    /// Return of realloc and reallocarray.
    pub const REALLOC_EXIT: &str = "realloc_exit";
    /// Return of posix_memalign.
    pub const POSIX_MEMALIGN_EXIT: &str = "posix_memalign_exit";
    /// Raw tracepoint `sched_process_exit`.
    pub const THREAD_EXIT: &str = "thread_exit";
    /// Raw tracepoint `sched_process_exec`.
    pub const PROCESS_EXEC: &str = "process_exec";
    /// Tracepoint `sched/sched_process_fork` (`--follow-forks`).
    pub const PROCESS_FORK: &str = "process_fork";
    /// Uprobe on the dynamic loader's `_dl_debug_state` (see [`super::globals::HOLD_TGID`]).
    pub const LOADER_CHANGE: &str = "loader_change";
}

/// The sampled-mode programs: one uprobe *session* program per kind of
/// allocation function, run at its entry and (when the entry asks for it) at
/// its return. `free` keeps its plain uprobe (`free_enter`).
pub mod sampled {
    pub const MALLOC: &str = "malloc_sampled";
    pub const CALLOC: &str = "calloc_sampled";
    pub const REALLOC: &str = "realloc_sampled";
    pub const REALLOCARRAY: &str = "reallocarray_sampled";
    pub const POSIX_MEMALIGN: &str = "posix_memalign_sampled";
    pub const MEMALIGN: &str = "memalign_sampled";
    /// Sampling by windows: malloc, calloc, posix_memalign and memalign in
    /// one program, told apart by the link's cookie ([`super::window_cookie`]).
    pub const ALLOC_WINDOWED: &str = "alloc_windowed";
}

/// The cookies of [`sampled::ALLOC_WINDOWED`]'s link: which function each
/// probed address is.
///
/// A cookie also carries, in its upper 32 bits, the number of the window its
/// link was made for ([`window_cookie::for_window`]). Closing a link takes
/// the kernel 100 ms or more, during which its program still runs on every
/// call; the next windows often open meanwhile, and every link still open
/// would run the program again on each of their calls. A program whose link
/// is not the open window's returns at once.
pub mod window_cookie {
    pub const MALLOC: u64 = 0;
    pub const CALLOC: u64 = 1;
    pub const POSIX_MEMALIGN: u64 = 2;
    pub const MEMALIGN: u64 = 3;

    /// The cookie of `kind` (one of the above) in a link made for window `window`.
    pub const fn for_window(kind: u64, window: u32) -> u64 {
        (kind & 0xffff_ffff) | ((window as u64) << 32)
    }

    /// The kind a cookie names (its bits 16 and up in the lower half are
    /// [`super::arg_regs`]).
    pub const fn kind(cookie: u64) -> u64 {
        cookie & 0xffff
    }

    /// The window whose link a cookie belongs to.
    pub const fn window(cookie: u64) -> u32 {
        (cookie >> 32) as u32
    }
}

/// Where a probe's program reads the arguments of its function, in bits 16
/// to 27 of the probe's cookie: 4 bits per argument (the first three), each
/// a register of `pt_regs` numbered below, 0 for the calling convention's.
/// A probe moved past instructions that copy an argument to another register
/// and reuse the first (mimalloc's malloc: `mov %rdi,%rsi`, then rdi gets
/// the heap) reads it from the copy.
pub mod arg_regs {
    pub const DEFAULT: u64 = 0;
    pub const RAX: u64 = 1;
    pub const RBX: u64 = 2;
    pub const RCX: u64 = 3;
    pub const RDX: u64 = 4;
    pub const RSI: u64 = 5;
    pub const RDI: u64 = 6;
    /// Not a register: the constant 1, for a factor the probed code has
    /// already multiplied into the other (reallocarray's `mul`). rbp is
    /// never a home of an argument (the walk stops at a write to it).
    pub const ONE: u64 = 7;
    pub const R8: u64 = 8;
    pub const R9: u64 = 9;
    pub const R10: u64 = 10;
    pub const R11: u64 = 11;
    pub const R12: u64 = 12;
    pub const R13: u64 = 13;
    pub const R14: u64 = 14;
    pub const R15: u64 = 15;
    /// How many arguments a cookie can place.
    pub const ARGS: usize = 3;
    const SHIFT: usize = 16;

    /// `cookie` with argument `arg` (from 0) read from register `reg`; an
    /// argument past [`ARGS`] is left where it was.
    pub const fn with(cookie: u64, arg: usize, reg: u64) -> u64 {
        if arg >= ARGS {
            return cookie;
        }
        let shift = SHIFT + 4 * arg;
        (cookie & !(0xf << shift)) | ((reg & 0xf) << shift)
    }

    /// The register argument `arg` (from 0) is read from, one of the above.
    pub const fn of(cookie: u64, arg: usize) -> u64 {
        if arg >= ARGS {
            return DEFAULT;
        }
        (cookie >> (SHIFT + 4 * arg)) & 0xf
    }
}

/// Default sizes of the maps; each has a command-line flag.
pub mod defaults {
    pub const MAX_LIVE: u32 = 1 << 20;
    pub const MAX_STACKS: u32 = 1 << 14;
    /// Processes (and, briefly, threads) in `TARGETS`, and processes in `PROCS`.
    pub const MAX_PROCESSES: u32 = 1 << 16;
}

/// Indices of the counters in the per-CPU `STATS` array.
pub mod stat {
    pub const ALLOCS: u32 = 0;
    pub const FREES: u32 = 1;
    pub const FAILED_ALLOCS: u32 = 2;
    pub const FREES_UNKNOWN: u32 = 3;
    pub const NESTED_CALLS: u32 = 4;
    pub const LIVE_MAP_FULL: u32 = 5;
    pub const LIVE_MAP_FULL_BYTES: u32 = 6;
    pub const STACK_LOST: u32 = 7;
    pub const STACK_MAP_FULL: u32 = 8;
    pub const RETURN_WITHOUT_ENTRY: u32 = 9;
    pub const PENDING_MAP_FULL: u32 = 10;
    pub const PENDING_STALE: u32 = 11;
    pub const STACK_COLLISIONS: u32 = 12;
    pub const FORKS_NOT_FOLLOWED: u32 = 13;
    /// Stacks walked from call frame information (in part at least).
    pub const UNWIND_CFI: u32 = 14;
    /// Stacks of processes without an unwind table yet (or of code mapped
    /// since theirs was written), walked by frame pointer.
    pub const UNWIND_NO_TABLE: u32 = 15;
    /// Stacks cut short, by cause (see `unwind::walk::end`).
    pub const UNWIND_NOT_MAPPED: u32 = 16;
    pub const UNWIND_NO_CFI: u32 = 17;
    pub const UNWIND_UNSUPPORTED: u32 = 18;
    pub const UNWIND_READ_FAILED: u32 = 19;
    pub const UNWIND_TOO_DEEP: u32 = 20;
    /// Allocations counted under [`super::STACK_NO_ROOM`]: their stack found
    /// no room in the stack maps.
    pub const STACK_NO_ROOM: u32 = 21;
    /// Exits of recorded processes that could not be noted in `EXITS`.
    pub const EXITS_NOT_NOTED: u32 = 22;
    /// Allocations of CPython processes whose Python frames were read.
    pub const PY_STACKS: u32 = 23;
    /// Allocations of CPython processes made by a thread without a Python
    /// thread state (or one not found): native frames only.
    pub const PY_NO_THREAD: u32 = 24;
    /// Python frame chains cut short because a frame could not be read.
    pub const PY_READ_FAILED: u32 = 25;
    /// Python frame chains cut short at the most frames kept (or at the
    /// room left after the native frames).
    pub const PY_TOO_DEEP: u32 = 26;
    /// Heap events ([`super::HeapEvent`]) lost because the ring buffer was
    /// full: the peak is then approximate.
    pub const HEAP_EVENTS_LOST: u32 = 27;
    /// Number of counters.
    pub const COUNT: u32 = 28;
}

/// Optional sources besides the heap (`--mmap`, `--kernel`): their maps,
/// events, settings and counters. Nothing here touches the heap's maps.
pub mod sources {
    /// `RingBuf` of [`super::MmapEvent`]s, drained by user space during the run.
    pub const MMAP_EVENTS: &str = "MMAP_EVENTS";
    /// `HashMap<u64, AllocInfo>`: kernel objects allocated for the target,
    /// by address; `stack_id` is a key of [`KSTACKS`].
    pub const KLIVE: &str = "KLIVE";
    /// `StackTrace` map of the kernel stacks of [`KLIVE`].
    pub const KSTACKS: &str = "KSTACKS";
    /// Per-CPU `u64` counters of both sources, indices in [`super::source_stat`].
    pub const SOURCE_STATS: &str = "SOURCE_STATS";

    /// Globals `u32`: where the arguments of a `syscalls:sys_enter_*` record
    /// begin and where the return value of a `sys_exit_*` one is, from tracefs.
    pub const SYSCALL_ARGS: &str = "SYSCALL_ARGS";
    pub const SYSCALL_RET: &str = "SYSCALL_RET";
    /// Globals `u32`: byte offsets of the fields of the kmem tracepoint
    /// records, read from `/sys/kernel/tracing/events/kmem/*/format` at load time.
    pub const KMALLOC_PTR: &str = "KMALLOC_PTR";
    pub const KMALLOC_BYTES: &str = "KMALLOC_BYTES";
    pub const KCACHE_PTR: &str = "KCACHE_PTR";
    pub const KCACHE_BYTES: &str = "KCACHE_BYTES";
    pub const KFREE_PTR: &str = "KFREE_PTR";
    pub const KCACHE_FREE_PTR: &str = "KCACHE_FREE_PTR";

    /// The programs.
    pub const MMAP_ENTER_MUNMAP: &str = "mmap_enter_munmap";
    pub const MMAP_ENTER_MREMAP: &str = "mmap_enter_mremap";
    pub const MMAP_EXIT_MMAP: &str = "mmap_exit_mmap";
    pub const MMAP_EXIT_MREMAP: &str = "mmap_exit_mremap";
    pub const KMALLOC: &str = "kmem_kmalloc";
    pub const KMEM_CACHE_ALLOC: &str = "kmem_cache_alloc";
    pub const KFREE: &str = "kmem_kfree";
    pub const KMEM_CACHE_FREE: &str = "kmem_cache_free";

    /// Size of the ring buffer when `--mmap` is off (the smallest allowed).
    pub const MMAP_EVENTS_OFF_BYTES: u32 = 4096;
    /// Size of the ring buffer with `--mmap`: 65,536 events of 80 bytes.
    pub const MMAP_EVENTS_BYTES: u32 = 8 << 20;
    /// Entries of [`KLIVE`] with `--kernel` (preallocated: a map that
    /// allocated on insert would call the allocator it traces).
    pub const MAX_KLIVE: u32 = 1 << 16;
}

/// One anonymous-memory event of the target, sent through
/// [`sources::MMAP_EVENTS`]; user space replays them in order on a map of
/// address ranges (see `memprof/src/sources.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmapEvent {
    /// One of [`mmap_event`].
    pub kind: u64,
    /// The calling thread (`pid_tgid`).
    pub tid: u64,
    /// `bpf_ktime_get_ns()`.
    pub timestamp_ns: u64,
    /// MAP: the new mapping; UNMAP and REMAP_*: the old range's start.
    pub addr: u64,
    /// Length of `addr`'s range, rounded up to whole pages as the kernel does.
    pub len: u64,
    /// REMAP_END: the syscall's return value (the new start, or `-errno`).
    pub new_addr: u64,
    /// REMAP_END: the new length, rounded up to whole pages.
    pub new_len: u64,
    /// MAP of anonymous memory and REMAP_END: key in `STACKS`, or [`STACK_LOST`].
    pub stack_id: i64,
    /// MAP: nonzero for anonymous memory (a file mapping is only sent when it
    /// is `MAP_FIXED`, since it then replaces whatever was mapped there).
    pub anonymous: u64,
    /// The process (tgid), for reports of many processes.
    pub pid: u64,
}
const _: () = assert!(core::mem::size_of::<MmapEvent>() == 80);

/// Kinds of [`MmapEvent`].
pub mod mmap_event {
    /// A successful `mmap`: `[addr, addr + len)` is mapped (anything there before is gone).
    pub const MAP: u64 = 1;
    /// A `munmap` (sent at its entry, when its arguments are valid): `[addr, addr + len)` is gone.
    pub const UNMAP: u64 = 2;
    /// The entry of an `mremap` of `[addr, addr + len)`.
    pub const REMAP_BEGIN: u64 = 3;
    /// Its return: `new_addr` (or an error) and `new_len`; `addr`/`len` repeat the old range.
    pub const REMAP_END: u64 = 4;
}

/// Indices of the counters in the per-CPU [`sources::SOURCE_STATS`] array.
pub mod source_stat {
    /// mmap events dropped because the ring buffer was full.
    pub const MMAP_EVENTS_LOST: u32 = 0;
    /// mmap and mremap calls that failed.
    pub const MMAP_FAILED: u32 = 1;
    /// Anonymous mappings whose user stack could not be stored.
    pub const MMAP_STACK_LOST: u32 = 2;
    /// Kernel allocations recorded.
    pub const KERNEL_ALLOCS: u32 = 3;
    /// Frees of recorded kernel objects.
    pub const KERNEL_FREES: u32 = 4;
    /// Kernel allocations not recorded: `KLIVE` was full.
    pub const KERNEL_LIVE_FULL: u32 = 5;
    /// Kernel allocations whose stack could not be stored (counted under `[stack lost]`).
    pub const KERNEL_STACK_LOST: u32 = 6;
    /// Kernel allocations at an address still recorded: its free was missed.
    pub const KERNEL_REPLACED: u32 = 7;
    /// Kernel allocations whose record could not be read.
    pub const KERNEL_READ_FAILED: u32 = 8;
    /// Number of counters.
    pub const COUNT: u32 = 9;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, no padding (asserted above).
    unsafe impl aya::Pod for super::LiveKey {}
    // SAFETY: repr(C), integers only, no padding (asserted above).
    unsafe impl aya::Pod for super::ProcEvents {}
    // SAFETY: repr(C), integers only, no padding (asserted above).
    unsafe impl aya::Pod for super::AllocInfo {}
    // SAFETY: repr(C), integers only, no padding (asserted above).
    unsafe impl aya::Pod for super::StackAgg {}
    // SAFETY: repr(C), integers only, no padding (asserted above).
    unsafe impl aya::Pod for super::PendingCall {}
    // SAFETY: repr(C), integers only, no padding (asserted above).
    unsafe impl aya::Pod for super::StackTrace {}
    // SAFETY: repr(C), integers only, no padding (asserted above).
    unsafe impl aya::Pod for super::MmapEvent {}
    // SAFETY: repr(C), integers only, no padding (asserted above).
    unsafe impl aya::Pod for super::HeapEvent {}
    // SAFETY: repr(C), integers only, no padding (asserted in unwind.rs).
    unsafe impl aya::Pod for super::unwind::UnwindRow {}
    // SAFETY: repr(C), integers only, no padding (asserted in unwind.rs).
    unsafe impl aya::Pod for super::unwind::ExecMapping {}
    // SAFETY: repr(C), integers only, no padding (asserted in unwind.rs).
    unsafe impl aya::Pod for super::unwind::RowChunk {}
    // SAFETY: repr(C), integers only, no padding (asserted in unwind.rs).
    unsafe impl aya::Pod for super::unwind::PageChunk {}
    // SAFETY: repr(C), integers only, no padding (asserted in unwind.rs).
    unsafe impl aya::Pod for super::unwind::ProcSlot {}
    // SAFETY: repr(C), integers only, no padding (asserted in python.rs).
    unsafe impl aya::Pod for super::python::PyProc {}
}
