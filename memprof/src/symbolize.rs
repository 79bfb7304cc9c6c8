//! Turning instruction pointers of the target into function names and source lines.
//!
//! The executable mappings of the target are recorded, and their files held
//! open, when profiling starts (and refreshed at the end while the target
//! lives). Addresses are translated to file offsets through that table and
//! symbolized from the held files, so stacks stay symbolized when the target
//! exits during the run, when its binaries are deleted or replaced, and when it
//! lives in another mount namespace.
//!
//! Names come from, in this order: the object's separate debug file (by
//! build id or `.gnu_debuglink`, found by [`crate::debuginfo`], DWARF and
//! its symbol table); the object itself (DWARF, `.symtab`, the
//! MiniDebugInfo of `.gnu_debugdata`, `.dynsym`). An address none of them
//! names keeps its module and its ELF address in it (`module+0x...`). Code
//! in no file (JIT-compiled, trampolines) is named from the perf map its
//! runtime writes, if any ([`crate::perf_map`]).
//!
//! Kernel stacks (`--kernel`) go through the same symbolizer, from
//! `/proc/kallsyms`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::rc::Rc;

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer as Blaze};
use blazesym::MaybeDefault;

use crate::debuginfo::{self, ObjectInfo};
use crate::model::Frame;
use crate::perf_map::PerfMap;
use crate::procfs;
use crate::python;

/// One executable, file-backed mapping of the target.
#[derive(Debug)]
struct Mapping {
    start: u64,
    end: u64,
    file_offset: u64,
    /// The file's path as the target sees it.
    path: String,
    /// The name frames show: `path`, or the name the user ran it by.
    module: String,
    /// The file itself, opened through `/proc/PID/map_files`.
    file: File,
    /// Its device and inode.
    id: Option<(u64, u64)>,
    /// Its load segments and debug file (shared by its mappings).
    info: Rc<ObjectInfo>,
}

/// One long-lived symbolizer per target (blazesym caches parsed ELF and DWARF).
pub(crate) struct Symbolizer {
    blaze: Blaze,
    pid: u32,
    mappings: Vec<Mapping>,
    /// Names Python frames, when the target runs a CPython memprof knows.
    python: Option<python::Resolver>,
    /// Executable mappings of no file: start, end, name (`[vdso]`, `[anon]`).
    other: Vec<(u64, u64, String)>,
    /// Names of the code in no file, when the runtime writes a perf map.
    perf_map: RefCell<Option<PerfMap>>,
}

impl Symbolizer {
    /// Creates the symbolizer and records the target's executable mappings now.
    pub(crate) fn new(pid: u32) -> Symbolizer {
        let blaze = Blaze::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        let mut sym = Symbolizer {
            blaze,
            pid,
            mappings: Vec::new(),
            python: python::Resolver::of(pid),
            other: Vec::new(),
            perf_map: RefCell::new(PerfMap::of(pid)),
        };
        sym.refresh();
        sym
    }

    /// Forgets every mapping and reads them again: after an exec, the old
    /// program's mappings are gone.
    pub(crate) fn reset(&mut self) {
        self.mappings.clear();
        self.python = python::Resolver::of(self.pid);
        self.other.clear();
        *self.perf_map.get_mut() = PerfMap::of(self.pid);
        self.refresh();
    }

    /// Records mappings that appeared since the last call (e.g. `dlopen`).
    pub(crate) fn refresh(&mut self) {
        let Ok(maps) = procfs::maps(self.pid) else {
            return;
        };
        if self.python.is_none() {
            self.python = python::Resolver::of(self.pid);
        }
        if let Some(map) = self.perf_map.get_mut() {
            map.update();
        }
        let exe = procfs::exe_path(self.pid);
        for m in procfs::parse_maps(&maps).filter(|m| m.executable() && m.file().is_none()) {
            let name = m.path.unwrap_or("[anon]").to_string();
            if !self
                .other
                .iter()
                .any(|o| *o == (m.start, m.end, name.clone()))
            {
                self.other.retain(|&(s, e, _)| e <= m.start || s >= m.end);
                self.other.push((m.start, m.end, name));
            }
        }
        for (start, end, file_offset, path) in executable_mappings(&maps) {
            if self
                .mappings
                .iter()
                .any(|m| m.start == start && m.end == end && m.path == path)
            {
                continue;
            }
            let pid = self.pid;
            let opened = File::open(procfs::map_file(pid, start, end))
                .or_else(|_| File::open(procfs::host_path(pid, path)));
            match opened {
                Ok(file) => {
                    // Mappings of one file share what was read of it.
                    let id = file.metadata().ok().map(|m| (m.dev(), m.ino()));
                    let known = self
                        .mappings
                        .iter()
                        .find(|m| m.path == path && id.is_some() && m.id == id)
                        .map(|m| (Rc::clone(&m.info), m.module.clone()));
                    let (info, module) = known.unwrap_or_else(|| {
                        let alias = (path == exe)
                            .then(|| debuginfo::alias_of_exe(pid, path, &file))
                            .flatten();
                        (
                            Rc::new(ObjectInfo::read(pid, path, &file)),
                            alias.unwrap_or_else(|| path.to_string()),
                        )
                    });
                    self.mappings.retain(|m| m.end <= start || m.start >= end);
                    self.mappings.push(Mapping {
                        start,
                        end,
                        file_offset,
                        path: path.to_string(),
                        module,
                        file,
                        id,
                        info,
                    });
                }
                Err(e) => log::debug!("cannot open {path} of pid {pid}: {e}"),
            }
        }
    }

