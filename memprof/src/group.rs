//! Runs over many processes: `-p` repeated, `--comm`, `--cgroup`,
//! `--follow-forks`, or every process on the machine.
//!
//! The probes go on each allocator library once (the same file, by device and
//! inode, whatever process or mount namespace maps it), and the BPF programs
//! choose what to record (see [`memprof_common::filter`]):
//! - `-p` without `--follow-forks`: each process's probes are bound to it, so
//!   the rest of the machine never traps;
//! - `--comm`, `--follow-forks`: the probes fire in every process that maps
//!   the library and the programs look the process up in the `TARGETS` set,
//!   which user space fills (processes matching `--comm`, found at the start
//!   and at every exec) and the fork tracepoint extends (children);
//! - system-wide and `--cgroup` alone: every process but memprof, and with
//!   `--cgroup` only tasks of that cgroup or below it, checked in the programs.
//!
//! Every second, processes that appeared (or called exec) are read, and the
//! allocator libraries not probed yet are probed. At the end, live blocks are
//! grouped by process: what a process that exited held is left out (and
//! counted as released) unless `--at-exit`, as for one process.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use memprof_common::{filter, AllocInfo, LiveKey};
use regex::Regex;

use crate::cli::ProfileArgs;
use crate::error::Error;
use crate::model::{self, Released, Report, Sampling, Totals, SCHEMA_VERSION};
use crate::probes::{self, Filter, ProbeConfig, Probes, Purged, Scope};
use crate::procfs;
use crate::session::{End, Plan, Session, Waited};
use crate::symbolize::Symbolizer;
use crate::target::{ProbeSite, TargetProcess};
use crate::{aggregate, exits, snapshot, sources, take_older, Clock, Outstanding, Recorded};

/// Which processes a run over many records.
#[derive(Debug)]
pub struct Selection {
    /// `-p`, each required to exist at the start.
    pub pids: Vec<u32>,
    /// `--comm`.
    pub comm: Option<Regex>,
    /// `--cgroup`.
    pub cgroup: Option<Cgroup>,
    /// `--follow-forks`.
    pub follow_forks: bool,
    /// `--follow-forks -- COMMAND`: memprof starts the command (the one pid).
    pub launch: bool,
}

impl Selection {
    /// The selection of `args`, or None when they name one process (or a command).
    pub fn from_args(args: &ProfileArgs) -> anyhow::Result<Option<Selection>> {
        if !args.command.is_empty() {
            return Ok(args.follow_forks.then_some(Selection {
                pids: Vec::new(),
                comm: None,
                cgroup: None,
                follow_forks: true,
                launch: true,
            }));
        }
        if args.pid.len() == 1 && args.comm.is_none() && args.cgroup.is_none() && !args.follow_forks
        {
            return Ok(None);
        }
        let comm = args
            .comm
            .as_deref()
            .map(|re| Regex::new(re).with_context(|| format!("--comm {re:?} is not a regex")))
            .transpose()?;
        let cgroup = args.cgroup.as_deref().map(Cgroup::resolve).transpose()?;
        let mut pids = args.pid.clone();
        pids.sort_unstable();
        pids.dedup();
        if args.follow_forks && pids.is_empty() && comm.is_none() {
            bail!(
                "--follow-forks follows the children of the processes given with -p or --comm \
                 (without them, every process is recorded anyway)"
            );
        }
        Ok(Some(Selection {
            pids,
            comm,
            cgroup,
            follow_forks: args.follow_forks,
            launch: false,
        }))
    }

    /// The programs' filter.
    fn filter(&self) -> Filter {
        Filter {
            mode: if self.pids.is_empty() && self.comm.is_none() && !self.launch {
                filter::ALL
            } else {
                filter::SET
            },
            tgid: 0,
            cgroup: self.cgroup.as_ref().map(|c| (c.id, c.level)),
            // Children share their parent's command name.
            follow_forks: self.follow_forks || self.comm.is_some(),
            watch_execs: self.comm.is_some(),
        }
    }

    /// True when only the processes given with `-p` are recorded: their
    /// probes can be bound to them.
    fn fixed(&self) -> bool {
        self.comm.is_none() && !self.follow_forks && !self.pids.is_empty()
    }

