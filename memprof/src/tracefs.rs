//! The one reader of tracefs: where it is mounted, and where a field sits in
//! a tracepoint's record (its `format` file). The BPF programs read records at
//! fixed offsets; the running kernel's offsets are read here at load time and
//! passed to them as globals, since fields move between kernel versions.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Where tracefs is mounted, newest place first.
const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The `events` directory of the mounted tracefs; None when tracefs is not mounted.
pub fn events_dir() -> Option<PathBuf> {
    ROOTS
        .into_iter()
        .map(|root| Path::new(root).join("events"))
        .find(|dir| dir.is_dir())
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Its offset in the record, in bytes.
    pub offset: u32,
    /// Its size in bytes.
    pub size: u32,
}

/// The field `name` of a tracepoint `format` file's text.
pub fn parse_field(format: &str, name: &str) -> Option<Field> {
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
pub struct Events {
    dir: PathBuf,
}

impl Events {
    /// The mounted tracefs, or an error that says how to mount it; `what`
    /// names what needs the tracepoints (e.g. `--mmap and --kernel`).
    pub fn mounted(what: &str) -> anyhow::Result<Events> {
        let dir = events_dir().with_context(|| {
            format!(
                "{what} need tracepoints, and /sys/kernel/tracing/events is missing: mount \
                 tracefs (mount -t tracefs nodev /sys/kernel/tracing)"
            )
        })?;
        Ok(Events { dir })
    }

    /// The field `name` of `event` (`group/name`, e.g. `kmem/kmalloc`).
    pub fn field(&self, event: &str, name: &str) -> anyhow::Result<Field> {
        let path = self.dir.join(event).join("format");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is the tracepoint there?)", path.display()))?;
        parse_field(&text, name)
            .with_context(|| format!("{} has no field `{name}`", path.display()))
    }

    /// The offset of the 8-byte field `name` of `event`.
    pub fn offset_of_u64(&self, event: &str, name: &str) -> anyhow::Result<u32> {
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
}
