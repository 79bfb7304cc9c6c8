//! Loading the BPF object and attaching its programs to the target's libc.
//!
//! [`Probes`] owns the loaded object; dropping it (or calling
//! [`Probes::detach`]) detaches every probe, so no exit path leaves a uprobe
//! behind.
//!
//! Full tracking attaches a perf-event uprobe and uretprobe per allocator
//! function through aya. With sampling (`--sample-rate N`) the allocation
//! functions get uprobe session links instead (one per program, with all its
//! sites; see [`crate::session_link`]), which let an unsampled call skip its
//! return probe; `free` keeps its plain uprobe.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use aya::programs::uprobe::UProbeScope;
use aya::programs::{ProgramError, RawTracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use memprof_common::{globals, maps, sampled, StackAgg, StackTrace};

const BPF_NOEXIST: u32 = 1;

use crate::error::Error;
use crate::session_link::{self, SessionPrograms};
use crate::target::{Kind, ProbeSite, Target};

/// The BPF object, built by build.rs from the memprof-ebpf crate.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memprof"));

/// How to load and attach the probes.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub max_live: u32,
    pub max_stacks: u32,
    pub max_threads: u32,
    /// Record nothing: the programs return at once (for measuring the floor).
    pub floor: bool,
    /// Probe each function's first instruction instead of the cheapest equivalent one.
    pub at_entry: bool,
    /// Record each allocation call with probability 1/`sample_rate` (through
    /// uprobe session links); 0 or 1 records every call.
    pub sample_rate: u32,
    /// Optional sources besides the heap (`--mmap`, `--kernel`).
    pub sources: crate::sources::Sources,
}

impl ProbeConfig {
    /// True when allocation calls are sampled.
    pub fn sampled(&self) -> bool {
        self.sample_rate > 1
    }
}

/// The maps that outlive the probes, read after detaching.
pub struct Maps {
    pub live: Map,
    pub agg: Map,
    pub stacks: Map,
    pub stats: Map,
    pub events: Map,
    /// The optional sources, to be read by [`crate::sources::collect`].
    pub sources: crate::sources::Attached,
}

/// Loaded and attached programs.
pub struct Probes {
    /// Uprobe session links and their programs (sampled mode): closing them
    /// detaches the probes. Declared before `ebpf` so that they are dropped first.
    session: Vec<OwnedFd>,
    ebpf: Ebpf,
    /// Probe sites attached, for the log.
    pub sites: Vec<ProbeSite>,
    /// Number of uprobes and uretprobes attached (a session counts as both).
    pub attached: usize,
    /// The optional sources (`--mmap`, `--kernel`).
    sources: crate::sources::Attached,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with a clear message when this process may not load BPF programs.
pub fn check_permissions() -> Result<(), Error> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<_> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    Err(Error::NotPermitted {
        missing: missing.join(", "),
    })
}

/// Fails with a clear message when the kernel cannot attach uprobes.
pub fn check_kernel() -> Result<(), Error> {
    let path = Path::new("/sys/bus/event_source/devices/uprobe/type");
    if path.exists() {
        Ok(())
    } else {
        Err(Error::NoUprobes {
            path: path.to_path_buf(),
        })
    }
}