    /// How the probes of `pid` fire.
    fn scope(&self, pid: u32) -> Scope {
        if self.fixed() {
            Scope::Process(pid)
        } else {
            Scope::All
        }
    }

    /// What was selected, for reports: `pids 12, 34 and their children`, ...
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.pids.is_empty() {
            let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
            let word = if pids.len() == 1 { "pid" } else { "pids" };
            parts.push(format!("{word} {}", pids.join(", ")));
        }
        if let Some(comm) = &self.comm {
            parts.push(format!("comm ~ {}", comm.as_str()));
        }
        let mut text = match parts.len() {
            _ if self.launch => "a command".to_string(),
            0 => "system-wide".to_string(),
            _ => parts.join(" and "),
        };
        if self.follow_forks {
            text.push_str(" with their children");
        }
        if let Some(cgroup) = &self.cgroup {
            text.push_str(&format!(", in cgroup {}", cgroup.path));
        }
        text
    }

    /// True when `pid`'s command name matches `--comm`.
    fn comm_matches(&self, pid: u32) -> bool {
        self.comm
            .as_ref()
            .is_some_and(|re| procfs::comm(pid).is_some_and(|comm| re.is_match(&comm)))
    }
}

/// A cgroup (v2) given with `--cgroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Its path under the cgroup root, from `/` (as `/proc/PID/cgroup` says it).
    pub path: String,
    /// Its id: the inode of its directory.
    pub id: u64,
    /// Its depth: 0 for the root.
    pub level: u32,
}

impl Cgroup {
    /// The cgroup at `given`: its directory in the cgroup v2 hierarchy, or
    /// its path from the hierarchy's root (as `/proc/PID/cgroup` shows it,
    /// with or without the leading `/`).
    pub fn resolve(given: &Path) -> anyhow::Result<Cgroup> {
        let Some(root) = procfs::cgroup2_mount() else {
            bail!("--cgroup: this machine has no cgroup v2 hierarchy mounted");
        };
        let full = if given.starts_with(&root) {
            given.to_path_buf()
        } else {
            root.join(given.strip_prefix("/").unwrap_or(given))
        };
        let Ok(relative) = full.strip_prefix(&root) else {
            bail!("--cgroup {}: not under {}", given.display(), root.display());
        };
        let meta = fs::metadata(&full)
            .with_context(|| format!("--cgroup {}: no such cgroup", full.display()))?;
        if !meta.is_dir() || !full.join("cgroup.procs").exists() {
            bail!(
                "--cgroup {}: not a cgroup v2 directory (it has no cgroup.procs)",
                full.display()
            );
        }
        let level = relative.components().count() as u32;
        Ok(Cgroup {
            path: format!("/{}", relative.display()),
            id: meta.ino(),
            level,
        })
    }

    /// True when `pid` is in this cgroup or below it.
    fn contains(&self, pid: u32) -> bool {
        procfs::cgroup_paths(pid)
            .iter()
            .any(|path| self.holds(path))
    }

    /// True when the cgroup at `path` (from the root) is this one or below it.
    fn holds(&self, path: &str) -> bool {
        self.level == 0
            || path == self.path
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// What memprof learnt of a process when it probed it.
#[derive(Clone, Debug)]
struct Seen {
    start_ticks: Option<u64>,
    comm: String,
    cmdline: String,
    allocator: String,
}

/// The (device, inode) of every file a process maps executable.
type ObjectSet = BTreeSet<(u64, u64)>;

/// Finds the processes to record and probes their allocators.
struct Discovery<'a> {
    selection: &'a Selection,
    placed: bool,
    /// Processes probed (by pid and start time, after how many execs).
    probed: HashMap<u32, (Option<u64>, u64)>,
    /// The last thing seen of each process probed.
    seen: HashMap<u32, Seen>,
    /// Probe sites and allocator of each set of mapped objects already read.
    by_objects: HashMap<ObjectSet, (String, Vec<ProbeSite>)>,
    /// Processes that cannot be probed (no libc, Go, kernel threads), by pid,
    /// start and execs (the program an exec brings may be probe-able).
    skipped: HashSet<(u32, Option<u64>, u64)>,
    /// With `--at-exit`: each probed process's symbolizer, which holds its
    /// files open, so that a process that exits is still symbolized.
    symbolizers: Option<HashMap<u32, Symbolizer>>,
}

impl Discovery<'_> {
    /// Reads `pid` again now (a launched command stopped at its exit): probes
    /// it if it called exec since, and refreshes its symbolizer.
    fn refresh(&mut self, probes: &mut Probes, pid: u32) -> anyhow::Result<()> {
        let execs = probes.procs()?.get(&pid).map_or(0, |e| e.execs);
        self.probe(probes, pid, execs, false)?;
        if let Some(symbolizer) = self.symbolizers.as_mut().and_then(|s| s.get_mut(&pid)) {
            symbolizer.refresh();
        }
        Ok(())
    }

