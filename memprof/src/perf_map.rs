//! Names of JIT-compiled and trampoline code from the perf map a runtime
//! writes for profilers: `/tmp/perf-PID.map`, one `START SIZE NAME` line
//! per piece of code, hexadecimal with or without `0x` (Node.js
//! `--perf-basic-prof`, CPython 3.12+ `-X perf`, JVM perf-map agents).
//! Without it such code, in anonymous memory, is only `[anon]+0x...`.
//!
//! The map is read in the target's own mount namespace, through its root
//! directory (opened with the symbolizer, so that it stays reachable after
//! the target exits), under the pid the target has in its own pid
//! namespace (`NSpid`): a process in a container writes `/tmp/perf-1.map`
//! of its own `/tmp`. Runtimes append to it as they compile, so it is read
//! again, from where the last read stopped, whenever it grew. A later line
//! for the same start wins (code freed and compiled again there).
//!
//! As `perf` does, memprof only reads a regular file owned by the target's
//! user or root, and does not follow a symbolic link there: memprof runs as
//! root, and the target's `/tmp` is the target's to write.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};

use crate::procfs;

/// A map larger than this is read up to here: names past it stay unknown.
const MAX_BYTES: u64 = 256 << 20;

/// The perf map of one process, as read so far.
#[derive(Debug)]
pub(crate) struct PerfMap {
    /// The target's root directory, held open.
    root: File,
    /// The map's path under it.
    name: String,
    /// The target's user: the map must be its (or root's).
    uid: u32,
    /// The file read so far (device, inode): another file starts over.
    id: Option<(u64, u64)>,
    /// Bytes read, whole lines only.
    read: u64,
    /// Code by start address: end, name.
    code: BTreeMap<u64, (u64, String)>,
}

impl PerfMap {
    /// The perf map of `pid`, read by [`PerfMap::update`]; None when the
    /// process is gone.
    pub(crate) fn of(pid: u32) -> Option<PerfMap> {
        if pid == 0 {
            return None;
        }
        let dir = procfs::dir(pid);
        let uid = std::fs::metadata(&dir).ok()?.uid();
        let root = File::open(dir.join("root")).ok()?;
        let ns_pid = procfs::ns_pid(pid).unwrap_or(pid);
        Some(PerfMap {
            root,
            name: format!("tmp/perf-{ns_pid}.map"),
            uid,
            id: None,
            read: 0,
            code: BTreeMap::new(),
        })
    }

    /// Reads what was appended to the map since the last call (a map
    /// that is not there yet is looked for again next time).
    pub(crate) fn update(&mut self) {
        let path = format!("/proc/self/fd/{}/{}", self.root.as_raw_fd(), self.name);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let Ok(mut file) = opened else {
            return;
        };
        let Ok(meta) = file.metadata() else {
            return;
        };
        if !meta.is_file() || (meta.uid() != self.uid && meta.uid() != 0) {
            log::debug!(
                "{path} is not a regular file of uid {} or root: not read",
                self.uid
            );
            return;
        }
        let id = Some((meta.dev(), meta.ino()));
        if id != self.id || meta.len() < self.read {
            self.id = id;
            self.read = 0;
            self.code.clear();
        }
        let len = meta.len().min(MAX_BYTES);
        if len <= self.read || file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut text = Vec::new();
        if file.take(len - self.read).read_to_end(&mut text).is_err() {
            return;
        }
        // Whole lines only: the runtime may be writing the last one.
        let Some(end) = text.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        self.read += end as u64 + 1;
        for line in String::from_utf8_lossy(&text[..end]).lines() {
            if let Some((start, size, name)) = parse_line(line) {
                self.code
                    .insert(start, (start.saturating_add(size), name.to_string()));
            }
        }
    }

    /// The name of the code at `addr`.
    pub(crate) fn name(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.code.range(..=addr).next_back()?;
        (addr < *end).then_some(name.as_str())
    }
}

/// `START SIZE NAME` (the name may hold spaces).
fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let mut parts = line.splitn(3, ' ');
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim();
    (size > 0 && !name.is_empty()).then_some((start, size, name))
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn parses_the_lines_runtimes_write() {
        // Node.js --perf-basic-prof, CPython -X perf, a JVM agent.
        assert_eq!(
            parse_line("3f2a1c04a0 5c LazyCompile:~leak /srv/app.js:3"),
            Some((0x3f2a1c04a0, 0x5c, "LazyCompile:~leak /srv/app.js:3"))
        );
        assert_eq!(
            parse_line("7f3c1a2b1000 b py::handle:/srv/app.py"),
            Some((0x7f3c1a2b1000, 0xb, "py::handle:/srv/app.py"))
        );
        assert_eq!(
            parse_line("0x7f00dead 0x40 Lcom/example/Cache;::put"),
            Some((0x7f00dead, 0x40, "Lcom/example/Cache;::put"))
        );
        assert_eq!(parse_line("7f00 0 empty"), None);
        assert_eq!(parse_line("7f00 10"), None);
        assert_eq!(parse_line("not a line"), None);
    }

    /// This process's own map, appended to between reads, a later line
    /// for the same start replacing the earlier one.
    #[test]
    fn reads_what_was_appended() {
        let me = std::process::id();
        let path = format!("/tmp/perf-{me}.map");
        let mut file = File::create(&path).unwrap();
        let mut map = PerfMap::of(me).unwrap();
        assert_eq!(map.name(0x1000), None);
        map.update();
        writeln!(file, "1000 100 first").unwrap();
        // A line being written is left for the next read.
        write!(file, "2000 10 sec").unwrap();
        map.update();
        assert_eq!(map.name(0x1000), Some("first"));
        assert_eq!(map.name(0x10ff), Some("first"));
        assert_eq!(map.name(0x1100), None);
        assert_eq!(map.name(0x2000), None);
        writeln!(file, "ond").unwrap();
        writeln!(file, "1000 80 again").unwrap();
        map.update();
        assert_eq!(map.name(0x2004), Some("second"));
        assert_eq!(map.name(0x1010), Some("again"));
        assert_eq!(map.name(0x1090), None);
        drop(file);
        let _ = std::fs::remove_file(&path);
    }
}
