//! Python frames for the allocations of CPython processes.
//!
//! - Detection ([`Interpreter::detect`]): the object of the process that
//!   defines `_PyRuntime` (a `python3.X` executable or a `libpython3.X.so`),
//!   its version (`Py_Version`, 3.11+, else the file's name), and the
//!   runtime's address in the process. Each known version has a [`layout`]
//!   of offsets; an unknown one is reported, and its stacks stay native.
//! - Recording: the BPF programs read the calling thread's frames at each
//!   allocation ([`PyProc`] in the `PY_PROCS` map tells them where) and
//!   store (code object, instruction) pairs after the native frames.
//! - Naming ([`Resolver`]): [`code`] reads each code object from the
//!   process's memory once (name, file, line table) and keeps it; [`merge`]
//!   puts the frames where the interpreter's evaluation calls are.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData};
use memprof_common::python::{frame, PyProc};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::model::Frame;
use crate::procfs;

pub(crate) mod code;
pub(crate) mod layout;
pub(crate) mod merge;
pub(crate) mod pymalloc;

pub(crate) use merge::PYTHON_MODULE;

/// The marker on the words of Python frames in the traces read from
/// `STACKS` (user addresses never have it): see
/// [`crate::snapshot::read_traces`].
pub(crate) const MARK: u64 = 1 << 63;

/// The CPython interpreter a process runs.
#[derive(Clone, Debug)]
pub(crate) struct Interpreter {
    /// The object that holds the interpreter, as the process sees it.
    pub path: String,
    /// `(minor, micro)` of Python 3; micro is None when only the file's name said.
    pub version: (u32, Option<u32>),
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// The offsets of the version, None for a version memprof does not know.
    pub layout: Option<layout::Layout>,
}

impl Interpreter {
    /// The interpreter of `pid`, or None when it runs no CPython 3.
    pub(crate) fn detect(pid: u32) -> anyhow::Result<Option<Interpreter>> {
        let maps = procfs::maps(pid).with_context(|| format!("reading the maps of pid {pid}"))?;
        let entries: Vec<_> = procfs::parse_maps(&maps).collect();
        for e in entries.iter().filter(|e| e.executable()) {
            let Some(path) = e.file() else { continue };
            let Some(minor) = minor_of_name(path) else {
                continue;
            };
            let data = std::fs::read(procfs::map_file(pid, e.start, e.end))
                .or_else(|_| std::fs::read(procfs::host_path(pid, path)))
                .with_context(|| format!("reading {path} of pid {pid}"))?;
            let file = object::File::parse(&*data)
                .with_context(|| format!("parsing {path} of pid {pid}"))?;
            let Some(runtime) = symbol(&file, "_PyRuntime") else {
                continue;
            };
            let version = match symbol(&file, "Py_Version").and_then(|a| read_u32(&file, a)) {
                Some(hex) if hex >> 24 == 3 => ((hex >> 16) & 0xff, Some((hex >> 8) & 0xff)),
                _ => (minor, None),
            };
            let bias = bias_of(&file, e.start, e.offset).with_context(|| {
                format!("no segment of {path} maps file offset {:#x}", e.offset)
            })?;
            return Ok(Some(Interpreter {
                path: path.to_string(),
                version,
                runtime: runtime.wrapping_add(bias),
                layout: layout::of_version(version.0),
            }));
        }
        Ok(None)
    }

    /// `3.11.2`, or `3.11` when only the file's name told.
    pub(crate) fn version_string(&self) -> String {
        match self.version {
            (minor, Some(micro)) => format!("3.{minor}.{micro}"),
            (minor, None) => format!("3.{minor}"),
        }
    }

    /// What the BPF programs need, for a known version.
    pub(crate) fn proc(&self) -> Option<PyProc> {
        self.layout.map(|l| PyProc {
            runtime: self.runtime,
            ..l.proc
        })
    }
}

/// The minor version in a file name such as `python3.11`,
/// `libpython3.11.so.1.0` or `libpython3.8d.so`.
pub(crate) fn minor_of_name(path: &str) -> Option<u32> {
    let name = path.rsplit('/').next()?;
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn symbol(file: &object::File<'_>, name: &str) -> Option<u64> {
    file.dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok(name) && s.address() != 0)
        .map(|s| s.address())
}