    /// Probes `pid` unless it was probed already since its last exec
    /// (`execs`). A `required` process that cannot be probed is an error;
    /// others are skipped.
    fn probe(
        &mut self,
        probes: &mut Probes,
        pid: u32,
        execs: u64,
        required: bool,
    ) -> anyhow::Result<()> {
        if pid == std::process::id() {
            return Ok(());
        }
        let start = procfs::start_ticks(pid);
        if self.probed.get(&pid) == Some(&(start, execs))
            || self.skipped.contains(&(pid, start, execs))
        {
            return Ok(());
        }
        match self.read(probes, pid) {
            Ok(seen) => {
                self.probed.insert(pid, (start, execs));
                self.seen.insert(pid, seen);
                if let Some(symbolizers) = &mut self.symbolizers {
                    symbolizers.insert(pid, Symbolizer::new(pid));
                }
                Ok(())
            }
            Err(e) if required => Err(e),
            Err(e) => {
                log::debug!("pid {pid} not probed: {e:#}");
                self.skipped.insert((pid, start, execs));
                Ok(())
            }
        }
    }

    /// Probes the command memprof launched, held before exec: for the
    /// allocator its program will load (see [`crate::launch::Launched::target`]),
    /// since what the child maps now is memprof's own libraries.
    fn probe_launched(
        &mut self,
        probes: &mut Probes,
        launched: &crate::launch::Launched,
    ) -> anyhow::Result<()> {
        let target = launched.target()?;
        let sites = target.probe_sites(self.placed)?;
        let allocator = target.allocator_description();
        probes
            .attach_sites(&sites, self.selection.scope(launched.pid))
            .map_err(|e| match e.downcast::<probes::SiteError>() {
                Ok(site) => site.explain(Some(launched.pid)),
                Err(e) => e,
            })?;
        let start = procfs::start_ticks(launched.pid);
        self.probed.insert(launched.pid, (start, 0));
        self.seen.insert(
            launched.pid,
            Seen {
                start_ticks: start,
                comm: target.comm,
                cmdline: target.cmdline,
                allocator,
            },
        );
        if let Some(symbolizers) = &mut self.symbolizers {
            symbolizers.insert(launched.pid, Symbolizer::new(launched.pid));
        }
        Ok(())
    }

    fn read(&mut self, probes: &mut Probes, pid: u32) -> anyhow::Result<Seen> {
        let maps = procfs::maps(pid).map_err(|_| Error::NoSuchProcess(pid))?;
        let objects = procfs::object_ids(&maps);
        if objects.is_empty() {
            bail!("pid {pid} maps no file (a kernel thread?)");
        }
        let (allocator, sites, comm, cmdline) = match self.by_objects.get(&objects) {
            Some((allocator, sites)) => {
                let comm = procfs::comm(pid).unwrap_or_default();
                (allocator.clone(), sites.clone(), comm, procfs::cmdline(pid))
            }
            None => {
                let target = TargetProcess::open(pid)?;
                let sites = target.probe_sites(self.placed)?;
                let allocator = target.allocator_description();
                self.by_objects
                    .insert(objects, (allocator.clone(), sites.clone()));
                (allocator, sites, target.comm, target.cmdline)
            }
        };
        let attached = probes
            .attach_sites(&sites, self.selection.scope(pid))
            .map_err(|e| match e.downcast::<probes::SiteError>() {
                Ok(site) => site.explain(Some(pid)),
                Err(e) => e,
            })?;
        if attached > 0 {
            log::debug!("pid {pid} ({comm}): {attached} probes attached in {allocator}");
        }
        Ok(Seen {
            start_ticks: procfs::start_ticks(pid),
            comm,
            cmdline,
            allocator,
        })
    }
}

