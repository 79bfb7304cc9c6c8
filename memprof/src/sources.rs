//! Optional sources of outstanding memory besides the heap, reported apart
//! from it: anonymous mappings (`--mmap`) and kernel objects (`--kernel`).
//!
//! # `--mmap`
//! The BPF programs (`mmap_enter_munmap` and its siblings in memprof-ebpf,
//! which say why they use the syscall tracepoints) send every `mmap`,
//! `munmap` and `mremap` of the target through a ring buffer. A thread of this module
//! drains it during the run and replays the events, in order, on a
//! [`Ledger`]: a map of the anonymous address ranges the target mapped while
//! memprof watched, each with the time and user stack of the call that
//! mapped it. Doing the range arithmetic here keeps it exact where a BPF hash
//! map cannot be: a `munmap` of the front or the back of a mapping shrinks its
//! record, one of the middle splits it in two (both keep the stack), one
//! spanning several mappings removes them all. An `mremap` takes its old range
//! out at its entry and puts the result back at its return (or the old range,
//! when it failed); the result belongs to the `mremap`'s stack, as a
//! `realloc`'ed block belongs to the `realloc` in the heap report.
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
//! `/proc/kallsyms`. Pages (`mm_page_alloc`) are not recorded: the target's
//! page faults allocate pages for its own memory, which the heap and mmap
//! reports already count.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf, StackTraceMap};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use blazesym::symbolize::source::{Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};
use blazesym::MaybeDefault;
use memprof_common::{mmap_event, source_stat, sources, AllocInfo, MmapEvent, STACK_LOST};

use crate::aggregate;
use crate::model::{Frame, SourceReport, Stack, Totals};
use crate::symbolize::Symbolizer;

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
pub struct TraceOffsets {
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
    pub fn read(sources: Sources) -> anyhow::Result<TraceOffsets> {
        let mut offsets = TraceOffsets::default();
        if !sources.any() {
            return Ok(offsets);
        }
        let dir = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(Path::new)
            .find(|d| d.join("events").is_dir())
            .context(
                "--mmap and --kernel need tracepoints, and /sys/kernel/tracing/events is \
                 missing: mount tracefs (mount -t tracefs nodev /sys/kernel/tracing)",
            )?;
        let field = |event: &str, name: &str| -> anyhow::Result<u32> {
            let path = dir.join("events").join(event).join("format");
            let text = fs::read_to_string(&path).with_context(|| {
                format!("reading {} (is the tracepoint there?)", path.display())
            })?;
            field_offset(&text, name)
                .with_context(|| format!("{} has no 8-byte field `{name}`", path.display()))
        };
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

/// The offset of the 8-byte field `name` in a tracepoint `format` file.
fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let field = decl.rsplit([' ', '*']).next()?;
        if field != name {
            return None;
        }
        let value = |key: &str| {
            line.split(';')
                .find_map(|part| part.trim().strip_prefix(key))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        (value("size:")? == 8).then_some(())?;
        value("offset:")
    })
}

/// Sizes the maps of the sources and sets their globals; called on the loader
/// before loading. `offsets` must outlive the loader.
pub fn configure<'a>(
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
pub struct Attached {
    sources: Sources,
    drain: Option<Drain>,
    klive: Option<Map>,
    kstacks: Option<Map>,
    stats: Option<Map>,
}

struct Drain {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Ledger>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(drain) = self.drain.take() {
            drain.stop.store(true, Ordering::Relaxed);
            let _ = drain.thread.join();
        }
    }
}

