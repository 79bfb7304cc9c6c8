//! The user stack of a thread inside a syscall (the `--mmap` tracepoints),
//! whose innermost frames are libc's syscall wrapper: it has no frame
//! pointer, so its caller is found by scanning the stack for a return address.

use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_user};
use memprof_common::{MAX_FRAMES, STACK_LOST};

use super::{mix, scratch, HASH_SEED};

/// Words above the user stack pointer searched for the wrapper's return address.
const CALLER_SCAN_WORDS: usize = 16;

/// Longest distance from a syscall wrapper's entry to its `syscall` instruction.
const WRAPPER_MAX_BYTES: u64 = 1024;

/// A value read from user memory, or None when it cannot be read.
#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: reading user memory through the helper, which handles faults.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// A little-endian 32-bit displacement, sign-extended.
#[inline(always)]
fn le_i32(b: [u8; 4]) -> u64 {
    i32::from_le_bytes(b) as i64 as u64
}

/// The function a call to `target` reaches: `target` itself, or, when
/// `target` is a PLT stub (`jmp *GOT(%rip)`, with or without `endbr64` and
/// `bnd`), the address in its GOT slot.
#[inline(always)]
fn through_plt(target: u64) -> u64 {
    let Some(p) = read_user::<[u8; 16]>(target) else {
        return target;
    };
    let endbr = p[0] == 0xf3 && p[1] == 0x0f && p[2] == 0x1e && p[3] == 0xfa;
    let (disp, next) = if p[0] == 0xff && p[1] == 0x25 {
        ([p[2], p[3], p[4], p[5]], 6)
    } else if endbr && p[4] == 0xf2 && p[5] == 0xff && p[6] == 0x25 {
        ([p[7], p[8], p[9], p[10]], 11)
    } else if endbr && p[4] == 0xff && p[5] == 0x25 {
        ([p[6], p[7], p[8], p[9]], 10)
    } else {
        return target;
    };
    read_user::<u64>(target.wrapping_add(next).wrapping_add(le_i32(disp))).unwrap_or(target)
}

/// True when `ret` is the return address of a call to the function that
/// contains `ip` (the syscall wrapper): the bytes before `ret` are a
/// `call rel32` or a `call *disp32(%rip)` whose target (through the PLT) is
/// the entry of a function that `ip` lies less than [`WRAPPER_MAX_BYTES`]
/// after. A stale return address left on the stack by an earlier call to
/// another function does not pass.
#[inline(always)]
fn returns_from(ret: u64, ip: u64) -> bool {
    if ret < 4096 || ret == ip {
        return false;
    }
    let Some(b) = read_user::<[u8; 8]>(ret - 8) else {
        return false;
    };
    let target = if b[3] == 0xe8 {
        ret.wrapping_add(le_i32([b[4], b[5], b[6], b[7]]))
    } else if b[2] == 0xff && b[3] == 0x15 {
        match read_user::<u64>(ret.wrapping_add(le_i32([b[4], b[5], b[6], b[7]]))) {
            Some(t) => t,
            None => return false,
        }
    } else {
        return false;
    };
    let entry = through_plt(target);
    entry <= ip && ip - entry < WRAPPER_MAX_BYTES
}

/// Captures the user stack of a thread inside a syscall into this CPU's
/// scratch buffer and returns its hash (as [`super::capture_stack`] does), or
/// [`STACK_LOST`].
///
/// The thread is inside libc's syscall wrapper, which has no frame pointer:
/// `%rbp` is still its caller's frame, so a frame-pointer walk from the
/// syscall's `%rip` skips the caller, the very function that mapped the
/// memory. That caller's return address is on the stack a few words above
/// `%rsp` (at `%rsp` for glibc's `mmap` and `munmap`, 0x58 above it for
/// `mremap`): the first of [`CALLER_SCAN_WORDS`] words that is the return
/// address of a call to the wrapper (see [`returns_from`]) is taken as frame
/// 1, then the walk goes on from `%rbp`.
#[inline(always)]
pub(crate) fn capture_syscall_stack(regs: &pt_regs) -> i64 {
    let Some(buf) = scratch() else {
        return STACK_LOST;
    };
    let (ip, mut fp, sp) = (regs.rip, regs.rbp, regs.rsp);
    if ip == 0 {
        return STACK_LOST;
    }
    buf.ips[0] = ip;
    let mut hash = mix(HASH_SEED, ip);
    let mut len: usize = 1;
    // SAFETY: reading user memory through the helper, which handles faults.
    if let Ok(words) = unsafe { bpf_probe_read_user(sp as *const [u64; CALLER_SCAN_WORDS]) } {
        for word in words {
            if returns_from(word, ip) {
                buf.ips[1] = word;
                hash = mix(hash, word);
                len = 2;
                break;
            }
        }
    }
    for _ in 1..MAX_FRAMES {
        if fp == 0 || len >= MAX_FRAMES {
            break;
        }
        // SAFETY: reading user memory through the helper, which handles faults.
        let Ok(frame) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        let (next, ret) = (frame[0], frame[1]);
        if ret == 0 {
            break;
        }
        // The scanned caller is also the first return address of the walk
        // when the caller itself has no frame of its own yet.
        if !(len == 2 && buf.ips[1] == ret) {
            if let Some(slot) = buf.ips.get_mut(len) {
                *slot = ret;
            }
            len += 1;
            hash = mix(hash, ret);
        }
        if next <= fp {
            break;
        }
        fp = next;
    }
    buf.len = len as u64;
    hash = mix(hash, len as u64);
    (hash >> 1) as i64
}
