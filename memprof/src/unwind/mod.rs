//! Unwind tables for walking user stacks without frame pointers.
//!
//! Debian, RHEL and most software built at `-O2` has no frame pointers, so a
//! frame-pointer walk ends after one frame (or wanders into data). Every
//! x86-64 object carries call frame information instead (`.eh_frame`, for
//! C++ exceptions): for each instruction, how to find the caller's stack
//! pointer (the CFA) and where the caller's registers were saved. The BPF
//! programs cannot parse DWARF, so user space compiles it beforehand, as the
//! continuous CPU profilers do (the OpenTelemetry eBPF profiler's "stack
//! deltas", Parca's agent and lightswitch's compact unwind rows).
//!
//! The design, chosen for the cost of one allocation's walk:
//! - [`compile`]: gimli evaluates each FDE's CFI program; each change of rule
//!   becomes an 8-byte [`UnwindRow`](memprof_common::unwind::UnwindRow):
//!   32-bit address, CFA = rsp or rbp + offset, and the word where the
//!   caller's rbp was saved. Neighbours with the same rule merge, gaps
//!   between functions get a "no information" row. The PLT's well-known CFA
//!   expression has a kind of its own; any other expression, a CFA in another
//!   register, or a saved rbp not at a plain offset makes an "unsupported"
//!   row: the walk ends there, marked truncated, counted.
//! - [`tables`]: rows live in one array map, each object's contiguous and
//!   sorted, compiled once per object (device, inode) and shared by every
//!   process that maps it. Each process has a sorted table of its executable
//!   mappings (range, load bias, where its object's rows are), rewritten when
//!   its mappings change: at once after an exec (the exec tracepoint queues
//!   the process in `UNWIND_EXECS`; its maps are reread every few ms while
//!   its loader maps its libraries), else within 100 ms. A launched command
//!   waits for them: it is held at its exec and at each change of its
//!   loader's objects (see [`crate::launch`]), so its tables are in before
//!   any of its code runs.
//! - The BPF side walks with `bpf_loop` (one verified step, up to
//!   `MAX_FRAMES` runs): find the mapping of the pc (binary search), then its
//!   row (binary search, at most 22 probes); CFA from the rule, return
//!   address at CFA - 8, rbp restored when it was saved, rsp = CFA. The
//!   first frame is the allocator's caller at the return probe, whose
//!   registers are exact; later frames look up `return address - 1` (the call
//!   instruction). Mappings without a table (anonymous code, an object
//!   whose CFI could not be read) take a frame-pointer step. A pc outside
//!   every executable mapping is never recorded: the walk ends before it.

use anyhow::Context as _;

pub(crate) mod compile;
pub(crate) mod tables;

pub(crate) use tables::UnwindTables;

/// Mapping tables in the kernel at once, 24 KiB each: two per process (a
/// new one is written before the old one is let go). One process, and its
/// execs: a few; many (`--comm`, `--cgroup`, system-wide): the processes
/// that get tables at once are half of these, the others are counted.
const MAPPING_SLOTS_ONE: u32 = 8;
const MAPPING_SLOTS_MANY: u32 = 256;

/// Page index entries per row of room: objects have one page of code
/// ([`memprof_common::unwind::PAGE_SHIFT`]) per 2 to 5 rows, and an
/// entry is half a row's size.
const PAGES_PER_ROW: u32 = 2;

/// Sets the BPF object's unwind mode and sizes its tables (frame pointers
/// only: the tables take no kernel memory) for one process or `many`.
pub(crate) fn configure(
    loader: &mut aya::EbpfLoader<'_>,
    unwind: crate::config::Unwind,
    many: bool,
) {
    static FP: u32 = memprof_common::unwind::mode::FP;
    static DWARF: u32 = memprof_common::unwind::mode::DWARF;
    static AUTO: u32 = memprof_common::unwind::mode::AUTO;
    use memprof_common::unwind::{
        MAX_MAPPINGS, PAGES_PER_CHUNK, ROWS_PER_CHUNK, UNWIND_MAPPINGS, UNWIND_MODE, UNWIND_PAGES,
        UNWIND_PROCS, UNWIND_ROWS,
    };
    let (walk, chunks, pages, procs, mappings) = match unwind {
        crate::config::Unwind::Tables { rows, fp_objects } => (
            if fp_objects { &AUTO } else { &DWARF },
            rows.div_ceil(ROWS_PER_CHUNK as u32).max(1),
            (rows / PAGES_PER_ROW)
                .div_ceil(PAGES_PER_CHUNK as u32)
                .max(1),
            memprof_common::unwind::MAX_UNWIND_PROCS,
            if many {
                MAPPING_SLOTS_MANY
            } else {
                MAPPING_SLOTS_ONE
            } * MAX_MAPPINGS as u32,
        ),
        crate::config::Unwind::FramePointers => (&FP, 1, 1, 1, 1),
    };
    loader
        .override_global(UNWIND_MODE, walk, true)
        .map_max_entries(UNWIND_ROWS, chunks)
        .map_max_entries(UNWIND_PAGES, pages)
        .map_max_entries(UNWIND_PROCS, procs)
        .map_max_entries(UNWIND_MAPPINGS, mappings);
}

/// Opens the unwind maps of `ebpf` when stacks are walked from tables. They
/// stay in `ebpf` too: the uprobe session programs are relocated against
/// its maps later.
pub(crate) fn tables_of(
    ebpf: &aya::Ebpf,
    unwind: crate::config::Unwind,
) -> anyhow::Result<Option<UnwindTables>> {
    use memprof_common::unwind::{
        UNWIND_EXECS, UNWIND_MAPPINGS, UNWIND_PAGES, UNWIND_PROCS, UNWIND_ROWS,
    };
    use std::os::fd::AsFd as _;
    if unwind.rows().is_none() {
        return Ok(None);
    }
    let open = |name: &str| -> anyhow::Result<aya::maps::MapData> {
        let data = match ebpf.map(name) {
            Some(
                aya::maps::Map::Array(data)
                | aya::maps::Map::HashMap(data)
                | aya::maps::Map::Queue(data),
            ) => data,
            _ => anyhow::bail!("BPF map {name} missing from the object"),
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating the descriptor of BPF map {name}"))?;
        aya::maps::MapData::from_fd(fd).with_context(|| format!("opening BPF map {name}"))
    };
    UnwindTables::new(
        aya::maps::Map::Array(open(UNWIND_ROWS)?),
        aya::maps::Map::Array(open(UNWIND_PAGES)?),
        aya::maps::Map::HashMap(open(UNWIND_PROCS)?),
        aya::maps::Map::Array(open(UNWIND_MAPPINGS)?),
        aya::maps::Map::Queue(open(UNWIND_EXECS)?),
    )
    .map(Some)
}
