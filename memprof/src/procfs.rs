//! Everything memprof reads about processes from `/proc`, in one place: the
//! memory map, the command name and line, the start time, whether a process
//! still runs, its cgroup, the paths of its files as memprof reaches them,
//! and pidfds. Each file has one parser here, a pure function of its text,
//! unit-tested on literal `/proc` text; the readers around them only open the
//! file.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::PathBuf;

/// `/proc/PID`.
pub(crate) fn dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// True when `/proc/PID` exists (a process, a zombie or a thread).
pub(crate) fn exists(pid: u32) -> bool {
    dir(pid).exists()
}

/// `/proc/PID/exe`: the executable, openable from memprof's namespace.
pub(crate) fn exe(pid: u32) -> PathBuf {
    dir(pid).join("exe")
}

/// The executable's path as the process sees it ("" when unreadable).
pub(crate) fn exe_path(pid: u32) -> String {
    fs::read_link(exe(pid))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A path of the process's mount namespace reached through `/proc/PID/root`,
/// valid from memprof's namespace.
pub(crate) fn host_path(pid: u32, path: &str) -> PathBuf {
    dir(pid).join("root").join(path.trim_start_matches('/'))
}

/// `/proc/PID/map_files/START-END`: the file of one mapping, openable even
/// when it was deleted or lives in another mount namespace.
pub(crate) fn map_file(pid: u32, start: u64, end: u64) -> PathBuf {
    dir(pid)
        .join("map_files")
        .join(format!("{start:x}-{end:x}"))
}

/// The text of `/proc/PID/maps`.
pub(crate) fn maps(pid: u32) -> io::Result<String> {
    fs::read_to_string(dir(pid).join("maps"))
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MapsEntry<'a> {
    pub start: u64,
    pub end: u64,
    /// `r-xp` and the like.
    pub perms: &'a str,
    /// Offset in the file.
    pub offset: u64,
    /// The device, `major << 32 | minor`.
    pub dev: u64,
    /// The inode; 0 for anonymous memory.
    pub inode: u64,
    /// The first word of the path column, when there is one: a file's path
    /// as the process sees it (a ` (deleted)` after it is left out, as is
    /// whatever follows a space in the path), or `[heap]`, `[stack]`, ...
    pub path: Option<&'a str>,
}

impl<'a> MapsEntry<'a> {
    /// Parses one line; None for a line that is not a mapping.
    pub(crate) fn parse(line: &'a str) -> Option<MapsEntry<'a>> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let offset = fields.next()?;
        let (major, minor) = fields.next()?.split_once(':')?;
        let inode = fields.next()?;
        Some(MapsEntry {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            perms,
            offset: u64::from_str_radix(offset, 16).ok()?,
            dev: (u64::from_str_radix(major, 16).ok()? << 32)
                | u64::from_str_radix(minor, 16).ok()?,
            inode: inode.parse().ok()?,
            path: fields.next(),
        })
    }

    /// True for a mapping of executable code.
    pub(crate) fn executable(&self) -> bool {
        self.perms.contains('x')
    }

    /// The path of the mapped file; None for anonymous memory and the
    /// kernel's mappings (`[vdso]`, ...).
    pub(crate) fn file(&self) -> Option<&'a str> {
        self.path.filter(|p| p.starts_with('/'))
    }
}

/// Every mapping of a `/proc/PID/maps` listing, in address order.
pub(crate) fn parse_maps(maps: &str) -> impl Iterator<Item = MapsEntry<'_>> {
    maps.lines().filter_map(MapsEntry::parse)
}

/// The (device, inode) of every file a `/proc/PID/maps` listing maps
/// executable: two processes with the same set use the same allocator at the
/// same offsets.
pub(crate) fn object_ids(maps: &str) -> BTreeSet<(u64, u64)> {
    parse_maps(maps)
        .filter(|m| m.executable() && m.inode != 0)
        .map(|m| (m.dev, m.inode))
        .collect()
}

