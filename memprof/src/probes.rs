//! Loading the BPF object and attaching its programs to the target's libc.
//!
//! [`Probes`] owns the loaded object; dropping it (or calling
//! [`Probes::detach`]) detaches every probe, so no exit path leaves a uprobe
//! behind.
//!
//! Full tracking attaches an entry and a return probe per allocator function
//! through `uprobe_multi` links (one per program, file and process, with all
//! its sites; see [`crate::session_link`]): detaching them takes one wait for
//! the kernel's grace period per link, all links at once, where aya's
//! perf-event uprobes wait one after the other, once per probe. On a kernel
//! without these links (before Linux 6.6), or with [`PERF_UPROBES_ENV`] set,
//! they are perf-event uprobes attached through aya. With sampling
//! (`--sample-rate N`) the allocation functions get uprobe session links
//! instead, which let an unsampled call skip its return probe; `free` keeps
//! its plain entry probe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuHashMap};
use aya::programs::uprobe::{UProbeAttachPoint, UProbeScope};
use aya::programs::{ProgramError, RawTracePoint, TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use memprof_common::{
    control, filter, globals, maps, programs, sampled, share, window_cookie, window_frees,
    AllocInfo, LiveKey, ProcEvents, StackAgg, StackTrace, AGG_RESERVED, HEAP_EVENTS_BYTES,
    HEAP_EVENTS_OFF_BYTES, STACK_LOST, STACK_NO_ROOM,
};

const BPF_NOEXIST: u32 = 1;

/// Set (to anything), the allocator probes are perf-event uprobes attached
/// through aya even where the kernel has `uprobe_multi` links.
pub(crate) const PERF_UPROBES_ENV: &str = "MEMPROF_PERF_UPROBES";

use crate::config::{Bench, Config, Limits, SampleBy, Sampling};
use crate::error::Error;
use crate::session_link::{self, LinkKind, SessionPrograms};
use crate::target::{Kind, ProbeSite};
use crate::tracefs;
use crate::windows::{self, Windows};

/// The BPF object, built by build.rs from the memprof-ebpf crate.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memprof"));

/// How to load and attach the probes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProbeConfig {
    pub limits: Limits,
    /// `None`: every allocation call is recorded. Else through uprobe
    /// session links, and with [`SampleBy::Window`] by time windows (see
    /// [`crate::windows`]).
    pub sampling: Option<Sampling>,
    /// Optional sources besides the heap (`--mmap`, `--kernel`).
    pub sources: crate::sources::Sources,
    /// Record nothing ([`Bench::floor`]); probes at entry ([`Bench::probe_at_entry`]).
    pub bench: Bench,
    /// How stacks are walked (`--unwind`).
    pub unwind: crate::config::Unwind,
    /// Read the Python frames of CPython processes (not `--no-python`).
    pub python: bool,
    /// A block freed within this many ns of its allocation is a temporary.
    pub temporary_ns: u64,
    /// Send every allocation and free to the peak's replay.
    pub log_events: bool,
}

impl ProbeConfig {
    /// The probes a run asks for.
    pub(crate) fn of(config: &Config) -> ProbeConfig {
        ProbeConfig {
            limits: config.limits,
            sampling: config.sampling,
            sources: config.sources,
            bench: config.bench,
            unwind: config.unwind,
            python: !config.no_python,
            temporary_ns: config.profiles.temporary_ns,
            // Not over an open set of processes (the machine, --comm,
            // --cgroup): what the processes that come and go held at their
            // exit would count in the total for ever.
            log_events: config.profiles.peak
                && config.sampling.is_none()
                && !config.bench.floor
                && (!config.select.pids.is_empty() || !config.select.command.is_empty()),
        }
    }

    /// True when the Python frames of CPython processes are read (not
    /// `--no-python`), in full tracking and sampled runs alike: the uprobe
    /// session programs are loaded with the object's BTF and func_info,
    /// which their `bpf_loop` callbacks need.
    pub(crate) fn python_frames(&self) -> bool {
        self.python
    }

    /// True when allocation calls are sampled.
    pub(crate) fn sampled(&self) -> bool {
        self.sampling.is_some()
    }

    /// True when sampling by time windows.
    pub(crate) fn by_window(&self) -> bool {
        self.sampling.is_some_and(|s| s.by == SampleBy::Window)
    }
}

/// Which processes the probes record (see [`memprof_common::filter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Filter {
    /// One of [`memprof_common::filter`].
    pub mode: u32,
    /// With [`filter::ONE`]: the process.
    pub tgid: u32,
    /// Only tasks in this cgroup (v2 id) or below it, at this depth.
    pub cgroup: Option<(u64, u32)>,
    /// Children forked by recorded processes are recorded too (with [`filter::SET`]).
    pub follow_forks: bool,
    /// Note every exec in the `EXECS` map (`--comm`).
    pub watch_execs: bool,
    /// A launched command that memprof traces, held at its exec and its
    /// loader's changes while its unwind tables are written (0: none).
    pub hold: u32,
}

impl Filter {
    /// Only the process `tgid`.
    pub(crate) fn one(tgid: u32) -> Filter {
        Filter {
            mode: filter::ONE,
            tgid,
            cgroup: None,
            follow_forks: false,
            watch_execs: false,
            hold: 0,
        }
    }
}

/// Which processes a probe fires for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// Only this process: others that map the library never trap.
    Process(u32),
    /// Every process that maps the library (the programs filter).
    All,
}

/// The maps that outlive the probes, read after detaching.
pub(crate) struct Maps {
    pub live: Map,
    pub agg: Map,
    pub stacks: Map,
    pub stats: Map,
    /// The optional sources, to be read by [`crate::sources::collect`].
    pub sources: crate::sources::Attached,
    /// With sampling by windows: when they were open.
    pub windows: Option<crate::window_log::WindowLog>,
    /// The peak's replay, to be finished.
    pub heap: Option<crate::profiles::HeapDrain>,
    /// The stacks freed during the run for having nothing outstanding.
    pub retired: crate::profiles::Retired,
}