fn read_u32(file: &object::File<'_>, addr: u64) -> Option<u32> {
    file.segments().find_map(|s| {
        let data = s.data_range(addr, 4).ok()??;
        Some(u32::from_le_bytes(data.try_into().ok()?))
    })
}

/// The load bias of the object mapped at `start` from file offset `offset`.
fn bias_of(file: &object::File<'_>, start: u64, offset: u64) -> Option<u64> {
    file.segments().find_map(|s| {
        let (seg_offset, size) = s.file_range();
        (seg_offset <= offset && offset < seg_offset + size.max(1))
            .then(|| start.wrapping_sub(s.address() + (offset - seg_offset)))
    })
}

/// Names the Python frames of one process's stacks.
pub(crate) struct Resolver {
    pub interpreter: Interpreter,
    codes: Mutex<code::Codes>,
}

impl Resolver {
    /// The resolver of `pid`, when it runs a CPython version memprof knows.
    pub(crate) fn of(pid: u32) -> Option<Resolver> {
        if pid == 0 {
            return None;
        }
        let interpreter = match Interpreter::detect(pid) {
            Ok(Some(i)) => i,
            Ok(None) => return None,
            Err(e) => {
                log::debug!("{e:#}");
                return None;
            }
        };
        let layout = interpreter.layout?;
        Some(Resolver {
            codes: Mutex::new(code::Codes::new(pid, layout)),
            interpreter,
        })
    }

    /// The Python frames of `words` (the marked pairs after a trace's
    /// native frames), innermost first.
    pub(crate) fn frames(&self, words: &[u64]) -> Vec<merge::PyFrame> {
        let Some(layout) = self.interpreter.layout else {
            return Vec::new();
        };
        let Ok(mut codes) = self.codes.lock() else {
            return Vec::new();
        };
        words
            .chunks_exact(frame::WORDS)
            .map(|pair| {
                let (head, instr) = (pair[0] & !MARK, pair[1] & !MARK);
                let addr = head & frame::ADDR_MASK;
                let owner = ((head >> frame::OWNER_SHIFT) & 0xff) as u8;
                let entry = (head >> frame::ENTRY_SHIFT) & 0x7f != 0;
                let (shown, ends_call) = match layout.entry {
                    layout::Entry::EachFrame => (true, true),
                    layout::Entry::Marked => (true, entry),
                    layout::Entry::CStackOwner => {
                        let shim = owner == layout::FRAME_OWNED_BY_CSTACK;
                        (!shim, shim)
                    }
                };
                let frame = shown
                    .then(|| codes.locate(addr, instr))
                    .flatten()
                    .map(|loc| Frame {
                        addr,
                        function: Some(loc.name),
                        module: Some(PYTHON_MODULE.to_string()),
                        file: (!loc.filename.is_empty()).then_some(loc.filename),
                        line: loc.line,
                        inlined: false,
                        module_offset: None,
                    });
                merge::PyFrame { frame, ends_call }
            })
            .collect()
    }
}

/// The processes recorded with their Python frames, kept current: a process
/// is looked at again when its executable changes (an exec, or a launched
/// command before its exec), and its entry in `PY_PROCS` is put back when
/// an exec took it out.
pub(crate) struct Watch {
    /// False with `--no-python`: nothing is watched.
    enabled: bool,
    /// Per process: the executable last looked at, and what was found.
    procs: HashMap<u32, (PathBuf, Found)>,
}

/// What a process was found to run.
#[derive(Clone, Copy, Debug)]
enum Found {
    /// A CPython memprof knows: its entry in `PY_PROCS`.
    Frames,
    /// A CPython version memprof does not know (said once).
    Unknown,
    /// No CPython (yet).
    NotYet,
}

impl Watch {
    /// Watches nothing unless `enabled`.
    pub(crate) fn new(enabled: bool) -> Watch {
        Watch {
            enabled,
            procs: HashMap::new(),
        }
    }

    /// Starts watching `pid` and installs its Python frames if it runs CPython.
    pub(crate) fn add(&mut self, ebpf: &mut aya::Ebpf, pid: u32) {
        if !self.enabled {
            return;
        }
        self.procs.remove(&pid);
        self.check(ebpf, pid);
    }