/// How often the mmap ring buffer is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Loads and attaches the programs of `sources` (before recording is turned on).
pub fn attach(ebpf: &mut Ebpf, sources: Sources) -> anyhow::Result<Attached> {
    let mut attached = Attached::default();
    attached.sources = sources;
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
        let map = take(ebpf, sources::MMAP_EVENTS)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("memprof-mmap".into())
            .spawn(move || drain(map, &flag))
            .context("starting the thread that reads mmap events")?;
        attached.drain = Some(Drain { stop, thread });
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

/// Replays the ring buffer's events on a ledger until `stop`, then once more.
fn drain(map: Map, stop: &AtomicBool) -> anyhow::Result<Ledger> {
    let mut ring = RingBuf::try_from(map).context("MMAP_EVENTS map")?;
    let mut ledger = Ledger::default();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(item) = ring.next() {
            if item.len() < size_of::<MmapEvent>() {
                continue;
            }
            // SAFETY: the programs write whole `MmapEvent`s (repr(C), integers
            // only); the item may not be aligned, hence the unaligned read.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<MmapEvent>()) };
            ledger.apply(&event);
        }
        if stopping {
            return Ok(ledger);
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// One anonymous address range and the call that mapped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    end: u64,
    timestamp_ns: u64,
    stack_id: i64,
}

/// A region's key: the process (tgid) and its start address.
type Key = (u64, u64);

/// The anonymous mappings seen during the run, by process and start address
/// (the ranges of one process never overlap), and what replaying the events
/// counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    regions: BTreeMap<Key, Region>,
    /// Ranges taken out by an `mremap` entry, by thread, until its return.
    remapping: HashMap<u64, Vec<(Key, Region)>>,
    pub counts: LedgerCounts,
}

/// What [`Ledger::apply`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerCounts {
    pub maps: u64,
    pub unmaps: u64,
    pub unmaps_partial: u64,
    pub holes: u64,
    pub unmaps_untracked: u64,
    pub remaps: u64,
    pub remaps_untracked: u64,
    pub remaps_failed: u64,
    pub remaps_unmatched: u64,
}

impl Ledger {
    /// Takes `[start, end)` out of every region; returns the pieces taken,
    /// and whether a region kept a part outside the range (a partial unmap).
    fn remove_range(&mut self, pid: u64, start: u64, end: u64) -> (Vec<(Key, Region)>, bool) {
        let overlapping: Vec<u64> = self
            .regions
            .range((pid, 0)..(pid, end))
            .rev()
            .take_while(|(_, r)| r.end > start)
            .map(|(&(_, s), _)| s)
            .collect();
        let mut taken = Vec::with_capacity(overlapping.len());
        let mut partial = false;
        for s in overlapping.into_iter().rev() {
            let Some(r) = self.regions.remove(&(pid, s)) else {
                continue;
            };
            if s < start {
                self.regions.insert((pid, s), Region { end: start, ..r });
                partial = true;
            }
            if r.end > end {
                self.regions.insert((pid, end), r);
                partial = true;
            }
            if s < start && r.end > end {
                self.counts.holes += 1;
            }
            taken.push((
                (pid, s.max(start)),
                Region {
                    end: r.end.min(end),
                    ..r
                },
            ));
        }
        (taken, partial)
    }

    /// Replays one event.
    pub fn apply(&mut self, e: &MmapEvent) {
        let old_end = e.addr.saturating_add(e.len);
        match e.kind {
            mmap_event::MAP => {
                // Whatever was there is replaced (MAP_FIXED).
                self.remove_range(e.pid, e.addr, old_end);
                if e.anonymous != 0 && e.len > 0 {
                    self.counts.maps += 1;
                    self.regions.insert(
                        (e.pid, e.addr),
                        Region {
                            end: old_end,
                            timestamp_ns: e.timestamp_ns,
                            stack_id: e.stack_id,
                        },
                    );
                }
            }
            mmap_event::UNMAP => {
                let (taken, partial) = self.remove_range(e.pid, e.addr, old_end);
                if taken.is_empty() {
                    self.counts.unmaps_untracked += 1;
                } else {
                    self.counts.unmaps += 1;
                    self.counts.unmaps_partial += u64::from(partial);
                }
            }
            mmap_event::REMAP_BEGIN => {
                let (taken, _) = self.remove_range(e.pid, e.addr, old_end);
                self.remapping.insert(e.tid, taken);
            }
            mmap_event::REMAP_END => {
                let taken = match self.remapping.remove(&e.tid) {
                    Some(taken) => taken,
                    None => {
                        // Its entry came before recording started.
                        self.counts.remaps_unmatched += 1;
                        self.remove_range(e.pid, e.addr, old_end).0
                    }
                };
                let failed = (e.new_addr as i64) < 0 && (e.new_addr as i64) >= -4095;
                if failed {
                    self.counts.remaps_failed += 1;
                    for (s, r) in taken {
                        self.regions.insert(s, r);
                    }
                    return;
                }
                let new_end = e.new_addr.saturating_add(e.new_len);
                self.remove_range(e.pid, e.new_addr, new_end);
                if taken.is_empty() {
                    // A file mapping, or one made before memprof attached.
                    self.counts.remaps_untracked += 1;
                    return;
                }
                self.counts.remaps += 1;
                self.regions.insert(
                    (e.pid, e.new_addr),
                    Region {
                        end: new_end,
                        timestamp_ns: e.timestamp_ns,
                        stack_id: e.stack_id,
                    },
                );
            }
            _ => {}
        }
    }

