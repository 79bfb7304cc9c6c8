//! leaky-rust-jemalloc: the Rust fixture with jemalloc as its global
//! allocator (`tikv-jemallocator`), for memprof's integration tests
//! (`tests/tests/integration/allocators.rs`).
//!
//! tikv-jemallocator builds jemalloc from source with the `_rjem_` symbol
//! prefix and links it into this executable, beside glibc's malloc, which
//! libc (and `libc::malloc`) still use. memprof must probe both.
//!
//! Same protocol and the same care as `leaky_rust.rs`: print `ready <pid>`,
//! wait for one line on stdin, leak and churn, print `done`, wait for EOF on
//! stdin, exit 0; everything that allocates on its own happens before
//! `ready`, and stdin/stdout go through `read(2)`/`write(2)`.
//!
//! Which jemalloc function a Rust allocation reaches (tikv-jemallocator
//! 0.7's `GlobalAlloc`, `src/lib.rs`; x86_64 `ALIGNOF_MAX_ALIGN_T` is 16):
//! with `align <= 16 && align <= size`, `alloc` calls `_rjem_malloc(size)`,
//! `alloc_zeroed` `_rjem_calloc(1, size)`, `realloc` `_rjem_realloc(p, new)`;
//! otherwise `_rjem_mallocx(size, MALLOCX_ALIGN(align))` (with
//! `MALLOCX_ZERO` for `alloc_zeroed`) and `_rjem_rallocx(p, new, flags)`.
//! `dealloc` always calls `_rjem_sdallocx(p, size, flags)`.
//!
//! Ground truth: outstanding after `done` (bytes are requested sizes),
//! mirrored in `tests/src/fixtures.rs` (`Kind::LeakyRustJemalloc.truth()`):
//!
//! | function               | what                                                        | count | bytes |
//! |------------------------|-------------------------------------------------------------|------:|------:|
//! | `leak_boxes`           | 8 x `Box<[u8; 4096]>`: `_rjem_malloc(4096)`                  |     8 | 32768 |
//! | `leak_vec`             | 4 x `Vec::<u64>::with_capacity(1000)`: `_rjem_malloc(8000)`  |     4 | 32000 |
//! | `leak_vec_grow`        | `Vec<u32>`: 100 pushes, `shrink_to_fit`: `_rjem_realloc(p, 400)` | 1 |   400 |
//! | `leak_zeroed`          | 2 x `vec![0u8; 3000]`: `_rjem_calloc(1, 3000)`               |     2 |  6000 |
//! | `leak_aligned`         | 3 x `Box<Aligned64>` (192 B, align 64): `_rjem_mallocx`      |     3 |   576 |
//! | `leak_aligned_zeroed`  | 2 x `alloc_zeroed(256, align 64)`: `_rjem_mallocx(.., ZERO)` |     2 |   512 |
//! | `leak_aligned_realloc` | 2 x `alloc(128, align 64)` -> `realloc(.., 1024)`: `_rjem_rallocx` | 2 | 2048 |
//! | `leak_libc_malloc`     | 5 x `libc::malloc(777)` (glibc's)                           |     5 |  3885 |
//! | all                    |                                                             |    27 | 78189 |
//!
//! Not outstanding: `churn_worker` (2 threads x 20000 iterations through
//! every one of those functions, all freed with `_rjem_sdallocx`) and
//! `fail_alloc` (`libc::malloc(usize::MAX / 2)` and jemalloc's
//! `_rjem_malloc` of a quarter of the address space return NULL).

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};
use std::hint::black_box;
use std::mem;
use std::sync::{Arc, Barrier};
use std::thread;

#[global_allocator]
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CHURN_THREADS: usize = 2;
const CHURN_ITERS: u32 = 20_000;

/// The prefix of the error messages.
const NAME: &str = "leaky-rust-jemalloc";

#[path = "../fixture_io.rs"]
mod fixture_io;

use fixture_io::{die, keep, read_line, say, wait_eof, SINK};

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap_or_else(|_| die("bad layout"))
}

#[inline(never)]
fn leak_boxes() {
    for _ in 0..8 {
        let b = Box::new([0xa5u8; 4096]);
        keep(Box::leak(b).as_mut_ptr());
    }
}

#[inline(never)]
fn leak_vec() {
    for _ in 0..4 {
        let mut v = Vec::<u64>::with_capacity(1000);
        v.push(1);
        keep(v.as_mut_ptr());
        mem::forget(v);
    }
}

#[inline(never)]
fn leak_vec_grow() {
    let mut v = Vec::<u32>::new();
    for i in 0..100 {
        v.push(black_box(i));
    }
    v.shrink_to_fit();
    if v.capacity() != 100 {
        die("shrink_to_fit left spare capacity");
    }
    keep(v.as_mut_ptr());
    mem::forget(v);
}

