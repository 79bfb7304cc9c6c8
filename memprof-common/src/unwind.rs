//! Types of the user-stack unwinder shared by the BPF programs and user
//! space: the compact unwind rows compiled from an object's call frame
//! information, the per-process table of executable mappings, and how a walk
//! went (recorded with each stack).

/// `Array<RowChunk>`: the rows of every object's table, one object after
/// another (each from the start of a chunk); an object's rows are sorted by
/// `pc` and shared by every process that maps it. Row `i` is
/// `UNWIND_ROWS[i / ROWS_PER_CHUNK].rows[i % ROWS_PER_CHUNK]`.
pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
/// `HashMap<u32, ProcSlot>`: where each recorded process's executable
/// mappings are in [`UNWIND_MAPPINGS`].
pub const UNWIND_PROCS: &str = "UNWIND_PROCS";
/// `Array<ExecMapping>`: [`MAX_MAPPINGS`] entries per slot. A process's new
/// mappings go to a free slot before its [`ProcSlot`] points there, so a
/// walk never sees a table half written.
pub const UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";
/// `Array<PageChunk>`: each object's page index (see [`ExecMapping::pages_start`]),
/// one object after another, each from the start of a chunk.
pub const UNWIND_PAGES: &str = "UNWIND_PAGES";
/// `Queue<u32>`: processes that called exec, for user space to write their
/// new tables at once rather than at its next look.
pub const UNWIND_EXECS: &str = "UNWIND_EXECS";
/// Entries of [`UNWIND_EXECS`]; an exec that finds it full waits for the next look.
pub const MAX_UNWIND_EXECS: u32 = 1024;
/// Global `u32`, one of [`mode`].
pub const UNWIND_MODE: &str = "UNWIND_MODE";

/// How stacks are walked (`--unwind`).
pub mod mode {
    /// Frame pointers only.
    pub const FP: u32 = 0;
    /// Call frame information where an object has a table, frame pointers elsewhere.
    pub const DWARF: u32 = 1;
    /// As [`DWARF`], but a frame-pointer step in objects built with frame
    /// pointers ([`super::mapping::FRAME_POINTERS`]): no row search there.
    pub const AUTO: u32 = 2;
}

/// Bits of [`ExecMapping::flags`].
pub mod mapping {
    /// The object was built with frame pointers: nearly all its functions
    /// keep the caller's frame at rbp (CFA = rbp + 16, rbp saved at CFA - 16).
    pub const FRAME_POINTERS: u32 = 1;
}

/// Rows per entry of [`UNWIND_ROWS`]: user space writes a table in few
/// system calls.
pub const ROWS_PER_CHUNK: usize = 256;
/// Entries per element of [`UNWIND_PAGES`].
pub const PAGES_PER_CHUNK: usize = 1024;
/// An object's code is indexed in pages of `1 << PAGE_SHIFT` bytes: a page's
/// entry says which rows can be in effect in it, so that a frame's row is
/// found among a few (most pages: 1 to 4 rows) rather than among all the
/// object's.
pub const PAGE_SHIFT: u32 = 7;
/// A page entry is `first | len << PAGE_LEN_SHIFT`: `first` is the row in
/// effect at the page's first byte (from the object's first row), `len` the
/// rows from it to the one in effect at its last byte (0: more than fit, up
/// to the object's last row).
pub const PAGE_LEN_SHIFT: u32 = 24;
/// Default number of rows of [`UNWIND_ROWS`] (8 bytes each).
pub const DEFAULT_MAX_ROWS: u32 = 1 << 21;
/// Most executable mappings of one process that get tables.
pub const MAX_MAPPINGS: usize = 512;
/// Entries of [`UNWIND_PROCS`] (the loader sets the number of slots).
pub const MAX_UNWIND_PROCS: u32 = 1024;

