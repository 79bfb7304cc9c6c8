//! What memprof needs to know about one mapped object to name its code: its
//! load segments (to turn a file offset into the ELF virtual address that
//! symbol tables and `addr2line` use), and its separate debug file, if the
//! machine or the target's container has one.
//!
//! Distributions strip their binaries and ship the symbols apart: in a
//! debug file named by the binary's build id
//! (`/usr/lib/debug/.build-id/ab/cdef....debug`) or by its `.gnu_debuglink`
//! section (a file name and a CRC, looked for next to the binary, in its
//! `.debug/` directory and under `/usr/lib/debug/<its directory>/`), as gdb
//! looks for them. memprof looks in the target's own file system first
//! (through `/proc/PID/root`, for containers), then in memprof's. A
//! candidate is taken only when its build id (or, without one, its CRC)
//! matches the binary's. MiniDebugInfo (`.gnu_debugdata`, Fedora's and
//! RHEL's xz-compressed symbol table inside the binary) is read by
//! blazesym itself.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use object::{Object as _, ObjectSegment as _};

use crate::procfs;

/// Where the separate debug files live, under a root.
const DEBUG_DIR: &str = "usr/lib/debug";

/// One `PT_LOAD` segment: file range and virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Load {
    offset: u64,
    size: u64,
    vaddr: u64,
}

/// What memprof read of one mapped ELF object.
#[derive(Debug, Default)]
pub(crate) struct ObjectInfo {
    loads: Vec<Load>,
    /// The separate debug file found for it, opened, and its path.
    pub debug_file: Option<(PathBuf, File)>,
}

impl ObjectInfo {
    /// Reads the object `file` that the process `pid` maps at `path` (as
    /// it sees it), and looks for its debug file. A file that is not ELF
    /// gives an empty info (no segments, no debug file).
    pub(crate) fn read(pid: u32, path: &str, file: &File) -> ObjectInfo {
        let cache = object::ReadCache::new(file);
        let Ok(obj) = object::File::parse(&cache) else {
            return ObjectInfo::default();
        };
        let loads = obj
            .segments()
            .filter_map(|s| {
                let (offset, size) = s.file_range();
                (size > 0).then_some(Load {
                    offset,
                    size,
                    vaddr: s.address(),
                })
            })
            .collect();
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let link = obj
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc));
        let debug_file = find_debug_file(pid, path, file, build_id.as_deref(), link.as_ref());
        match &debug_file {
            Some((p, _)) => log::debug!("symbols of {path}: {}", p.display()),
            None => log::debug!("no separate debug file for {path}"),
        }
        ObjectInfo { loads, debug_file }
    }

    /// The ELF virtual address of `file_offset`, or None when no load
    /// segment holds it.
    pub(crate) fn vaddr(&self, file_offset: u64) -> Option<u64> {
        vaddr_of(&self.loads, file_offset)
    }
}

fn vaddr_of(loads: &[Load], file_offset: u64) -> Option<u64> {
    loads
        .iter()
        .find(|l| l.offset <= file_offset && file_offset < l.offset + l.size)
        .map(|l| file_offset - l.offset + l.vaddr)
}