/// Records the processes of `selection` and returns what each still holds.
pub fn profile(args: &ProfileArgs, selection: &Selection, quiet: bool) -> anyhow::Result<Report> {
    probes::check_permissions()?;
    for &pid in &selection.pids {
        if !procfs::exists(pid) {
            return Err(Error::NoSuchProcess(pid).into());
        }
    }
    let mut session = Session::new()?;
    let mut launched = if selection.launch {
        Some(crate::launch::spawn(&args.command)?)
    } else {
        None
    };
    let launched_pid = launched.as_ref().map(|l| l.pid);
    if args.mmap {
        bail!(
            "--mmap records one process (-p PID, or a command); it does not work over many \
             processes yet (--kernel does)"
        );
    }
    let config = ProbeConfig::from_args(args);
    let filter = selection.filter();
    let mut probes = Probes::load(config, &filter)?;
    let mut discovery = Discovery {
        selection,
        placed: !args.probe_at_entry,
        probed: HashMap::new(),
        seen: HashMap::new(),
        by_objects: HashMap::new(),
        skipped: HashSet::new(),
        // What a launched command holds at its exit is the report.
        symbolizers: (args.at_exit || launched.is_some()).then(|| {
            raise_open_files_limit();
            HashMap::new()
        }),
    };
    let describe = match &launched {
        Some(l) => format!("{} and its children", l.cmdline),
        None => selection.describe(),
    };
    log::info!("finding the processes to record ({describe}) ...");
    let mut initial: Vec<u32> = selection.pids.clone();
    initial.extend(launched_pid);
    if selection.comm.is_some() {
        initial.extend(
            procfs::all_pids()
                .into_iter()
                .filter(|&p| selection.comm_matches(p)),
        );
    }
    if filter.mode == filter::SET {
        probes.add_targets(&initial)?;
        if let Some(launched) = &launched {
            discovery.probe_launched(&mut probes, launched)?;
        }
        for &pid in &initial {
            let required = selection.pids.contains(&pid) || Some(pid) == launched_pid;
            discovery.probe(&mut probes, pid, 0, required)?;
        }
    } else {
        for pid in procfs::all_pids() {
            if selection.cgroup.as_ref().is_none_or(|c| c.contains(pid)) {
                discovery.probe(&mut probes, pid, 0, false)?;
            }
        }
    }
    probes.set_recording(true)?;
    if let Some(launched) = &mut launched {
        launched.release()?;
    }
    let start_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let started = Instant::now();
    log::info!(
        "attached {} probes for {} {} ({describe}); {}",
        probes.attached,
        discovery.probed.len(),
        if discovery.probed.len() == 1 {
            "process"
        } else {
            "processes"
        },
        match (args.duration, launched_pid) {
            (Some(d), _) => format!("recording for {d} s (Ctrl-C to stop early)"),
            (None, Some(_)) => "running the command until it and its children exit".to_string(),
            (None, None) => "recording until Ctrl-C".to_string(),
        }
    );

    let plan = Plan {
        duration: args.duration,
        interval: args.interval,
        quiet,
    };
    // What processes held when they exited leaves the maps every second
    // (unless it is to be reported: --at-exit, the command).
    let mut purged = Purged::default();
    let mut purged_exits: HashSet<(u32, u64)> = HashSet::new();
    let mut housekeeping = |probes: &mut Probes, exiting: bool| {
        if exiting {
            // The command is stopped at its exit: read it one last time.
            if let Some(pid) = launched_pid {
                discovery.refresh(probes, pid)?;
            }
        }
        if !args.at_exit {
            let new: HashMap<u32, u64> = probes
                .exits()?
                .into_iter()
                .filter(|&(pid, at)| Some(pid) != launched_pid && purged_exits.insert((pid, at)))
                .collect();
            let now = probes.purge_exited(&new)?;
            for (pid, held) in now.by_process {
                let sum = purged.by_process.entry(pid).or_default();
                *sum = add_totals(*sum, held);
            }
            for (id, held) in now.reserved {
                let sum = purged.reserved.entry(id).or_default();
                *sum = add_totals(*sum, held);
            }
            purged.stacks += now.stacks;
        }
        follow(probes, &mut discovery)
    };
    let Waited {
        end,
        samples,
        stacks_freed,
    } = session.wait_many(
        &mut probes,
        &mut housekeeping,
        launched.as_mut().map(|l| &mut l.events),
        plan,
    )?;
    probes.set_recording(false)?;
    let procs = probes.procs()?;
    // Read once recording stopped: a process not in it was alive then.
    let exits = probes.exits()?;
    let duration_secs = started.elapsed().as_secs_f64();
    let end_ns = snapshot::monotonic_ns();
    match end {
        End::Duration => log::debug!("duration reached"),
        End::Signal(name) => log::info!("{name} received: detaching and reporting"),
        End::TargetExited(after) => log::info!(
            "the last recorded process exited after {after:.1} s: reporting{}",
            if args.at_exit {
                " what they held then"
            } else {
                " (what they held went with them; --at-exit reports it)"
            }
        ),
    }
    log::info!(
        "detaching {} probes and reading the maps ...",
        probes.attached
    );
    // Sites are attached once per file and offset, whatever the processes.
    let mut placements: Vec<model::ProbePlacement> =
        probes.sites.iter().map(|s| s.placement_report()).collect();
    let mut seen = HashSet::new();
    placements.retain(|p| seen.insert((p.library.clone(), p.functions.clone())));
    let maps = probes.detach()?;
    // --kernel: kernel stacks need no process's symbols.
    let found = sources::collect(
        maps.sources,
        &maps.stacks,
        &Symbolizer::new(0),
        sources::Ending {
            end_ns,
            released_before_ns: 0,
            min_size: args.min_size,
        },
    )?;
    let mut snap = snapshot::read_all(&maps.live, &maps.agg, &maps.stacks, &maps.stats)?;
    snap.stats.stacks_freed = stacks_freed.saturating_add(purged.stacks);
    // The reserved stacks' aggregates still count what left with exited
    // processes.
    for (id, gone) in &purged.reserved {
        if let Some(agg) = snap.agg.get_mut(id) {
            agg.bytes = agg.bytes.wrapping_sub(gone.bytes);
            agg.count = agg.count.wrapping_sub(gone.count);
        }
    }
    crate::check_consistency(
        &snap,
        &aggregate::totals(&aggregate::by_stack(&snap.live, end_ns)),
    );

    let mut by_process: HashMap<u32, Vec<(LiveKey, AllocInfo)>> = HashMap::new();
    for entry in std::mem::take(&mut snap.live) {
        by_process.entry(entry.0.tgid).or_default().push(entry);
    }
    let clock = Clock {
        end_ns,
        duration_secs,
    };
    let mut released = Released::default();
    for held in purged.by_process.values() {
        released.at_exit = add_totals(released.at_exit, *held);
    }
    let mut processes = Vec::new();
    let mut younger: Option<Totals> = None;
    let mut samplings = Vec::new();
    let mut groups = Vec::new();
    for (pid, mut live) in by_process {
        let seen = discovery.seen.get(&pid);
        let mut mine = Released::default();
        let mut events = procs.get(&pid).copied().unwrap_or_default();
        if events.execs > 0 {
            mine.at_exec = take_older(&mut live, events.last_exec_ns);
        }
        let is_command = Some(pid) == launched_pid;
        if is_command {
            // Not the exec that started the command.
            events.execs = events.execs.saturating_sub(1);
        }
        // Exited only when its exit was noted while recording (what /proc
        // shows now says nothing of the run); with the pid taken by a newer
        // process since, its blocks are those made after the exit.
        let settled = exits::settle(
            &mut live,
            exits.get(&pid).copied(),
            args.at_exit || is_command,
        );
        mine.at_exit = settled.released;
        let exited = settled.exited;
        let same = !exited;
        if live.is_empty() {
            add_released(&mut released, &mine);
            continue;
        }
        let kept = discovery.symbolizers.as_mut().and_then(|s| s.remove(&pid));
        let symbolizer = match kept {
            Some(mut symbolizer) if same => {
                symbolizer.refresh();
                symbolizer
            }
            Some(symbolizer) => symbolizer,
            // Gone: its files with it.
            None => Symbolizer::new(if same { pid } else { 0 }),
        };
        let all = aggregate::by_stack_in(&live, end_ns, maps.windows.as_ref());
        let recorded = Recorded {
            live: &live,
            all: &all,
            traces: &snap.traces,
            samples: &samples,
            windows: maps.windows.as_ref(),
        };
        let Outstanding {
            stacks,
            totals,
            younger: young,
            sampling,
        } = crate::outstanding(args, &recorded, &clock, &mut mine, &symbolizer, Some(pid));
        add_released(&mut released, &mine);
        younger = match (younger, young) {
            (Some(a), Some(b)) => Some(add_totals(a, b)),
            (a, b) => a.or(b),
        };
        samplings.push(sampling);
        let (comm, cmdline, allocator, start_ticks) = match seen {
            Some(s) => (
                s.comm.clone(),
                s.cmdline.clone(),
                s.allocator.clone(),
                s.start_ticks,
            ),
            None => (
                procfs::comm(pid).unwrap_or_else(|| "?".to_string()),
                procfs::cmdline(pid),
                String::new(),
                procfs::start_ticks(pid),
            ),
        };
        processes.push(model::Process {
            pid,
            comm,
            cmdline,
            allocator,
            started_unix_secs: start_ticks.and_then(procfs::started_unix_secs),
            exited,
            execs: events.execs,
            totals,
        });
        groups.push((pid, stacks));
    }
    processes.sort_by(|a, b| {
        b.totals
            .bytes
            .cmp(&a.totals.bytes)
            .then(b.totals.count.cmp(&a.totals.count))
            .then(a.pid.cmp(&b.pid))
    });
    let rank: HashMap<u32, usize> = processes
        .iter()
        .enumerate()
        .map(|(i, p)| (p.pid, i))
        .collect();
    groups.sort_by_key(|(pid, _)| rank.get(pid).copied().unwrap_or(usize::MAX));
    let stacks: Vec<model::Stack> = groups.into_iter().flat_map(|(_, s)| s).collect();
    let totals = processes
        .iter()
        .fold(Totals::default(), |t, p| add_totals(t, p.totals));
    let mut allocators: Vec<String> = processes
        .iter()
        .map(|p| p.allocator.clone())
        .filter(|a| !a.is_empty())
        .collect();
    allocators.sort();
    allocators.dedup();
    log::info!(
        "{} {} held memory at the end",
        processes.len(),
        if processes.len() == 1 {
            "process"
        } else {
            "processes"
        }
    );
    Ok(Report {
        version: SCHEMA_VERSION,
        host: model::Host::this(),
        target: model::Target {
            pid: 0,
            comm: format!("{} processes", processes.len()),
            cmdline: describe.clone(),
            allocator: allocators.join(", "),
            exited_after_secs: match end {
                End::TargetExited(after) => Some(after),
                _ => None,
            },
            ..model::Target::default()
        },
        selection: Some(describe),
        processes,
        start_unix_secs,
        duration_secs,
        totals,
        stacks,
        stats: snap.stats,
        min_age_secs: args.min_age,
        younger,
        interval_secs: args.interval,
        released,
        sampling: sampling_of_run(args, Sampling::merged(samplings), maps.windows.as_ref()),
        mmap: found.mmap,
        kernel: found.kernel,
        probes: placements,
    })
}