/// The short command name (`/proc/PID/comm`, at most 15 characters), without
/// its newline; None when the process is gone.
pub(crate) fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(dir(pid).join("comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}

/// The command line of `pid`, arguments joined by spaces ("" when unreadable).
pub(crate) fn cmdline(pid: u32) -> String {
    fs::read(dir(pid).join("cmdline"))
        .map(|raw| parse_cmdline(&raw))
        .unwrap_or_default()
}

/// `/proc/PID/cmdline` (arguments ended by NUL bytes) -> arguments joined by spaces.
fn parse_cmdline(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses): the first is the state (field 3).
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace())
}

/// Field 22 of a `/proc/PID/stat` text: the start time in clock ticks after boot.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    stat_fields(stat)?.nth(19)?.parse().ok()
}

/// When `pid` started, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`): with the pid, it names one process.
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    parse_start_ticks(&fs::read_to_string(dir(pid).join("stat")).ok()?)
}

/// The clock ticks per second of `/proc` times.
fn ticks_per_second() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
}

/// The boot time (`btime` of `/proc/stat`), in seconds since the Unix epoch.
fn parse_boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Resident memory of `pid` in bytes (`/proc/PID/statm`, second field, in pages).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(dir(pid).join("statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok().filter(|&p| p > 0)?))
}

/// Start time in clock ticks after boot -> seconds since the Unix epoch.
pub(crate) fn started_unix_secs(ticks: u64) -> Option<f64> {
    let boot = parse_boot_time(&fs::read_to_string("/proc/stat").ok()?)?;
    let hz = ticks_per_second();
    (hz > 0).then(|| boot + ticks as f64 / hz as f64)
}

/// True when `pid` names a running process (not a zombie, not a thread).
pub(crate) fn is_running_process(pid: u32) -> bool {
    fs::read_to_string(dir(pid).join("status")).is_ok_and(|s| is_running_status(&s, pid))
}

/// The value of the field `name` (with its colon) of a `/proc/PID/status`
/// text; "" when it has none.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// True when a `/proc/PID/status` text is that of process `pid` (its thread
/// group leader) and not a zombie.
fn is_running_status(status: &str, pid: u32) -> bool {
    status_field(status, "Tgid:") == pid.to_string()
        && !status_field(status, "State:").starts_with('Z')
}

/// The pid of `pid` in its own pid namespace (the last of `NSpid` in
/// `/proc/PID/status`): the one a containerized process knows itself by.
pub(crate) fn ns_pid(pid: u32) -> Option<u32> {
    parse_ns_pid(&fs::read_to_string(dir(pid).join("status")).ok()?)
}

fn parse_ns_pid(status: &str) -> Option<u32> {
    status_field(status, "NSpid:")
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// memprof's effective capabilities (`CapEff` of `/proc/self/status`), one
/// bit per capability; 0 when unreadable.
pub(crate) fn own_capabilities() -> u64 {
    parse_capabilities(&fs::read_to_string("/proc/self/status").unwrap_or_default())
}

fn parse_capabilities(status: &str) -> u64 {
    u64::from_str_radix(status_field(status, "CapEff:"), 16).unwrap_or(0)
}

/// Every process now (the numeric entries of `/proc`), memprof aside.
pub(crate) fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&pid| pid != me)
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup v2 path of `pid` from the hierarchy's root (the `0::` lines of
/// `/proc/PID/cgroup`); empty when unreadable.
pub(crate) fn cgroup_paths(pid: u32) -> Vec<String> {
    fs::read_to_string(dir(pid).join("cgroup"))
        .map(|text| parse_cgroup(&text).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The cgroup v2 paths of a `/proc/PID/cgroup` text.
fn parse_cgroup(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| line.strip_prefix("0::"))
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` beside cgroup v1), from `/proc/self/mounts`.
pub(crate) fn cgroup2_mount() -> Option<PathBuf> {
    parse_cgroup2_mount(&fs::read_to_string("/proc/self/mounts").ok()?)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The running kernel's release (`uname -r`), from `/proc/sys/kernel/osrelease`.
pub(crate) fn kernel_release() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

/// A pidfd for `pid`, or None on kernels without pidfd_open (before 5.3).
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a nonnegative return is a new fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c2a00000-55d0c2a01000 r--p 00000000 fe:01 1234 /usr/bin/leaky
55d0c2a01000-55d0c2a02000 r-xp 00001000 fe:01 1234 /usr/bin/leaky
55d0c3000000-55d0c3021000 rw-p 00000000 00:00 0                          [heap]
7f1c2a028000-7f1c2a19d000 r-xp 00028000 103:02 5678 /usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)
7f1c2b000000-7f1c2b001000 rw-p 00000000 00:00 0
7ffd1c100000-7ffd1c102000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn parses_every_column_of_maps() {
        let all: Vec<_> = parse_maps(MAPS).collect();
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[1],
            MapsEntry {
                start: 0x55d0c2a01000,
                end: 0x55d0c2a02000,
                perms: "r-xp",
                offset: 0x1000,
                dev: (0xfe << 32) | 1,
                inode: 1234,
                path: Some("/usr/bin/leaky"),
            }
        );
        assert_eq!(all[2].path, Some("[heap]"));
        assert_eq!(all[2].file(), None);
        assert_eq!(
            all[3].file(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            "a deleted file keeps its path"
        );
        assert_eq!(all[3].dev, (0x103 << 32) | 2);
        assert_eq!(all[4].path, None);
        assert!(all[5].executable() && all[5].file().is_none());
        assert_eq!(parse_maps("garbage\n\n").count(), 0);
    }

    #[test]
    fn sets_of_mapped_objects_ignore_anonymous_memory() {
        let ids: Vec<_> = object_ids(MAPS).into_iter().collect();
        assert_eq!(
            ids,
            vec![((0xfe << 32) | 1, 1234), ((0x103 << 32) | 2, 5678)]
        );
    }

    #[test]
    fn parses_stat_whatever_the_command_name() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 \
                    1 0 987654 10000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0\n";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("1 (init) Z 0"), None);
    }

    #[test]
    fn parses_cmdline_status_cgroup_mounts_and_stat() {
        assert_eq!(
            parse_cmdline(b"/bin/app\0-x\0\0two words\0"),
            "/bin/app -x two words"
        );
        assert_eq!(parse_cmdline(b""), "");
        let status = "Name:\tapp\nState:\tS (sleeping)\nTgid:\t4242\nPid:\t4242\n";
        assert!(is_running_status(status, 4242));
        assert!(!is_running_status(status, 4243), "a thread of 4242");
        assert!(!is_running_status(
            "State:\tZ (zombie)\nTgid:\t4242\n",
            4242
        ));
        assert_eq!(
            parse_capabilities("Name:\tmemprof\nCapEff:\t000001ffffffffff\n"),
            0x1ff_ffff_ffff
        );
        assert_eq!(parse_capabilities(status), 0);
        assert_eq!(parse_ns_pid("Pid:\t4242\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(parse_ns_pid("NSpid:\t4242\n"), Some(4242));
        assert_eq!(parse_ns_pid(status), None);
        let cgroup = "12:cpu,cpuacct:/old\n0::/system.slice/app.service\n";
        assert_eq!(
            parse_cgroup(cgroup).collect::<Vec<_>>(),
            vec!["/system.slice/app.service"]
        );
        let mounts = "proc /proc proc rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1765000000\nprocesses 7\n"),
            Some(1_765_000_000.0)
        );
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(exists(pid) && is_running_process(pid));
        assert!(!all_pids().contains(&pid), "memprof leaves itself out");
        assert!(all_pids().contains(&1));
        assert!(comm(pid).is_some_and(|c| !c.is_empty() && !c.ends_with('\n')));
        assert!(cmdline(pid).contains("memprof"), "{}", cmdline(pid));
        assert!(parse_maps(&maps(pid).unwrap()).any(|m| m.file() == Some(exe_path(pid).as_str())));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let ticks = start_ticks(pid).unwrap();
        let started = started_unix_secs(ticks).unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{started} vs {now}"
        );
        assert!(pidfd_open(pid).is_some());
        assert!(!exists(u32::MAX - 1) && !is_running_process(u32::MAX - 1));
        assert!(comm(u32::MAX - 1).is_none());
    }

    #[test]
    fn an_exited_child_is_not_running() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_running_process(pid));
    }
}
