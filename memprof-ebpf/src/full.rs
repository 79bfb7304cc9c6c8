//! The programs that record every allocation call (no sampling): a uprobe at
//! each allocation function's entry remembers the call's arguments for the
//! thread, a uretprobe at its return records the block.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use memprof_common::{stat, AllocInfo, PendingCall};

use crate::decode::{cookie, Call, Kind, Return};
use crate::maps::bump;
use crate::record::{finish, take_old};
use crate::settings::target_thread;
use crate::task::{leave, stack_pointer, PENDING};

/// Records an allocator entry for this thread, unless it is nested in
/// another. `call.frees` is the block a realloc replaces (else 0).
#[inline(always)]
pub(crate) fn enter(ctx: &ProbeContext, call: Call) {
    if target_thread().is_none() {
        return;
    }
    let sp = stack_pointer(ctx.regs);
    let Some(slot) = PENDING.mine() else {
        bump(stat::PENDING_MAP_FULL);
        return;
    };
    // SAFETY: the value is this thread's; only this thread touches it.
    let slot = unsafe { &mut *slot };
    if slot.sp != 0 {
        if sp <= slot.sp {
            // Called (or tail-called) from inside the outer allocator call:
            // the outer call is the one the user made.
            slot.depth += 1;
            bump(stat::NESTED_CALLS);
            return;
        }
        // A deeper-or-equal stack than a call still pending: that call never returned.
        bump(stat::PENDING_STALE);
    }
    *slot = PendingCall {
        size: call.size,
        sp,
        ptr: call.ptr,
        depth: 0,
        record: 1,
        window: 0,
        old: AllocInfo::default(),
        old_tracked: 0,
    };
    take_old(slot, call.frees);
}

// ---- entry programs -------------------------------------------------------

/// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Kind::Malloc.decode(&ctx, cookie(&ctx)));
    0
}

/// `calloc(nmemb, size)`.
#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Kind::Calloc.decode(&ctx, cookie(&ctx)));
    0
}

/// `realloc(ptr, size)`.
#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Kind::Realloc.decode(&ctx, cookie(&ctx)));
    0
}

/// `reallocarray(ptr, nmemb, size)`.
#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Kind::ReallocArray.decode(&ctx, cookie(&ctx)));
    0
}

/// `posix_memalign(memptr, alignment, size)`.
#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Kind::PosixMemalign.decode(&ctx, cookie(&ctx)));
    0
}

/// `aligned_alloc(alignment, size)`, `memalign(alignment, size)`.
#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, Kind::Memalign.decode(&ctx, cookie(&ctx)));
    0
}

// ---- return programs ------------------------------------------------------

/// Return of malloc, calloc, aligned_alloc, memalign, valloc, pvalloc.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        finish(&ctx, Return::Block, call, ctx.ret());
    }
    0
}

/// Return of realloc and reallocarray.
#[uretprobe]
pub fn realloc_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        finish(&ctx, Return::Moved, call, ctx.ret());
    }
    0
}

/// Return of posix_memalign: 0 on success, the block stored through `memptr`.
#[uretprobe]
pub fn posix_memalign_exit(ctx: RetProbeContext) -> u32 {
    if let Some(call) = leave() {
        finish(&ctx, Return::Status, call, ctx.ret());
    }
    0
}