/// Every second of the run: probes the processes that appeared or called
/// exec. Returns true when every process of a `-p` list is gone.
fn follow(probes: &mut Probes, discovery: &mut Discovery<'_>) -> anyhow::Result<bool> {
    let selection = discovery.selection;
    let execs: HashMap<u32, u64> = probes
        .procs()?
        .into_iter()
        .map(|(pid, e)| (pid, e.execs))
        .collect();
    if selection.filter().mode == filter::ALL {
        for pid in procfs::all_pids() {
            if selection.cgroup.as_ref().is_none_or(|c| c.contains(pid)) {
                let n = execs.get(&pid).copied().unwrap_or(0);
                discovery.probe(probes, pid, n, false)?;
            }
        }
        return Ok(false);
    }
    if selection.comm.is_some() {
        let targets: HashSet<u32> = probes.targets()?.into_iter().collect();
        for pid in probes.take_execs()? {
            if selection.comm_matches(pid) {
                if !targets.contains(&pid) {
                    log::info!("pid {pid} matches --comm: recording it");
                    probes.add_targets(&[pid])?;
                }
            } else if targets.contains(&pid) {
                log::info!(
                    "pid {pid} called exec and no longer matches --comm: not recorded any more"
                );
                probes.remove_target(pid)?;
            }
        }
    }
    let mut running = 0;
    for pid in probes.targets()? {
        if procfs::is_running_process(pid) {
            running += 1;
            let n = execs.get(&pid).copied().unwrap_or(0);
            discovery.probe(probes, pid, n, false)?;
        }
    }
    Ok(running == 0 && selection.comm.is_none())
}

