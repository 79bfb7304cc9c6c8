//! leaky-rust: a Rust process that leaks a known number of bytes through known
//! functions, for memprof's integration tests (`tests/tests/integration/rust_fixture.rs`).
//!
//! Same protocol as the C fixtures: print `ready <pid>`, wait for one line on
//! stdin (the "go" signal, sent once memprof has attached), leak and churn,
//! print `done`, wait for EOF on stdin, exit 0.
//!
//! Everything that allocates outside the measured window happens before
//! `ready`: the churn threads are spawned and have started before it, and wait
//! on a barrier for "go" (std's own setup at startup, e.g. the 544-byte node of
//! the stack-overflow handler's thread map, is never seen), and
//! stdin/stdout are used through `read(2)`/`write(2)` (std's `Stdin` and
//! `Stdout` allocate their buffers on first use). After "go" the only
//! allocations still outstanding are these.
//!
//! Which glibc function a Rust allocation reaches (std's `System` allocator
//! on unix, `library/std/src/sys/alloc/unix.rs`; x86_64 `MIN_ALIGN` is 16):
//! `alloc` with `align <= 16 && align <= size` calls `malloc(size)`, else
//! `posix_memalign(&p, max(align, 8), size)`; `alloc_zeroed` with the same
//! condition calls `calloc(size, 1)`; `realloc` with `align <= 16 && align <=
//! new_size` calls `realloc(p, new_size)`. Sizes and alignments below are
//! chosen so each leak reaches exactly one documented function.
//!
//! Ground truth: outstanding after `done` (bytes are requested sizes),
//! mirrored in `tests/src/fixtures.rs` (`Kind::LeakyRust.truth()`):
//!
//! | function           | what                                                        | count | bytes |
//! |--------------------|-------------------------------------------------------------|------:|------:|
//! | `leak_boxes`       | 8 x `Box<[u8; 4096]>` (4 `Box::leak`, 4 `mem::forget`): malloc(4096) | 8 | 32768 |
//! | `leak_vec`         | 4 x `Vec::<u64>::with_capacity(1000)` forgotten: malloc(8000) |   4 | 32000 |
//! | `leak_vec_grow`    | `Vec<u32>`: 100 pushes (malloc 16, realloc 32..512), `shrink_to_fit` realloc(400) | 1 | 400 |
//! | `leak_zeroed`      | 2 x `vec![0u8; 3000]` forgotten: calloc(3000, 1)            |     2 |  6000 |
//! | `leak_aligned`     | 3 x `Box<Aligned64>` (size 192, align 64): posix_memalign(64, 192) | 3 | 576 |
//! | `leak_libc_malloc` | 5 x `libc::malloc(777)`                                     |     5 |  3885 |
//! | all                |                                                             |    23 | 75629 |
//!
//! Not outstanding: `churn_worker` (2 threads x 20000 iterations of boxes,
//! strings and growing vectors, all dropped) and `fail_alloc`
//! (`libc::malloc(usize::MAX / 2)` returns NULL and must record nothing).
//!
//! Stacks through std pass `alloc::alloc::*`/`__rust_alloc`/`__rdl_alloc`
//! frames (in an unoptimized build several of them), so the leaking function
//! is near the top of the stack but not necessarily `frames[0]`. The frames
//! of this crate only chain when it is compiled with frame pointers, see
//! `tests/build.rs`.

use std::hint::black_box;
use std::mem;
use std::sync::{Arc, Barrier};
use std::thread;

const CHURN_THREADS: usize = 2;
const CHURN_ITERS: u32 = 20_000;

/// The prefix of the error messages.
const NAME: &str = "leaky-rust";

#[path = "../fixture_io.rs"]
mod fixture_io;

use fixture_io::{die, keep, read_line, say, wait_eof, SINK};

#[inline(never)]
fn leak_boxes() {
    for i in 0..8 {
        let mut b = Box::new([0xa5u8; 4096]);
        if i % 2 == 0 {
            keep(Box::leak(b).as_mut_ptr());
        } else {
            keep(b.as_mut_ptr());
            mem::forget(b);
        }
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
fn leak_libc_malloc() {
    for _ in 0..5 {
        // SAFETY: plain malloc; the block is kept forever on purpose.
        keep(unsafe { libc::malloc(black_box(777)) });
    }
}

/// An allocation that fails must not be recorded.
#[inline(never)]
fn fail_alloc() {
    // SAFETY: malloc of an impossible size returns NULL.
    let p = unsafe { libc::malloc(black_box(usize::MAX / 2)) };
    if !black_box(p).is_null() {
        die("malloc(usize::MAX / 2) succeeded");
    }
}

/// Allocates and frees a lot, leaving nothing behind.
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
        }
        if i % 32 == 0 {
            let mut v = Vec::new();
            for j in 0..(next() % 200) {
                v.push(j);
            }
            sum += v.iter().map(|&x| u64::from(x)).sum::<u64>();
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
    barrier.wait(); // every thread has started (std's per-thread setup is done)
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
