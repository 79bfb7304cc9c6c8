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
//!   its mappings change.
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

pub mod compile;
pub mod tables;

pub use tables::{TableStats, UnwindTables};

/// How user stacks are walked (`--unwind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// From call frame information wherever an object has it, frame
    /// pointers elsewhere (the same as `dwarf`).
    #[default]
    Auto,
    /// Frame pointers only: the cheapest, and one frame deep in code built
    /// without them.
    Fp,
    /// From call frame information (`.eh_frame`) wherever an object has it.
    Dwarf,
}

impl Mode {
    /// True when the BPF programs walk stacks from unwind tables.
    pub fn uses_tables(self) -> bool {
        self != Mode::Fp
    }
}

/// The room for unwind rows `args` ask for, or None when stacks are walked
/// by frame pointer: with `--unwind fp`, and with `--sample-rate`, whose
/// programs are loaded without BTF (uprobe sessions, see `session_link`),
/// which the kernel needs for the unwinder's `bpf_loop` callback.
pub fn rows_for(args: &crate::cli::ProfileArgs) -> Option<u32> {
    if !args.unwind.uses_tables() {
        return None;
    }
    if args.sample_rate.is_some_and(|n| n > 1) {
        if args.unwind == Mode::Dwarf {
            log::warn!("--unwind dwarf is not available with --sample-rate yet: stacks are walked by frame pointer");
        }
        return None;
    }
    Some(args.unwind_rows)
}

/// Mapping tables in the kernel at once: two per process (a new one is
/// written before the old one is let go), 16 KiB each.
const MAPPING_SLOTS: u32 = 128;

/// Sets the BPF object's unwind mode and sizes its tables: `rows` is the
/// room for rows when stacks are walked from tables (None: frame pointers,
/// and the tables take no kernel memory).
pub fn configure(loader: &mut aya::EbpfLoader<'_>, rows: Option<u32>) {
    static FP: u32 = memprof_common::unwind::mode::FP;
    static DWARF: u32 = memprof_common::unwind::mode::DWARF;
    use memprof_common::unwind::{
        MAX_MAPPINGS, ROWS_PER_CHUNK, UNWIND_MAPPINGS, UNWIND_MODE, UNWIND_PROCS, UNWIND_ROWS,
    };
    let (walk, chunks, procs, mappings) = match rows {
        Some(rows) => (
            &DWARF,
            rows.div_ceil(ROWS_PER_CHUNK as u32).max(1),
            memprof_common::unwind::MAX_UNWIND_PROCS,
            MAPPING_SLOTS * MAX_MAPPINGS as u32,
        ),
        None => (&FP, 1, 1, 1),
    };
    loader
        .override_global(UNWIND_MODE, walk, true)
        .map_max_entries(UNWIND_ROWS, chunks)
        .map_max_entries(UNWIND_PROCS, procs)
        .map_max_entries(UNWIND_MAPPINGS, mappings);
}

/// Opens the unwind maps of `ebpf` when stacks are walked from tables. They
/// stay in `ebpf` too: the uprobe session programs are relocated against
/// its maps later.
pub fn tables_of(ebpf: &aya::Ebpf, rows: Option<u32>) -> anyhow::Result<Option<UnwindTables>> {
    use memprof_common::unwind::{UNWIND_MAPPINGS, UNWIND_PROCS, UNWIND_ROWS};
    use std::os::fd::AsFd as _;
    if rows.is_none() {
        return Ok(None);
    }
    let open = |name: &str| -> anyhow::Result<aya::maps::MapData> {
        let data = match ebpf.map(name) {
            Some(aya::maps::Map::Array(data) | aya::maps::Map::HashMap(data)) => data,
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
        aya::maps::Map::HashMap(open(UNWIND_PROCS)?),
        aya::maps::Map::Array(open(UNWIND_MAPPINGS)?),
    )
    .map(Some)
}
/// The unwinding counters of a text report, when stacks were walked from
/// tables (nothing otherwise).
pub fn render_stats(
    stats: &crate::model::UnwindStats,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let named = stats.named();
    if named.iter().all(|&(_, v)| v == 0) {
        return Ok(());
    }
    let width = named
        .iter()
        .map(|(_, v)| v.to_string().len())
        .max()
        .unwrap_or(1);
    for (name, value) in named {
        let why = match name {
            "unwind_cfi" => "stacks walked from call frame information (.eh_frame)",
            "unwind_no_table" => {
                "stacks walked by frame pointer: the process had no unwind table yet"
            }
            "unwind_not_mapped" => "stacks ended at a return address outside the process's code",
            "unwind_no_cfi" => "stacks ended in code without call frame information",
            "unwind_unsupported" => "stacks ended at a frame rule memprof cannot follow",
            "unwind_read_failed" => "stacks ended where the stack could not be read",
            _ => "stacks ended at the most frames kept",
        };
        if value != 0 {
            writeln!(out, "  {name:<21} {value:>width$}  {why}")?;
        }
    }
    Ok(())
}
