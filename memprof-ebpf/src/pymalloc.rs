//! pymalloc, CPython's allocator of small objects: its entry points
//! (`_PyObject_Malloc(ctx, n)`, `_PyObject_Calloc(ctx, nelem, elsize)`,
//! `_PyObject_Realloc(ctx, p, n)`, `_PyObject_Free(ctx, p)`, the functions
//! `PyObject_Malloc` and `PyMem_Malloc` call through their allocator
//! structs), probed in the CPython processes whose interpreter does not
//! inline them (user space decides; nothing is attached elsewhere).
//!
//! Each block is counted once, at the outermost call, by the allocator
//! that really served it. pymalloc serves requests of 1 to 512 bytes from
//! its arenas and hands the others to `malloc` (`PyMem_RawMalloc`): every
//! pymalloc call is pending from its entry to its return, so that the
//! malloc it makes is nested (not counted), and its return records the
//! block as pymalloc's or, for a size pymalloc does not serve, as a malloc
//! block. (Recorded at the inner malloc's return instead, the stack would
//! pass through the return probe's trampoline that replaced pymalloc's
//! return address, and its walk would end there.) Its free releases
//! whatever block it is given; the `free` it makes for a malloc block is
//! counted as nested.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use memprof_common::{
    python::{PYMALLOC, PYMALLOC_ARENA},
    PendingCall, StackTrace,
};

use crate::decode::{Call, Return};
use crate::free::release;
use crate::full::enter;
use crate::maps::STACKS;
use crate::record::finish_tagged;
use crate::task::leave;

/// The largest request pymalloc serves itself (`SMALL_REQUEST_THRESHOLD`
/// in CPython 3.8 to 3.13); 0 is handed to malloc too.
const SMALL_REQUEST_THRESHOLD: u64 = 512;

#[inline(always)]
fn served(size: u64) -> bool {
    size.wrapping_sub(1) < SMALL_REQUEST_THRESHOLD
}

/// Argument `n` of the probed call, where the probe's cookie says it is
/// (a probe placed past a copy of it: see [`crate::decode::arg`]).
#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    crate::decode::arg(ctx, crate::decode::cookie(ctx), n)
}

/// The entry of an allocation of `size` bytes.
#[inline(always)]
fn alloc(ctx: &ProbeContext, size: u64) {
    enter(
        ctx,
        Call {
            size,
            ptr: 0,
            frees: 0,
            calls_inner: true,
        },
    );
}

/// `_PyObject_Malloc(ctx, nbytes)`.
#[uprobe]
pub fn pymalloc_enter(ctx: ProbeContext) -> u32 {
    alloc(&ctx, arg(&ctx, 1));
    0
}

/// `_PyObject_Calloc(ctx, nelem, elsize)`.
#[uprobe]
pub fn pycalloc_enter(ctx: ProbeContext) -> u32 {
    alloc(&ctx, arg(&ctx, 1).wrapping_mul(arg(&ctx, 2)));
    0
}

/// `_PyObject_Realloc(ctx, ptr, nbytes)`: always pending, since the block
/// it is given leaves whichever allocator served it.
#[uprobe]
pub fn pyrealloc_enter(ctx: ProbeContext) -> u32 {
    let ptr = arg(&ctx, 1);
    enter(
        &ctx,
        Call {
            size: arg(&ctx, 2),
            ptr,
            frees: ptr,
            calls_inner: true,
        },
    );
    0
}

/// `_PyObject_Free(ctx, ptr)`.
#[uprobe]
pub fn pyfree_enter(ctx: ProbeContext) -> u32 {
    release(&ctx, arg(&ctx, 1));
    0
}

/// Return of `_PyObject_Malloc` and `_PyObject_Calloc`: a block of a
/// size pymalloc serves is pymalloc's, any other came from malloc.
#[uretprobe]
pub fn pymalloc_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        let tag = if served(call.size) { PYMALLOC } else { 0 };
        finish_tagged(&ctx, Return::Block, call, ctx.ret(), tag);
    }
    0
}

/// Return of pymalloc's arena allocator, `_PyObject_ArenaMmap(ctx, size)`
/// (entered through [`pymalloc_enter`]): an arena, probed where pymalloc
/// itself is inlined into its callers.
#[uretprobe]
pub fn pyarena_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        finish_tagged(&ctx, Return::Block, call, ctx.ret(), PYMALLOC_ARENA);
    }
    0
}

/// True when the block `call` replaced was served by malloc (its stack has
/// no pymalloc tag).
#[inline(always)]
fn old_was_malloc(call: &PendingCall) -> bool {
    if call.old_tracked == 0 || call.old.stack_id < 0 {
        return false;
    }
    // SAFETY: the value is only read.
    let stored: Option<&StackTrace> = unsafe { STACKS.get(call.old.stack_id) };
    stored.is_some_and(|t| t.walk & PYMALLOC == 0)
}

/// Return of `_PyObject_Realloc`. The new block is pymalloc's when the size
/// is one it serves and the old block (if any) was not malloc's: a malloc
/// block stays with malloc whatever its new size (`PyMem_RawRealloc`), a
/// pymalloc block that grows past 512 bytes moves to malloc.
#[uretprobe]
pub fn pyrealloc_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        let tag = if served(call.size) && !old_was_malloc(&call) {
            PYMALLOC
        } else {
            0
        };
        finish_tagged(&ctx, Return::Moved, call, ctx.ret(), tag);
    }
    0
}
