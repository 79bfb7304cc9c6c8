//! Python frames of an allocation: in a CPython process (one user space
//! found and described in `PY_PROCS`), the calling thread's chain of
//! interpreter frames is read at each recorded allocation and stored after
//! the stack's native frames, two words a frame (code object and flags,
//! instruction); user space turns them into function, file and line and
//! puts them where the interpreter's evaluation frames are.
//!
//! The calling thread's state: the one holding the GIL when the version
//! keeps it in `_PyRuntime` and it is this thread (by its kernel thread id,
//! 3.11+), else the one of the main interpreter's thread list whose
//! `native_thread_id` is this thread. Before 3.11 thread states carry no
//! kernel thread id, and the GIL holder is taken as the caller: code that
//! allocates outside the GIL (a rare native path) may get another thread's
//! frames.
//!
//! A process not in `PY_PROCS` costs one map lookup per allocation.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_loop},
    macros::map,
    maps::{HashMap, PerCpuArray},
    Global,
};
use memprof_common::{
    python::{frame, PyProc, MAX_PY_FRAMES, MAX_PY_PROCS, MAX_PY_THREADS, NONE},
    stat, StackTrace,
};

use crate::maps::bump;
use crate::stack::{mix, scratch};

/// Nonzero when Python frames are read (set by the loader; read-only, so
/// the verifier drops this module's code when it is 0).
#[unsafe(no_mangle)]
static PYTHON_FRAMES: Global<u32> = Global::new(0);

/// The CPython processes and where their frames are.
#[map]
static PY_PROCS: HashMap<u32, PyProc> = HashMap::with_max_entries(MAX_PY_PROCS, BPF_F_NO_PREALLOC);

/// Drops the entry of `tgid`, which just called exec: its new program's
/// runtime (if any) is elsewhere. User space looks at it again.
#[inline(always)]
pub(crate) fn forget(tgid: u32) {
    if PYTHON_FRAMES.load() == 0 {
        return;
    }
    let _ = PY_PROCS.remove(tgid);
}

#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    // SAFETY: reading user memory through the helper, which handles faults.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_byte(base: u64, offset: u32) -> u64 {
    if offset == NONE {
        return 0;
    }
    // SAFETY: reading user memory through the helper, which handles faults.
    unsafe { bpf_probe_read_user(base.wrapping_add(u64::from(offset)) as *const u8) }
        .map(u64::from)
        .unwrap_or(0)
}

#[inline(always)]
fn field(base: u64, offset: u32) -> Option<u64> {
    read(base.wrapping_add(u64::from(offset)))
}

/// The state of this CPU's walk, in a map (as the unwinder's): the
/// verifier checks each `bpf_loop` callback once.
#[map]
static PY_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct Walk {
    p: PyProc,
    /// The calling thread's kernel id.
    tid: u64,
    /// Its thread state, once found.
    ts: u64,
    /// The thread state looked at next, then the frame read next.
    cursor: u64,
    /// The native frames' number.
    len: u64,
    hash: u64,
    /// Python frames stored.
    n: u64,
}

#[inline(always)]
fn walk_state() -> Option<&'static mut Walk> {
    let st = PY_WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's value; programs do not migrate while running.
    Some(unsafe { &mut *st })
}

/// One thread state of the thread list (a `bpf_loop` callback): stops at
/// the calling thread's.
#[inline(never)]
extern "C" fn find_thread(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(st) = walk_state() else {
        return 1;
    };
    let ts = st.cursor;
    if ts == 0 {
        return 1;
    }
    match field(ts, st.p.tstate_tid) {
        Some(tid) if tid == st.tid => {
            st.ts = ts;
            1
        }
        Some(_) => match field(ts, st.p.tstate_next) {
            Some(next) => {
                st.cursor = next;
                0
            }
            None => 1,
        },
        None => 1,
    }
}