/// Loaded and attached programs.
pub(crate) struct Probes {
    /// With sampling by windows: the thread that attaches the probes of the
    /// functions that only allocate for each window. Stopped first on drop.
    windows: Option<Windows>,
    /// Uprobe session links and their programs (sampled mode): closing them
    /// detaches the probes. Declared before `ebpf` so that they are dropped first.
    session: Vec<OwnedFd>,
    /// The allocator probes of full tracking, and `free`'s with sampling.
    /// Declared before `ebpf` so that they are closed first.
    links: Links,
    ebpf: Ebpf,
    config: ProbeConfig,
    /// What is attached already: (device, inode, file offset, scope).
    done: HashSet<(u64, u64, u64, Scope)>,
    /// Probe sites attached, for the log.
    pub sites: Vec<ProbeSite>,
    /// Number of uprobes and uretprobes attached (a session counts as both).
    pub attached: usize,
    /// The optional sources (`--mmap`, `--kernel`).
    sources: crate::sources::Attached,
    /// The unwind tables, when stacks are walked from them.
    unwind: Option<crate::unwind::UnwindTables>,
    /// A launched command whose tables are written at its holds, not
    /// before its exec (see [`Probes::hold_launched`]).
    held: u32,
    /// The CPython processes, whose allocations get Python frames.
    python: crate::python::Watch,
    /// The thread that replays the heap events for the peak.
    heap: Option<crate::profiles::HeapDrain>,
    /// What the stacks freed during the run had allocated.
    retired: crate::profiles::Retired,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with a clear message when this process may not load BPF programs.
pub(crate) fn check_permissions() -> Result<(), Error> {
    let caps = crate::procfs::own_capabilities();
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
pub(crate) fn check_kernel() -> Result<(), Error> {
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
    /// Loads the BPF object and attaches its tracepoints; no allocator probe
    /// yet ([`Probes::attach_sites`]), and not recording.
    pub(crate) fn load(config: ProbeConfig, filter: &Filter) -> anyhow::Result<Probes> {
        check_permissions()?;
        check_kernel()?;
        // A tgid that no process has makes every program return at once.
        let (mode, tgid) = if config.bench.floor {
            (filter::ONE, u32::MAX)
        } else {
            (filter.mode, filter.tgid)
        };
        let (cgroup_id, cgroup_level) = filter.cgroup.unwrap_or((0, 0));
        // Read (and tracefs mounted) only when needed.
        let fork_offset = if filter.follow_forks {
            fork_child_pid_offset().map(Some)
        } else {
            Ok(None)
        };
        let offsets = crate::sources::TraceOffsets::read(config.sources)?;
        // The programs record every call at rate 1.
        let sample_rate = config.sampling.map_or(1, |s| s.rate);
        let by_window = u32::from(config.by_window());
        let self_tgid = std::process::id();
        let follow_forks = u32::from(filter.follow_forks && matches!(fork_offset, Ok(Some(_))));
        let watch_execs = u32::from(filter.watch_execs);
        let log_events = u32::from(config.log_events);
        let fork_child_pid_offset = fork_offset.as_ref().ok().copied().flatten().unwrap_or(0);
        let mut loader = EbpfLoader::new();
        loader
            // PENDING is task-local storage, which aya 0.14 creates but has no type for.
            .allow_unsupported_maps()
            .override_global(globals::FILTER, &mode, true)
            .override_global(globals::TARGET_TGID, &tgid, true)
            .override_global(globals::SELF_TGID, &self_tgid, true)
            .override_global(globals::CGROUP_ID, &cgroup_id, true)
            .override_global(globals::CGROUP_LEVEL, &cgroup_level, true)
            .override_global(globals::FOLLOW_FORKS, &follow_forks, true)
            .override_global(globals::WATCH_EXECS, &watch_execs, true)
            .override_global(globals::FORK_CHILD_PID_OFFSET, &fork_child_pid_offset, true)
            .override_global(globals::SAMPLE_RATE, &sample_rate, true)
            .override_global(globals::SAMPLE_BY_WINDOW, &by_window, true)
            .override_global(globals::TEMPORARY_NS, &config.temporary_ns, true)
            .override_global(globals::LOG_EVENTS, &log_events, true)
            .map_max_entries(
                maps::HEAP_EVENTS,
                if config.log_events {
                    HEAP_EVENTS_BYTES
                } else {
                    HEAP_EVENTS_OFF_BYTES
                },
            )
            .map_max_entries(maps::LIVE, config.limits.max_live)
            .map_max_entries(
                maps::AGG,
                config.limits.max_stacks.saturating_add(AGG_RESERVED),
            )
            .map_max_entries(maps::STACKS, config.limits.max_stacks)
            .map_max_entries(share::STACK_OWNERS, config.limits.max_stacks);
        // Over many processes, a share of the stack maps each (see
        // `set_shares`).
        let (stack_share, share_from) = if mode == filter::ONE {
            (0u64, 0u64)
        } else {
            stack_shares(config.limits.max_stacks)
        };
        loader
            .override_global(share::STACK_SHARE, &stack_share, true)
            .override_global(share::STACK_SHARE_FROM, &share_from, true);
        if mode == filter::ONE {
            // One process: no set to fill, and few execs to note; the
            // default sizes serve runs over many processes.
            loader
                .map_max_entries(maps::TARGETS, 1)
                .map_max_entries(maps::EXECS, 1)
                .map_max_entries(maps::PROCS, 64)
                .map_max_entries(maps::EXITS, 64);
        }
        crate::sources::configure(
            &mut loader,
            config.sources,
            &offsets,
            config.limits.max_stacks,
        );
        crate::unwind::configure(&mut loader, config.unwind, mode != filter::ONE);
        // Held only when there are tables to write.
        let held = if config.unwind.rows().is_some() && !config.bench.floor {
            filter.hold
        } else {
            0
        };
        loader.override_global(globals::HOLD_TGID, &held, true);
        crate::python::configure(&mut loader, config.python_frames());
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .context("loading the BPF programs into the kernel")?;
        reserve_agg_entries(&mut ebpf)?;

        let links = Links::load(&mut ebpf, config.sampled())?;
        for (program, tracepoint) in [
            (programs::THREAD_EXIT, "sched_process_exit"),
            (programs::PROCESS_EXEC, "sched_process_exec"),
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
        if filter.follow_forks {
            fork_offset?;
            let tp: &mut TracePoint = ebpf
                .program_mut(programs::PROCESS_FORK)
                .context("BPF program process_fork missing from the object")?
                .try_into()?;
            tp.load().context("loading BPF program process_fork")?;
            tp.attach("sched", "sched_process_fork")
                .context("attaching to the sched/sched_process_fork tracepoint")?;
        }
        let heap = if config.log_events {
            let map = ebpf
                .take_map(maps::HEAP_EVENTS)
                .context("BPF map HEAP_EVENTS missing from the object")?;
            Some(crate::profiles::HeapDrain::start(map)?)
        } else {
            None
        };
        let sources = crate::sources::attach(&mut ebpf, config.sources)?;
        let unwind = crate::unwind::tables_of(&ebpf, config.unwind)?;
        let windows = match config.sampling.and_then(|s| Some((s.rate, s.window()?))) {
            Some((rate, window)) => {
                let control = match ebpf.map(maps::CONTROL) {
                    Some(Map::Array(data)) => data.fd().as_fd().try_clone_to_owned()?,
                    _ => anyhow::bail!("BPF map CONTROL missing from the object"),
                };
                Some(Windows::new(control, rate, window))
            }
            _ => None,
        };
        let mut probes = Probes {
            windows,
            session: Vec::new(),
            links,
            ebpf,
            config,
            done: HashSet::new(),
            sites: Vec::new(),
            attached: 0,
            sources,
            unwind,
            held,
            python: crate::python::Watch::new(config.python_frames()),
            heap,
            retired: crate::profiles::Retired::default(),
        };
        if mode == filter::ONE && !config.bench.floor {
            probes.unwind_process(tgid);
            probes.python.add(&mut probes.ebpf, tgid);
        }
        Ok(probes)
    }

    /// Attaches the probes of `sites` for `scope`, skipping those attached
    /// already (the same file, by device and inode, and offset). Returns how
    /// many probes were attached. A site that fails comes back as a
    /// [`SiteError`] inside the error.
    pub(crate) fn attach_sites(
        &mut self,
        sites: &[ProbeSite],
        scope: Scope,
    ) -> anyhow::Result<usize> {
        let sampled = self.config.sampled();
        let sites: Vec<ProbeSite> = sites
            .iter()
            // pymalloc's blocks are recorded with full tracking only.
            .filter(|site| !(sampled && site.kind.pymalloc()))
            .filter(|site| match file_id(&site.library.host_path) {
                Some((dev, ino)) => self.done.insert((dev, ino, site.file_offset, scope)),
                // Unreadable: let the attach say why.
                None => true,
            })
            .cloned()
            .collect();
        let mut attached = 0;
        if sampled {
            let pid = match scope {
                Scope::Process(pid) => pid,
                Scope::All => 0,
            };
            attached += attach_sessions(
                &self.ebpf,
                &sites,
                pid,
                &mut self.session,
                self.windows.as_ref(),
            )?;
        }
        // With sampling, only `free` gets a plain probe.
        let plain: Vec<&ProbeSite> = sites
            .iter()
            .filter(|site| !sampled || site.kind.releases())
            .collect();
        attached += self.links.attach(&mut self.ebpf, &plain, scope)?;
        log::debug!("attached {attached} probes for {scope:?} at {sites:?}");
        self.attached += attached;
        self.sites.extend(sites);
        Ok(attached)
    }

    /// Adds processes to the recorded set ([`filter::SET`]).
    pub(crate) fn add_targets(&mut self, tgids: &[u32]) -> anyhow::Result<()> {
        let mut targets = self.targets_map()?;
        for &tgid in tgids {
            targets
                .insert(tgid, 1, 0)
                .with_context(|| format!("adding pid {tgid} to the recorded processes"))?;
        }
        for &tgid in tgids {
            self.unwind_process(tgid);
            self.python.add(&mut self.ebpf, tgid);
        }
        Ok(())
    }

    /// Builds the unwind tables of `tgid` and keeps them current; a process
    /// without them has its stacks walked by frame pointer (and counted).
    pub(crate) fn unwind_process(&self, tgid: u32) {
        if self.config.bench.floor || tgid == self.held {
            return;
        }
        if let Some(tables) = &self.unwind {
            if let Err(e) = tables.add_process(tgid) {
                log::warn!("{e:#}: stacks of process {tgid} are walked by frame pointer");
            }
        }
    }

    /// Looks for CPython in `tgid`, a process of a whole-machine run as
    /// it is probed, and records its Python frames if it runs one.
    pub(crate) fn python_process(&mut self, tgid: u32) {
        if self.config.bench.floor {
            return;
        }
        self.python.add(&mut self.ebpf, tgid);
    }

    /// Writes the unwind tables of the launched command, held before its
    /// exec, at its holds (see [`crate::launch`]) instead of now: at its
    /// exec, and each time its dynamic loader has mapped objects (a uprobe
    /// on the loader's `_dl_debug_state`), so that every object has its
    /// table before its code runs, constructors included.
    pub(crate) fn hold_launched(&mut self, launched: &crate::launch::Launched) {
        let Some(tables) = self.unwind.as_ref().filter(|_| self.held == launched.pid) else {
            return;
        };
        let add = tables.adder();
        launched.on_hold(move |pid, why| {
            let began = std::time::Instant::now();
            match add(pid) {
                Ok(()) => log::debug!(
                    "pid {pid} held at {why:?} for {:.1} ms while its unwind tables were written",
                    began.elapsed().as_secs_f64() * 1e3
                ),
                Err(e) => log::warn!("{e:#}: stacks of process {pid} are walked by frame pointer"),
            }
        });
        match loader_of(&launched.program) {
            Some(loader) => {
                let attached = uprobe(&mut self.ebpf, programs::LOADER_CHANGE).and_then(|p| {
                    p.load()?;
                    let pid = NonZeroU32::new(launched.pid).ok_or(Error::NoSuchProcess(0))?;
                    p.attach("_dl_debug_state", &loader, UProbeScope::OneProcess(pid))?;
                    Ok(())
                });
                if let Err(e) = attached {
                    log::info!(
                        "cannot hold {} while its loader maps objects ({e:#}): the first \
                         allocations of their code may be walked by frame pointer",
                        launched.cmdline
                    );
                }
            }
            None => log::debug!("{} has no dynamic loader to hold", launched.cmdline),
        }
    }

    /// Looks again at the recorded processes for CPython (a launched
    /// command after its exec, a process that exec'd).
    pub(crate) fn python_tick(&mut self) {
        self.python.tick(&mut self.ebpf);
    }

    /// The stored stacks that have Python frames (see
    /// [`crate::snapshot::read_traces`]), while the probes run.
    pub(crate) fn python_traces(&self) -> HashMap<i64, Vec<u64>> {
        let Some(map) = self.ebpf.map(maps::STACKS) else {
            return HashMap::new();
        };
        let ids: Vec<i64> = match BpfHashMap::<&MapData, i64, StackTrace>::try_from(map) {
            Ok(stacks) => stacks
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, t)| memprof_common::python::frame::count(t.walk) > 0)
                .map(|(id, _)| id)
                .collect(),
            Err(_) => return HashMap::new(),
        };
        crate::snapshot::read_traces(map, ids).unwrap_or_default()
    }

    /// Takes a process out of the recorded set.
    pub(crate) fn remove_target(&mut self, tgid: u32) -> anyhow::Result<()> {
        let _ = self.targets_map()?.remove(&tgid);
        Ok(())
    }

    /// The recorded set: processes, and threads of theirs started lately.
    pub(crate) fn targets(&mut self) -> anyhow::Result<Vec<u32>> {
        Ok(self.targets_map()?.keys().filter_map(Result::ok).collect())
    }

    fn targets_map(&mut self) -> anyhow::Result<BpfHashMap<&mut MapData, u32, u32>> {
        let map = self
            .ebpf
            .map_mut(maps::TARGETS)
            .context("BPF map TARGETS missing from the object")?;
        Ok(BpfHashMap::try_from(map)?)
    }

    /// The processes that called exec since the last call, noted with
    /// [`Filter::watch_execs`]; they are taken out of the map.
    pub(crate) fn take_execs(&mut self) -> anyhow::Result<Vec<u32>> {
        let map = self
            .ebpf
            .map_mut(maps::EXECS)
            .context("BPF map EXECS missing from the object")?;
        let mut execs = BpfHashMap::<&mut MapData, u32, u64>::try_from(map)?;
        let tgids: Vec<u32> = execs.keys().filter_map(Result::ok).collect();
        for tgid in &tgids {
            let _ = execs.remove(tgid);
        }
        Ok(tgids)
    }

    /// The recorded processes that exited while recording, with the time
    /// (`CLOCK_MONOTONIC` ns) their last thread exited. Read after recording
    /// stopped, it says which processes were alive at the end of the run.
    pub(crate) fn exits(&self) -> anyhow::Result<HashMap<u32, u64>> {
        let map = self
            .ebpf
            .map(maps::EXITS)
            .context("BPF map EXITS missing from the object")?;
        let exits = BpfHashMap::<&MapData, u32, u64>::try_from(map)?;
        let mut out = HashMap::new();
        // Read every second: in batches, as it fills with the machine's exits.
        let mut cursor = crate::batch::Cursor::default();
        let batched = crate::batch::read_some::<u32, u64>(
            aya::maps::IterableMap::map(&exits),
            &mut cursor,
            usize::MAX,
            |&tgid, &at| {
                out.insert(tgid, at);
            },
        );
        if batched.is_ok() {
            return Ok(out);
        }
        out.clear();
        for entry in exits.iter() {
            match entry {
                Ok((tgid, at)) => {
                    out.insert(tgid, at);
                }
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("reading EXITS"),
            }
        }
        Ok(out)
    }

    /// Walks the next `budget` blocks or so of `LIVE` from `cursor` and
    /// takes out those that processes in `exited` (tgid -> exit time) held
    /// when they exited, which keeps the map free for the processes still
    /// running. A walk of the whole map may take several calls: its cost per
    /// call stays bounded however many blocks the running processes hold.
    /// Returns what each process held and the ids of their stacks (for
    /// [`Probes::free_stacks`]: a stack's id includes its process, so no
    /// other process uses it).
    pub(crate) fn sweep_live(
        &mut self,
        cursor: &mut crate::batch::Cursor,
        budget: usize,
        exited: &HashMap<u32, u64>,
    ) -> anyhow::Result<Swept> {
        let mut swept = Swept::default();
        let map = self
            .ebpf
            .map_mut(maps::LIVE)
            .context("BPF map LIVE missing from the object")?;
        let mut live = BpfHashMap::<&mut MapData, LiveKey, AllocInfo>::try_from(map)?;
        let held_by_exited = |key: &LiveKey, info: &AllocInfo| {
            exited
                .get(&key.tgid)
                .is_some_and(|&at| info.timestamp_ns <= at)
        };
        let mut gone = Vec::new();
        let read = crate::batch::read_some::<LiveKey, AllocInfo>(
            aya::maps::IterableMap::map(&live),
            cursor,
            budget,
            |key, info| {
                if held_by_exited(key, info) {
                    gone.push((*key, *info));
                }
            },
        );
        match read {
            Ok((walked, done)) => (swept.walked, swept.done) = (walked as u64, done),
            Err(e) => {
                log::debug!("reading LIVE in batches failed ({e}): reading it entry by entry");
                *cursor = crate::batch::Cursor::default();
                gone.clear();
                for (key, info) in live.iter().filter_map(Result::ok) {
                    swept.walked += 1;
                    if held_by_exited(&key, &info) {
                        gone.push((key, info));
                    }
                }
                swept.done = true;
            }
        }
        for (key, info) in &gone {
            if live.remove(key).is_err() {
                continue;
            }
            swept.blocks.push((*key, *info));
            let held = swept.by_process.entry(key.tgid).or_default();
            held.bytes = held.bytes.saturating_add(info.size);
            held.count += 1;
            if info.stack_id < 0 {
                let reserved = swept.reserved.entry(info.stack_id).or_default();
                reserved.bytes = reserved.bytes.wrapping_add(info.size);
                reserved.count += 1;
            } else {
                swept
                    .stacks
                    .entry(key.tgid)
                    .or_default()
                    .insert(info.stack_id);
            }
        }
        Ok(swept)
    }

    /// The frames of the stacks `ids` (those in `STACKS`).
    pub(crate) fn read_traces(
        &self,
        ids: impl IntoIterator<Item = i64>,
    ) -> anyhow::Result<HashMap<i64, Vec<u64>>> {
        let map = self
            .ebpf
            .map(maps::STACKS)
            .context("BPF map STACKS missing from the object")?;
        crate::snapshot::read_traces(map, ids)
    }

    /// Takes the stacks `ids` out of `AGG` and `STACKS` (not the reserved
    /// ids, [`STACK_LOST`] and [`STACK_NO_ROOM`], whose `AGG` entries stay:
    /// their per-CPU counts cannot be lowered safely while programs add to
    /// them). Returns how many were taken out.
    pub(crate) fn free_stacks(
        &mut self,
        ids: impl IntoIterator<Item = i64>,
    ) -> anyhow::Result<u64> {
        let (mut agg, mut stacks) = agg_and_stacks(&mut self.ebpf)?;
        let mut freed = Vec::new();
        for id in ids.into_iter().filter(|&id| id >= 0) {
            // The entry first, as when a stack is freed as idle.
            if agg.remove(&id).is_ok() {
                freed.push(id);
            }
            let _ = stacks.remove(&id);
        }
        self.forget_owners(&freed)?;
        Ok(freed.len() as u64)
    }

    /// Turns recording on or off for every probe at once. With sampling by
    /// windows, the windows start with recording and stop (the open one
    /// closed, its probes detached) before it ends.
    pub(crate) fn set_recording(&mut self, on: bool) -> anyhow::Result<()> {
        if !on {
            if let Some(windows) = &mut self.windows {
                windows.stop();
            }
        }
        let map = self
            .ebpf
            .map_mut(maps::CONTROL)
            .context("BPF map CONTROL missing from the object")?;
        let mut control = Array::<&mut MapData, u32>::try_from(map)?;
        control
            .set(control::RECORDING, u32::from(on), 0)
            .context("switching recording")?;
        if on {
            if let Some(windows) = &mut self.windows {
                windows.start().context("starting the sampling windows")?;
            }
        }
        Ok(())
    }

    /// Stops recording, detaches every probe and unloads the programs,
    /// keeping the maps for reading.
    pub(crate) fn detach(mut self) -> anyhow::Result<Maps> {
        self.set_recording(false)?;
        if let Some(tables) = &self.unwind {
            let s = tables.stats();
            log::info!(
                "unwind tables: {} objects ({} without usable call frame information, {} built \
                 with frame pointers), {} rows ({} unsupported), {:.1} MiB of kernel memory, \
                 built in {:.2} s{}{}",
                s.objects,
                s.failed,
                s.fp_objects,
                s.rows,
                s.unsupported_rows,
                s.kernel_bytes as f64 / (1024.0 * 1024.0),
                s.build_us as f64 / 1e6,
                if s.procs_without_table > 0 {
                    format!(
                        "; {} processes got no table (no room: walked by frame pointer)",
                        s.procs_without_table
                    )
                } else {
                    String::new()
                },
                if s.mappings_dropped > 0 {
                    format!(
                        "; {} processes had more mappings than a table holds",
                        s.mappings_dropped
                    )
                } else {
                    String::new()
                }
            );
        }
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
            sources: std::mem::take(&mut self.sources),
            heap: self.heap.take(),
            retired: std::mem::take(&mut self.retired),
            windows: match self.windows.take() {
                Some(mut windows) => {
                    let mut log = windows.stop();
                    (log.frees, log.frees_in_windows) = window_frees(&self.ebpf)?;
                    log::debug!(
                        "{} of the target's {} frees in the windows; pace in windows {:?}",
                        log.frees_in_windows,
                        log.frees,
                        log.window_pace()
                    );
                    Some(log)
                }
                None => None,
            },
        };
        let mut links = std::mem::take(&mut self.session);
        links.extend(self.links.take());
        close_in_parallel(links);
        drop(self.ebpf);
        Ok(maps)
    }

