//! `--kernel`: kernel objects allocated while the kernel runs for the
//! target, from the `kmem` tracepoints, kept by address in `KLIVE` with
//! their kernel stacks in `KSTACKS`. Apart from the heap: nothing here
//! touches `LIVE`, `AGG`, `STACKS` or `STATS`.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{HashMap, StackTrace as KernelStacks},
    programs::{tracing::StackIdContext as _, TracePointContext},
    Global,
};
use memprof_common::{source_stat, AllocInfo, STACK_LOST};

use crate::maps::{bump_source, EEXIST};
use crate::settings::target_thread;

/// Kernel objects allocated for the target: address -> bytes, time, kernel stack.
/// Preallocated: inserting must not call the kernel allocator being traced.
#[map]
static KLIVE: HashMap<u64, AllocInfo> = HashMap::with_max_entries(1, 0);

/// Kernel stacks of the objects in `KLIVE`.
#[map]
static KSTACKS: KernelStacks = KernelStacks::with_max_entries(1, 0);

/// Field offsets of the kmem tracepoint records; user space overrides them
/// with what `/sys/kernel/tracing/events/kmem/*/format` says (these
/// defaults are Linux 6.18's).
#[unsafe(no_mangle)]
static KMALLOC_PTR: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static KMALLOC_BYTES: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
static KCACHE_PTR: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static KCACHE_BYTES: Global<u32> = Global::new(40);
#[unsafe(no_mangle)]
static KFREE_PTR: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static KCACHE_FREE_PTR: Global<u32> = Global::new(16);

/// `--kernel`: an object allocated by the kernel while running for the target.
/// Its size is `bytes_alloc`, what the allocator really reserved (bcc's
/// memleak counts the same), not `bytes_req`.
#[inline(always)]
fn kernel_alloc(ctx: &TracePointContext, ptr_at: u32, bytes_at: u32) {
    if target_thread().is_none() {
        return;
    }
    // SAFETY: offsets of the record's fields, from its format file; the
    // helper handles faults.
    let (Ok(ptr), Ok(bytes)) = (unsafe { ctx.read_at::<u64>(ptr_at as usize) }, unsafe {
        ctx.read_at::<u64>(bytes_at as usize)
    }) else {
        bump_source(source_stat::KERNEL_READ_FAILED);
        return;
    };
    if ptr == 0 {
        return;
    }
    let stack_id = match ctx.get_stackid(&KSTACKS, 0) {
        Ok(id) => id,
        Err(_) => {
            bump_source(source_stat::KERNEL_STACK_LOST);
            STACK_LOST
        }
    };
    let info = AllocInfo {
        size: bytes,
        // SAFETY: the helper has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
    };
    match KLIVE.insert(ptr, info, BPF_NOEXIST as u64) {
        Ok(()) => bump_source(source_stat::KERNEL_ALLOCS),
        Err(e) if e == -EEXIST => {
            bump_source(source_stat::KERNEL_REPLACED);
            if KLIVE.insert(ptr, info, BPF_ANY as u64).is_ok() {
                bump_source(source_stat::KERNEL_ALLOCS);
            }
        }
        Err(_) => bump_source(source_stat::KERNEL_LIVE_FULL),
    }
}

/// `--kernel`: a kernel object freed, in any context (frees are not filtered:
/// the kernel often frees from another task, RCU callbacks or workers).
#[inline(always)]
fn kernel_free(ctx: &TracePointContext, ptr_at: u32) {
    // SAFETY: as in `kernel_alloc`.
    let Ok(ptr) = (unsafe { ctx.read_at::<u64>(ptr_at as usize) }) else {
        return;
    };
    if ptr != 0 && KLIVE.remove(ptr).is_ok() {
        bump_source(source_stat::KERNEL_FREES);
    }
}

/// `kmem:kmalloc` (covers kmalloc_node and friends since Linux 6.1).
#[tracepoint(category = "kmem", name = "kmalloc")]
pub fn kmem_kmalloc(ctx: TracePointContext) -> u32 {
    kernel_alloc(&ctx, KMALLOC_PTR.load(), KMALLOC_BYTES.load());
    0
}

/// `kmem:kmem_cache_alloc` (covers kmem_cache_alloc_node since Linux 6.1).
#[tracepoint(category = "kmem", name = "kmem_cache_alloc")]
pub fn kmem_cache_alloc(ctx: TracePointContext) -> u32 {
    kernel_alloc(&ctx, KCACHE_PTR.load(), KCACHE_BYTES.load());
    0
}

/// `kmem:kfree`.
#[tracepoint(category = "kmem", name = "kfree")]
pub fn kmem_kfree(ctx: TracePointContext) -> u32 {
    kernel_free(&ctx, KFREE_PTR.load());
    0
}

/// `kmem:kmem_cache_free`.
#[tracepoint(category = "kmem", name = "kmem_cache_free")]
pub fn kmem_cache_free(ctx: TracePointContext) -> u32 {
    kernel_free(&ctx, KCACHE_FREE_PTR.load());
    0
}
