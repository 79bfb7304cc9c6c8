//! Types of the Python frame reader shared by the BPF programs and user
//! space: where a CPython process keeps its thread states and frames (the
//! offsets of the structures of its version, found by user space from the
//! interpreter's binary), and how the frames read at an allocation are
//! stored after the native frames of its stack.

/// `HashMap<u32, PyProc>`: the CPython processes whose allocations get
/// Python frames, by tgid. A process not in it costs one lookup.
pub const PY_PROCS: &str = "PY_PROCS";

/// Global `u32`: nonzero when the programs read Python frames.
pub const PYTHON_FRAMES: &str = "PYTHON_FRAMES";

/// Entries of [`PY_PROCS`].
pub const MAX_PY_PROCS: u32 = 4096;

/// Most Python frames read at one allocation.
pub const MAX_PY_FRAMES: usize = 32;

/// Most thread states looked at to find the calling thread's.
pub const MAX_PY_THREADS: usize = 16;

/// An offset that does not exist in a version (no such field).
pub const NONE: u32 = u32::MAX;

/// Where to find the calling thread's Python frames in one process: the
/// address of `_PyRuntime` and the offsets of the fields read, for its
/// version of CPython.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// In `_PyRuntimeState`: the thread state holding the GIL
    /// (`gilstate.tstate_current`), or [`NONE`].
    pub tstate_current: u32,
    /// In `_PyRuntimeState`: `interpreters.head` (the main interpreter).
    pub interp_head: u32,
    /// In `PyInterpreterState`: the first thread state (`threads.head`).
    pub interp_threads: u32,
    /// In `PyThreadState`: `next`.
    pub tstate_next: u32,
    /// In `PyThreadState`: `native_thread_id` (the kernel's thread id), or
    /// [`NONE`] before 3.11 (the GIL holder is then taken as the caller).
    pub tstate_tid: u32,
    /// In `PyThreadState`: `cframe` (3.11, 3.12), `current_frame` (3.13+)
    /// or `frame` (before 3.11).
    pub tstate_frame: u32,
    /// In `_PyCFrame`: `current_frame`, or [`NONE`] when `tstate_frame`
    /// points at the frame itself.
    pub cframe_frame: u32,
    /// In the frame: the code object (`f_code`, `f_executable`).
    pub frame_code: u32,
    /// In the frame: the caller's frame (`previous`, `f_back`).
    pub frame_previous: u32,
    /// In the frame: the instruction (`prev_instr`, `instr_ptr`), or the
    /// 32-bit `f_lasti` before 3.11 (see `instr_is_index`).
    pub frame_instr: u32,
    /// In the frame: the byte `is_entry` (3.11), or [`NONE`].
    pub frame_entry: u32,
    /// In the frame: the byte `owner` (3.11+), or [`NONE`].
    pub frame_owner: u32,
    /// Nonzero when `frame_instr` is a 32-bit index, not a pointer.
    pub instr_is_index: u32,
}
const _: () = assert!(core::mem::size_of::<PyProc>() == 64);

/// The bit of `StackTrace::walk` (above the Python frames' count) that
/// marks a stack of pymalloc blocks; mixed into the stack's id too.
pub const PYMALLOC: u64 = 1 << 24;

/// The bit of `StackTrace::walk` that marks a stack of pymalloc's arenas
/// (an interpreter whose pymalloc is inlined is seen by its arenas: see
/// memprof's `python::pymalloc`); mixed into the stack's id too.
pub const PYMALLOC_ARENA: u64 = 1 << 25;

/// The programs on pymalloc's entry points (memprof-ebpf's `pymalloc.rs`).
pub mod pymalloc {
    /// `_PyObject_Malloc(ctx, nbytes)`: entry.
    pub const MALLOC_ENTER: &str = "pymalloc_enter";
    /// `_PyObject_Calloc(ctx, nelem, elsize)`: entry.
    pub const CALLOC_ENTER: &str = "pycalloc_enter";
    /// `_PyObject_Realloc(ctx, ptr, nbytes)`: entry.
    pub const REALLOC_ENTER: &str = "pyrealloc_enter";
    /// `_PyObject_Free(ctx, ptr)`.
    pub const FREE_ENTER: &str = "pyfree_enter";
    /// Return of `_PyObject_Malloc` and `_PyObject_Calloc`.
    pub const ALLOC_EXIT: &str = "pymalloc_exit";
    /// Return of `_PyObject_Realloc`.
    pub const REALLOC_EXIT: &str = "pyrealloc_exit";
    /// Return of pymalloc's arena allocator (`_PyObject_ArenaMmap(ctx,
    /// size)`, whose entry is [`MALLOC_ENTER`]'s; its release,
    /// `_PyObject_ArenaMunmap(ctx, ptr, size)`, is [`FREE_ENTER`]'s).
    pub const ARENA_EXIT: &str = "pyarena_exit";
}

/// How Python frames are stored in a [`StackTrace`](crate::StackTrace):
/// at the end of `ips`, frame `i` (0 innermost) at
/// `ips[MAX_FRAMES - 2 * (i + 1)..][..2]`, never over the native frames
/// (`ips[..len]`); two words, the code object's address with the frame's
/// flags above it, then the instruction (pointer, or index before 3.11).
pub mod frame {
    /// Bits of the address in the first word.
    pub const ADDR_MASK: u64 = (1 << 48) - 1;
    /// Shift of the frame's `owner` byte in the first word.
    pub const OWNER_SHIFT: u32 = 48;
    /// Shift of the frame's `is_entry` byte in the first word.
    pub const ENTRY_SHIFT: u32 = 56;
    /// Shift, in `StackTrace::walk`, of the number of Python frames.
    pub const COUNT_SHIFT: u32 = 16;
    /// Mask of that number once shifted down.
    pub const COUNT_MASK: u64 = 0xff;
    /// Words of one frame.
    pub const WORDS: usize = 2;

    /// Where frame `i` (0 innermost) starts in `ips`.
    pub const fn at(i: usize) -> usize {
        crate::MAX_FRAMES - WORDS * (i + 1)
    }

    /// The number of Python frames stored with the native ones.
    pub const fn count(walk: u64) -> u64 {
        (walk >> COUNT_SHIFT) & COUNT_MASK
    }
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn frame_count_lives_apart_from_the_walk_bits() {
        let walk = 2 | (3 << 8) | (5 << frame::COUNT_SHIFT) | super::PYMALLOC;
        assert_eq!(frame::count(walk), 5);
        assert_eq!(walk & 0xffff, 2 | (3 << 8));
    }
}
