//! Optional sources of outstanding memory besides the heap, reported apart
//! from it: anonymous mappings (`--mmap`) and kernel objects (`--kernel`).
//!
//! # `--mmap`
//! The BPF programs (`mmap_enter_munmap` and its siblings in memprof-ebpf,
//! which say why they use the syscall tracepoints) send every `mmap`,
//! `munmap` and `mremap` of the target through a ring buffer. A thread
//! ([`drain`]) empties it during the run and replays the events, in order, on
//! a [`ledger::Ledger`]: the anonymous address ranges the target mapped while
//! memprof watched, each with the time and user stack of the call that
//! mapped it.
//!
//! Sizes are whole pages (the kernel rounds lengths up) of address space,
//! not resident memory, and a stack's count is the number of address ranges
//! it holds (a hole punched in a mapping makes two). glibc's malloc serves large blocks (128 KiB and more by default) with
//! anonymous `mmap` too: those bytes are in the heap report *and* here.
//!
//! # `--kernel`
//! Tracepoints on `kmem:kmalloc` and `kmem:kmem_cache_alloc` record the
//! objects the kernel allocates while running for the target (its syscalls,
//! its page faults), with their kernel stacks; `kmem:kfree` and
//! `kmem:kmem_cache_free` forget them, whoever frees them. The field offsets of
//! the records (these four, and the syscall ones of `--mmap`) are read from
//! their `format` files in tracefs at load time and passed to the programs as
//! globals ([`TraceOffsets`]). Kernel stacks are symbolized with
//! `/proc/kallsyms`, by the run's [`Symbolizer`]. Pages (`mm_page_alloc`) are not recorded: the target's
//! page faults allocate pages for its own memory, which the heap and mmap
//! reports already count.
//!
//! # Where each step lives
//! This module configures, attaches and collects the sources; the ledger
//! ([`ledger`]) is pure, the ring buffer's thread is [`drain`], the maps are
//! read by [`crate::snapshot`], the field offsets come from
//! [`crate::tracefs`], and stacks are symbolized by [`crate::symbolize`].

pub(crate) mod drain;
pub(crate) mod ledger;

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use aya::maps::Map;
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use memprof_common::{source_stat, sources, AllocInfo};

use crate::aggregate;
use crate::model::{Frame, SourceReport, Stack, Totals};
use crate::snapshot;
use crate::symbolize::Symbolizer;
use crate::tracefs;

use self::drain::Drain;

/// Which optional sources to record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// `--mmap`: anonymous mappings.
    pub mmap: bool,
    /// `--kernel`: kernel slab objects.
    pub kernel: bool,
}

impl Sources {
    /// True when any optional source is recorded.
    pub fn any(&self) -> bool {
        self.mmap || self.kernel
    }
}

/// Field offsets of the tracepoint records the sources read, as the running
/// kernel's tracefs `format` files give them (the programs' defaults are
/// Linux 6.18's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceOffsets {
    /// `args[0]` of a `syscalls:sys_enter_*` record (the others follow).
    pub syscall_args: u32,
    /// `ret` of a `syscalls:sys_exit_*` record.
    pub syscall_ret: u32,
    pub kmalloc_ptr: u32,
    pub kmalloc_bytes: u32,
    pub kcache_ptr: u32,
    pub kcache_bytes: u32,
    pub kfree_ptr: u32,
    pub kcache_free_ptr: u32,
}

impl Default for TraceOffsets {
    fn default() -> Self {
        TraceOffsets {
            syscall_args: 16,
            syscall_ret: 16,
            kmalloc_ptr: 16,
            kmalloc_bytes: 32,
            kcache_ptr: 16,
            kcache_bytes: 40,
            kfree_ptr: 16,
            kcache_free_ptr: 16,
        }
    }
}

impl TraceOffsets {
    /// Reads the offsets that `sources` need from tracefs.
    pub(crate) fn read(sources: Sources) -> anyhow::Result<TraceOffsets> {
        let mut offsets = TraceOffsets::default();
        if !sources.any() {
            return Ok(offsets);
        }
        let events = tracefs::Events::mounted("--mmap and --kernel")?;
        let field = |event: &str, name: &str| events.offset_of_u64(event, name);
        if sources.mmap {
            offsets.syscall_args = field("syscalls/sys_enter_munmap", "addr")?;
            offsets.syscall_ret = field("syscalls/sys_exit_mmap", "ret")?;
            // The programs read every syscall's arguments from one offset.
            for (event, name, index) in [
                ("syscalls/sys_enter_munmap", "len", 1),
                ("syscalls/sys_enter_mremap", "addr", 0),
                ("syscalls/sys_enter_mremap", "old_len", 1),
            ] {
                let at = field(event, name)?;
                anyhow::ensure!(
                    at == offsets.syscall_args + 8 * index,
                    "{event}: `{name}` is at offset {at}, not after the other arguments: a \
                     syscall record layout memprof does not know"
                );
            }
            anyhow::ensure!(
                field("syscalls/sys_exit_mremap", "ret")? == offsets.syscall_ret,
                "syscalls/sys_exit_mremap: `ret` is not where sys_exit_mmap has it"
            );
        }
        if sources.kernel {
            offsets.kmalloc_ptr = field("kmem/kmalloc", "ptr")?;
            offsets.kmalloc_bytes = field("kmem/kmalloc", "bytes_alloc")?;
            offsets.kcache_ptr = field("kmem/kmem_cache_alloc", "ptr")?;
            offsets.kcache_bytes = field("kmem/kmem_cache_alloc", "bytes_alloc")?;
            offsets.kfree_ptr = field("kmem/kfree", "ptr")?;
            offsets.kcache_free_ptr = field("kmem/kmem_cache_free", "ptr")?;
        }
        Ok(offsets)
    }
}