/// The roots to look under: the target's file system, then memprof's (the
/// same one, most of the time: then once).
fn roots(pid: u32) -> Vec<PathBuf> {
    let host = PathBuf::from("/");
    if pid == 0 {
        return vec![host];
    }
    let theirs = procfs::host_path(pid, "/");
    let same_root = match (std::fs::metadata(&theirs), std::fs::metadata(&host)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    // The same root directory with other mounts on it is another file system.
    let mount_ns = |dir: PathBuf| std::fs::read_link(dir.join("ns/mnt")).ok();
    let same = same_root
        && mount_ns(procfs::dir(pid)).is_some()
        && mount_ns(procfs::dir(pid)) == mount_ns(PathBuf::from("/proc/self"));
    if same {
        vec![host]
    } else {
        vec![theirs, host]
    }
}

/// The paths gdb would try for the debug file of the binary at `path`,
/// under `root`: by build id, then by debug link.
fn candidates(
    root: &Path,
    path: &str,
    build_id: Option<&[u8]>,
    link: Option<&String>,
) -> Vec<PathBuf> {
    let debug = root.join(DEBUG_DIR);
    let mut out = Vec::new();
    if let Some((first, rest)) = build_id
        .filter(|id| id.len() >= 2)
        .and_then(|id| id.split_first())
    {
        let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
        out.push(
            debug
                .join(".build-id")
                .join(format!("{first:02x}"))
                .join(format!("{rest}.debug")),
        );
    }
    if let Some(name) = link.filter(|n| !n.is_empty() && !n.contains('/')) {
        let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        out.push(root.join(rel).join(name));
        out.push(root.join(rel).join(".debug").join(name));
        out.push(debug.join(rel).join(name));
    }
    out
}

/// The first candidate that is the debug file of `file`: the same build id,
/// or (without build ids) the CRC its debug link names; never `file` itself.
fn find_debug_file(
    pid: u32,
    path: &str,
    file: &File,
    build_id: Option<&[u8]>,
    link: Option<&(String, u32)>,
) -> Option<(PathBuf, File)> {
    if build_id.is_none() && link.is_none() {
        return None;
    }
    let me = file.metadata().ok().map(|m| (m.dev(), m.ino()));
    for root in roots(pid) {
        for candidate in candidates(&root, path, build_id, link.map(|(n, _)| n)) {
            let Ok(found) = File::open(&candidate) else {
                continue;
            };
            let Ok(meta) = found.metadata() else {
                continue;
            };
            if !meta.is_file() || Some((meta.dev(), meta.ino())) == me {
                continue;
            }
            if matches(&found, build_id, link.map(|&(_, crc)| crc)) {
                return Some((candidate, found));
            }
            log::debug!(
                "{} is not the debug file of {path}: its build id or CRC differs",
                candidate.display()
            );
        }
    }
    None
}

/// True when `found` is the debug file of a binary with `build_id` and a
/// debug link CRC of `crc`.
fn matches(found: &File, build_id: Option<&[u8]>, crc: Option<u32>) -> bool {
    let cache = object::ReadCache::new(found);
    let Ok(obj) = object::File::parse(&cache) else {
        return false;
    };
    let theirs = obj.build_id().ok().flatten();
    match (build_id, theirs) {
        (Some(ours), Some(theirs)) => ours == theirs,
        _ => crc.is_some_and(|crc| crc32_of(found) == Some(crc)),
    }
}

/// The CRC-32 of a whole file, as `.gnu_debuglink` records it.
fn crc32_of(file: &File) -> Option<u32> {
    let mut crc = flate2::Crc::new();
    let mut reader = file;
    std::io::Seek::rewind(&mut reader).ok()?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Some(crc.sum()),
            Ok(n) => crc.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// The name the user knows the executable mapped at `exe` by, when it is
/// another name for the same file: the command that was run through a
/// symlink (Debian's `redis-server` is a link to `redis-check-rdb`, and the
/// maps only show the target). Tried: the first argument of the command
/// line, then the command name, each as a path or as a file next to `exe`.
pub(crate) fn alias_of_exe(pid: u32, exe: &str, file: &File) -> Option<String> {
    let me = file.metadata().ok().map(|m| (m.dev(), m.ino()))?;
    let exe_name = Path::new(exe).file_name()?;
    let dir = Path::new(exe).parent()?;
    let argv0 = std::fs::read(procfs::dir(pid).join("cmdline"))
        .ok()
        .and_then(|raw| {
            let first = raw.split(|&b| b == 0).next()?.to_vec();
            let first = String::from_utf8(first).ok()?;
            // Programs that rewrite their title (redis) leave "path args".
            first.split_whitespace().next().map(str::to_string)
        });
    let names = argv0.into_iter().chain(procfs::comm(pid));
    for name in names {
        let path = if name.starts_with('/') {
            PathBuf::from(&name)
        } else if name.contains('/') {
            continue;
        } else {
            dir.join(&name)
        };
        if path.file_name() == Some(exe_name) {
            return None;
        }
        let Some(path) = path.to_str() else {
            continue;
        };
        let same =
            std::fs::metadata(procfs::host_path(pid, path)).is_ok_and(|m| (m.dev(), m.ino()) == me);
        if same {
            return Some(path.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_file_offsets_through_load_segments() {
        let loads = [
            Load {
                offset: 0,
                size: 0x1000,
                vaddr: 0,
            },
            Load {
                offset: 0x1000,
                size: 0x5000,
                vaddr: 0x401000,
            },
        ];
        assert_eq!(vaddr_of(&loads, 0x1234), Some(0x401234));
        assert_eq!(vaddr_of(&loads, 0x10), Some(0x10));
        assert_eq!(vaddr_of(&loads, 0x6000), None);
    }

    #[test]
    fn looks_where_gdb_looks() {
        let link = "leaky.debug".to_string();
        let got = candidates(
            Path::new("/proc/7/root"),
            "/opt/app/bin/leaky",
            Some(&[0xab, 0xcd, 0xef]),
            Some(&link),
        );
        let want: Vec<PathBuf> = [
            "/proc/7/root/usr/lib/debug/.build-id/ab/cdef.debug",
            "/proc/7/root/opt/app/bin/leaky.debug",
            "/proc/7/root/opt/app/bin/.debug/leaky.debug",
            "/proc/7/root/usr/lib/debug/opt/app/bin/leaky.debug",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
        // A link that names a path is not followed out of the directories.
        let evil = "../../etc/shadow".to_string();
        assert!(candidates(Path::new("/"), "/bin/x", None, Some(&evil)).is_empty());
    }

    #[test]
    fn crc_is_the_debuglink_one() {
        // CRC-32 (IEEE) of "123456789" is 0xcbf43926.
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"123456789").unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        assert_eq!(crc32_of(&f), Some(0xcbf4_3926));
    }
}