    /// The maps while the probes stay attached (for snapshots during the run).
    pub(crate) fn ebpf(&self) -> &Ebpf {
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
    pub(crate) fn free_idle_stacks(&mut self, idle_ns: u64) -> anyhow::Result<u64> {
        let now = crate::snapshot::monotonic_ns();
        let (mut agg, mut stacks) = agg_and_stacks(&mut self.ebpf)?;
        let mut held = 0u64;
        let idle: Vec<(i64, StackAgg)> = agg
            .iter()
            .filter_map(Result::ok)
            .inspect(|_| held += 1)
            // The reserved entries stay.
            .filter(|(id, _)| *id >= 0)
            .map(|(id, values)| (id, StackAgg::sum(values.iter())))
            .filter(|(_, a)| {
                a.count == 0 && a.bytes == 0 && now.saturating_sub(a.last_ns) >= idle_ns
            })
            .collect();
        let mut freed = 0;
        let mut freed_ids = Vec::new();
        for (id, sum) in idle {
            let trace = stacks.get(&id, 0).ok();
            // What it allocated stays in the allocation profile.
            self.retired.add(id, &sum, trace.as_ref());
            let _ = agg.remove(&id);
            if trace.is_some() {
                let _ = stacks.remove(&id);
            }
            let in_use = agg
                .get(&id, 0)
                .is_ok_and(|values| StackAgg::sum(values.iter()).count != 0);
            match trace {
                Some(trace) if in_use => {
                    // EEXIST: the allocation's program stored it again first.
                    let _ = stacks.insert(id, trace, u64::from(BPF_NOEXIST));
                }
                _ => {
                    freed += 1;
                    freed_ids.push(id);
                }
            }
        }
        log::debug!("stacks: {held} in AGG, {freed} of them freed as idle");
        self.forget_owners(&freed_ids)?;
        self.recount_shares()?;
        Ok(freed)
    }

    /// Takes the freed stacks `ids` out of `STACK_OWNERS` (see
    /// [`Probes::recount_shares`]).
    fn forget_owners(&mut self, ids: &[i64]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let map = self
            .ebpf
            .map_mut(share::STACK_OWNERS)
            .context("BPF map STACK_OWNERS missing from the object")?;
        let mut owners = BpfHashMap::<&mut MapData, i64, u32>::try_from(map)?;
        for id in ids {
            let _ = owners.remove(id);
        }
        Ok(())
    }

    /// Recounts the stacks each process holds (`PROC_STACKS`) and in all
    /// (`SHARE_FILL`) from `STACK_OWNERS`, for the share of the stack maps
    /// per process that the programs keep: they only add to the counts, and
    /// user space frees stacks. A stack stored meanwhile may go uncounted
    /// until the next recount.
    fn recount_shares(&mut self) -> anyhow::Result<()> {
        let (mut owners, mut per_process, mut fill) = (None, None, None);
        for (name, map) in self.ebpf.maps_mut() {
            match name {
                share::STACK_OWNERS => owners = Some(map),
                share::PROC_STACKS => per_process = Some(map),
                share::SHARE_FILL => fill = Some(map),
                _ => {}
            }
        }
        let (Some(owners), Some(per_process), Some(fill)) = (owners, per_process, fill) else {
            anyhow::bail!(
                "BPF maps STACK_OWNERS, PROC_STACKS and SHARE_FILL missing from the object"
            );
        };
        let owners = BpfHashMap::<&mut MapData, i64, u32>::try_from(owners)?;
        let mut held: HashMap<u32, u64> = HashMap::new();
        let mut cursor = crate::batch::Cursor::default();
        let mut total = 0u64;
        let counted = crate::batch::read_some::<i64, u32>(
            aya::maps::IterableMap::map(&owners),
            &mut cursor,
            usize::MAX,
            |_, &tgid| {
                *held.entry(tgid).or_default() += 1;
                total += 1;
            },
        );
        if counted.is_err() {
            (held, total) = (HashMap::new(), 0);
            for (_, tgid) in owners.iter().filter_map(Result::ok) {
                *held.entry(tgid).or_default() += 1;
                total += 1;
            }
        }
        let mut per_process = BpfHashMap::<&mut MapData, u32, u64>::try_from(per_process)?;
        let gone: Vec<u32> = per_process
            .keys()
            .filter_map(Result::ok)
            .filter(|tgid| !held.contains_key(tgid))
            .collect();
        for tgid in gone {
            let _ = per_process.remove(&tgid);
        }
        for (tgid, n) in held {
            let _ = per_process.insert(tgid, n, 0);
        }
        let mut fill = Array::<&mut MapData, u64>::try_from(fill)?;
        fill.set(share::FILL, total, 0)
            .context("writing SHARE_FILL")?;
        fill.set(share::ADDED, 0, 0).context("writing SHARE_FILL")?;
        Ok(())
    }

    /// The execs of the recorded processes, by tgid.
    pub(crate) fn procs(&self) -> anyhow::Result<HashMap<u32, ProcEvents>> {
        let map = self
            .ebpf
            .map(maps::PROCS)
            .context("BPF map PROCS missing from the object")?;
        crate::snapshot::read_procs(map)
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
        // pymalloc is probed with full tracking only.
        Kind::Free
        | Kind::PyMalloc
        | Kind::PyCalloc
        | Kind::PyRealloc
        | Kind::PyFree
        | Kind::PyArenaAlloc
        | Kind::PyArenaFree => None,
    }
}

/// The counters of `WINDOW_FREES`: the target's frees while recording, and
/// those made in sampling windows.
fn window_frees(ebpf: &Ebpf) -> anyhow::Result<(u64, u64)> {
    let map = ebpf
        .map(maps::WINDOW_FREES)
        .context("BPF map WINDOW_FREES missing from the object")?;
    let array =
        aya::maps::PerCpuArray::<&MapData, u64>::try_from(map).context("WINDOW_FREES map")?;
    let sum = |index: u32| -> anyhow::Result<u64> {
        Ok(array
            .get(&index, 0)
            .context("reading WINDOW_FREES")?
            .iter()
            .sum())
    };
    Ok((sum(window_frees::ALL)?, sum(window_frees::IN_WINDOWS)?))
}

/// Loads the session programs and links each to all of its sites; the
/// program and link descriptors go to `keep`. With sampling by windows, the
/// functions that only allocate are linked in windows only, through one
/// program and link per library: their link goes to `windows` instead.
/// Returns the number of sites.
fn attach_sessions(
    ebpf: &Ebpf,
    sites: &[ProbeSite],
    pid: u32,
    keep: &mut Vec<OwnedFd>,
    windows: Option<&Windows>,
) -> anyhow::Result<usize> {
    // One link per program and file.
    let mut by_program: BTreeMap<(&'static str, &std::path::Path), Vec<&ProbeSite>> =
        BTreeMap::new();
    for site in sites {
        let program = match window_cookie(site.kind) {
            Some(_) if windows.is_some() => Some(sampled::ALLOC_WINDOWED),
            _ => session_program(site.kind),
        };
        if let Some(program) = program {
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
        let names: Vec<&str> = sites.iter().flat_map(|s| s.names.iter().copied()).collect();
        let library = sites.first().map(|s| s.library.path.as_str()).unwrap_or("");
        let what = format!("{} in {library}", names.join("/"));
        attached += sites.len();
        if let (Some(windows), sampled::ALLOC_WINDOWED) = (windows, name) {
            let cookies: Vec<u64> = sites
                .iter()
                .map(|s| {
                    window_cookie(s.kind).unwrap_or(window_cookie::MALLOC) | s.placement.arg_regs()
                })
                .collect();
            // Once now, so that what would fail in every window fails here.
            drop(
                session_link::attach(&program, path, &offsets, &cookies, pid)
                    .map_err(|e| session_link::attach_error(e, &what))?,
            );
            log::debug!(
                "uprobe session {name} on {} at {offsets:#x?}, in sampling windows",
                path.display()
            );
            windows.add(windows::Spec {
                program: Arc::new(program),
                path: path.to_path_buf(),
                offsets,
                cookies,
                pid,
                what,
            });
            continue;
        }
        log::debug!(
            "uprobe session {name} on {} at {offsets:#x?}",
            path.display()
        );
        let cookies: Vec<u64> = sites.iter().map(|s| s.placement.arg_regs()).collect();
        let link = session_link::attach(&program, path, &offsets, &cookies, pid)
            .map_err(|e| session_link::attach_error(e, &what))?;
        keep.push(link);
        keep.push(program);
    }
    Ok(attached)
}

/// The allocation functions that release nothing, by their cookie in
/// [`sampled::ALLOC_WINDOWED`]'s link: with sampling by windows their probes
/// are attached during windows only. `None` for the others.
fn window_cookie(kind: Kind) -> Option<u64> {
    match kind {
        Kind::Malloc => Some(window_cookie::MALLOC),
        Kind::Calloc => Some(window_cookie::CALLOC),
        Kind::PosixMemalign => Some(window_cookie::POSIX_MEMALIGN),
        Kind::Memalign => Some(window_cookie::MEMALIGN),
        Kind::Realloc
        | Kind::ReallocArray
        | Kind::Free
        | Kind::PyMalloc
        | Kind::PyCalloc
        | Kind::PyRealloc
        | Kind::PyFree
        | Kind::PyArenaAlloc
        | Kind::PyArenaFree => None,
    }
}

/// The plain probes: what each allocator function runs at its entry and,
/// for the allocation functions, at its return, by [`Kind::programs`].
/// With sampling only `free`'s (the others go through session links).
fn plain_programs(sampled: bool) -> Vec<(&'static str, LinkKind)> {
    let kinds: &[Kind] = if sampled {
        &[Kind::Free]
    } else {
        &[
            Kind::Malloc,
            Kind::Calloc,
            Kind::Realloc,
            Kind::ReallocArray,
            Kind::PosixMemalign,
            Kind::Memalign,
            Kind::Free,
            Kind::PyMalloc,
            Kind::PyCalloc,
            Kind::PyRealloc,
            Kind::PyFree,
            Kind::PyArenaAlloc,
            Kind::PyArenaFree,
        ]
    };
    let mut programs: Vec<(&'static str, LinkKind)> = Vec::new();
    for kind in kinds {
        let (enter, exit) = kind.programs();
        let kinds = [(Some(enter), LinkKind::Entry), (exit, LinkKind::Return)];
        for (program, link) in kinds {
            if let Some(program) = program.filter(|p| !programs.iter().any(|(q, _)| q == p)) {
                programs.push((program, link));
            }
        }
    }
    programs
}

/// How the plain probes are attached.
enum Links {
    /// `uprobe_multi` links: one per program, file and scope.
    Multi {
        /// The loaded programs.
        programs: HashMap<&'static str, (LinkKind, OwnedFd)>,
        links: Vec<OwnedFd>,
    },
    /// Perf-event uprobes through aya, which owns them.
    Perf,
}

impl Links {
    /// Loads the plain probes' programs: for `uprobe_multi` links unless
    /// [`PERF_UPROBES_ENV`] is set or the kernel refuses them, else for aya.
    fn load(ebpf: &mut Ebpf, sampled: bool) -> anyhow::Result<Links> {
        let wanted = plain_programs(sampled);
        if std::env::var_os(PERF_UPROBES_ENV).is_none() {
            let multi = SessionPrograms::parse(ebpf, BPF_OBJECT).and_then(|object| {
                let mut programs = HashMap::new();
                for &(name, kind) in &wanted {
                    programs.insert(name, (kind, object.load_for(name, kind)?));
                }
                Ok(programs)
            });
            match multi {
                Ok(programs) => {
                    log::debug!("allocator probes through uprobe_multi links");
                    return Ok(Links::Multi {
                        programs,
                        links: Vec::new(),
                    });
                }
                Err(e) => log::info!(
                    "uprobe_multi links unavailable ({e:#}): perf-event uprobes, slower to detach"
                ),
            }
        } else {
            log::debug!("{PERF_UPROBES_ENV} is set: perf-event uprobes");
        }
        Links::load_perf(ebpf, &wanted)?;
        Ok(Links::Perf)
    }

    /// Loads `programs` into aya, for perf-event uprobes.
    fn load_perf(ebpf: &mut Ebpf, programs: &[(&'static str, LinkKind)]) -> anyhow::Result<()> {
        for &(name, _) in programs {
            uprobe(ebpf, name)?
                .load()
                .with_context(|| format!("loading BPF program {name}"))?;
        }
        Ok(())
    }

    /// Attaches the probes of `sites` for `scope`, return probes first: an
    /// entry without its return would leave a pending call behind, a return
    /// without its entry is only counted. Returns how many were attached.
    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        sites: &[&ProbeSite],
        scope: Scope,
    ) -> anyhow::Result<usize> {
        let Links::Multi { programs, links } = self else {
            return attach_perf(ebpf, sites, scope);
        };
        let pid = match scope {
            Scope::Process(pid) => pid,
            Scope::All => 0,
        };
        // (return links first, program, file) -> sites.
        let mut groups: BTreeMap<(bool, &'static str, &Path), Vec<&ProbeSite>> = BTreeMap::new();
        for site in sites {
            let (enter, exit) = site.kind.programs();
            if let Some(exit) = exit {
                groups
                    .entry((false, exit, &site.library.host_path))
                    .or_default()
                    .push(site);
            }
            groups
                .entry((true, enter, &site.library.host_path))
                .or_default()
                .push(site);
        }
        let mut attached = 0;
        for ((_, name, path), group) in groups {
            let (kind, program) = programs
                .get(name)
                .with_context(|| format!("BPF program {name} was not loaded"))?;
            // The entry's program reads the arguments a moved probe finds
            // in other registers from its cookie; the return's reads none.
            let mut points: Vec<(u64, u64)> = group
                .iter()
                .map(|s| {
                    let regs = if *kind == LinkKind::Entry {
                        s.placement.arg_regs()
                    } else {
                        0
                    };
                    (s.file_offset, regs)
                })
                .collect();
            points.sort_unstable();
            points.dedup_by_key(|(offset, _)| *offset);
            let offsets: Vec<u64> = points.iter().map(|&(offset, _)| offset).collect();
            let cookies: Vec<u64> = points.iter().map(|&(_, regs)| regs).collect();
            match session_link::attach_as(*kind, program, path, &offsets, &cookies, pid) {
                Ok(link) => links.push(link),
                Err(e) if links.is_empty() && multi_unsupported(&e) => {
                    // A kernel that loads the programs but refuses the
                    // links: nothing is attached yet, so all goes through aya.
                    log::info!("the kernel refused a uprobe_multi link ({e}): perf-event uprobes");
                    let wanted: Vec<_> = programs.iter().map(|(n, (k, _))| (*n, *k)).collect();
                    Links::load_perf(ebpf, &wanted)?;
                    *self = Links::Perf;
                    return attach_perf(ebpf, sites, scope);
                }
                Err(e) => return Err(multi_error(*kind, program, path, &group, pid, e)),
            }
            log::debug!(
                "uprobe_multi {kind:?} link of {name} on {} at {offsets:#x?}",
                path.display()
            );
            attached += group.len();
        }
        Ok(attached)
    }

    /// The links, to be closed ([`close_in_parallel`]).
    fn take(&mut self) -> Vec<OwnedFd> {
        match self {
            Links::Multi { links, .. } => std::mem::take(links),
            Links::Perf => Vec::new(),
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        close_in_parallel(self.take());
    }
}

/// True for the errors of a kernel that has no `uprobe_multi` links.
fn multi_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | 524)
    )
}

/// The error of a `uprobe_multi` link, as a [`SiteError`] naming the site
/// that made it fail: each site of the link tried alone, the first that
/// fails (else the first site, with `err`).
fn multi_error(
    kind: LinkKind,
    program: &OwnedFd,
    path: &Path,
    sites: &[&ProbeSite],
    pid: u32,
    err: io::Error,
) -> anyhow::Error {
    let failing = sites.iter().find_map(|site| {
        session_link::attach_as(kind, program, path, &[site.file_offset], &[], pid)
            .err()
            .map(|e| (*site, e))
    });
    let (site, io_error) = match (failing, sites.first()) {
        (Some(found), _) => found,
        (None, Some(first)) => (*first, err),
        (None, None) => {
            return anyhow::Error::new(err).context(format!(
                "creating a uprobe_multi link on {}",
                path.display()
            ))
        }
    };
    SiteError {
        error: ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error,
        }),
        site: site.clone(),
    }
    .into()
}

/// Attaches perf-event uprobes through aya, as [`Links::attach`] does.
fn attach_perf(ebpf: &mut Ebpf, sites: &[&ProbeSite], scope: Scope) -> anyhow::Result<usize> {
    let aya_scope = match scope {
        Scope::Process(pid) => {
            UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(Error::NoSuchProcess(0))?)
        }
        Scope::All => UProbeScope::AllProcesses,
    };
    let mut attached = 0;
    for site in sites {
        let (enter, exit) = site.kind.programs();
        // The entry's program reads the arguments a moved probe finds in
        // other registers from its cookie; the return's reads none.
        let regs = site.placement.arg_regs();
        let entry_cookie = (regs != 0).then_some(regs);
        for (program, cookie) in exit
            .into_iter()
            .map(|exit| (exit, None))
            .chain([(enter, entry_cookie)])
        {
            let point = UProbeAttachPoint {
                location: site.file_offset.into(),
                cookie,
            };
            uprobe(ebpf, program)?
                .attach(point, &site.library.host_path, aya_scope)
                .map_err(|error| SiteError {
                    error,
                    site: (*site).clone(),
                })?;
            attached += 1;
        }
    }
    Ok(attached)
}

/// Closes uprobe links, many at once: the kernel waits for a grace period
/// in each close, and these waits overlap when the closes do.
fn close_in_parallel(links: Vec<OwnedFd>) {
    if links.len() < 2 {
        return;
    }
    let per_thread = links.len().div_ceil(64);
    let mut links = links;
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let chunk: Vec<OwnedFd> = links.drain(..per_thread.min(links.len())).collect();
            // Without a thread, the chunk is closed here with the closure.
            let _ = std::thread::Builder::new()
                .name("memprof-detach".into())
                .spawn_scoped(scope, move || drop(chunk));
        }
    });
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("BPF program {name} missing from the object"))?;
    Ok(program.try_into()?)
}

