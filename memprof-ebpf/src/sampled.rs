//! The sampled-mode programs (`--sample-rate N`, `--sample-by window`):
//! uprobe *session* programs, one per kind of allocation function, and one
//! for every kind that sampling by windows attaches and detaches.
//!
//! # Sampling (`--sample-rate N`)
//!
//! The kernel runs a session program at the entry of an allocation function
//! and, only when that entry run returned 0, again at the function's return.
//! The entry run draws a random number and records the call with
//! probability 1/N; an unsampled call returns [`SKIP_RETURN`], so it pays for
//! neither the return probe nor the stack walk. `free` keeps its plain
//! uprobe ([`crate::free`]) and runs on every call (a `LIVE` lookup that
//! mostly misses).
//!
//! Two rules keep the sample unbiased:
//! - an unsampled `realloc(p, n)` forgets `p` at once: glibc moves or frees it
//!   without calling the probed `free`, and a sampled block realloc'ed by an
//!   unsampled call would otherwise stay "outstanding" forever;
//! - a call from which glibc calls another probed allocation function
//!   ([`Call::calls_inner`]) stays pending even when it is not sampled
//!   (`PendingCall::record == 0`), so the inner call sees it, is skipped as
//!   nested, and does not get a second chance to be sampled.
//!
//! An unsampled call with nothing to forget returns before any map lookup, so
//! `nested_calls` only counts the nested calls that a recorded or pending
//! call's entry met.
//!
//! # Sampling by windows (`--sample-by window`)
//!
//! With [`SAMPLE_BY_WINDOW`] the same programs record every call that enters
//! while `CONTROL[control::WINDOW]` is nonzero, and no other. User space
//! opens short windows at random times: it attaches the session links of the
//! functions that only allocate (malloc, calloc, the memalign family), sets
//! the window's number, clears it when the window ends and then detaches
//! them. Between windows those functions carry no breakpoint at all, so their
//! calls cost the target nothing; `free`, `realloc` and `reallocarray` stay
//! attached, because a block recorded in a window must be seen leaving.
//! Detaching can cut a call off from its return run: its pending entry keeps
//! the window's number, so the first call of a later window knows it as stale.
//!
//! # Why not `#[uprobe]`
//!
//! That macro's wrapper discards the function's value and always returns 0,
//! and a session entry run must be able to return [`SKIP_RETURN`]. The
//! section name is the one `#[uprobe]` uses, so aya parses them as UProbe
//! programs (which it never loads: user space loads them itself for a uprobe
//! session link, see `memprof/src/session_link.rs`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_func_ip, bpf_get_prandom_u32,
    },
    programs::ProbeContext,
    EbpfContext,
};
use memprof_common::{stat, window_cookie, AllocInfo, PendingCall};

use crate::decode::{Call, Kind};
use crate::maps::bump;
use crate::record::{finish, forget, live_key, take_old};
use crate::settings::{current_window, target_thread, SAMPLE_BY_WINDOW, SAMPLE_RATE};
use crate::task::{leave, pending_call, stack_pointer, PENDING};

/// What a session program's entry run returns to skip the return run.
const SKIP_RETURN: u32 = 1;
/// What a session program's entry run returns to get the return run.
const RUN_RETURN: u32 = 0;

/// How a session run is told apart: at the entry the registers' ip is the
/// probed address, which `bpf_get_func_ip` also returns for uprobe
/// session links; at the return it is the caller's return address.
#[inline(always)]
fn is_return(ctx: &ProbeContext) -> bool {
    // SAFETY: `regs` is the program's context, which the verifier lets us read.
    let ip = unsafe { (*ctx.regs).rip };
    // SAFETY: the helper only reads the run's context.
    let func = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    ip != func
}

/// The return value of the probed function, at the return run.
#[inline(always)]
fn return_value(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `is_return`.
    unsafe { (*ctx.regs).rax }
}

/// The cookie of the running session link's probe (0 when it has none).
#[inline(always)]
fn link_cookie(ctx: *mut c_void) -> u64 {
    // SAFETY: the helper only reads the run's context.
    unsafe { bpf_get_attach_cookie(ctx) }
}