/// Sizes the maps of the sources and sets their globals; called on the loader
/// before loading. `offsets` must outlive the loader.
pub(crate) fn configure<'a>(
    loader: &mut EbpfLoader<'a>,
    sources: Sources,
    offsets: &'a TraceOffsets,
    max_stacks: u32,
) {
    if sources.mmap {
        loader
            .map_max_entries(sources::MMAP_EVENTS, sources::MMAP_EVENTS_BYTES)
            .override_global(sources::SYSCALL_ARGS, &offsets.syscall_args, true)
            .override_global(sources::SYSCALL_RET, &offsets.syscall_ret, true);
    }
    if sources.kernel {
        loader
            .map_max_entries(sources::KLIVE, sources::MAX_KLIVE)
            .map_max_entries(sources::KSTACKS, max_stacks)
            .override_global(sources::KMALLOC_PTR, &offsets.kmalloc_ptr, true)
            .override_global(sources::KMALLOC_BYTES, &offsets.kmalloc_bytes, true)
            .override_global(sources::KCACHE_PTR, &offsets.kcache_ptr, true)
            .override_global(sources::KCACHE_BYTES, &offsets.kcache_bytes, true)
            .override_global(sources::KFREE_PTR, &offsets.kfree_ptr, true)
            .override_global(sources::KCACHE_FREE_PTR, &offsets.kcache_free_ptr, true);
    }
}

/// The attached sources: the thread that replays the mmap events, and the
/// maps read at the end. Dropping it stops the thread.
#[derive(Default)]
pub(crate) struct Attached {
    sources: Sources,
    drain: Option<Drain>,
    klive: Option<Map>,
    kstacks: Option<Map>,
    stats: Option<Map>,
}

/// Loads and attaches the programs of `sources` (before recording is turned on).
pub(crate) fn attach(ebpf: &mut Ebpf, sources: Sources) -> anyhow::Result<Attached> {
    let mut attached = Attached {
        sources,
        ..Attached::default()
    };
    if !sources.any() {
        return Ok(attached);
    }
    if sources.mmap {
        for (program, event) in [
            (sources::MMAP_ENTER_MUNMAP, "sys_enter_munmap"),
            (sources::MMAP_ENTER_MREMAP, "sys_enter_mremap"),
            (sources::MMAP_EXIT_MMAP, "sys_exit_mmap"),
            (sources::MMAP_EXIT_MREMAP, "sys_exit_mremap"),
        ] {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("BPF program {program} missing from the object"))?
                .try_into()?;
            tp.load()
                .with_context(|| format!("loading BPF program {program} (--mmap)"))?;
            tp.attach("syscalls", event).with_context(|| {
                format!("attaching to the syscalls:{event} tracepoint (--mmap)")
            })?;
        }
        attached.drain = Some(Drain::start(take(ebpf, sources::MMAP_EVENTS)?)?);
    }
    if sources.kernel {
        for (program, event) in [
            (sources::KMALLOC, "kmalloc"),
            (sources::KMEM_CACHE_ALLOC, "kmem_cache_alloc"),
            (sources::KFREE, "kfree"),
            (sources::KMEM_CACHE_FREE, "kmem_cache_free"),
        ] {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("BPF program {program} missing from the object"))?
                .try_into()?;
            tp.load()
                .with_context(|| format!("loading BPF program {program} (--kernel)"))?;
            tp.attach("kmem", event)
                .with_context(|| format!("attaching to the kmem:{event} tracepoint (--kernel)"))?;
        }
        attached.klive = Some(take(ebpf, sources::KLIVE)?);
        attached.kstacks = Some(take(ebpf, sources::KSTACKS)?);
    }
    attached.stats = Some(take(ebpf, sources::SOURCE_STATS)?);
    Ok(attached)
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .with_context(|| format!("BPF map {name} missing from the object"))
}

/// What the sources found, for [`crate::model::Report`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Found {
    pub mmap: Option<SourceReport>,
    pub kernel: Option<SourceReport>,
}

/// How the run ended, for what the sources leave out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ending {
    /// `CLOCK_MONOTONIC` ns of the end of the run (ages).
    pub end_ns: u64,
    /// Mappings made before this time went with the program that made them
    /// (the target's latest exec, or `u64::MAX` when it exited and its memory
    /// is not reported); 0 for none.
    pub released_before_ns: u64,
    /// Stacks below this many bytes are not listed.
    pub min_size: u64,
}