#[inline(never)]
fn leak_zeroed() {
    for _ in 0..2 {
        let mut v = vec![0u8; black_box(3000)];
        keep(v.as_mut_ptr());
        mem::forget(v);
    }
}

#[repr(C, align(64))]
struct Aligned64([u8; 192]);

#[inline(never)]
fn leak_aligned() {
    for _ in 0..3 {
        let b = Box::new(Aligned64([7; 192]));
        keep(Box::into_raw(b));
    }
}

#[inline(never)]
fn leak_aligned_zeroed() {
    for _ in 0..2 {
        // SAFETY: a nonzero-size layout; the block is kept forever on purpose.
        keep(unsafe { alloc_zeroed(layout(black_box(256), 64)) });
    }
}

#[inline(never)]
fn leak_aligned_realloc() {
    for _ in 0..2 {
        let small = layout(black_box(128), 64);
        // SAFETY: a nonzero-size layout.
        let p = unsafe { alloc(small) };
        if p.is_null() {
            die("alloc(128, align 64) failed");
        }
        // SAFETY: p was allocated with `small`; the new size is nonzero.
        keep(unsafe { realloc(p, small, black_box(1024)) });
    }
}

#[inline(never)]
fn leak_libc_malloc() {
    for _ in 0..5 {
        // SAFETY: plain malloc; the block is kept forever on purpose.
        keep(unsafe { libc::malloc(black_box(777)) });
    }
}

/// Allocations that fail must not be recorded.
#[inline(never)]
fn fail_alloc() {
    // SAFETY: malloc of an impossible size returns NULL.
    let p = unsafe { libc::malloc(black_box(usize::MAX / 2)) };
    if !black_box(p).is_null() {
        die("malloc(usize::MAX / 2) succeeded");
    }
    // SAFETY: a valid layout that jemalloc cannot serve: it returns NULL.
    let p = unsafe { alloc(layout(black_box(usize::MAX / 4), 8)) };
    if !black_box(p).is_null() {
        die("alloc(usize::MAX / 4) succeeded");
    }
}

/// Allocates and frees a lot through every jemalloc function, leaving nothing behind.
#[inline(never)]
fn churn_worker(seed: u32) -> u64 {
    let mut state = seed.wrapping_mul(0x9e37_79b9) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut sum = 0u64;
    let mut ring: Vec<Option<Box<[u8]>>> = Vec::with_capacity(32);
    ring.resize_with(32, || None);
    for i in 0..CHURN_ITERS {
        let size = 16 + (next() % 4081) as usize;
        let block = vec![i as u8; size].into_boxed_slice();
        sum += u64::from(block[size - 1]);
        ring[i as usize % 32] = Some(block);
        if i % 16 == 0 {
            let s = format!("request {i} from worker {seed}");
            sum += s.len() as u64;
            let z = vec![0u8; 1 + (next() % 1024) as usize];
            sum += z.len() as u64;
        }
        if i % 32 == 0 {
            let mut v = Vec::new();
            for j in 0..(next() % 200) {
                v.push(j);
            }
            sum += v.iter().map(|&x| u64::from(x)).sum::<u64>();
            let a = Box::new(Aligned64([i as u8; 192]));
            sum += u64::from(a.0[191]);
            let small = layout(64 + (next() % 256) as usize, 64);
            // SAFETY: nonzero sizes; p is reallocated with the layout it has
            // and freed with the one realloc gave it.
            unsafe {
                let p = if i % 64 == 0 {
                    alloc_zeroed(small)
                } else {
                    alloc(small)
                };
                if p.is_null() {
                    die("churn alloc failed");
                }
                let new_size = 64 + (next() % 4096) as usize;
                let q = realloc(p, small, new_size);
                if q.is_null() {
                    die("churn realloc failed");
                }
                sum += u64::from(*q);
                dealloc(q, layout(new_size, 64));
            }
        }
        black_box(&ring);
    }
    sum
}

fn main() {
    // Everything that allocates on its own happens before "ready".
    let barrier = Arc::new(Barrier::new(CHURN_THREADS + 1));
    let workers: Vec<_> = (0..CHURN_THREADS)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait(); // started: main may say "ready"
                barrier.wait(); // go
                black_box(churn_worker(t as u32 + 1));
            })
        })
        .collect();
    barrier.wait(); // every thread has started
    say(format!("ready {}\n", std::process::id()).as_bytes());
    if !read_line() {
        die("stdin closed before the go line");
    }

    barrier.wait();
    leak_boxes();
    leak_vec();
    leak_vec_grow();
    leak_zeroed();
    leak_aligned();
    leak_aligned_zeroed();
    leak_aligned_realloc();
    leak_libc_malloc();
    fail_alloc();
    for w in workers {
        if w.join().is_err() {
            die("a churn thread panicked");
        }
    }

    black_box(&SINK);

    say(b"done\n");
    wait_eof();
}