/// How the canonical frame address (CFA, the caller's stack pointer) of a row
/// is found; the return address is always at CFA - 8 (x86-64).
pub mod cfa {
    /// No call frame information covers this address.
    pub const NONE: u8 = 0;
    /// CFA = rsp + `cfa_offset`.
    pub const RSP: u8 = 1;
    /// CFA = rbp + `cfa_offset`.
    pub const RBP: u8 = 2;
    /// The PLT's expression: CFA = rsp + `cfa_offset`, plus 8 when
    /// `(pc & 15) >= rbp` (here `rbp` holds the threshold, not an offset).
    pub const PLT: u8 = 3;
    /// The outermost frame (return address undefined): the stack ends here.
    pub const END: u8 = 4;
    /// A rule the BPF unwinder cannot follow (a DWARF expression, a CFA in
    /// another register, a return address not at CFA - 8).
    pub const UNSUPPORTED: u8 = 5;
}

/// One row: from `pc` (an address of the object's file, as in its ELF
/// program headers) up to the next row's, the caller's frame is found by
/// `kind` and `cfa_offset`; `rbp` is where the caller's rbp was saved, in
/// 8-byte words from the CFA (0: rbp was not saved, it still holds the
/// caller's value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    pub cfa_offset: u16,
    /// One of [`cfa`].
    pub kind: u8,
    pub rbp: i8,
}
const _: () = assert!(core::mem::size_of::<UnwindRow>() == 8);

/// An entry of [`UNWIND_PAGES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageChunk {
    pub pages: [u32; PAGES_PER_CHUNK],
}
const _: () = assert!(core::mem::size_of::<PageChunk>() == 4 * PAGES_PER_CHUNK);

/// An entry of [`UNWIND_ROWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowChunk {
    pub rows: [UnwindRow; ROWS_PER_CHUNK],
}
const _: () = assert!(core::mem::size_of::<RowChunk>() == 8 * ROWS_PER_CHUNK);

/// One executable mapping of a process: code at `[start, end)` is the
/// object's file address plus `bias`; its rows are
/// `UNWIND_ROWS[rows_start .. rows_start + rows_len]` (none: walk its frames
/// by frame pointer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub rows_start: u32,
    pub rows_len: u32,
    /// The object's page index: `UNWIND_PAGES` entries from `pages_start`,
    /// the first for the page `page0` (object address >> [`PAGE_SHIFT`]),
    /// `pages_len` of them (0: no index, the rows are searched whole).
    pub pages_start: u32,
    pub page0: u32,
    pub pages_len: u32,
    /// Bits of [`mapping`].
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ExecMapping>() == 48);

/// Where a process's executable mappings are: `UNWIND_MAPPINGS[slot *
/// MAX_MAPPINGS ..][..len]`, sorted by `start`, not overlapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSlot {
    pub slot: u32,
    pub len: u32,
    /// Names this table among every table written in the run (never 0, never
    /// reused): what a walk learns of an address under one table holds for
    /// as long as the table does.
    pub generation: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ProcSlot>() == 16);

/// `StackTrace::walk`: bits saying how the stack was walked, and in the
/// second byte why it ended early (0: it is complete).
pub mod walk {
    /// At least one frame was found by frame pointer.
    pub const FP: u64 = 1;
    /// At least one frame was found from call frame information.
    pub const CFI: u64 = 2;
    /// The process had no unwind table yet, or its table did not know the
    /// first frame's code yet (an object mapped since): walked by frame
    /// pointer only.
    pub const NO_TABLE: u64 = 4;
    /// Shift of the [`end`] code.
    pub const END_SHIFT: u32 = 8;
    /// Mask of the [`end`] code once shifted down (bits above it hold the
    /// number of Python frames, `python::frame::COUNT_SHIFT`).
    pub const END_MASK: u64 = 0xff;

    /// Why a walk ended before the outermost frame (the stack is truncated).
    pub mod end {
        /// The walk reached the outermost frame (or a null return address).
        pub const COMPLETE: u64 = 0;
        /// The next return address lies in no executable mapping of the process.
        pub const NOT_MAPPED: u64 = 1;
        /// No call frame information covers the address.
        pub const NO_CFI: u64 = 2;
        /// A rule the unwinder cannot follow (DWARF expression, ...).
        pub const UNSUPPORTED: u64 = 3;
        /// The stack could not be read.
        pub const READ_FAILED: u64 = 4;
        /// More frames than a stack keeps.
        pub const TOO_DEEP: u64 = 5;
        /// A frame pointer that does not move up the stack (code without frame pointers).
        pub const BAD_FRAME_POINTER: u64 = 6;
    }
}
