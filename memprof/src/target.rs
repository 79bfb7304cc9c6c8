//! The target process: does it exist, which libc does it map, and where in that
//! libc are the allocator functions.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::error::Error;
use crate::placement;

/// What an allocator entry point does with its arguments and its result; picks
/// the pair of BPF programs attached to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
    Malloc,
    /// `calloc(nmemb, size)`.
    Calloc,
    /// `realloc(ptr, size)`.
    Realloc,
    /// `reallocarray(ptr, nmemb, size)`.
    ReallocArray,
    /// `posix_memalign(memptr, alignment, size)`.
    PosixMemalign,
    /// `aligned_alloc(alignment, size)`, `memalign(alignment, size)`.
    Memalign,
    /// `free(ptr)`.
    Free,
}

impl Kind {
    /// How many argument registers the entry program reads.
    pub fn arguments(self) -> usize {
        match self {
            Kind::Malloc | Kind::Free => 1,
            Kind::Calloc | Kind::Realloc | Kind::Memalign => 2,
            Kind::ReallocArray | Kind::PosixMemalign => 3,
        }
    }

    /// Names of the entry and return programs in the BPF object.
    pub fn programs(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::Malloc => ("malloc_enter", Some("alloc_exit")),
            Kind::Calloc => ("calloc_enter", Some("alloc_exit")),
            Kind::Realloc => ("realloc_enter", Some("realloc_exit")),
            Kind::ReallocArray => ("reallocarray_enter", Some("realloc_exit")),
            Kind::PosixMemalign => ("posix_memalign_enter", Some("posix_memalign_exit")),
            Kind::Memalign => ("memalign_enter", Some("alloc_exit")),
            Kind::Free => ("free_enter", None),
        }
    }
}

/// The allocator functions memprof probes, in the order it attaches them.
pub const FUNCTIONS: &[(&str, Kind)] = &[
    ("malloc", Kind::Malloc),
    ("calloc", Kind::Calloc),
    ("realloc", Kind::Realloc),
    ("reallocarray", Kind::ReallocArray),
    ("posix_memalign", Kind::PosixMemalign),
    ("aligned_alloc", Kind::Memalign),
    ("memalign", Kind::Memalign),
    ("valloc", Kind::Malloc),
    ("pvalloc", Kind::Malloc),
    ("free", Kind::Free),
];

/// One probe site: a file offset in the library and every exported name at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    pub file_offset: u64,
    pub kind: Kind,
    /// All probed names that share this address (e.g. `aligned_alloc` and
    /// `memalign` in some glibc versions): one probe serves them all.
    pub names: Vec<&'static str>,
    /// How far into the function the probes sit (see [`crate::placement`]).
    pub offset_in_function: u64,
}

/// A running process chosen as target.
#[derive(Clone, Debug)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    pub cmdline: String,
    /// libc's path as the target sees it (its mount namespace).
    pub libc: String,
    /// libc reached through `/proc/PID/root`, valid from memprof's namespace.
    pub libc_host_path: PathBuf,
    /// When the process started, in seconds since the Unix epoch.
    pub started_unix_secs: Option<f64>,
    /// A pidfd of the process: it names this process, not whichever one gets
    /// its pid next, and becomes readable when the process exits.
    pidfd: Option<Arc<OwnedFd>>,
}

impl Target {
    /// Finds the process and the libc it maps.
    pub fn open(pid: u32) -> Result<Target, anyhow::Error> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(Error::NoSuchProcess(pid).into());
        }
        let comm = fs::read_to_string(proc_dir.join("comm"))
            .map(|s| s.trim_end().to_string())
            .map_err(|_| Error::NoSuchProcess(pid))?;
        let cmdline = fs::read(proc_dir.join("cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let maps = fs::read_to_string(proc_dir.join("maps")).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                ": memprof needs root, or CAP_SYS_PTRACE over the target (a process in \
                 another user namespace cannot be read even by root)"
            } else {
                ""
            };
            anyhow::anyhow!("reading /proc/{pid}/maps: {e}{hint}")
        })?;
        let libc = find_libc(&maps).ok_or_else(|| Error::NoLibc {
            pid,
            comm: comm.clone(),
        })?;
        let libc_host_path = proc_dir.join("root").join(libc.trim_start_matches('/'));
        let started = start_ticks(pid);
        let pidfd = pidfd_open(pid);
        // The pid was read first, the pidfd taken after: the same process
        // only if it started at the same time.
        if pidfd.is_some() && start_ticks(pid) != started {
            return Err(Error::NoSuchProcess(pid).into());
        }
        Ok(Target {
            pid,
            comm,
            cmdline,
            libc,
            libc_host_path,
            started_unix_secs: started.and_then(started_unix_secs),
            pidfd: pidfd.map(Arc::new),
        })
    }

    /// The pidfd of the process, when the kernel gave one.
    pub fn pidfd(&self) -> Option<&OwnedFd> {
        self.pidfd.as_deref()
    }

    /// True while the process is still running.
    pub fn is_alive(&self) -> bool {
        if let Some(fd) = &self.pidfd {
            // Readable once the process has exited (zombie or reaped).
            let mut poll = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no waiting.
            let n = unsafe { libc::poll(&mut poll, 1, 0) };
            return n == 0;
        }
        // A zombie still has /proc/PID but no memory map.
        fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|stat| {
                let state = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next());
                !matches!(state, Some('Z') | Some('X') | None)
            })
            .unwrap_or(false)
    }
}