/// Raises the soft limit of open files to the hard one: with `--at-exit`
/// memprof keeps the files of every process it probed open.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn add_totals(a: Totals, b: Totals) -> Totals {
    Totals {
        bytes: a.bytes.saturating_add(b.bytes),
        count: a.count.saturating_add(b.count),
    }
}

fn add_released(sum: &mut Released, one: &Released) {
    sum.at_exec = add_totals(sum.at_exec, one.at_exec);
    sum.at_exit = add_totals(sum.at_exit, one.at_exit);
}

/// How a run over many processes was sampled: what its processes' reports
/// say, with the windows of the run (one set served every process), and said
/// even when nothing was recorded.
fn sampling_of_run(
    args: &ProfileArgs,
    merged: Option<Sampling>,
    windows: Option<&crate::window_log::WindowLog>,
) -> Option<Sampling> {
    let estimator = aggregate::Estimator::of_run(args.sample_rate, windows);
    let mut sampling = merged.or_else(|| {
        aggregate::scale_sampled(
            estimator,
            &mut [],
            &mut None,
            &mut Released::default(),
            None,
        )
    })?;
    if let Some(e) = estimator.filter(|e| e.windows.is_some()) {
        sampling.windows = e.windows;
    }
    Some(sampling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_holds_itself_and_what_is_below() {
        let cgroup = Cgroup {
            path: "/system.slice/app.service".to_string(),
            id: 1,
            level: 2,
        };
        assert!(cgroup.holds("/system.slice/app.service"));
        assert!(cgroup.holds("/system.slice/app.service/worker"));
        assert!(!cgroup.holds("/system.slice/app.service2"));
        assert!(!cgroup.holds("/system.slice"));
        let root = Cgroup {
            path: "/".to_string(),
            id: 1,
            level: 0,
        };
        assert!(root.holds("/anything"));
    }

    #[test]
    fn resolves_the_cgroup_of_this_process() {
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let cgroup = Cgroup::resolve(Path::new(path.trim_start_matches('/'))).unwrap();
        assert_eq!(cgroup.path, path);
        assert!(cgroup.contains(std::process::id()));
        let root = procfs::cgroup2_mount().unwrap();
        assert_eq!(Cgroup::resolve(&root).unwrap().level, 0);
        assert!(Cgroup::resolve(Path::new("/tmp")).is_err());
        assert!(Cgroup::resolve(Path::new("no/such/cgroup")).is_err());
    }

    #[test]
    fn describes_the_selection() {
        let none = Selection {
            pids: vec![],
            comm: None,
            cgroup: None,
            follow_forks: false,
            launch: false,
        };
        assert_eq!(none.describe(), "system-wide");
        assert_eq!(none.filter().mode, filter::ALL);
        let pids = Selection {
            pids: vec![3, 4],
            follow_forks: true,
            ..none
        };
        assert_eq!(pids.describe(), "pids 3, 4 with their children");
        assert_eq!(pids.filter().mode, filter::SET);
        assert_eq!(pids.scope(3), Scope::All);
        let fixed = Selection {
            follow_forks: false,
            ..pids
        };
        assert_eq!(fixed.scope(3), Scope::Process(3));
    }
}
