//! The one reader of tracefs: where it is mounted (mounting it when nothing
//! has), and where a field sits in a tracepoint's record (its `format` file).
//! The BPF programs read records at fixed offsets; the running kernel's
//! offsets are read here at load time and passed to them as globals, since
//! fields move between kernel versions.
//!
//! Attaching a tracepoint program reads tracefs too (aya looks up the
//! tracepoint's id there, in the same two places as [`ROOTS`], once per
//! process): every user of tracepoints calls [`events_dir`] first.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Where tracefs is mounted, newest place first; memprof mounts it at the
/// first when nothing is mounted at either.
const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The `events` directory of the first of `roots` that has one.
fn events_in(roots: &[&Path]) -> Option<PathBuf> {
    roots
        .iter()
        .map(|root| root.join("events"))
        .find(|dir| dir.is_dir())
}

/// The `events` directory of the mounted tracefs. When tracefs is not
/// mounted (a fresh machine may not have it), mounts it at
/// `/sys/kernel/tracing` (root may) and says how to when that fails.
pub(crate) fn events_dir() -> anyhow::Result<PathBuf> {
    let roots = ROOTS.map(Path::new);
    if let Some(dir) = events_in(&roots) {
        return Ok(dir);
    }
    let at = roots[0];
    mount_tracefs(at).with_context(|| {
        format!(
            "tracefs is not mounted, and mounting it at {} failed: run memprof as root, or \
             mount it (mount -t tracefs nodev {})",
            at.display(),
            at.display()
        )
    })?;
    log::info!("mounted tracefs at {} (it was not mounted)", at.display());
    events_in(&roots).with_context(|| {
        format!(
            "tracefs mounted at {} has no events directory: the kernel has no tracepoints",
            at.display()
        )
    })
}

/// `mount -t tracefs nodev AT`.
fn mount_tracefs(at: &Path) -> io::Result<()> {
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call; tracefs takes no mount data (null).
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    /// Its offset in the record, in bytes.
    pub offset: u32,
    /// Its size in bytes.
    pub size: u32,
}

/// The field `name` of a tracepoint `format` file's text.
pub(crate) fn parse_field(format: &str, name: &str) -> Option<Field> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        if decl.rsplit([' ', '*']).next()? != name {
            return None;
        }
        let value = |key: &str| {
            line.split(';')
                .find_map(|part| part.trim().strip_prefix(key))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        Some(Field {
            offset: value("offset:")?,
            size: value("size:")?,
        })
    })
}

/// The tracepoints of one mounted tracefs.
#[derive(Clone, Debug)]
pub(crate) struct Events {
    dir: PathBuf,
}

impl Events {
    /// The mounted tracefs (mounted now if need be, see [`events_dir`]);
    /// `what` names what needs the tracepoints (e.g. `--mmap and --kernel`).
    pub(crate) fn mounted(what: &str) -> anyhow::Result<Events> {
        let dir = events_dir().with_context(|| format!("reading tracepoints for {what}"))?;
        Ok(Events { dir })
    }

    /// The field `name` of `event` (`group/name`, e.g. `kmem/kmalloc`).
    pub(crate) fn field(&self, event: &str, name: &str) -> anyhow::Result<Field> {
        let path = self.dir.join(event).join("format");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is the tracepoint there?)", path.display()))?;
        parse_field(&text, name)
            .with_context(|| format!("{} has no field `{name}`", path.display()))
    }

    /// The offset of the 8-byte field `name` of `event`.
    pub(crate) fn offset_of_u64(&self, event: &str, name: &str) -> anyhow::Result<u32> {
        let field = self.field(event, name)?;
        anyhow::ensure!(
            field.size == 8,
            "{event}: `{name}` is {} bytes, not 8: a record layout memprof does not know",
            field.size
        );
        Ok(field.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_tracepoint_formats() {
        let kmalloc = "name: kmalloc\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:unsigned long call_site;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:const void * ptr;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:size_t bytes_req;\toffset:24;\tsize:8;\tsigned:0;\n\
            \tfield:size_t bytes_alloc;\toffset:32;\tsize:8;\tsigned:0;\n\
            \tfield:int node;\toffset:48;\tsize:4;\tsigned:1;\n";
        let at = |offset, size| Some(Field { offset, size });
        assert_eq!(parse_field(kmalloc, "ptr"), at(16, 8));
        assert_eq!(parse_field(kmalloc, "bytes_alloc"), at(32, 8));
        assert_eq!(parse_field(kmalloc, "node"), at(48, 4));
        assert_eq!(parse_field(kmalloc, "bytes"), None);
        let fork = "name: sched_process_fork
ID: 366
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";
        assert_eq!(parse_field(fork, "child_pid"), at(20, 4));
        assert_eq!(parse_field(fork, "parent_pid"), at(12, 4));
        assert_eq!(parse_field(fork, "pid"), None);
    }

    #[test]
    fn finds_the_first_root_with_events() {
        let base = std::env::temp_dir().join(format!("memprof-tracefs-{}", std::process::id()));
        let (empty, mounted) = (base.join("empty"), base.join("mounted"));
        fs::create_dir_all(&empty).unwrap();
        fs::create_dir_all(mounted.join("events")).unwrap();
        assert_eq!(events_in(&[&empty, &mounted]), Some(mounted.join("events")));
        assert_eq!(events_in(&[&empty]), None);
        assert_eq!(events_in(&[]), None);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn mounting_on_a_missing_directory_fails() {
        let err = mount_tracefs(Path::new("/nonexistent/memprof/tracing")).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENOENT | libc::EPERM)),
            "{err}"
        );
    }
}