    /// Symbolizes many stacks at once (one batch per mapped file).
    ///
    /// Stacks are instruction pointers innermost first, as captured at the
    /// allocator's return: every one is a return address, so the address looked
    /// up is `ip - 1`, inside the call instruction.
    pub(crate) fn symbolize_stacks(
        &self,
        stacks: &HashMap<i64, Vec<u64>>,
    ) -> HashMap<i64, Vec<Frame>> {
        let mut addrs: Vec<u64> = stacks
            .values()
            .flat_map(|ips| python::split(ips).0)
            .map(|ip| ip.saturating_sub(1))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        let resolved = self.resolve(&addrs);
        if let Some(map) = self.perf_map.borrow_mut().as_mut() {
            // Code compiled since the last look.
            map.update();
        }
        stacks
            .iter()
            .map(|(&id, ips)| {
                let (ips, py) = python::split(ips);
                let frames = ips
                    .iter()
                    .flat_map(|&ip| match resolved.get(&ip.saturating_sub(1)) {
                        // The return address itself, as `addr` is.
                        Some(frames) => frames
                            .iter()
                            .cloned()
                            .map(|f| Frame {
                                addr: ip,
                                module_offset: f.module_offset.map(|o| o + 1),
                                ..f
                            })
                            .collect(),
                        None => vec![self.unnamed(ip)],
                    })
                    .collect();
                let frames = match &self.python {
                    Some(resolver) if !py.is_empty() => {
                        python::merge::merge(frames, resolver.frames(py))
                    }
                    _ => frames,
                };
                (id, frames)
            })
            .collect()
    }

    /// True when the target runs a CPython memprof knows.
    pub(crate) fn runs_python(&self) -> bool {
        self.python.is_some()
    }

    /// Reads the code objects of the Python frames of `stacks` now, while
    /// the process holds them: they keep their names if it frees them (or
    /// exits) before the report.
    pub(crate) fn read_python_ahead(&self, stacks: &HashMap<i64, Vec<u64>>) {
        if let Some(resolver) = &self.python {
            for ips in stacks.values() {
                let _ = resolver.frames(python::split(ips).1);
            }
        }
    }

    /// The interpreter's own native frames folded away from the stacks that
    /// have Python frames (`--python-only`).
    pub(crate) fn python_only(&self, frames: &mut Vec<Frame>) {
        if let Some(resolver) = &self.python {
            python::merge::python_only(frames, &resolver.interpreter.path);
        }
    }

    /// The frame of an address in no mapped file: in code the kernel or a
    /// JIT mapped (`[vdso]+0x...`, `[anon]+0x...`, named from the perf map
    /// when there is one), else the bare address.
    fn unnamed(&self, addr: u64) -> Frame {
        let other = self
            .other
            .iter()
            .find(|(start, end, _)| *start <= addr && addr < *end);
        // A return address: the call is the byte before.
        let function = self
            .perf_map
            .borrow()
            .as_ref()
            .and_then(|map| map.name(addr.saturating_sub(1)))
            .map(str::to_string);
        Frame {
            addr,
            function,
            module: other.map(|(_, _, name)| name.clone()),
            module_offset: other.map(|(start, _, _)| addr - start),
            ..Frame::default()
        }
    }

