//! What each kind of allocation function is called with and returns, read in
//! one place for the programs that record every call, the sampled ones and
//! the windowed one.

use aya_ebpf::programs::ProbeContext;
use memprof_common::window_cookie;

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

    /// The arguments of the call at the function's entry (an argument that
    /// cannot be read is 0).
    #[inline(always)]
    pub(crate) fn decode(self, ctx: &ProbeContext) -> Call {
        let arg = |n: usize| -> u64 { ctx.arg(n).unwrap_or(0) };
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
