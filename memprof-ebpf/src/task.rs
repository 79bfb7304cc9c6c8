//! Each thread's allocator call between its entry and its return
//! (`PENDING`, task-local storage), and the questions asked of it: is a call
//! nested in another, which call does a return end, is a free made by the
//! allocator itself.

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, pt_regs, BPF_F_NO_PREALLOC},
    helpers::{bpf_get_current_task_btf, generated::bpf_task_storage_get},
    macros::btf_map,
};
use memprof_common::{stat, PendingCall};

use crate::maps::bump;
use crate::settings::{current_window, target_thread};

/// A task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`): one value per
/// thread, kept in the thread itself and freed with it. The kernel wants it
/// defined with BTF; aya-ebpf 0.2 has no wrapper, so this is its BTF map
/// definition (the layout libbpf reads: pointers to arrays whose lengths are
/// the numbers).
#[repr(C)]
pub(crate) struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders that the loader reads from BTF; they are
// never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

/// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
const STORAGE_CREATE: u64 = 1;

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        TaskStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn get(&self, flags: u64) -> Option<*mut T> {
        // SAFETY: the helper takes the map and the current task (a BTF
        // pointer the verifier tracks) and returns the value or null.
        let value = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                bpf_get_current_task_btf(),
                core::ptr::null_mut(),
                flags,
            )
        };
        (!value.is_null()).then_some(value.cast())
    }

    /// The current thread's value, created zeroed on first use; None when
    /// the kernel could not allocate it.
    #[inline(always)]
    pub(crate) fn mine(&self) -> Option<*mut T> {
        self.get(STORAGE_CREATE)
    }

    /// The current thread's value if it has one.
    #[inline(always)]
    fn mine_if_any(&self) -> Option<*mut T> {
        self.get(0)
    }
}

/// Each thread's allocator call between its entry and its return; `sp == 0`
/// when there is none. A lookup costs a fraction of a hash map's (the value
/// hangs off the thread), and nothing has to be removed at the thread's exit.
#[btf_map]
pub(crate) static PENDING: TaskStorage<PendingCall> = TaskStorage::new();

/// The stack pointer of a probed thread: a call made from inside another
/// has a lower one.
#[inline(always)]
pub(crate) fn stack_pointer(regs: *const pt_regs) -> u64 {
    // SAFETY: `regs` is the program's context, which the verifier lets us read.
    unsafe { (*regs).rsp }
}

/// This thread's pending call, if it has one.
#[inline(always)]
pub(crate) fn pending_call() -> Option<&'static mut PendingCall> {
    let slot = PENDING.mine_if_any()?;
    // SAFETY: the value is this thread's; only this thread touches it.
    let slot = unsafe { &mut *slot };
    (slot.sp != 0).then_some(slot)
}

/// Takes this thread's pending call at the return of the outermost allocator call.
#[inline(always)]
pub(crate) fn leave() -> Option<PendingCall> {
    target_thread()?;
    let Some(pending) = pending_call() else {
        bump(stat::RETURN_WITHOUT_ENTRY);
        return None;
    };
    if pending.depth > 0 {
        pending.depth -= 1;
        return None;
    }
    let call = *pending;
    pending.sp = 0;
    Some(call)
}

/// True while this thread is inside an allocator call (a free made by the
/// allocator itself): a call is pending, entered no deeper than this one
/// (`sp`), and not stale. A call whose return run was lost when a sampling
/// window closed is stale once another window, or none, is open: its thread
/// must not have its frees ignored until its next probed allocation.
#[inline(always)]
pub(crate) fn inside_allocator(sp: u64) -> bool {
    pending_call().is_some_and(|p| sp <= p.sp && p.window == current_window())
}
