//! Reading the BPF maps into plain Rust values.

use std::collections::HashMap;

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuHashMap, StackTraceMap};
use memprof_common::{
    source_stat, stat, AllocInfo, LiveKey, ProcEvents, StackAgg, StackTrace, STACK_LOST,
};

use crate::model::Stats;

/// Everything the maps held at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Live allocations: (process, address) -> info.
    pub live: Vec<(LiveKey, AllocInfo)>,
    /// Per-stack aggregates kept in the kernel.
    pub agg: HashMap<i64, StackAgg>,
    /// Instruction pointers of each stack id referenced by `live`, innermost first.
    pub traces: HashMap<i64, Vec<u64>>,
    /// How each of those stacks was walked (`StackTrace::walk`).
    pub walks: HashMap<i64, u64>,
    /// Counters, summed over CPUs.
    pub stats: Stats,
}

/// Reads the counters.
pub(crate) fn read_stats(map: &Map) -> anyhow::Result<Stats> {
    let array = PerCpuArray::<&MapData, u64>::try_from(map).context("STATS map")?;
    let counter = |index: u32| -> anyhow::Result<u64> {
        Ok(array.get(&index, 0).context("reading STATS")?.iter().sum())
    };
    Ok(Stats {
        allocs: counter(stat::ALLOCS)?,
        frees: counter(stat::FREES)?,
        failed_allocs: counter(stat::FAILED_ALLOCS)?,
        frees_unknown: counter(stat::FREES_UNKNOWN)?,
        nested_calls: counter(stat::NESTED_CALLS)?,
        live_map_full: counter(stat::LIVE_MAP_FULL)?,
        live_map_full_bytes: counter(stat::LIVE_MAP_FULL_BYTES)?,
        stack_lost: counter(stat::STACK_LOST)?,
        stack_map_full: counter(stat::STACK_MAP_FULL)?,
        stack_no_room: counter(stat::STACK_NO_ROOM)?,
        exits_not_noted: counter(stat::EXITS_NOT_NOTED)?,
        return_without_entry: counter(stat::RETURN_WITHOUT_ENTRY)?,
        pending_map_full: counter(stat::PENDING_MAP_FULL)?,
        pending_stale: counter(stat::PENDING_STALE)?,
        stack_collisions: counter(stat::STACK_COLLISIONS)?,
        forks_not_followed: counter(stat::FORKS_NOT_FOLLOWED)?,
        stacks_freed: 0,
        heap_events_lost: counter(stat::HEAP_EVENTS_LOST)?,
        unwind: crate::model::UnwindStats {
            unwind_cfi: counter(stat::UNWIND_CFI)?,
            unwind_no_table: counter(stat::UNWIND_NO_TABLE)?,
            unwind_not_mapped: counter(stat::UNWIND_NOT_MAPPED)?,
            unwind_no_cfi: counter(stat::UNWIND_NO_CFI)?,
            unwind_unsupported: counter(stat::UNWIND_UNSUPPORTED)?,
            unwind_read_failed: counter(stat::UNWIND_READ_FAILED)?,
            unwind_too_deep: counter(stat::UNWIND_TOO_DEEP)?,
        },
        python: crate::model::PythonStats {
            py_stacks: counter(stat::PY_STACKS)?,
            py_no_thread: counter(stat::PY_NO_THREAD)?,
            py_read_failed: counter(stat::PY_READ_FAILED)?,
            py_too_deep: counter(stat::PY_TOO_DEEP)?,
        },
    })
}

/// Reads the per-stack aggregates (cheap: one entry per stack), each summed
/// over the CPUs.
pub(crate) fn read_agg(map: &Map) -> anyhow::Result<HashMap<i64, StackAgg>> {
    let agg = PerCpuHashMap::<&MapData, i64, StackAgg>::try_from(map).context("AGG map")?;
    let mut out = HashMap::new();
    for entry in agg.iter() {
        match entry {
            Ok((id, values)) => {
                out.insert(id, StackAgg::sum(values.iter()));
            }
            // Deleted (freed as idle) while this ran.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("reading AGG"),
        }
    }
    Ok(out)
}

/// The execs of every recorded process that called exec, by tgid.
pub(crate) fn read_procs(map: &Map) -> anyhow::Result<HashMap<u32, ProcEvents>> {
    let procs = BpfHashMap::<&MapData, u32, ProcEvents>::try_from(map).context("PROCS map")?;
    let mut out = HashMap::new();
    for entry in procs.iter() {
        match entry {
            Ok((tgid, events)) => {
                out.insert(tgid, events);
            }
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("reading PROCS"),
        }
    }
    Ok(out)
}

