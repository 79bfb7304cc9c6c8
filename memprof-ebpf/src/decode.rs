//! What each kind of allocation function is called with and returns, read in
//! one place for the programs that record every call, the sampled ones and
//! the windowed one.

use core::ptr::read_volatile;

use aya_ebpf::{helpers::bpf_get_attach_cookie, programs::ProbeContext, EbpfContext as _};
use memprof_common::{arg_regs, window_cookie};

/// A kind of allocation function, by its arguments and its return value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
    Malloc,
    /// `calloc(nmemb, size)`.
    Calloc,
    /// `realloc(ptr, size)`.
    Realloc,
    /// `reallocarray(ptr, nmemb, size)`.
    ReallocArray,
    /// `posix_memalign(memptr, alignment, size)`.
    PosixMemalign,
    /// `aligned_alloc(alignment, size)`, `memalign(alignment, size)`.
    Memalign,
}

/// The arguments of an allocation call, as its entry records them.
#[derive(Clone, Copy)]
pub(crate) struct Call {
    /// Requested size in bytes (multiplied out for calloc and reallocarray).
    pub(crate) size: u64,
    /// realloc: the old pointer; posix_memalign: where the result will be
    /// stored (`PendingCall::ptr`); else 0.
    pub(crate) ptr: u64,
    /// The block the call releases whatever it returns (realloc's old
    /// pointer), else 0.
    pub(crate) frees: u64,
    /// glibc may call another probed allocation function from inside this
    /// one (`realloc(NULL, n)` calls malloc, reallocarray calls realloc, the
    /// memalign family may call malloc).
    pub(crate) calls_inner: bool,
}

/// The cookie of the running probe (0 when it has none).
#[inline(always)]
pub(crate) fn cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: the helper only reads the run's context.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// Argument `n` (from 0) of the probed call: from the register `cookie`
/// names for it ([`arg_regs`]), else the calling convention's.
#[inline(always)]
pub(crate) fn arg(ctx: &ProbeContext, cookie: u64, n: usize) -> u64 {
    let reg = arg_regs::of(cookie, n);
    if reg == arg_regs::DEFAULT {
        return ctx.arg(n).unwrap_or(0);
    }
    let regs = ctx.regs;
    // Every register read at its constant offset (volatile: the compiler
    // would otherwise turn a choice among them into one load at a computed
    // offset from the context, which the verifier refuses), then chosen.
    // SAFETY: `regs` is the program's context, which the verifier lets us
    // read at these constant offsets.
    let all: [u64; 16] = unsafe {
        [
            0,
            read_volatile(&(*regs).rax),
            read_volatile(&(*regs).rbx),
            read_volatile(&(*regs).rcx),
            read_volatile(&(*regs).rdx),
            read_volatile(&(*regs).rsi),
            read_volatile(&(*regs).rdi),
            1, // arg_regs::ONE
            read_volatile(&(*regs).r8),
            read_volatile(&(*regs).r9),
            read_volatile(&(*regs).r10),
            read_volatile(&(*regs).r11),
            read_volatile(&(*regs).r12),
            read_volatile(&(*regs).r13),
            read_volatile(&(*regs).r14),
            read_volatile(&(*regs).r15),
        ]
    };
    all.get((reg & 0xf) as usize).copied().unwrap_or(0)
}

/// What a kind of allocation function returns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Return {
    /// The new block, or null (malloc, calloc, the memalign family).
    Block,
    /// The new block, or null; the old one was moved, resized or freed
    /// (realloc, reallocarray).
    Moved,
    /// 0 on success, the block stored through `memptr` (posix_memalign).
    Status,
}

impl Kind {
    /// The kind that the cookie of a windowed link names (one of
    /// [`window_cookie`]); an unknown cookie is malloc.
    #[inline(always)]
    pub(crate) fn from_window_cookie(cookie: u64) -> Kind {
        match window_cookie::kind(cookie) {
            window_cookie::CALLOC => Kind::Calloc,
            window_cookie::POSIX_MEMALIGN => Kind::PosixMemalign,
            window_cookie::MEMALIGN => Kind::Memalign,
            _ => Kind::Malloc,
        }
    }

    /// The arguments of the call at the probed instruction (an argument that
    /// cannot be read is 0), each from the register its probe's cookie names
    /// ([`arg_regs`]).
    #[inline(always)]
    pub(crate) fn decode(self, ctx: &ProbeContext, cookie: u64) -> Call {
        let arg = |n: usize| -> u64 { arg(ctx, cookie, n) };
        match self {
            Kind::Malloc => Call {
                size: arg(0),
                ptr: 0,
                frees: 0,
                calls_inner: false,
            },
            Kind::Calloc => Call {
                size: arg(0).wrapping_mul(arg(1)),
                ptr: 0,
                frees: 0,
                calls_inner: false,
            },
            Kind::Realloc => {
                let ptr = arg(0);
                Call {
                    size: arg(1),
                    ptr,
                    frees: ptr,
                    calls_inner: ptr == 0,
                }
            }
            Kind::ReallocArray => {
                let ptr = arg(0);
                Call {
                    size: arg(1).wrapping_mul(arg(2)),
                    ptr,
                    frees: ptr,
                    calls_inner: true,
                }
            }
            Kind::PosixMemalign => Call {
                size: arg(2),
                ptr: arg(0),
                frees: 0,
                calls_inner: true,
            },
            Kind::Memalign => Call {
                size: arg(1),
                ptr: 0,
                frees: 0,
                calls_inner: true,
            },
        }
    }

    /// What the function returns.
    #[inline(always)]
    pub(crate) fn returns(self) -> Return {
        match self {
            Kind::Malloc | Kind::Calloc | Kind::Memalign => Return::Block,
            Kind::Realloc | Kind::ReallocArray => Return::Moved,
            Kind::PosixMemalign => Return::Status,
        }
    }
}