/// The dynamic loader that `program` (or the interpreter on its `#!`
/// line) names.
fn loader_of(program: &Path) -> Option<PathBuf> {
    let mut program = program.to_path_buf();
    let mut head = [0u8; 256];
    let n = fs::File::open(&program)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .ok()?;
    if let Some(line) = head[..n].strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        program = PathBuf::from(line.split_whitespace().next()?);
    }
    crate::load_order::interpreter(&program).ok().flatten()
}

/// The device and inode of a file: the same library reached through two
/// processes' `/proc/PID/root` is probed once.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Offset of `child_pid` in the `sched_process_fork` record, from the
/// tracepoint's format file (it moved when the comm fields became dynamic).
fn fork_child_pid_offset() -> anyhow::Result<u32> {
    let events = tracefs::Events::mounted("--follow-forks")?;
    Ok(events
        .field("sched/sched_process_fork", "child_pid")?
        .offset)
}

/// A probe site that could not be attached.
#[derive(Debug)]
pub(crate) struct SiteError {
    pub error: ProgramError,
    pub site: ProbeSite,
}

impl std::fmt::Display for SiteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "attaching a uprobe to {} in {}: {}",
            self.site.names.join("/"),
            self.site.library.path,
            self.error
        )
    }
}

impl std::error::Error for SiteError {}