impl Probes {
    /// Loads the BPF object for `target` and attaches every allocator probe.
    pub fn attach(target: &Target, config: ProbeConfig) -> anyhow::Result<Probes> {
        check_permissions()?;
        check_kernel()?;
        let sites = target.probe_sites(!config.at_entry)?;
        // A tgid that no process has makes every program return at once.
        let recorded_tgid = if config.floor { u32::MAX } else { target.pid };

        let offsets = crate::sources::TraceOffsets::read(config.sources)?;
        let sample_rate = config.sample_rate.max(1);
        let mut loader = EbpfLoader::new();
        loader
            .override_global(globals::TARGET_TGID, &recorded_tgid, true)
            .override_global(globals::SAMPLE_RATE, &sample_rate, true)
            .map_max_entries(maps::LIVE, config.max_live)
            .map_max_entries(maps::AGG, config.max_stacks.saturating_add(1))
            .map_max_entries(maps::STACKS, config.max_stacks)
            .map_max_entries(maps::PENDING, config.max_threads);
        crate::sources::configure(&mut loader, config.sources, &offsets, config.max_stacks);
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .context("loading the BPF programs into the kernel")?;

        let aya_programs: &[&str] = if config.sampled() {
            &["free_enter"]
        } else {
            &[
                "malloc_enter",
                "calloc_enter",
                "realloc_enter",
                "reallocarray_enter",
                "posix_memalign_enter",
                "memalign_enter",
                "free_enter",
                "alloc_exit",
                "realloc_exit",
                "posix_memalign_exit",
            ]
        };
        for &name in aya_programs {
            uprobe(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading BPF program {name}"))?;
        }
        for (program, tracepoint) in [
            ("thread_exit", "sched_process_exit"),
            ("process_exec", "sched_process_exec"),
        ] {
            let tp: &mut RawTracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("BPF program {program} missing from the object"))?
                .try_into()?;
            tp.load()
                .with_context(|| format!("loading BPF program {program}"))?;
            tp.attach(tracepoint)
                .with_context(|| format!("attaching to the {tracepoint} raw tracepoint"))?;
        }

        let pid = NonZeroU32::new(target.pid).ok_or(Error::NoSuchProcess(0))?;
        let mut attached = 0;
        let mut session = Vec::new();
        if config.sampled() {
            attached += attach_sessions(&ebpf, &sites, target, &mut session)?;
        }
        // Return probes first: an entry without its return would leave a
        // pending call behind, a return without its entry is only counted.
        for site in &sites {
            if config.sampled() && site.kind != Kind::Free {
                continue;
            }
            let (enter, exit) = site.kind.programs();
            for program in exit.into_iter().chain([enter]) {
                uprobe(&mut ebpf, program)?
                    .attach(
                        site.file_offset,
                        &site.library.host_path,
                        UProbeScope::OneProcess(pid),
                    )
                    .map_err(|e| attach_error(e, site, target))?;
                attached += 1;
            }
        }
        log::debug!("attached {attached} probes at {sites:?}");
        let sources = crate::sources::attach(&mut ebpf, config.sources)?;
        let mut probes = Probes {
            session,
            ebpf,
            sites,
            attached,
            sources,
        };
        probes.set_recording(true)?;
        Ok(probes)
    }

    /// Turns recording on or off for every probe at once.
    pub fn set_recording(&mut self, on: bool) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::CONTROL)
            .context("BPF map CONTROL missing from the object")?;
        let mut control = Array::<&mut MapData, u32>::try_from(map)?;
        control
            .set(0, u32::from(on), 0)
            .context("switching recording")?;
        Ok(())
    }

    /// Stops recording, detaches every probe and unloads the programs,
    /// keeping the maps for reading.
    pub fn detach(mut self) -> anyhow::Result<Maps> {
        self.set_recording(false)?;
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .with_context(|| format!("BPF map {name} missing from the object"))
        };
        let maps = Maps {
            live: take(maps::LIVE)?,
            agg: take(maps::AGG)?,
            stacks: take(maps::STACKS)?,
            stats: take(maps::STATS)?,
            events: take(maps::EVENTS)?,
            sources: std::mem::take(&mut self.sources),
        };
        drop(std::mem::take(&mut self.session));
        drop(self.ebpf);
        Ok(maps)
    }

    /// The maps while the probes stay attached (for snapshots during the run).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Frees the stacks that have had nothing outstanding for at least
    /// `idle_ns`, so that a long run meets new stacks without filling the maps.
    /// Returns how many were freed.
    ///
    /// Runs while the probes record. An allocation adds to its stack's count
    /// before it stores the frames (see the BPF programs), so a stack whose
    /// count is still zero after its frames were deleted has no live
    /// allocation yet, and the next one stores the frames again; when the
    /// count turned nonzero meanwhile, the frames are put back here. The idle
    /// time keeps a stack in use from being deleted between an allocation's
    /// lookup of its count and its update.
    pub fn free_idle_stacks(&mut self, idle_ns: u64) -> anyhow::Result<u64> {
        let now = crate::snapshot::monotonic_ns();
        let (mut agg, mut stacks) = (None, None);
        for (name, map) in self.ebpf.maps_mut() {
            match name {
                maps::AGG => agg = Some(map),
                maps::STACKS => stacks = Some(map),
                _ => {}
            }
        }
        let (Some(agg), Some(stacks)) = (agg, stacks) else {
            anyhow::bail!("BPF maps AGG and STACKS missing from the object");
        };
        let mut agg = BpfHashMap::<&mut MapData, i64, StackAgg>::try_from(agg)?;
        let mut stacks = BpfHashMap::<&mut MapData, i64, StackTrace>::try_from(stacks)?;
        let idle: Vec<i64> = agg
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, a)| {
                a.count == 0 && a.bytes == 0 && now.saturating_sub(a.last_ns) >= idle_ns
            })
            .map(|(id, _)| id)
            .collect();
        let mut freed = 0;
        for id in idle {
            let trace = stacks.get(&id, 0).ok();
            let _ = agg.remove(&id);
            if trace.is_some() {
                let _ = stacks.remove(&id);
            }
            let in_use = agg.get(&id, 0).is_ok_and(|a| a.count != 0);
            match trace {
                Some(trace) if in_use => {
                    // EEXIST: the allocation's program stored it again first.
                    let _ = stacks.insert(id, trace, u64::from(BPF_NOEXIST));
                }
                _ => freed += 1,
            }
        }
        Ok(freed)
    }

    /// How many times the target called exec, and when it last did
    /// (`CLOCK_MONOTONIC` ns).
    pub fn execs(&self) -> anyhow::Result<(u64, u64)> {
        let map = self
            .ebpf
            .map(maps::EVENTS)
            .context("BPF map EVENTS missing from the object")?;
        crate::snapshot::read_events(map)
    }
}

