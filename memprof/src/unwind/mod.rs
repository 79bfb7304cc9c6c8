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

pub mod compile;
pub mod tables;

pub use tables::{TableStats, UnwindTables};