impl SiteError {
    /// The error for the user: a conflict with another tracer, or the target gone.
    pub(crate) fn explain(self, pid: Option<u32>) -> anyhow::Error {
        let SiteError { error, site } = self;
        let einval = match &error {
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
        let gone = matches!(&error, ProgramError::SyscallError(e)
            if e.io_error.kind() == io::ErrorKind::NotFound || e.io_error.raw_os_error() == Some(libc::ESRCH));
        let err = anyhow::Error::new(error);
        let what = format!(
            "attaching a uprobe to {} in {}",
            site.names.join("/"),
            site.library.path
        );
        match pid {
            Some(pid) if gone => err.context(format!("{what}: did pid {pid} exit?")),
            _ => err.context(what),
        }
    }
}

/// What [`Probes::sweep_live`] took out of `LIVE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// What each process held at its exit.
    pub(crate) by_process: HashMap<u32, crate::model::Totals>,
    /// What of it was counted under [`STACK_LOST`] or [`STACK_NO_ROOM`].
    pub(crate) reserved: HashMap<i64, crate::model::Totals>,
    /// The stacks of those blocks, by process.
    pub(crate) stacks: HashMap<u32, HashSet<i64>>,
    /// The blocks taken out.
    pub(crate) blocks: Vec<(LiveKey, AllocInfo)>,
    /// Blocks read.
    pub(crate) walked: u64,
    /// Whether the walk of the whole map ended.
    pub(crate) done: bool,
}