/// The sampled-mode session program of an allocation function, or `None` for `free`.
fn session_program(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Malloc => Some(sampled::MALLOC),
        Kind::Calloc => Some(sampled::CALLOC),
        Kind::Realloc => Some(sampled::REALLOC),
        Kind::ReallocArray => Some(sampled::REALLOCARRAY),
        Kind::PosixMemalign => Some(sampled::POSIX_MEMALIGN),
        Kind::Memalign => Some(sampled::MEMALIGN),
        Kind::Free => None,
    }
}

/// Loads the session programs and links each to all of its sites; the
/// program and link descriptors go to `keep`. Returns the number of sites.
fn attach_sessions(
    ebpf: &Ebpf,
    sites: &[ProbeSite],
    target: &Target,
    keep: &mut Vec<OwnedFd>,
) -> anyhow::Result<usize> {
    // One link per program and file.
    let mut by_program: BTreeMap<(&'static str, &std::path::Path), Vec<&ProbeSite>> =
        BTreeMap::new();
    for site in sites {
        if let Some(program) = session_program(site.kind) {
            by_program
                .entry((program, site.library.host_path.as_path()))
                .or_default()
                .push(site);
        }
    }
    if by_program.is_empty() {
        return Ok(0);
    }
    let programs = SessionPrograms::parse(ebpf, BPF_OBJECT)?;
    let mut attached = 0;
    for ((name, path), sites) in by_program {
        let program = programs.load(name)?;
        let offsets: Vec<u64> = sites.iter().map(|s| s.file_offset).collect();
        log::debug!(
            "uprobe session {name} on {} at {offsets:#x?}",
            path.display()
        );
        let names: Vec<&str> = sites.iter().flat_map(|s| s.names.iter().copied()).collect();
        let library = sites.first().map(|s| s.library.path.as_str()).unwrap_or("");
        let link = session_link::attach(&program, path, &offsets, target.pid).map_err(|e| {
            session_link::attach_error(e, &format!("{} in {library}", names.join("/")))
        })?;
        keep.push(link);
        keep.push(program);
        attached += sites.len();
    }
    Ok(attached)
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("BPF program {name} missing from the object"))?;
    Ok(program.try_into()?)
}

fn attach_error(err: ProgramError, site: &ProbeSite, target: &Target) -> anyhow::Error {
    let einval = match &err {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::EINVAL),
        _ => false,
    };
    if einval {
        return Error::ProbeConflict {
            function: site.names.join("/"),
            library: site.library.path.clone(),
        }
        .into();
    }
    let gone = matches!(&err, ProgramError::SyscallError(e)
        if e.io_error.kind() == io::ErrorKind::NotFound || e.io_error.raw_os_error() == Some(libc::ESRCH));
    let err = anyhow::Error::new(err);
    let what = format!(
        "attaching a uprobe to {} in {}",
        site.names.join("/"),
        site.library.path
    );
    if gone {
        err.context(format!("{what}: did pid {} exit?", target.pid))
    } else {
        err.context(what)
    }
}