/// Reads every map.
pub(crate) fn read_all(
    live: &Map,
    agg: &Map,
    stacks: &Map,
    stats: &Map,
) -> anyhow::Result<Snapshot> {
    let live_map =
        BpfHashMap::<&MapData, LiveKey, AllocInfo>::try_from(live).context("LIVE map")?;
    let mut entries = Vec::new();
    // In batches when the kernel has them: LIVE may hold a million blocks.
    let mut cursor = crate::batch::Cursor::default();
    let batched = crate::batch::read_some::<LiveKey, AllocInfo>(
        aya::maps::IterableMap::map(&live_map),
        &mut cursor,
        usize::MAX,
        |key, info| entries.push((*key, *info)),
    );
    if batched.is_err() {
        entries.clear();
        for entry in live_map.iter() {
            match entry {
                Ok(kv) => entries.push(kv),
                // An entry removed between listing its key and reading it: the
                // target freed it while we read (only possible while attached).
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading LIVE"),
            }
        }
    }
    let (traces, walks) =
        read_traces_and_walks(stacks, entries.iter().map(|(_, info)| info.stack_id))?;
    // The stacks the kernel could not store (the map was full): counted as
    // stack_lost by the programs, shown as such here.
    for (_, info) in &mut entries {
        if info.stack_id >= 0 && !traces.contains_key(&info.stack_id) {
            info.stack_id = STACK_LOST;
        }
    }
    Ok(Snapshot {
        live: entries,
        agg: read_agg(agg)?,
        traces,
        walks,
        stats: read_stats(stats)?,
    })
}

/// Instruction pointers of each stack, innermost first, by stack id.
type Traces = HashMap<i64, Vec<u64>>;
/// The `walk` word of each stack (see `memprof_common::unwind::walk`), by stack id.
type Walks = HashMap<i64, u64>;

/// The user stacks `ids` from the `STACKS` map, instruction pointers
/// innermost first, then the words of their Python frames (if any) marked
/// with [`crate::python::MARK`]. Negative ids (no stack) and stacks missing from the map
/// are left out.
pub(crate) fn read_traces(
    stacks: &Map,
    ids: impl IntoIterator<Item = i64>,
) -> anyhow::Result<HashMap<i64, Vec<u64>>> {
    Ok(read_traces_and_walks(stacks, ids)?.0)
}

/// [`read_traces`], and how each stack was walked (its `walk` word).
pub(crate) fn read_traces_and_walks(
    stacks: &Map,
    ids: impl IntoIterator<Item = i64>,
) -> anyhow::Result<(Traces, Walks)> {
    let stack_map =
        BpfHashMap::<&MapData, i64, StackTrace>::try_from(stacks).context("STACKS map")?;
    let mut traces = HashMap::new();
    let mut walks = HashMap::new();
    let mut tried = std::collections::HashSet::new();
    for id in ids {
        if id < 0 || !tried.insert(id) {
            continue;
        }
        match stack_map.get(&id, 0) {
            Ok(trace) => {
                let len = usize::try_from(trace.len).unwrap_or(0).min(trace.ips.len());
                let mut ips = trace.ips[..len].to_vec();
                // Python frames after the native ones, innermost first, marked.
                use memprof_common::python::frame;
                for i in 0..frame::count(trace.walk) as usize {
                    let at = frame::at(i);
                    if at < len {
                        break;
                    }
                    ips.extend(
                        trace.ips[at..at + 2]
                            .iter()
                            .map(|w| w | crate::python::MARK),
                    );
                }
                traces.insert(id, ips);
                walks.insert(id, trace.walk);
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => log::warn!("stack {id} could not be read: {e}"),
        }
    }
    Ok((traces, walks))
}

/// The counters of the optional sources (`SOURCE_STATS`, indexed by
/// [`source_stat`]), summed over CPUs.
pub(crate) fn read_source_stats(map: &Map) -> anyhow::Result<[u64; source_stat::COUNT as usize]> {
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

/// The kernel objects (`--kernel`) still live, and their kernel stacks.
#[derive(Clone, Debug, Default)]
pub(crate) struct KernelObjects {
    /// Address -> info; an object whose stack could not be read has
    /// [`STACK_LOST`] as its stack id.
    pub live: Vec<(u64, AllocInfo)>,
    /// Instruction pointers of each stack id, innermost first.
    pub traces: HashMap<i64, Vec<u64>>,
}

/// Reads the `KLIVE` map and the kernel stacks (`KSTACKS`) of its objects.
pub(crate) fn read_kernel_objects(klive: &Map, kstacks: &Map) -> anyhow::Result<KernelObjects> {
    let map = BpfHashMap::<&MapData, u64, AllocInfo>::try_from(klive).context("KLIVE map")?;
    let mut live = Vec::new();
    for entry in map.iter() {
        match entry {
            Ok(kv) => live.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("reading KLIVE"),
        }
    }
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
    Ok(KernelObjects { live, traces })
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