/// A pidfd for `pid`, or None on kernels without pidfd_open (before 5.3).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a nonnegative return is a new fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks after boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Start time in clock ticks after boot -> seconds since the Unix epoch.
fn started_unix_secs(ticks: u64) -> Option<f64> {
    let boot: f64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| boot + ticks as f64 / hz as f64)
}

/// The path of the glibc mapped in a `/proc/PID/maps` listing.
pub fn find_libc(maps: &str) -> Option<String> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            let base = path.rsplit('/').next().unwrap_or(path);
            base == "libc.so.6" || (base.starts_with("libc-2.") && base.ends_with(".so"))
        })
        .map(str::to_string)
}

/// Resolves the probe sites of the allocator functions in an ELF file; with
/// `placed`, each probe goes on its function's cheapest equivalent instruction.
pub fn probe_sites(library: &Path, placed: bool) -> anyhow::Result<Vec<ProbeSite>> {
    let data = fs::read(library).with_context(|| format!("reading {}", library.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("parsing {} as ELF", library.display()))?;
    let mut by_addr: BTreeMap<u64, ProbeSite> = BTreeMap::new();
    for &(name, kind) in FUNCTIONS {
        let Some(addr) = file
            .dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.address() != 0 && s.name() == Ok(name))
            .map(|s| s.address())
        else {
            continue;
        };
        let Some(file_offset) = file_offset(&file, addr) else {
            continue;
        };
        by_addr
            .entry(file_offset)
            .and_modify(|site| site.names.push(name))
            .or_insert_with(|| ProbeSite {
                file_offset,
                kind,
                names: vec![name],
                offset_in_function: 0,
            });
    }
    for site in by_addr.values_mut().filter(|_| placed) {
        let start = usize::try_from(site.file_offset).unwrap_or(usize::MAX);
        let code = data
            .get(start..)
            .map(|c| &c[..c.len().min(64)])
            .unwrap_or_default();
        let delta = placement::cheap_offset(code, site.kind.arguments());
        site.offset_in_function = delta;
        site.file_offset += delta;
    }
    if by_addr.is_empty() {
        return Err(Error::NoAllocatorSymbols {
            library: library.display().to_string(),
        }
        .into());
    }
    Ok(by_addr.into_values().collect())
}

/// Virtual address -> file offset, through the loadable segment that holds it.
fn file_offset(file: &object::File<'_>, addr: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (offset, size) = seg.file_range();
        (addr >= seg.address() && addr < seg.address() + size)
            .then(|| addr - seg.address() + offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c2a00000-55d0c2a01000 r--p 00000000 fe:01 1234 /usr/bin/leaky
7f1c2a000000-7f1c2a028000 r--p 00000000 fe:01 5678 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a028000-7f1c2a19d000 r-xp 00028000 fe:01 5678 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn finds_glibc_in_maps() {
        assert_eq!(
            find_libc(MAPS).as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            find_libc("7f-8f r-xp 0 00:00 0 /lib/libc-2.31.so\n").as_deref(),
            Some("/lib/libc-2.31.so")
        );
        assert_eq!(
            find_libc("7f-8f r-xp 0 00:00 0 /usr/lib/libcurl.so.4\n"),
            None
        );
        assert_eq!(find_libc("7f-8f r-xp 0 00:00 0 [vdso]\n"), None);
    }

    #[test]
    fn resolves_this_machines_libc_once_per_address() {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let libc = find_libc(&maps).expect("the test binary maps glibc");
        let sites = probe_sites(Path::new(&libc), true).unwrap();
        let names: Vec<_> = sites.iter().flat_map(|s| s.names.clone()).collect();
        for f in ["malloc", "calloc", "realloc", "free", "posix_memalign"] {
            assert!(names.contains(&f), "{f} missing from {names:?}");
        }
        let mut offsets: Vec<_> = sites.iter().map(|s| s.file_offset).collect();
        offsets.dedup();
        assert_eq!(offsets.len(), sites.len(), "one site per address");
    }

    #[test]
    fn this_process_started_before_now() {
        let pid = std::process::id();
        let started = start_ticks(pid).and_then(started_unix_secs).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{started} vs {now}"
        );
    }

    #[test]
    fn a_missing_pid_is_named() {
        let err = Target::open(u32::MAX - 1).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
