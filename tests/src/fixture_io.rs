//! The ready/go/done protocol and the leak sink of the Rust fixtures
//! (`src/bin/leaky_rust*.rs`), which include this file as a module (it is not
//! part of the library). Nothing here allocates: the fixtures' ground truth
//! counts every allocation after the go line. The including binary defines
//! `NAME`, the prefix of its error messages.

use std::hint::black_box;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Every leaked pointer is stored here, and the pointer and the array go
/// through `black_box`, so the optimizer cannot drop the allocation (LLVM
/// deletes stores to a static nobody reads, and then the unused allocation:
/// without `black_box` a release build leaks nothing through `leak_aligned`
/// and `leak_libc_malloc`). A fixed array of atomics: storing must not allocate.
pub(crate) static SINK: [AtomicPtr<u8>; 64] = [const { AtomicPtr::new(null_mut()) }; 64];
static SINK_LEN: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn die(what: &str) -> ! {
    let msg = format!("{}: {what}\n", super::NAME);
    // SAFETY: writes a valid buffer of the given length to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(2) }
}

pub(crate) fn keep<T>(p: *mut T) {
    let p = black_box(p);
    if p.is_null() {
        die("allocation failed");
    }
    let i = SINK_LEN.fetch_add(1, Ordering::Relaxed);
    match SINK.get(i) {
        Some(slot) => slot.store(p.cast(), Ordering::Relaxed),
        None => die("sink full"),
    }
}

pub(crate) fn say(line: &[u8]) {
    // SAFETY: writes a valid buffer of the given length to stdout.
    let n = unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
    if n != line.len() as isize {
        die("write to stdout failed");
    }
}

/// Reads one line byte by byte (no buffer is allocated). False on EOF.
pub(crate) fn read_line() -> bool {
    let mut c = 0u8;
    loop {
        // SAFETY: reads at most one byte into a valid one-byte buffer.
        let n = unsafe { libc::read(0, (&mut c as *mut u8).cast(), 1) };
        if n <= 0 {
            return false;
        }
        if c == b'\n' {
            return true;
        }
    }
}

pub(crate) fn wait_eof() {
    let mut buf = [0u8; 256];
    // SAFETY: reads into a valid buffer of the given length.
    while unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}
