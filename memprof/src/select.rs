//! Which processes a run records, and following them through the run: one
//! pid, a command memprof starts, `-p` repeated, `--comm`, `--cgroup`,
//! `--follow-forks`, or every process on the machine. One process is a
//! selection of one.
//!
//! The probes go on each allocator library once (the same file, by device and
//! inode, whatever process or mount namespace maps it), and the BPF programs
//! choose what to record (see [`memprof_common::filter`]):
//! - one process (a pid, or a command): the programs record that process only
//!   and its probes are bound to it;
//! - `-p` repeated without `--follow-forks`: each process's probes are bound
//!   to it, so the rest of the machine never traps;
//! - `--comm`, `--follow-forks`: the probes fire in every process that maps
//!   the library and the programs look the process up in the `TARGETS` set,
//!   which user space fills (processes matching `--comm`, found at the start
//!   and at every exec) and the fork tracepoint extends (children);
//! - system-wide and `--cgroup` alone: every process but memprof, and with
//!   `--cgroup` only tasks of that cgroup or below it, checked in the programs.
//!
//! Every second, processes that appeared (or called exec) are read, and the
//! allocator libraries not probed yet are probed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use memprof_common::{filter, AllocInfo, LiveKey};
use regex::Regex;

use crate::config::Select;
use crate::error::Error;
use crate::launch::Launched;
use crate::probes::{self, Filter, Probes, Purged, Scope};
use crate::procfs;
use crate::symbolize::Symbolizer;
use crate::target::{ProbeSite, TargetProcess};
use crate::wait::Follow;

/// How often the mappings of the processes whose symbolizers are kept are
/// read again (new libraries).
const REFRESH_MAPPINGS_EVERY: Duration = Duration::from_secs(5);

/// Which processes a run records.
#[derive(Debug)]
pub(crate) struct Selection {
    /// `-p`, each required to exist at the start.
    pub pids: Vec<u32>,
    /// `--comm`.
    pub comm: Option<Regex>,
    /// `--cgroup`.
    pub cgroup: Option<Cgroup>,
    /// `--follow-forks`.
    pub follow_forks: bool,
    /// `-- COMMAND`: memprof starts the command (its pid joins the selection).
    pub launch: bool,
}

impl Selection {
    /// The processes `select` names; fails for a bad regex or cgroup, or a
    /// pid that does not exist.
    pub(crate) fn resolve(select: &Select) -> anyhow::Result<Selection> {
        if !select.command.is_empty() {
            return Ok(Selection {
                pids: Vec::new(),
                comm: None,
                cgroup: None,
                follow_forks: select.follow_forks,
                launch: true,
            });
        }
        let comm = select
            .comm
            .as_deref()
            .map(|re| Regex::new(re).with_context(|| format!("--comm {re:?} is not a regex")))
            .transpose()?;
        let cgroup = select.cgroup.as_deref().map(Cgroup::resolve).transpose()?;
        let mut pids = select.pids.clone();
        pids.sort_unstable();
        pids.dedup();
        if select.follow_forks && pids.is_empty() && comm.is_none() {
            bail!(
                "--follow-forks follows the children of the processes given with -p or --comm \
                 (without them, every process is recorded anyway)"
            );
        }
        for &pid in &pids {
            if pid == 0 || !procfs::exists(pid) {
                return Err(Error::NoSuchProcess(pid).into());
            }
        }
        Ok(Selection {
            pids,
            comm,
            cgroup,
            follow_forks: select.follow_forks,
            launch: false,
        })
    }

    /// True for one process: one pid, or a command, and nothing else.
    pub(crate) fn is_one(&self) -> bool {
        let roots = self.pids.len() + usize::from(self.launch);
        roots == 1 && self.comm.is_none() && self.cgroup.is_none() && !self.follow_forks
    }