/// Stops the sources (recording is already off), reads what they hold and
/// builds their reports. `stacks` is the shared `STACKS` map (user stacks).
pub(crate) fn collect(
    mut attached: Attached,
    stacks: &Map,
    symbolizer: &Symbolizer,
    ending: Ending,
) -> anyhow::Result<Found> {
    let mut found = Found::default();
    if !attached.sources.any() {
        return Ok(found);
    }
    let counters = match &attached.stats {
        Some(map) => snapshot::read_source_stats(map)?,
        None => [0; source_stat::COUNT as usize],
    };
    let stat = |i: u32| counters[i as usize];
    if let Some(drain) = attached.drain.take() {
        let ledger = drain.finish()?;
        let mut live = ledger.live();
        let released = aggregate::take_older(&mut live, ending.released_before_ns);
        let c = ledger.counts;
        let stats = BTreeMap::from([
            ("maps".to_string(), c.maps),
            ("unmaps".to_string(), c.unmaps),
            ("unmaps_partial".to_string(), c.unmaps_partial),
            ("holes".to_string(), c.holes),
            ("unmaps_untracked".to_string(), c.unmaps_untracked),
            ("remaps".to_string(), c.remaps),
            ("remaps_untracked".to_string(), c.remaps_untracked),
            ("remaps_failed".to_string(), c.remaps_failed),
            ("remaps_unmatched".to_string(), c.remaps_unmatched),
            ("failed_calls".to_string(), stat(source_stat::MMAP_FAILED)),
            (
                "events_lost".to_string(),
                stat(source_stat::MMAP_EVENTS_LOST),
            ),
            ("stack_lost".to_string(), stat(source_stat::MMAP_STACK_LOST)),
        ]);
        let traces = snapshot::read_traces(stacks, live.iter().map(|(_, info)| info.stack_id))?;
        let frames = symbolizer.symbolize_stacks(&traces);
        found.mmap = Some(source_report(
            MMAP_DESCRIPTION,
            &live,
            frames,
            stats,
            released,
            ending,
        ));
    }
    if let (Some(klive), Some(kstacks)) = (&attached.klive, &attached.kstacks) {
        let snapshot::KernelObjects { live, traces } =
            snapshot::read_kernel_objects(klive, kstacks)?;
        let frames = symbolizer.symbolize_kernel_stacks(&traces);
        let stats = BTreeMap::from([
            ("allocs".to_string(), stat(source_stat::KERNEL_ALLOCS)),
            ("frees".to_string(), stat(source_stat::KERNEL_FREES)),
            (
                "live_map_full".to_string(),
                stat(source_stat::KERNEL_LIVE_FULL),
            ),
            (
                "stack_lost".to_string(),
                stat(source_stat::KERNEL_STACK_LOST),
            ),
            ("replaced".to_string(), stat(source_stat::KERNEL_REPLACED)),
            (
                "read_failed".to_string(),
                stat(source_stat::KERNEL_READ_FAILED),
            ),
        ]);
        found.kernel = Some(source_report(
            KERNEL_DESCRIPTION,
            &live,
            frames,
            stats,
            Totals::default(),
            ending,
        ));
    }
    Ok(found)
}

/// What the mmap section measures, said in every report that has it.
pub(crate) const MMAP_DESCRIPTION: &str = "anonymous mmap: memory the target mapped with \
    mmap(MAP_ANONYMOUS) (or mremap'ed) during the run and had not unmapped at its end, in whole \
    pages, by the stack of the call that mapped it; a count is a number of address ranges. \
    These are bytes of address space, not resident memory: a reservation never touched (or \
    PROT_NONE, as glibc's per-thread arenas mostly are) counts in full. glibc's malloc maps \
    large blocks (128 KiB and more by default) this way: those bytes are also in the heap \
    report above";

/// What the kernel section measures.
pub(crate) const KERNEL_DESCRIPTION: &str = "kernel: slab objects (kmalloc, kmem_cache_alloc) the \
    kernel allocated while running for the target during the run and had not freed at its end, \
    in bytes the allocator reserved, by kernel stack. Not in the heap report: this memory is \
    the kernel's, held on the target's behalf (files, sockets, pipes, ...)";

fn source_report(
    description: &str,
    live: &[(u64, AllocInfo)],
    mut frames: HashMap<i64, Vec<Frame>>,
    stats: BTreeMap<String, u64>,
    released: Totals,
    ending: Ending,
) -> SourceReport {
    let all = aggregate::by_stack(live, ending.end_ns);
    let totals = aggregate::totals(&all);
    let stacks = all
        .into_iter()
        .filter(|s| s.bytes >= ending.min_size)
        .map(|s| Stack {
            frames: frames.remove(&s.stack_id).unwrap_or_default(),
            bytes: s.bytes,
            count: s.count,
            oldest_age_secs: s.oldest_age_ns as f64 / 1e9,
            median_age_secs: s.median_age_ns as f64 / 1e9,
            ..Stack::default()
        })
        .collect();
    SourceReport {
        description: description.to_string(),
        totals,
        stacks,
        stats,
        released,
    }
}