/// What left the maps during the run with the processes that exited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Purged {
    /// What each process held at its exit.
    pub(crate) by_process: HashMap<u32, crate::model::Totals>,
    /// What of it was counted under [`STACK_LOST`] or [`STACK_NO_ROOM`].
    pub(crate) reserved: HashMap<i64, crate::model::Totals>,
    /// Stacks freed.
    pub(crate) stacks: u64,
}

/// The share of the stack maps each process may hold once they are past
/// some fill, and that fill, for maps of `max_stacks` stacks: past half the
/// maps, an eighth each, so that one process meeting endless new stacks
/// leaves half the maps to the others, and at least four of them their share.
fn stack_shares(max_stacks: u32) -> (u64, u64) {
    let max = u64::from(max_stacks);
    ((max / 8).max(1), max / 2)
}

/// Puts the `AGG` entries of [`STACK_LOST`] and [`STACK_NO_ROOM`] in before
/// any program runs: the map holds [`AGG_RESERVED`] entries more than the
/// stacks, so an allocation whose stack finds no room still has these.
fn reserve_agg_entries(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let map = ebpf
        .map_mut(maps::AGG)
        .context("BPF map AGG missing from the object")?;
    let mut agg = PerCpuHashMap::<&mut MapData, i64, StackAgg>::try_from(map)?;
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("reading {what}: {e}"))?;
    for id in [STACK_LOST, STACK_NO_ROOM] {
        let zeros = aya::maps::PerCpuValues::try_from(vec![StackAgg::default(); cpus])
            .context("per-CPU values of AGG")?;
        agg.insert(id, zeros, 0)
            .with_context(|| format!("reserving the entry of stack {id} in AGG"))?;
    }
    Ok(())
}