    /// The programs' filter, given the processes selected by pid (`roots`).
    fn filter(&self, roots: &[u32]) -> Filter {
        if let (true, [pid]) = (self.is_one(), roots) {
            return Filter::one(*pid);
        }
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
            hold: 0,
        }
    }

    /// True when only the processes given by pid are recorded: their probes
    /// can be bound to them.
    fn fixed(&self) -> bool {
        self.comm.is_none() && !self.follow_forks && (self.launch || !self.pids.is_empty())
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
    pub(crate) fn describe(&self) -> String {
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
pub(crate) struct Cgroup {
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
    pub(crate) fn resolve(given: &Path) -> anyhow::Result<Cgroup> {
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
pub(crate) struct Seen {
    pub start_ticks: Option<u64>,
    pub comm: String,
    pub cmdline: String,
    pub allocator: String,
}

/// A block of `LIVE`.
type Block = (LiveKey, AllocInfo);

/// The (device, inode) of every file a process maps executable.
type ObjectSet = BTreeSet<(u64, u64)>;

/// A process read but not probed yet: its probe sites.
struct Opened {
    seen: Seen,
    sites: Vec<ProbeSite>,
}

/// Finds the processes to record, probes their allocators and follows them.
pub(crate) struct Processes<'a> {
    selection: &'a Selection,
    /// Probes at each function's cheapest equivalent instruction.
    placed: bool,
    /// Probe CPython's pymalloc (full tracking only).
    pymalloc: bool,
    /// The processes selected by pid (`-p`, a launched command).
    roots: Vec<u32>,
    /// A launched command: its pid.
    command: Option<u32>,
    /// The roots as first read, before they were probed.
    opened: HashMap<u32, Opened>,
    /// The roots as memprof first saw them.
    first: HashMap<u32, Seen>,
    /// Pidfds of the roots: readable when they exit.
    pidfds: Vec<OwnedFd>,
    /// Processes probed (by pid and start time, after how many execs).
    probed: HashMap<u32, (Option<u64>, u64)>,
    /// The last thing seen of each process probed.
    seen: HashMap<u32, Seen>,
    /// Probe sites and allocator of each set of mapped objects already read.
    by_objects: HashMap<ObjectSet, (String, Vec<ProbeSite>)>,
    /// Processes that cannot be probed (no libc, Go, kernel threads), by pid,
    /// start and execs (the program an exec brings may be probe-able).
    skipped: HashSet<(u32, Option<u64>, u64)>,
    /// Each probed process's symbolizer, which holds its files open, so that
    /// a process that exits is still symbolized: for one process or a `-p`
    /// list, a command, and with `--at-exit`.
    symbolizers: Option<HashMap<u32, Symbolizer>>,
    /// When the kept symbolizers last read their processes' mappings.
    last_refresh: Instant,
    /// With --at-exit: what processes held at their exit leaves the maps
    /// during the run all the same, kept here (blocks, and their stacks'
    /// frames, read before the stacks leave) for the report, which
    /// symbolizes them with the processes' kept symbolizers.
    keep_exited: bool,
    kept: Vec<Block>,
    kept_traces: HashMap<i64, Vec<u64>>,
    /// What left the maps so, and the exits (pid, time) it came from.
    purged: Purged,
    purged_exits: HashSet<(u32, u64)>,
    /// The walk of `LIVE` that takes exited processes' blocks out.
    sweep: Sweep,
}

/// Blocks of `LIVE` read per second while exited processes' blocks are
/// taken out: at least this many (about 50 ms of a CPU), or a quarter of
/// what the last walk met, so that a walk of the whole map takes at most
/// about 4 s however full it is (a machine where processes holding 100,000
/// blocks each exit every second fills a map that is walked more slowly).
/// Exited processes' blocks that a walk has not reached yet leave the map
/// when it does (or, at the end of the run, when the report is made).
const SWEEP_PER_TICK: usize = 1 << 16;
const SWEEP_PARTS: u64 = 4;

/// The walk of `LIVE` that takes out what exited processes held.
#[derive(Default)]
struct Sweep {
    cursor: crate::batch::Cursor,
    /// Exits whose blocks are being taken out: pid -> exit time, and
    /// whether the walk under way started after the exit was seen (the exit
    /// is settled when such a walk ends).
    pending: HashMap<u32, (u64, bool)>,
    /// Blocks read by the walk under way, and by the last whole walk.
    walked: u64,
    last_walk: u64,
}

impl<'a> Processes<'a> {
    /// Reads the processes selected by pid (and `launched`, held before its
    /// exec): fails when one cannot be probed. Nothing is attached yet.
    pub(crate) fn open(
        selection: &'a Selection,
        launched: Option<&Launched>,
        placed: bool,
        at_exit: bool,
        pymalloc: bool,
    ) -> anyhow::Result<Processes<'a>> {
        let command = launched.map(|l| l.pid);
        let mut roots = selection.pids.clone();
        roots.extend(command);
        // Kept when the processes are few, or for --at-exit.
        let keep = at_exit || selection.fixed() || command.is_some();
        let mut processes = Processes {
            selection,
            placed,
            pymalloc,
            roots: roots.clone(),
            command,
            opened: HashMap::new(),
            first: HashMap::new(),
            pidfds: Vec::new(),
            probed: HashMap::new(),
            seen: HashMap::new(),
            by_objects: HashMap::new(),
            skipped: HashSet::new(),
            symbolizers: keep.then(|| {
                raise_open_files_limit();
                HashMap::new()
            }),
            last_refresh: Instant::now(),
            keep_exited: at_exit,
            kept: Vec::new(),
            kept_traces: HashMap::new(),
            purged: Purged::default(),
            purged_exits: HashSet::new(),
            sweep: Sweep::default(),
        };
        for pid in roots {
            let (opened, pidfd) = match launched.filter(|l| l.pid == pid) {
                // Held before exec, the child maps memprof's own libraries:
                // what matters is the allocator the program will load.
                Some(launched) => processes.opened(pid, launched.target()?)?,
                None => processes.read(pid, true)?,
            };
            processes.pidfds.extend(pidfd);
            processes.first.insert(pid, opened.seen.clone());
            processes.opened.insert(pid, opened);
        }
        Ok(processes)
    }

    /// The programs' filter.
    pub(crate) fn filter(&self) -> Filter {
        self.selection.filter(&self.roots)
    }

    /// The one process of a selection of one: its pid, and what memprof
    /// saw of it first.
    pub(crate) fn one(&self) -> Option<(u32, &Seen)> {
        if !self.selection.is_one() {
            return None;
        }
        let pid = *self.roots.first()?;
        Some((pid, self.first.get(&pid)?))
    }

    /// The command memprof started, if any.
    pub(crate) fn command(&self) -> Option<u32> {
        self.command
    }

    /// How many processes were probed.
    pub(crate) fn count(&self) -> usize {
        self.probed.len()
    }

    /// What memprof last saw of `pid`.
    pub(crate) fn seen(&self, pid: u32) -> Option<&Seen> {
        self.seen.get(&pid)
    }

    /// The symbolizer kept for `pid`, if any.
    pub(crate) fn take_symbolizer(&mut self, pid: u32) -> Option<Symbolizer> {
        self.symbolizers.as_mut().and_then(|s| s.remove(&pid))
    }

    /// The symbolizer kept for `pid`, if any, left in place.
    pub(crate) fn symbolizer(&mut self, pid: u32) -> Option<&mut Symbolizer> {
        self.symbolizers.as_mut().and_then(|s| s.get_mut(&pid))
    }

    /// Probes the processes selected at the start: the roots, the processes
    /// whose name matches, or every process (of the cgroup).
    pub(crate) fn attach(&mut self, probes: &mut Probes) -> anyhow::Result<()> {
        let selection = self.selection;
        let filter = self.filter();
        let mut initial = self.roots.clone();
        if selection.comm.is_some() {
            initial.extend(
                procfs::all_pids()
                    .into_iter()
                    .filter(|&p| selection.comm_matches(p)),
            );
        }
        if filter.mode == filter::ALL {
            for pid in procfs::all_pids() {
                if selection.cgroup.as_ref().is_none_or(|c| c.contains(pid)) {
                    self.probe(probes, pid, 0, false)?;
                }
            }
            return Ok(());
        }
        if filter.mode == filter::SET {
            probes.add_targets(&initial)?;
        }
        for &pid in &initial {
            let required = self.roots.contains(&pid);
            self.probe(probes, pid, 0, required)?;
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
        let before = self.probed.get(&pid).copied();
        if before == Some((start, execs)) || self.skipped.contains(&(pid, start, execs)) {
            return Ok(());
        }
        let opened = match self.opened.remove(&pid) {
            Some(opened) => Ok(opened),
            None => self.read(pid, false).map(|(opened, _)| opened),
        };
        match opened.and_then(|opened| self.attach_sites(probes, pid, opened)) {
            Ok(seen) => {
                // A launched command's own exec is expected, not news.
                let expected = u64::from(Some(pid) == self.command);
                if before.is_some_and(|(s, n)| s == start && execs > n) && execs > expected {
                    let what = format!(
                        "pid {pid} called exec (now {}): what the program before held is left out",
                        seen.comm
                    );
                    if self.selection.fixed() {
                        log::info!("{what}");
                    } else {
                        log::debug!("{what}");
                    }
                }
                self.probed.insert(pid, (start, execs));
                self.seen.insert(pid, seen);
                if self.filter().mode == filter::ALL {
                    // Every process is recorded: each one probed gets its
                    // unwind tables and, in CPython, its Python frames (the
                    // recorded set's get theirs as they join it).
                    probes.unwind_process(pid);
                    probes.python_process(pid);
                }
                if let Some(symbolizers) = &mut self.symbolizers {
                    // After an exec, the old program's mappings are gone.
                    symbolizers.insert(pid, Symbolizer::new(pid));
                }
                Ok(())
            }
            Err(e) if required => Err(e),
            Err(e) => {
                log::debug!("pid {pid} not probed: {e:#}");
                if before.is_some() {
                    // An exec that cannot be probed still replaced the mappings.
                    if let Some(symbolizer) =
                        self.symbolizers.as_mut().and_then(|s| s.get_mut(&pid))
                    {
                        symbolizer.reset();
                    }
                }
                self.skipped.insert((pid, start, execs));
                Ok(())
            }
        }
    }

    /// Reads `pid`: what it is and where its allocator's probes go. `fresh`
    /// opens it even when a process with the same mapped files was read
    /// already, and returns its pidfd.
    fn read(&mut self, pid: u32, fresh: bool) -> anyhow::Result<(Opened, Option<OwnedFd>)> {
        let maps = procfs::maps(pid).map_err(|_| Error::NoSuchProcess(pid))?;
        let objects = procfs::object_ids(&maps);
        if objects.is_empty() {
            bail!("pid {pid} maps no file (a kernel thread?)");
        }
        if !fresh {
            if let Some((allocator, sites)) = self.by_objects.get(&objects) {
                let comm = procfs::comm(pid).unwrap_or_default();
                let seen = Seen {
                    start_ticks: procfs::start_ticks(pid),
                    comm,
                    cmdline: procfs::cmdline(pid),
                    allocator: allocator.clone(),
                };
                let sites = sites.clone();
                return Ok((Opened { seen, sites }, None));
            }
        }
        let target = TargetProcess::open(pid)?;
        let (opened, pidfd) = self.opened(pid, target)?;
        self.by_objects.insert(
            objects,
            (opened.seen.allocator.clone(), opened.sites.clone()),
        );
        Ok((opened, pidfd))
    }

    /// What memprof reads of `target` (the process `pid`) to probe it.
    fn opened(
        &self,
        pid: u32,
        mut target: TargetProcess,
    ) -> anyhow::Result<(Opened, Option<OwnedFd>)> {
        if !self.pymalloc {
            if let Some((_, verdict @ Ok(_))) = &mut target.python {
                *verdict = Err("pymalloc is recorded with full tracking only".to_string());
            }
        }
        let sites = target.probe_sites(self.placed)?;
        let allocator = target.allocator_description();
        let pidfd = target.pidfd().and_then(|fd| fd.try_clone().ok());
        let seen = Seen {
            start_ticks: procfs::start_ticks(pid),
            comm: target.comm,
            cmdline: target.cmdline,
            allocator,
        };
        Ok((Opened { seen, sites }, pidfd))
    }

    /// Attaches the probes of a process read.
    fn attach_sites(
        &mut self,
        probes: &mut Probes,
        pid: u32,
        opened: Opened,
    ) -> anyhow::Result<Seen> {
        let Opened { seen, sites } = opened;
        let attached = probes
            .attach_sites(&sites, self.selection.scope(pid))
            .map_err(|e| match e.downcast::<probes::SiteError>() {
                Ok(site) => site.explain(Some(pid)),
                Err(e) => e,
            })?;
        if attached > 0 {
            log::debug!(
                "pid {pid} ({}): {attached} probes attached in {}",
                seen.comm,
                seen.allocator
            );
        }
        Ok(seen)
    }

    /// Probes the processes that appeared or called exec. Returns true when
    /// every process selected by pid is gone.
    fn follow(&mut self, probes: &mut Probes) -> anyhow::Result<bool> {
        let selection = self.selection;
        let execs: HashMap<u32, u64> = probes
            .procs()?
            .into_iter()
            .map(|(pid, e)| (pid, e.execs))
            .collect();
        let filter = self.filter();
        if filter.mode == filter::ALL {
            for pid in procfs::all_pids() {
                if selection.cgroup.as_ref().is_none_or(|c| c.contains(pid)) {
                    let n = execs.get(&pid).copied().unwrap_or(0);
                    self.probe(probes, pid, n, false)?;
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
        let recorded = if filter.mode == filter::ONE {
            self.roots.clone()
        } else {
            probes.targets()?
        };
        let mut running = 0;
        for pid in recorded {
            if procfs::is_running_process(pid) {
                running += 1;
                let n = execs.get(&pid).copied().unwrap_or(0);
                self.probe(probes, pid, n, false)?;
            }
        }
        Ok(running == 0 && selection.comm.is_none())
    }
}

impl Processes<'_> {
    /// Takes what the processes that exited held out of the maps, a part of
    /// `LIVE` per call (see [`Probes::sweep_live`]), so that short-lived
    /// programs do not crowd the running ones out of them. Never the
    /// launched command's: what it holds at its exit is the report.
    fn purge_exited(&mut self, probes: &mut Probes) -> anyhow::Result<()> {
        let command = self.command;
        let seen = &mut self.purged_exits;
        let sweep = &mut self.sweep;
        for (pid, at) in probes.exits()? {
            if Some(pid) == command || !seen.insert((pid, at)) {
                continue;
            }
            // A pid taken again and exited again: the later exit covers both.
            let entry = sweep.pending.entry(pid).or_default();
            entry.0 = entry.0.max(at);
            entry.1 = false;
        }
        if sweep.pending.is_empty() {
            return Ok(());
        }
        if sweep.cursor.at_start() {
            for entry in sweep.pending.values_mut() {
                entry.1 = true;
            }
            sweep.walked = 0;
        }
        let started = Instant::now();
        let exited: HashMap<u32, u64> = sweep
            .pending
            .iter()
            .map(|(&pid, &(at, _))| (pid, at))
            .collect();
        let budget = SWEEP_PER_TICK.max((sweep.last_walk / SWEEP_PARTS) as usize);
        let swept = probes.sweep_live(&mut sweep.cursor, budget, &exited)?;
        sweep.walked += swept.walked;
        if swept.done {
            sweep.last_walk = sweep.walked;
        }
        let mut blocks = 0;
        if self.keep_exited {
            blocks = swept.blocks.len() as u64;
            let ids = swept.stacks.values().flatten().copied();
            self.kept_traces.extend(probes.read_traces(ids)?);
            self.kept.extend(swept.blocks);
        }
        // Kept blocks are reported, not released.
        let by_process = if self.keep_exited {
            HashMap::new()
        } else {
            swept.by_process
        };
        for (pid, held) in by_process {
            blocks += held.count;
            let sum = self.purged.by_process.entry(pid).or_default();
            *sum = crate::report::add_totals(*sum, held);
        }
        for (id, held) in swept.reserved {
            let sum = self.purged.reserved.entry(id).or_default();
            *sum = crate::report::add_totals(*sum, held);
        }
        // Freed at once: a stack's id includes its process, so no process
        // alive uses it; blocks of the exited process that the walk has not
        // reached yet are taken out when it does.
        let stacks = probes.free_stacks(swept.stacks.into_values().flatten())?;
        self.purged.stacks += stacks;
        if swept.done {
            sweep.pending.retain(|_, entry| !entry.1);
        }
        log::debug!(
            "purge: {blocks} blocks and {stacks} stacks of exited processes, out of {} blocks \
             read from LIVE, in {:.1} ms{}",
            swept.walked,
            started.elapsed().as_secs_f64() * 1e3,
            if swept.done {
                format!("; walk over: LIVE held {} blocks", sweep.walked)
            } else {
                String::new()
            }
        );
        Ok(())
    }

    /// Walks `LIVE` (see [`Processes::purge_exited`]) until every exit seen
    /// is settled, once recording stopped: what a process that exited held
    /// is then all out of the maps, or all in them (its stacks too), to be
    /// settled by the report.
    pub(crate) fn finish_purge(&mut self, probes: &mut Probes) -> anyhow::Result<()> {
        // Until every exit is settled: an exit seen during a walk needs the
        // next walk too, for the blocks before where it was seen. (No exit
        // is noted once recording stopped.) A walk takes about SWEEP_PARTS
        // calls; the bound is for safety.
        for _ in 0..8 * SWEEP_PARTS {
            if self.sweep.pending.is_empty() {
                break;
            }
            self.purge_exited(probes)?;
        }
        Ok(())
    }

    /// What left the maps during the run with the processes that exited.
    pub(crate) fn purged(&self) -> &Purged {
        &self.purged
    }

    /// With --at-exit: the blocks that processes held at their exit and
    /// that left the maps during the run, and their stacks' frames.
    pub(crate) fn take_kept(&mut self) -> (Vec<Block>, HashMap<i64, Vec<u64>>) {
        (
            std::mem::take(&mut self.kept),
            std::mem::take(&mut self.kept_traces),
        )
    }
}

impl Follow for Processes<'_> {
    fn pids(&self) -> Vec<u32> {
        if self.probed.is_empty() {
            return self.roots.clone();
        }
        self.probed.keys().copied().collect()
    }

    fn exit_fds(&self) -> Vec<OwnedFd> {
        self.pidfds
            .iter()
            .filter_map(|fd| fd.try_clone().ok())
            .collect()
    }

    fn tick(&mut self, probes: &mut Probes) -> anyhow::Result<bool> {
        self.purge_exited(probes)?;
        let none_left = self.follow(probes)?;
        if self.last_refresh.elapsed() >= REFRESH_MAPPINGS_EVERY {
            self.last_refresh = Instant::now();
            for symbolizer in self.symbolizers.iter_mut().flat_map(HashMap::values_mut) {
                symbolizer.refresh();
            }
            self.read_python_ahead(probes);
        }
        Ok(none_left)
    }

    fn command_exiting(&mut self, probes: &mut Probes) -> anyhow::Result<()> {
        let Some(pid) = self.command else {
            return Ok(());
        };
        let execs = probes.procs()?.get(&pid).map_or(0, |e| e.execs);
        self.probe(probes, pid, execs, false)?;
        if let Some(symbolizer) = self.symbolizers.as_mut().and_then(|s| s.get_mut(&pid)) {
            symbolizer.refresh();
        }
        // Its code objects go with it: their names are read now.
        self.read_python_ahead(probes);
        Ok(())
    }
}

impl Processes<'_> {
    /// Reads the code objects of the Python frames stored so far, while the
    /// process holds them, when one process is recorded (the stored stacks
    /// do not say whose they are).
    fn read_python_ahead(&self, probes: &Probes) {
        let Some(symbolizers) = &self.symbolizers else {
            return;
        };
        if let [symbolizer] = symbolizers.values().collect::<Vec<_>>()[..] {
            if symbolizer.runs_python() {
                symbolizer.read_python_ahead(&probes.python_traces());
            }
        }
    }
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
        assert_eq!(none.filter(&[]).mode, filter::ALL);
        assert!(!none.is_one());
        let pids = Selection {
            pids: vec![3, 4],
            follow_forks: true,
            ..none
        };
        assert_eq!(pids.describe(), "pids 3, 4 with their children");
        assert_eq!(pids.filter(&[3, 4]).mode, filter::SET);
        assert_eq!(pids.scope(3), Scope::All);
        let fixed = Selection {
            follow_forks: false,
            ..pids
        };
        assert_eq!(fixed.scope(3), Scope::Process(3));
        // One process is a selection of one: recorded alone.
        let one = Selection {
            pids: vec![3],
            ..fixed
        };
        assert!(one.is_one());
        assert_eq!(one.filter(&[3]), Filter::one(3));
        assert_eq!(one.describe(), "pid 3");
        let command = Selection {
            pids: vec![],
            launch: true,
            ..one
        };
        assert!(command.is_one());
        assert_eq!(command.filter(&[9]), Filter::one(9));
        assert_eq!(command.scope(9), Scope::Process(9));
        let with_children = Selection {
            follow_forks: true,
            ..command
        };
        assert!(!with_children.is_one());
        assert_eq!(with_children.filter(&[9]).mode, filter::SET);
        assert_eq!(with_children.scope(9), Scope::All);
    }
}