    /// Symbolizes kernel stacks (innermost first) from `/proc/kallsyms` (no
    /// vmlinux, no DWARF: function names only). Every address but the first
    /// is a return address, so `ip - 1` is looked up for them.
    pub(crate) fn symbolize_kernel_stacks(
        &self,
        stacks: &HashMap<i64, Vec<u64>>,
    ) -> HashMap<i64, Vec<Frame>> {
        let lookup = |ip: u64, i: usize| if i == 0 { ip } else { ip.saturating_sub(1) };
        let mut addrs: Vec<u64> = stacks
            .values()
            .flat_map(|ips| ips.iter().enumerate().map(|(i, &ip)| lookup(ip, i)))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        let src = Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        });
        let mut names: HashMap<u64, String> = HashMap::new();
        match self.blaze.symbolize(&src, Input::AbsAddr(&addrs)) {
            Ok(results) => {
                for (&addr, sym) in addrs.iter().zip(results) {
                    if let Symbolized::Sym(sym) = sym {
                        names.insert(addr, sym.name.to_string());
                    }
                }
            }
            Err(e) => log::warn!("symbolizing kernel addresses with /proc/kallsyms: {e}"),
        }
        stacks
            .iter()
            .map(|(&id, ips)| {
                let frames = ips
                    .iter()
                    .enumerate()
                    .map(|(i, &ip)| Frame {
                        addr: ip,
                        function: names.get(&lookup(ip, i)).cloned(),
                        module: Some("[kernel]".to_string()),
                        ..Frame::default()
                    })
                    .collect();
                (id, frames)
            })
            .collect()
    }

    fn resolve(&self, addrs: &[u64]) -> HashMap<u64, Vec<Frame>> {
        let mut by_mapping: HashMap<usize, Vec<u64>> = HashMap::new();
        for &addr in addrs {
            if let Some(i) = self
                .mappings
                .iter()
                .position(|m| m.start <= addr && addr < m.end)
            {
                by_mapping.entry(i).or_default().push(addr);
            }
        }
        let mut out = HashMap::new();
        for (i, addrs) in by_mapping {
            let m = &self.mappings[i];
            let offsets: Vec<u64> = addrs.iter().map(|a| a - m.start + m.file_offset).collect();
            let vaddrs: Vec<Option<u64>> = offsets.iter().map(|&o| m.info.vaddr(o)).collect();
            let mut found: Vec<Option<Vec<Frame>>> = vec![None; addrs.len()];
            // The separate debug file first: it is where a stripped
            // binary's names are.
            if let Some((debug_path, debug_file)) = &m.info.debug_file {
                let wanted: Vec<(usize, u64)> = vaddrs
                    .iter()
                    .enumerate()
                    .filter_map(|(j, v)| v.map(|v| (j, v)))
                    .collect();
                let input: Vec<u64> = wanted.iter().map(|&(_, v)| v).collect();
                let src = Source::Elf(Elf::new(fd_path(debug_file)));
                match self.blaze.symbolize(&src, Input::VirtOffset(&input)) {
                    Ok(results) => {
                        for (&(j, vaddr), sym) in wanted.iter().zip(results) {
                            if let Some(frames) = frames_of(addrs[j], &m.module, Some(vaddr), sym) {
                                found[j] = Some(frames);
                            }
                        }
                    }
                    Err(e) => log::warn!(
                        "symbolizing addresses in {} with {}: {e}",
                        m.path,
                        debug_path.display()
                    ),
                }
            }
            let rest: Vec<usize> = (0..addrs.len()).filter(|&j| found[j].is_none()).collect();
            if !rest.is_empty() {
                let input: Vec<u64> = rest.iter().map(|&j| offsets[j]).collect();
                let mut elf = Elf::new(fd_path(&m.file));
                let mut results = self
                    .blaze
                    .symbolize(&elf.clone().into(), Input::FileOffset(&input));
                if let Err(e) = &results {
                    // A debug link blazesym follows to a wrong file fails
                    // the whole object: its own symbols are still good.
                    log::debug!(
                        "symbolizing addresses in {} with its debug information: {e}",
                        m.path
                    );
                    elf.debug_syms = false;
                    results = self.blaze.symbolize(&elf.into(), Input::FileOffset(&input));
                }
                match results {
                    Ok(results) => {
                        for (&j, sym) in rest.iter().zip(results) {
                            found[j] = frames_of(addrs[j], &m.module, vaddrs[j], sym);
                        }
                    }
                    Err(e) => log::warn!("symbolizing addresses in {}: {e}", m.path),
                }
            }
            for (j, frames) in found.into_iter().enumerate() {
                let frames = frames.unwrap_or_else(|| {
                    vec![Frame {
                        addr: addrs[j],
                        module: Some(m.module.clone()),
                        module_offset: vaddrs[j],
                        ..Frame::default()
                    }]
                });
                out.insert(addrs[j], frames);
            }
        }
        out
    }
}

