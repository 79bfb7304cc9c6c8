//! `free`: one plain uprobe, attached in every mode (sampled ones too). A
//! tracked block leaves `LIVE`; a release of an untracked one is counted.

use aya_ebpf::{
    macros::{map, uprobe},
    maps::PerCpuArray,
    programs::ProbeContext,
};
use memprof_common::stat;

use crate::decode::{arg, cookie};
use crate::maps::{bump, count_window_free};
use crate::record::{forget, live_key};
use crate::settings::{current_window, target_thread, SAMPLE_BY_WINDOW, SAMPLE_RATE};
use crate::task::{inside_allocator, stack_pointer};

/// The thread and address of this CPU's last release (see [`count_unknown`]).
#[map]
static LAST_RELEASE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Notes this CPU's last release, for [`count_unknown`].
#[inline(always)]
fn note_release(tid: u64, addr: u64) {
    if let Some(last) = LAST_RELEASE.get_ptr_mut(0) {
        // SAFETY: this CPU's value; programs do not migrate while running.
        unsafe { *last = [tid, addr] };
    }
}

/// Counts the release of a block that was not tracked.
///
/// One release can reach two probes: a sized `operator delete` that jumps to
/// `free` (mimalloc's), or another wrapper. The second sees a block already
/// forgotten; it is told apart from a free of an unknown block by this CPU's
/// last release (same thread, same address), and counted as nested.
#[inline(always)]
fn count_unknown(tid: u64, addr: u64) {
    // SAFETY: this CPU's value; programs do not migrate while running.
    let again = LAST_RELEASE
        .get_ptr_mut(0)
        .is_some_and(|last| unsafe { *last } == [tid, addr]);
    if again {
        bump(stat::NESTED_CALLS);
    } else {
        bump(stat::FREES_UNKNOWN);
        // pymalloc's free hands a block it did not serve to `free`: one
        // unknown release, not two.
        note_release(tid, addr);
    }
}

/// `free(ptr)`: no return probe needed.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    release(&ctx, arg(&ctx, cookie(&ctx), 0));
    0
}

/// The release of the block `ptr`, by `free` or another allocator's free
/// (pymalloc's, which hands the blocks it did not serve to `free`: the
/// second release of such a block is counted as nested).
#[inline(always)]
pub(crate) fn release(ctx: &ProbeContext, ptr: u64) {
    let Some(tid) = target_thread() else { return };
    if ptr == 0 {
        return;
    }
    if SAMPLE_BY_WINDOW.load() != 0 {
        // How fast the target runs in windows against the whole run.
        count_window_free(current_window() != 0);
    }
    // A tracked block leaves, whoever frees it (a block an allocator call
    // releases itself, realloc's old one, left `LIVE` at that call's entry).
    if forget(&live_key(tid, ptr)).is_some() {
        bump(stat::FREES);
        note_release(tid, ptr);
        return;
    }
    if SAMPLE_RATE.load() > 1 {
        // Sampled mode: most blocks were not sampled, and their frees are
        // expected; not counted.
        return;
    }
    if inside_allocator(stack_pointer(ctx.regs)) {
        // e.g. realloc(p, 0) freeing p: accounted at realloc's return.
        bump(stat::NESTED_CALLS);
        return;
    }
    count_unknown(tid, ptr);
}