/// The entry run of a sampled-mode allocation call.
#[inline(always)]
fn sample_enter(ctx: &ProbeContext, call: Call) -> u32 {
    if target_thread().is_none() {
        return SKIP_RETURN;
    }
    let (sampled, window) = if SAMPLE_BY_WINDOW.load() != 0 {
        let window = current_window();
        (window != 0, window)
    } else {
        let rate = SAMPLE_RATE.load();
        // SAFETY: the helper has no preconditions.
        (rate <= 1 || unsafe { bpf_get_prandom_u32() } % rate == 0, 0)
    };
    if !sampled && !call.calls_inner && call.frees == 0 {
        // Nothing to record or forget, nested or not: the cheap common case,
        // without a map lookup.
        return SKIP_RETURN;
    }
    let sp = stack_pointer(ctx.regs);
    if let Some(outer) = pending_call() {
        if sp <= outer.sp && outer.window == window {
            // Called (or tail-called) from inside a pending call, which
            // accounts for this one (and its block): no return run needed.
            bump(stat::NESTED_CALLS);
            return SKIP_RETURN;
        }
        // A deeper-or-equal stack than a call still pending, or a call from
        // an earlier window (whose probes were detached before it returned):
        // that call never returned. Dropped, or later calls would be taken
        // for nested ones.
        bump(stat::PENDING_STALE);
        outer.sp = 0;
    }
    if !sampled {
        if call.frees != 0 {
            // glibc moves or frees the old block of a realloc without calling
            // the probed free: forget it now (see the module comment). Most
            // blocks were not sampled: a miss is expected, and not counted.
            if forget(&live_key(bpf_get_current_pid_tgid(), call.frees)).is_some() {
                bump(stat::FREES);
            }
        }
        if !call.calls_inner {
            // Nothing inside it to keep from being sampled: skip the return.
            return SKIP_RETURN;
        }
        // Stays pending (without recording), so that the inner call is
        // skipped as nested instead of being sampled on its own.
    }
    let Some(slot) = PENDING.mine() else {
        bump(stat::PENDING_MAP_FULL);
        return SKIP_RETURN;
    };
    // SAFETY: the value is this thread's; only this thread touches it.
    let slot = unsafe { &mut *slot };
    *slot = PendingCall {
        size: call.size,
        sp,
        ptr: call.ptr,
        depth: 0,
        record: u32::from(sampled),
        window,
        old: AllocInfo::default(),
        old_tracked: 0,
    };
    if sampled {
        take_old(slot, call.frees);
    }
    RUN_RETURN
}

/// The pending call at a sampled-mode return run, when it is to be recorded.
#[inline(always)]
fn sample_leave() -> Option<PendingCall> {
    leave().filter(|call| call.record != 0)
}

/// One run of the session program of an allocation function of `kind`: its
/// entry or its return.
#[inline(always)]
fn session(ctx: *mut c_void, kind: Kind, cookie: u64) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if is_return(&ctx) {
        if let Some(call) = sample_leave() {
            finish(&ctx, kind.returns(), call, return_value(&ctx));
        }
        return 0;
    }
    sample_enter(&ctx, kind.decode(&ctx, cookie))
}

/// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn malloc_sampled(ctx: *mut c_void) -> u32 {
    session(ctx, Kind::Malloc, link_cookie(ctx))
}

/// `calloc(nmemb, size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn calloc_sampled(ctx: *mut c_void) -> u32 {
    session(ctx, Kind::Calloc, link_cookie(ctx))
}

/// `realloc(ptr, size)`: `realloc(NULL, n)` calls malloc.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn realloc_sampled(ctx: *mut c_void) -> u32 {
    session(ctx, Kind::Realloc, link_cookie(ctx))
}

/// `reallocarray(ptr, nmemb, size)`: calls realloc.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn reallocarray_sampled(ctx: *mut c_void) -> u32 {
    session(ctx, Kind::ReallocArray, link_cookie(ctx))
}

/// `posix_memalign(memptr, alignment, size)`: may call malloc.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn posix_memalign_sampled(ctx: *mut c_void) -> u32 {
    session(ctx, Kind::PosixMemalign, link_cookie(ctx))
}

/// `aligned_alloc(alignment, size)`, `memalign(alignment, size)`: may call malloc.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn memalign_sampled(ctx: *mut c_void) -> u32 {
    session(ctx, Kind::Memalign, link_cookie(ctx))
}

/// Sampling by windows: malloc, calloc, posix_memalign and the memalign
/// family in one program (the kind in the link's cookie, one of
/// [`memprof_common::window_cookie`]), so that a window attaches and
/// detaches a single link per library: closing a link waits for RCU grace
/// periods.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_windowed(ctx: *mut c_void) -> u32 {
    // SAFETY: the helper only reads the run's context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    if window_cookie::window(cookie) != current_window() && !is_return(&ProbeContext::new(ctx)) {
        // A link of an earlier window, still being closed (see
        // `window_cookie`): the open window's link, if any, sees this call.
        // Nothing is dropped: the call is recorded there, or falls outside
        // every window. A return run is always the link's own call's.
        return SKIP_RETURN;
    }
    session(ctx, Kind::from_window_cookie(cookie), cookie)
}