    /// Puts back the ranges of `mremap`s whose return was not seen.
    fn settle(&mut self) {
        for (_, taken) in std::mem::take(&mut self.remapping) {
            for (s, r) in taken {
                self.regions.insert(s, r);
            }
        }
    }

    /// The regions as live "allocations" for [`aggregate::by_stack`].
    fn live(&self) -> Vec<(u64, AllocInfo)> {
        self.regions
            .iter()
            .map(|(&(_, s), r)| {
                (
                    s,
                    AllocInfo {
                        size: r.end - s,
                        timestamp_ns: r.timestamp_ns,
                        stack_id: r.stack_id,
                    },
                )
            })
            .collect()
    }
}

/// What the sources found, for [`crate::model::Report`].
#[derive(Clone, Debug, Default)]
pub struct Found {
    pub mmap: Option<SourceReport>,
    pub kernel: Option<SourceReport>,
}

/// How the run ended, for what the sources leave out.
#[derive(Clone, Copy, Debug)]
pub struct Ending {
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
pub fn collect(
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
        Some(map) => read_counters(map)?,
        None => [0; source_stat::COUNT as usize],
    };
    let stat = |i: u32| counters[i as usize];
    if let Some(drain) = attached.drain.take() {
        drain.stop.store(true, Ordering::Relaxed);
        let mut ledger = drain
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread reading mmap events panicked"))??;
        ledger.settle();
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
        let traces = user_traces(stacks, &live)?;
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
        let map = BpfHashMap::<&MapData, u64, AllocInfo>::try_from(klive).context("KLIVE map")?;
        let mut live = Vec::new();
        for entry in map.iter() {
            match entry {
                Ok(kv) => live.push(kv),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading KLIVE"),
            }
        }
        let traces = kernel_traces(kstacks, &mut live)?;
        let frames = symbolize_kernel(&traces);
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
pub const MMAP_DESCRIPTION: &str = "anonymous mmap: memory the target mapped with \
    mmap(MAP_ANONYMOUS) (or mremap'ed) during the run and had not unmapped at its end, in whole \
    pages, by the stack of the call that mapped it; a count is a number of address ranges. \
    These are bytes of address space, not resident memory: a reservation never touched (or \
    PROT_NONE, as glibc's per-thread arenas mostly are) counts in full. glibc's malloc maps \
    large blocks (128 KiB and more by default) this way: those bytes are also in the heap \
    report above";

/// What the kernel section measures.
pub const KERNEL_DESCRIPTION: &str = "kernel: slab objects (kmalloc, kmem_cache_alloc) the \
    kernel allocated while running for the target during the run and had not freed at its end, \
    in bytes the allocator reserved, by kernel stack. Not in the heap report: this memory is \
    the kernel's, held on the target's behalf (files, sockets, pipes, ...)";

fn read_counters(map: &Map) -> anyhow::Result<[u64; source_stat::COUNT as usize]> {
    let array = PerCpuArray::<&MapData, u64>::try_from(map).context("SOURCE_STATS map")?;
    let mut out = [0; source_stat::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = array
            .get(&(i as u32), 0)
            .context("reading SOURCE_STATS")?
            .iter()
            .sum();
    }
    Ok(out)
}

/// The user stacks of `live` from the shared `STACKS` map.
fn user_traces(stacks: &Map, live: &[(u64, AllocInfo)]) -> anyhow::Result<HashMap<i64, Vec<u64>>> {
    let map = BpfHashMap::<&MapData, i64, memprof_common::StackTrace>::try_from(stacks)
        .context("STACKS map")?;
    let mut traces = HashMap::new();
    for (_, info) in live {
        if info.stack_id < 0 || traces.contains_key(&info.stack_id) {
            continue;
        }
        if let Ok(trace) = map.get(&info.stack_id, 0) {
            let len = usize::try_from(trace.len).unwrap_or(0).min(trace.ips.len());
            traces.insert(info.stack_id, trace.ips[..len].to_vec());
        }
    }
    Ok(traces)
}

/// The kernel stacks of `live`; objects whose stack is missing move to [`STACK_LOST`].
fn kernel_traces(
    kstacks: &Map,
    live: &mut [(u64, AllocInfo)],
) -> anyhow::Result<HashMap<i64, Vec<u64>>> {
    let map = StackTraceMap::<&MapData>::try_from(kstacks).context("KSTACKS map")?;
    let mut traces = HashMap::new();
    for (_, info) in live.iter_mut() {
        if info.stack_id < 0 {
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = traces.entry(info.stack_id) {
            match map.get(&(info.stack_id as u32), 0) {
                Ok(trace) => {
                    slot.insert(trace.frames().iter().map(|f| f.ip).collect());
                }
                Err(_) => info.stack_id = STACK_LOST,
            }
        }
    }
    Ok(traces)
}

/// Kernel frames from `/proc/kallsyms` (no vmlinux, no DWARF: function names
/// only). Every address but the first is a return address, so `ip - 1` is
/// looked up for them.
fn symbolize_kernel(traces: &HashMap<i64, Vec<u64>>) -> HashMap<i64, Vec<Frame>> {
    let lookup = |ip: u64, i: usize| if i == 0 { ip } else { ip.saturating_sub(1) };
    let mut addrs: Vec<u64> = traces
        .values()
        .flat_map(|ips| ips.iter().enumerate().map(|(i, &ip)| lookup(ip, i)))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    let blaze = Blaze::new();
    let src = Source::Kernel(Kernel {
        vmlinux: MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    });
    let mut names: HashMap<u64, String> = HashMap::new();
    match blaze.symbolize(&src, Input::AbsAddr(&addrs)) {
        Ok(results) => {
            for (&addr, sym) in addrs.iter().zip(results) {
                if let Symbolized::Sym(sym) = sym {
                    names.insert(addr, sym.name.to_string());
                }
            }
        }
        Err(e) => log::warn!("symbolizing kernel addresses with /proc/kallsyms: {e}"),
    }
    traces
        .iter()
        .map(|(&id, ips)| {
            let frames = ips
                .iter()
                .enumerate()
                .map(|(i, &ip)| Frame {
                    addr: ip,
                    function: names.get(&lookup(ip, i)).cloned(),
                    module: Some("[kernel]".to_string()),
                    ..Frame::default()
                })
                .collect();
            (id, frames)
        })
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn map(ledger: &mut Ledger, addr: u64, len: u64, stack_id: i64) {
        ledger.apply(&MmapEvent {
            kind: mmap_event::MAP,
            addr,
            len,
            stack_id,
            anonymous: 1,
            ..MmapEvent::default()
        });
    }

    fn unmap(ledger: &mut Ledger, addr: u64, len: u64) {
        ledger.apply(&MmapEvent {
            kind: mmap_event::UNMAP,
            addr,
            len,
            ..MmapEvent::default()
        });
    }

    fn remap(ledger: &mut Ledger, addr: u64, len: u64, new_addr: u64, new_len: u64, stack: i64) {
        let begin = MmapEvent {
            kind: mmap_event::REMAP_BEGIN,
            tid: 7,
            addr,
            len,
            ..MmapEvent::default()
        };
        ledger.apply(&begin);
        ledger.apply(&MmapEvent {
            kind: mmap_event::REMAP_END,
            new_addr,
            new_len,
            stack_id: stack,
            ..begin
        });
    }

    fn ranges(ledger: &Ledger) -> Vec<(u64, u64, i64)> {
        ledger
            .regions
            .iter()
            .map(|(&(_, s), r)| (s, r.end, r.stack_id))
            .collect()
    }

    #[test]
    fn unmaps_whole_front_back_and_middle() {
        let mut l = Ledger::default();
        map(&mut l, 0x10000, 16 * PAGE, 1);
        map(&mut l, 0x100000, 4 * PAGE, 2);
        unmap(&mut l, 0x100000, 4 * PAGE); // whole
        unmap(&mut l, 0x10000, 2 * PAGE); // front
        unmap(&mut l, 0x10000 + 14 * PAGE, 2 * PAGE); // back
        assert_eq!(ranges(&l), vec![(0x12000, 0x1e000, 1)]);
        unmap(&mut l, 0x14000, PAGE); // middle: a hole
        assert_eq!(
            ranges(&l),
            vec![(0x12000, 0x14000, 1), (0x15000, 0x1e000, 1)]
        );
        unmap(&mut l, 0x200000, PAGE); // never mapped
        assert_eq!(l.counts.maps, 2);
        assert_eq!(l.counts.unmaps, 4);
        assert_eq!(l.counts.unmaps_partial, 3);
        assert_eq!(l.counts.holes, 1);
        assert_eq!(l.counts.unmaps_untracked, 1);
        // One munmap over both pieces and the hole between them.
        unmap(&mut l, 0x10000, 16 * PAGE);
        assert!(ranges(&l).is_empty());
    }

    #[test]
    fn remaps_grow_move_shrink_and_fail() {
        let mut l = Ledger::default();
        map(&mut l, 0x10000, 4 * PAGE, 1);
        remap(&mut l, 0x10000, 4 * PAGE, 0x10000, 8 * PAGE, 2); // grow in place
        assert_eq!(ranges(&l), vec![(0x10000, 0x18000, 2)]);
        remap(&mut l, 0x10000, 8 * PAGE, 0x80000, 16 * PAGE, 3); // move and grow
        assert_eq!(ranges(&l), vec![(0x80000, 0x90000, 3)]);
        remap(&mut l, 0x80000, 16 * PAGE, 0x80000, PAGE, 4); // shrink
        assert_eq!(ranges(&l), vec![(0x80000, 0x81000, 4)]);
        remap(&mut l, 0x80000, PAGE, (-12i64) as u64, 2 * PAGE, 5); // ENOMEM
        assert_eq!(ranges(&l), vec![(0x80000, 0x81000, 4)]);
        remap(&mut l, 0x900000, PAGE, 0x900000, 2 * PAGE, 6); // a file mapping
        assert_eq!(ranges(&l), vec![(0x80000, 0x81000, 4)]);
        assert_eq!(l.counts.remaps, 3);
        assert_eq!(l.counts.remaps_failed, 1);
        assert_eq!(l.counts.remaps_untracked, 1);
    }

    #[test]
    fn a_fixed_mapping_replaces_what_it_covers() {
        let mut l = Ledger::default();
        map(&mut l, 0x10000, 4 * PAGE, 1);
        l.apply(&MmapEvent {
            kind: mmap_event::MAP,
            addr: 0x11000,
            len: PAGE,
            anonymous: 0,
            ..MmapEvent::default()
        });
        assert_eq!(
            ranges(&l),
            vec![(0x10000, 0x11000, 1), (0x12000, 0x14000, 1)]
        );
    }

    #[test]
    fn processes_have_address_spaces_of_their_own() {
        let mut l = Ledger::default();
        for pid in [1, 2] {
            l.apply(&MmapEvent {
                kind: mmap_event::MAP,
                pid,
                addr: 0x10000,
                len: PAGE,
                stack_id: pid as i64,
                anonymous: 1,
                ..MmapEvent::default()
            });
        }
        l.apply(&MmapEvent {
            kind: mmap_event::UNMAP,
            pid: 1,
            addr: 0x10000,
            len: PAGE,
            ..MmapEvent::default()
        });
        assert_eq!(ranges(&l), vec![(0x10000, 0x11000, 2)]);
    }

    #[test]
    fn reads_format_offsets() {
        let format = "name: kmalloc\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:unsigned long call_site;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:const void * ptr;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:size_t bytes_req;\toffset:24;\tsize:8;\tsigned:0;\n\
            \tfield:size_t bytes_alloc;\toffset:32;\tsize:8;\tsigned:0;\n\
            \tfield:int node;\toffset:48;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(format, "ptr"), Some(16));
        assert_eq!(field_offset(format, "bytes_alloc"), Some(32));
        assert_eq!(field_offset(format, "node"), None); // not 8 bytes
        assert_eq!(field_offset(format, "bytes"), None);
    }
}