/// Stores Python frame `index` (a `bpf_loop` callback) and moves to its caller.
#[inline(never)]
extern "C" fn walk_frame(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(st) = walk_state() else {
        return 1;
    };
    let f = st.cursor;
    if f == 0 || index >= MAX_PY_FRAMES as u64 {
        return 1;
    }
    let at = frame::at(index as usize);
    if (at as u64) < st.len {
        bump(stat::PY_TOO_DEEP);
        return 1;
    }
    let p = &st.p;
    let (Some(code), Some(instr)) = (field(f, p.frame_code), field(f, p.frame_instr)) else {
        bump(stat::PY_READ_FAILED);
        return 1;
    };
    let instr = if p.instr_is_index != 0 {
        instr & 0xffff_ffff
    } else {
        instr
    };
    let word = (code & frame::ADDR_MASK)
        | (read_byte(f, p.frame_owner) << frame::OWNER_SHIFT)
        | (read_byte(f, p.frame_entry) << frame::ENTRY_SHIFT);
    let Some(buf) = scratch() else {
        return 1;
    };
    let Some(slots) = buf.ips.get_mut(at..at + frame::WORDS) else {
        return 1;
    };
    slots[0] = word;
    slots[1] = instr;
    st.hash = mix(mix(st.hash, word), instr);
    st.n += 1;
    match field(f, p.frame_previous) {
        Some(previous) => {
            st.cursor = previous;
            0
        }
        None => {
            bump(stat::PY_READ_FAILED);
            1
        }
    }
}

/// Stores the calling thread's Python frames in `buf` when the process
/// `tgid` runs CPython (at the end of `ips`, see
/// [`memprof_common::python::frame`]; never over the `len` native frames), and
/// mixes them into `hash`: the same native stack under two Python call
/// sites is two stacks. Their number goes in `buf.walk`.
#[inline(always)]
pub(crate) fn append(buf: &mut StackTrace, hash: u64, len: u64, tgid: u32) -> u64 {
    if PYTHON_FRAMES.load() == 0 {
        return hash;
    }
    // SAFETY: the value is only read.
    let Some(p) = (unsafe { PY_PROCS.get(tgid) }) else {
        return hash;
    };
    let Some(st) = walk_state() else {
        return hash;
    };
    *st = Walk {
        p: *p,
        tid: bpf_get_current_pid_tgid() & 0xffff_ffff,
        ts: 0,
        cursor: 0,
        len,
        hash,
        n: 0,
    };
    // The GIL holder first: most often the caller.
    if p.tstate_current != NONE {
        if let Some(ts) = field(p.runtime, p.tstate_current) {
            if ts != 0 && (p.tstate_tid == NONE || field(ts, p.tstate_tid) == Some(st.tid)) {
                st.ts = ts;
            }
        }
    }
    if st.ts == 0 && p.tstate_tid != NONE {
        let first = field(p.runtime, p.interp_head)
            .filter(|&interp| interp != 0)
            .and_then(|interp| field(interp, p.interp_threads));
        if let Some(first) = first {
            st.cursor = first;
            // SAFETY: `find_thread` has the callback signature bpf_loop
            // expects; it finds its state in `PY_WALK` itself.
            unsafe {
                bpf_loop(
                    MAX_PY_THREADS as u32,
                    find_thread as *mut c_void,
                    core::ptr::null_mut(),
                    0,
                )
            };
        }
    }
    if st.ts == 0 {
        bump(stat::PY_NO_THREAD);
        return hash;
    }
    let Some(mut f) = field(st.ts, p.tstate_frame) else {
        bump(stat::PY_READ_FAILED);
        return hash;
    };
    if p.cframe_frame != NONE && f != 0 {
        match field(f, p.cframe_frame) {
            Some(current) => f = current,
            None => {
                bump(stat::PY_READ_FAILED);
                return hash;
            }
        }
    }
    st.cursor = f;
    // SAFETY: as above, for `walk_frame`.
    unsafe {
        bpf_loop(
            MAX_PY_FRAMES as u32,
            walk_frame as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if st.n > 0 {
        buf.walk |= st.n << frame::COUNT_SHIFT;
        bump(stat::PY_STACKS);
    }
    st.hash
}