    /// Looks again at every process watched (see [`Watch`]).
    pub(crate) fn tick(&mut self, ebpf: &mut aya::Ebpf) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.check(ebpf, pid);
        }
    }

    fn check(&mut self, ebpf: &mut aya::Ebpf, pid: u32) {
        let Ok(exe) = std::fs::read_link(procfs::exe(pid)) else {
            // Gone.
            self.procs.remove(&pid);
            return;
        };
        let Some(mut map) = ebpf
            .map_mut(memprof_common::python::PY_PROCS)
            .and_then(|m| BpfHashMap::<&mut MapData, u32, PyProc>::try_from(m).ok())
        else {
            return;
        };
        if let Some((seen, found)) = self.procs.get(&pid) {
            // The same program, unless an exec (of the same file, its
            // runtime elsewhere) took its entry out, or a `python3.X`
            // executable that has not mapped its `libpython` yet.
            let settled = match found {
                Found::Frames => map.get(&pid, 0).is_ok(),
                Found::Unknown => true,
                Found::NotYet => minor_of_name(&seen.to_string_lossy()).is_none(),
            };
            if *seen == exe && settled {
                return;
            }
        }
        let found = match Interpreter::detect(pid) {
            Ok(Some(interp)) => match interp.proc() {
                Some(proc) => match map.insert(pid, proc, 0) {
                    Ok(()) => {
                        log::info!(
                            "pid {pid} runs CPython {} ({}): recording Python frames",
                            interp.version_string(),
                            interp.path
                        );
                        Found::Frames
                    }
                    Err(e) => {
                        log::warn!(
                            "pid {pid} runs CPython {} but its Python frames cannot be recorded \
                             ({e}): native stacks only",
                            interp.version_string()
                        );
                        Found::Unknown
                    }
                },
                None => {
                    log::warn!(
                        "pid {pid} runs CPython {} ({}), a version memprof does not know \
                         (it knows 3.{}): native stacks only",
                        interp.version_string(),
                        interp.path,
                        layout::KNOWN
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", 3.")
                    );
                    Found::Unknown
                }
            },
            Ok(None) => Found::NotYet,
            Err(e) => {
                log::debug!("looking for CPython in pid {pid}: {e:#}");
                Found::NotYet
            }
        };
        if !matches!(found, Found::Frames) {
            let _ = map.remove(&pid);
        }
        self.procs.insert(pid, (exe, found));
    }
}

/// Tells the BPF object whether to read Python frames at all: when not,
/// the verifier drops that code (the global is read-only).
pub(crate) fn configure(loader: &mut aya::EbpfLoader<'_>, enabled: bool) {
    static ON: u32 = 1;
    static OFF: u32 = 0;
    loader.override_global(
        memprof_common::python::PYTHON_FRAMES,
        if enabled { &ON } else { &OFF },
        true,
    );
}

/// Splits a trace into its native frames and the marked words of its Python frames.
pub(crate) fn split(trace: &[u64]) -> (&[u64], &[u64]) {
    let native = trace.iter().take_while(|&&w| w & MARK == 0).count();
    trace.split_at(native)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(minor_of_name("/usr/bin/python3.11"), Some(11));
        assert_eq!(
            minor_of_name("/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0"),
            Some(12)
        );
        assert_eq!(minor_of_name("/usr/lib/libpython3.8d.so"), Some(8));
        assert_eq!(minor_of_name("/usr/bin/python2.7"), None);
        assert_eq!(minor_of_name("/usr/lib/x86_64-linux-gnu/libc.so.6"), None);
    }

    #[test]
    fn traces_split_at_the_first_marked_word() {
        let trace = [0x401000, 0x402000, 0x7f00 | MARK, 0x10 | MARK];
        assert_eq!(split(&trace), (&trace[..2], &trace[2..]));
        assert_eq!(split(&trace[..2]).1, &[] as &[u64]);
    }

    /// Debian's python3.11, when present: the interpreter is the
    /// executable itself, version from `Py_Version`.
    #[test]
    fn detects_this_machines_python() {
        let python = "/usr/bin/python3.11";
        if !std::path::Path::new(python).exists() {
            eprintln!("skipped: {python} is not installed");
            return;
        }
        let data = std::fs::read(python).unwrap();
        let file = object::File::parse(&*data).unwrap();
        assert!(symbol(&file, "_PyRuntime").is_some());
        let hex = read_u32(&file, symbol(&file, "Py_Version").unwrap()).unwrap();
        assert_eq!(hex >> 16, 0x030b);
    }
}