/// `AGG` opened for writing: each stack's figures per CPU.
type AggMap<'a> = PerCpuHashMap<&'a mut MapData, i64, StackAgg>;
/// `STACKS` opened for writing: each stack's frames.
type StacksMap<'a> = BpfHashMap<&'a mut MapData, i64, StackTrace>;

/// The maps of stacks, `AGG` and `STACKS`, opened together for writing.
fn agg_and_stacks(ebpf: &mut Ebpf) -> anyhow::Result<(AggMap<'_>, StacksMap<'_>)> {
    let (mut agg, mut stacks) = (None, None);
    for (name, map) in ebpf.maps_mut() {
        match name {
            maps::AGG => agg = Some(map),
            maps::STACKS => stacks = Some(map),
            _ => {}
        }
    }
    let (Some(agg), Some(stacks)) = (agg, stacks) else {
        anyhow::bail!("BPF maps AGG and STACKS missing from the object");
    };
    Ok((PerCpuHashMap::try_from(agg)?, BpfHashMap::try_from(stacks)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_of_a_program_and_of_a_script_is_its_pt_interp() {
        let sh = Path::new("/bin/sh");
        let loader = loader_of(sh).expect("/bin/sh is dynamic");
        assert_eq!(
            Some(loader.clone()),
            crate::load_order::interpreter(sh).unwrap()
        );
        let script = std::env::temp_dir().join(format!("memprof-loader-{}", std::process::id()));
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let of_script = loader_of(&script);
        let _ = std::fs::remove_file(&script);
        assert_eq!(of_script, Some(loader));
    }

    #[test]
    fn past_half_the_stack_maps_a_process_may_hold_an_eighth() {
        assert_eq!(stack_shares(65_536), (8_192, 32_768));
        assert_eq!(stack_shares(1_024), (128, 512));
        // Never a share of nothing.
        assert_eq!(stack_shares(4), (1, 2));
    }

    #[test]
    fn each_plain_program_is_loaded_once_for_its_kind_of_link() {
        let full = plain_programs(false);
        assert_eq!(full.len(), 17, "{full:?}");
        for (program, kind) in &full {
            assert_eq!(full.iter().filter(|(p, _)| p == program).count(), 1);
            assert_eq!(
                *kind == LinkKind::Return,
                program.ends_with("_exit"),
                "{program}"
            );
        }
        assert_eq!(
            plain_programs(true),
            vec![(programs::FREE_ENTER, LinkKind::Entry)]
        );
    }

    #[test]
    fn this_kernel_has_the_fork_tracepoint() {
        let offset = fork_child_pid_offset().unwrap();
        assert!(offset >= 8, "after the common fields: {offset}");
    }
}