/// The path that opens `file` again, from this process.
fn fd_path(file: &File) -> String {
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

/// Functions where a complete user stack ends: the program's start, or a
/// thread's (glibc has no frame pointers, so walks stop there).
const ROOTS: &[&str] = &[
    "__libc_start_call_main",
    "__libc_start_main",
    "__libc_start_main_impl",
    "_start",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
];

/// True when a symbolized stack (innermost first) reaches the start of the
/// program or of a thread; false for stacks cut short (no frame pointers).
pub fn reaches_start(frames: &[Frame]) -> bool {
    frames
        .last()
        .and_then(|f| f.function.as_deref())
        .is_some_and(|name| ROOTS.contains(&name))
}

/// `(start, end, file offset, path)` of the executable file mappings in a `/proc/PID/maps` listing.
fn executable_mappings(maps: &str) -> impl Iterator<Item = (u64, u64, u64, &str)> {
    procfs::parse_maps(maps)
        .filter(procfs::MapsEntry::executable)
        .filter_map(|m| Some((m.start, m.end, m.offset, m.file()?)))
}

/// Frames of one address, innermost first: inlined functions, then the real
/// one; None when it has no name there.
fn frames_of(
    addr: u64,
    module: &str,
    module_offset: Option<u64>,
    sym: Symbolized<'_>,
) -> Option<Vec<Frame>> {
    let module = Some(module.to_string());
    let Symbolized::Sym(sym) = sym else {
        return None;
    };
    let mut frames = Vec::with_capacity(sym.inlined.len() + 1);
    // blazesym lists inlined functions outermost first, each with the location
    // inside it; the symbol's own location is the call site of the first
    // inlined function (or the address itself when nothing was inlined).
    for inlined in sym.inlined.iter().rev() {
        let (file, line) = inlined
            .code_info
            .as_ref()
            .map(code_location)
            .unwrap_or((None, None));
        frames.push(Frame {
            addr,
            function: Some(inlined.name.to_string()),
            module: module.clone(),
            module_offset,
            file,
            line,
            inlined: true,
        });
    }
    let (file, line) = sym
        .code_info
        .as_deref()
        .map(code_location)
        .unwrap_or((None, None));
    frames.push(Frame {
        addr,
        function: Some(sym.name.to_string()),
        module,
        module_offset,
        file,
        line,
        inlined: false,
    });
    Some(frames)
}

fn code_location(info: &CodeInfo<'_>) -> (Option<String>, Option<u32>) {
    (
        Some(info.to_path().to_string_lossy().into_owned()),
        info.line,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_mappings() {
        let maps = "\
55d0c2a00000-55d0c2a01000 r--p 00000000 fe:01 1234 /usr/bin/leaky
55d0c2a01000-55d0c2a02000 r-xp 00001000 fe:01 1234 /usr/bin/leaky
7f1c2a028000-7f1c2a19d000 r-xp 00028000 fe:01 5678 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]
7ffd1c100000-7ffd1c102000 r-xp 00000000 00:00 0 [vdso]
";
        let got: Vec<_> = executable_mappings(maps).collect();
        assert_eq!(
            got,
            vec![
                (0x55d0c2a01000, 0x55d0c2a02000, 0x1000, "/usr/bin/leaky"),
                (
                    0x7f1c2a028000,
                    0x7f1c2a19d000,
                    0x28000,
                    "/usr/lib/x86_64-linux-gnu/libc.so.6"
                ),
            ]
        );
    }

    #[test]
    fn tells_complete_stacks_from_cut_ones() {
        let frame = |name: &str| Frame {
            function: Some(name.to_string()),
            ..Frame::default()
        };
        let complete = [
            frame("leak"),
            frame("main"),
            frame("__libc_start_call_main"),
        ];
        assert!(reaches_start(&complete));
        assert!(reaches_start(&[frame("worker"), frame("start_thread")]));
        assert!(!reaches_start(&[frame("leak"), frame("main")]));
        assert!(!reaches_start(&[frame("leak"), Frame::default()]));
        assert!(!reaches_start(&[]));
    }

    #[test]
    fn symbolizes_this_process() {
        #[inline(never)]
        fn marker_function_for_symbolizer() -> u64 {
            marker_function_for_symbolizer as *const () as u64
        }
        let addr = marker_function_for_symbolizer() + 1;
        let sym = Symbolizer::new(std::process::id());
        let stacks = HashMap::from([(7, vec![addr + 1])]);
        let frames = &sym.symbolize_stacks(&stacks)[&7];
        let name = frames
            .last()
            .and_then(|f| f.function.clone())
            .unwrap_or_default();
        assert!(
            name.contains("marker_function_for_symbolizer"),
            "{frames:?}"
        );
        assert_eq!(frames.last().map(|f| f.addr), Some(addr + 1));
    }
}
