//! The target process: does it exist, which libc does it map, and where in that
//! libc are the allocator functions.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use memprof_common::programs;
use memprof_common::python::pymalloc;
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::error::Error;
use crate::placement;
use crate::procfs;
use crate::python::pymalloc::Probed;

/// What an allocator entry point does with its arguments and its result; picks
/// the pair of BPF programs attached to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
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
    /// pymalloc's `_PyObject_Malloc(ctx, nbytes)` (see [`crate::python::pymalloc`]).
    PyMalloc,
    /// pymalloc's `_PyObject_Calloc(ctx, nelem, elsize)`.
    PyCalloc,
    /// pymalloc's `_PyObject_Realloc(ctx, ptr, nbytes)`.
    PyRealloc,
    /// pymalloc's `_PyObject_Free(ctx, ptr)`.
    PyFree,
    /// pymalloc's arena allocator, `_PyObject_ArenaMmap(ctx, size)`.
    PyArenaAlloc,
    /// pymalloc's arena release, `_PyObject_ArenaMunmap(ctx, ptr, size)`.
    PyArenaFree,
}

impl Kind {
    /// How many argument registers the entry program reads.
    pub(crate) fn arguments(self) -> usize {
        match self {
            Kind::Malloc | Kind::Free => 1,
            Kind::Calloc
            | Kind::Realloc
            | Kind::Memalign
            | Kind::PyMalloc
            | Kind::PyFree
            | Kind::PyArenaAlloc
            | Kind::PyArenaFree => 2,
            Kind::ReallocArray | Kind::PosixMemalign | Kind::PyCalloc | Kind::PyRealloc => 3,
        }
    }

    /// True for a function that releases a block (no return probe).
    pub(crate) fn releases(self) -> bool {
        matches!(self, Kind::Free | Kind::PyFree | Kind::PyArenaFree)
    }

    /// True for pymalloc's functions (probed only with full tracking).
    pub(crate) fn pymalloc(self) -> bool {
        matches!(
            self,
            Kind::PyMalloc
                | Kind::PyCalloc
                | Kind::PyRealloc
                | Kind::PyFree
                | Kind::PyArenaAlloc
                | Kind::PyArenaFree
        )
    }

    /// Names of the entry and return programs in the BPF object.
    pub(crate) fn programs(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::Malloc => (programs::MALLOC_ENTER, Some(programs::ALLOC_EXIT)),
            Kind::Calloc => (programs::CALLOC_ENTER, Some(programs::ALLOC_EXIT)),
            Kind::Realloc => (programs::REALLOC_ENTER, Some(programs::REALLOC_EXIT)),
            Kind::ReallocArray => (programs::REALLOCARRAY_ENTER, Some(programs::REALLOC_EXIT)),
            Kind::PosixMemalign => (
                programs::POSIX_MEMALIGN_ENTER,
                Some(programs::POSIX_MEMALIGN_EXIT),
            ),
            Kind::Memalign => (programs::MEMALIGN_ENTER, Some(programs::ALLOC_EXIT)),
            Kind::Free => (programs::FREE_ENTER, None),
            Kind::PyMalloc => (pymalloc::MALLOC_ENTER, Some(pymalloc::ALLOC_EXIT)),
            Kind::PyCalloc => (pymalloc::CALLOC_ENTER, Some(pymalloc::ALLOC_EXIT)),
            Kind::PyRealloc => (pymalloc::REALLOC_ENTER, Some(pymalloc::REALLOC_EXIT)),
            Kind::PyFree => (pymalloc::FREE_ENTER, None),
            Kind::PyArenaAlloc => (pymalloc::MALLOC_ENTER, Some(pymalloc::ARENA_EXIT)),
            Kind::PyArenaFree => (pymalloc::FREE_ENTER, None),
        }
    }
}

/// Which libraries a function is looked for in, after the target's own
/// allocator (see [`TargetProcess::probe_sites`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// The C allocator API: else in libc.
    C,
    /// An extension of one allocator (sized frees and the like): only there.
    Extension,
    /// C++ `operator new`: else in libstdc++ (whose `new` calls `malloc`,
    /// counted once, at `new`, so stacks start at the caller of `new`).
    CxxNew,
    /// C++ `operator delete`: only in an allocator that defines it. libstdc++'s
    /// calls `free`, which is probed.
    CxxDelete,
}

/// The allocator functions memprof probes, in the order it attaches them.
pub(crate) const FUNCTIONS: &[(&str, Kind, Family)] = &[
    ("malloc", Kind::Malloc, Family::C),
    ("calloc", Kind::Calloc, Family::C),
    ("realloc", Kind::Realloc, Family::C),
    ("reallocarray", Kind::ReallocArray, Family::C),
    ("posix_memalign", Kind::PosixMemalign, Family::C),
    ("aligned_alloc", Kind::Memalign, Family::C),
    ("memalign", Kind::Memalign, Family::C),
    ("valloc", Kind::Malloc, Family::C),
    ("pvalloc", Kind::Malloc, Family::C),
    ("free", Kind::Free, Family::C),
    // C23 / glibc 2.39 sized frees.
    ("free_sized", Kind::Free, Family::C),
    ("free_aligned_sized", Kind::Free, Family::C),
    // jemalloc's non-standard API: mallocx(size, flags), rallocx(ptr, size,
    // flags), dallocx(ptr, flags), sdallocx(ptr, size, flags).
    ("mallocx", Kind::Malloc, Family::Extension),
    ("rallocx", Kind::Realloc, Family::Extension),
    ("dallocx", Kind::Free, Family::Extension),
    ("sdallocx", Kind::Free, Family::Extension),
    // gperftools' and mimalloc's sized frees.
    ("tc_free_sized", Kind::Free, Family::Extension),
    ("mi_free_size", Kind::Free, Family::Extension),
    // operator new, new[], their nothrow and aligned variants (size first).
    ("_Znwm", Kind::Malloc, Family::CxxNew),
    ("_Znam", Kind::Malloc, Family::CxxNew),
    ("_ZnwmRKSt9nothrow_t", Kind::Malloc, Family::CxxNew),
    ("_ZnamRKSt9nothrow_t", Kind::Malloc, Family::CxxNew),
    ("_ZnwmSt11align_val_t", Kind::Malloc, Family::CxxNew),
    ("_ZnamSt11align_val_t", Kind::Malloc, Family::CxxNew),
    (
        "_ZnwmSt11align_val_tRKSt9nothrow_t",
        Kind::Malloc,
        Family::CxxNew,
    ),
    (
        "_ZnamSt11align_val_tRKSt9nothrow_t",
        Kind::Malloc,
        Family::CxxNew,
    ),
    // operator delete, delete[], sized, aligned and nothrow (pointer first).
    ("_ZdlPv", Kind::Free, Family::CxxDelete),
    ("_ZdaPv", Kind::Free, Family::CxxDelete),
    ("_ZdlPvm", Kind::Free, Family::CxxDelete),
    ("_ZdaPvm", Kind::Free, Family::CxxDelete),
    ("_ZdlPvSt11align_val_t", Kind::Free, Family::CxxDelete),
    ("_ZdaPvSt11align_val_t", Kind::Free, Family::CxxDelete),
    ("_ZdlPvmSt11align_val_t", Kind::Free, Family::CxxDelete),
    ("_ZdaPvmSt11align_val_t", Kind::Free, Family::CxxDelete),
    ("_ZdlPvRKSt9nothrow_t", Kind::Free, Family::CxxDelete),
    ("_ZdaPvRKSt9nothrow_t", Kind::Free, Family::CxxDelete),
];

/// jemalloc's API under a symbol prefix, with the kinds of the unprefixed
/// functions in [`FUNCTIONS`].
macro_rules! prefixed_jemalloc {
    ($prefix:literal) => {
        &[
            (concat!($prefix, "malloc"), Kind::Malloc),
            (concat!($prefix, "calloc"), Kind::Calloc),
            (concat!($prefix, "realloc"), Kind::Realloc),
            (concat!($prefix, "posix_memalign"), Kind::PosixMemalign),
            (concat!($prefix, "aligned_alloc"), Kind::Memalign),
            (concat!($prefix, "memalign"), Kind::Memalign),
            (concat!($prefix, "valloc"), Kind::Malloc),
            (concat!($prefix, "pvalloc"), Kind::Malloc),
            (concat!($prefix, "free"), Kind::Free),
            (concat!($prefix, "free_sized"), Kind::Free),
            (concat!($prefix, "free_aligned_sized"), Kind::Free),
            (concat!($prefix, "mallocx"), Kind::Malloc),
            (concat!($prefix, "rallocx"), Kind::Realloc),
            (concat!($prefix, "dallocx"), Kind::Free),
            (concat!($prefix, "sdallocx"), Kind::Free),
        ]
    };
}

/// jemalloc built with a symbol prefix (`--with-jemalloc-prefix`): it sits
/// beside libc's malloc instead of replacing it, and its callers call the
/// prefixed names. `_rjem_` is the Rust crates' (tikv-jemallocator, as a
/// `#[global_allocator]`, linked into the executable), `je_` some
/// distributions' and bundles' (Redis). Probed in addition to libc.
pub(crate) const PREFIXED_JEMALLOC: &[(&str, &[(&str, Kind)])] = &[
    ("_rjem_", prefixed_jemalloc!("_rjem_")),
    ("je_", prefixed_jemalloc!("je_")),
];

/// A shared object (or executable) mapped by the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Library {
    /// Its path as the target sees it (its mount namespace).
    pub path: String,
    /// The same file reached through `/proc/PID/root`, valid from memprof's namespace.
    pub host_path: PathBuf,
}

/// The allocator a target uses: its libc's (glibc or musl), one that replaces
/// its `malloc`, or a prefixed jemalloc beside libc's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Allocator {
    /// `glibc`, `musl`, `jemalloc`, `tcmalloc`, `mimalloc`, or `malloc in <file>`.
    pub name: String,
    /// The object that defines the `malloc` the target calls (a statically
    /// linked musl program: the executable), or the prefixed jemalloc; None
    /// for a shared libc's.
    pub library: Option<Library>,
    /// The symbol prefix of a jemalloc that does not replace `malloc`
    /// ([`PREFIXED_JEMALLOC`]): its functions in `library` are probed, and
    /// libc's as well.
    pub prefix: Option<&'static str>,
}

/// One probe site: a file offset in the library and every exported name at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProbeSite {
    pub file_offset: u64,
    pub kind: Kind,
    /// All probed names that share this address (e.g. `aligned_alloc` and
    /// `memalign` in some glibc versions): one probe serves them all.
    pub names: Vec<&'static str>,
    /// Where in the function the probes sit, and whether the kernel
    /// emulates the instruction there (see [`crate::placement`]).
    pub placement: placement::Placement,
    /// The file the offset is in.
    pub library: Arc<Library>,
}

impl ProbeSite {
    /// Where this site's probes went, for the report.
    pub(crate) fn placement_report(&self) -> crate::model::ProbePlacement {
        crate::model::ProbePlacement {
            library: self.library.path.clone(),
            functions: self.names.iter().map(|n| n.to_string()).collect(),
            offset: self.placement.offset,
            instruction: self.placement.mnemonic.clone(),
            emulated: self.placement.emulated,
            why: self.placement.why.clone(),
            arguments: self.placement.moved_arguments(),
        }
    }
}

/// A running process chosen as target (its description in a report is
/// [`crate::model::Target`]).
#[derive(Clone, Debug)]
pub(crate) struct TargetProcess {
    pub comm: String,
    pub cmdline: String,
    /// libc's path as the target sees it (its mount namespace).
    pub libc: String,
    /// libc reached through `/proc/PID/root`, valid from memprof's namespace.
    pub libc_host_path: PathBuf,
    /// The allocator the process calls.
    pub allocator: Allocator,
    /// libstdc++, when the process maps it.
    pub cxx: Option<Library>,
    /// The CPython interpreter the process runs (or will load), and whether
    /// its pymalloc is probed (else why not).
    pub python: Option<(Library, Result<crate::python::pymalloc::Probed, String>)>,
    /// A pidfd of the process: it names this process, not whichever one gets
    /// its pid next, and becomes readable when the process exits.
    pidfd: Option<Arc<OwnedFd>>,
}

impl TargetProcess {
    /// Finds the process and the libc it maps.
    pub(crate) fn open(pid: u32) -> Result<TargetProcess, anyhow::Error> {
        if pid == 0 || !procfs::exists(pid) {
            return Err(Error::NoSuchProcess(pid).into());
        }
        let comm = procfs::comm(pid).ok_or(Error::NoSuchProcess(pid))?;
        let cmdline = procfs::cmdline(pid);
        let maps = procfs::maps(pid).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                ": memprof needs root, or CAP_SYS_PTRACE over the target (a process in \
                 another user namespace cannot be read even by root)"
            } else {
                ""
            };
            anyhow::anyhow!("reading /proc/{pid}/maps: {e}{hint}")
        })?;
        if is_go_program(&procfs::exe(pid)) {
            return Err(Error::GoProgram {
                what: format!("pid {pid} ({comm})"),
            }
            .into());
        }
        let objects: Vec<Library> = mapped_objects(&maps)
            .into_iter()
            .map(|path| Library {
                host_path: procfs::host_path(pid, &path),
                path,
            })
            .collect();
        let exe = procfs::exe_path(pid);
        let (libc, allocator) = match find_libc(&maps) {
            Some(libc) => {
                let allocator = find_allocator(&objects, &exe, &libc);
                (libc, allocator)
            }
            // Statically linked: only a musl executable brings an allocator
            // memprof knows how to probe (its malloc in the symbol table).
            None => {
                let own = objects
                    .iter()
                    .find(|o| o.path == exe)
                    .filter(|o| is_static_musl(&o.host_path))
                    .ok_or_else(|| Error::NoLibc {
                        pid,
                        comm: comm.clone(),
                    })?;
                let allocator = Allocator {
                    name: "musl".to_string(),
                    library: Some(own.clone()),
                    prefix: None,
                };
                (own.path.clone(), allocator)
            }
        };
        let libc_host_path = procfs::host_path(pid, &libc);
        TargetProcess::assemble(
            pid,
            comm,
            cmdline,
            &objects,
            libc,
            libc_host_path,
            allocator,
        )
    }

    /// The process `pid` that memprof forked and holds before it execs
    /// `program`, whose loader will load `objects` (in its search order; see
    /// [`crate::load_order`]): what it maps now is memprof's own libraries,
    /// so its allocator is read from what it will load.
    pub(crate) fn before_exec(
        pid: u32,
        comm: String,
        cmdline: String,
        program: &Path,
        objects: &[PathBuf],
    ) -> Result<TargetProcess, anyhow::Error> {
        let exe = program.to_string_lossy().into_owned();
        let objects: Vec<Library> = std::iter::once(exe.clone())
            .chain(objects.iter().map(|p| p.to_string_lossy().into_owned()))
            .map(|path| Library {
                host_path: PathBuf::from(&path),
                path,
            })
            .collect();
        let Some(libc) = objects
            .iter()
            .map(|o| o.path.clone())
            .find(|path| is_libc(path))
        else {
            bail!(
                "{exe} loads no libc that memprof knows ({}): it cannot be profiled",
                objects
                    .iter()
                    .map(|o| o.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let allocator = find_allocator(&objects, &exe, &libc);
        let libc_host_path = PathBuf::from(&libc);
        TargetProcess::assemble(
            pid,
            comm,
            cmdline,
            &objects,
            libc,
            libc_host_path,
            allocator,
        )
    }

    /// The process from what was found of it.
    fn assemble(
        pid: u32,
        comm: String,
        cmdline: String,
        objects: &[Library],
        libc: String,
        libc_host_path: PathBuf,
        allocator: Allocator,
    ) -> Result<TargetProcess, anyhow::Error> {
        let cxx = objects
            .iter()
            .find(|o| base_name(&o.path).starts_with("libstdc++.so"))
            .cloned();
        let started = procfs::start_ticks(pid);
        let pidfd = procfs::pidfd_open(pid);
        // The pid was read first, the pidfd taken after: the same process
        // only if it started at the same time.
        if pidfd.is_some() && procfs::start_ticks(pid) != started {
            return Err(Error::NoSuchProcess(pid).into());
        }
        let python = python_of(objects);
        Ok(TargetProcess {
            comm,
            cmdline,
            libc,
            libc_host_path,
            allocator,
            cxx,
            python,
            pidfd: pidfd.map(Arc::new),
        })
    }

    /// The probe sites for this target's allocator, each function looked up
    /// where the process's calls to it resolve: in the library that replaces
    /// glibc's malloc if any, then in libc (C functions) or libstdc++
    /// (operator new). With `placed`, each probe goes on its function's
    /// cheapest equivalent instruction.
    pub(crate) fn probe_sites(&self, placed: bool) -> anyhow::Result<Vec<ProbeSite>> {
        let libc = Library {
            path: self.libc.clone(),
            host_path: self.libc_host_path.clone(),
        };
        let of = |families: &[Family]| -> Vec<(&'static str, Kind)> {
            FUNCTIONS
                .iter()
                .filter(|(_, _, family)| families.contains(family))
                .map(|&(name, kind, _)| (name, kind))
                .collect()
        };
        let mut sources: Vec<(Library, Vec<(&'static str, Kind)>)> = Vec::new();
        match (&self.allocator.library, self.allocator.prefix) {
            (Some(own), Some(prefix)) => sources.push((own.clone(), prefixed_api(prefix).to_vec())),
            (Some(own), None) => sources.push((
                own.clone(),
                of(&[
                    Family::C,
                    Family::Extension,
                    Family::CxxNew,
                    Family::CxxDelete,
                ]),
            )),
            (None, _) => {}
        }
        sources.push((libc, of(&[Family::C])));
        if let Some(cxx) = &self.cxx {
            sources.push((cxx.clone(), of(&[Family::CxxNew])));
        }
        let mut arenas = Vec::new();
        match &self.python {
            Some((python, Ok(Probed::Objects))) => {
                sources.push((python.clone(), crate::python::pymalloc::FUNCTIONS.to_vec()));
            }
            Some((python, Ok(Probed::Arenas { alloc, free, .. }))) => {
                let [alloc_fn, free_fn] = crate::python::pymalloc::ARENA_FUNCTIONS;
                arenas = sites_at(
                    Arc::new(python.clone()),
                    &[(alloc_fn, *alloc), (free_fn, *free)],
                )?;
            }
            Some((_, Err(_))) | None => {}
        }
        let mut taken = std::collections::HashSet::new();
        let mut sites = Vec::new();
        for (library, functions) in sources {
            let wanted: Vec<(&'static str, Kind)> = functions
                .into_iter()
                .filter(|(name, _)| !taken.contains(name))
                .collect();
            let found = sites_in(Arc::new(library), &wanted, placed)?;
            for site in &found {
                taken.extend(site.names.iter().copied());
            }
            sites.extend(found);
        }
        if !sites.iter().any(|s| s.names.contains(&"malloc")) {
            return Err(Error::NoAllocatorSymbols {
                library: self.libc.clone(),
            }
            .into());
        }
        sites.extend(arenas);
        Ok(sites)
    }

    /// The allocator for reports: libc's path for glibc, else its name and
    /// file (`jemalloc (/usr/lib/libjemalloc.so.2)`, `musl (/lib/ld-musl-x86_64.so.1)`);
    /// a prefixed jemalloc names libc too, whose `malloc` is probed as well
    /// (`jemalloc (_rjem_* in /srv/app) and /usr/lib/x86_64-linux-gnu/libc.so.6`).
    /// A CPython interpreter adds its pymalloc (`; pymalloc (libpython3.12.so.1.0)`)
    /// or why it is not probed.
    pub(crate) fn allocator_description(&self) -> String {
        let mut described = self.heap_allocator_description();
        match &self.python {
            Some((python, Ok(Probed::Objects))) => {
                described.push_str(&format!("; pymalloc ({})", python.path))
            }
            Some((python, Ok(Probed::Arenas { why, .. }))) => {
                described.push_str(&format!("; pymalloc's arenas ({}): {why}", python.path))
            }
            Some((python, Err(why))) => {
                described.push_str(&format!("; pymalloc of {} not probed: {why}", python.path))
            }
            None => {}
        }
        described
    }

    fn heap_allocator_description(&self) -> String {
        let name = &self.allocator.name;
        match (&self.allocator.library, self.allocator.prefix) {
            (Some(own), Some(prefix)) => {
                format!("{name} ({prefix}* in {}) and {}", own.path, self.libc)
            }
            (Some(own), None) => format!("{name} ({})", own.path),
            (None, _) if name == "glibc" => self.libc.clone(),
            (None, _) => format!("{name} ({})", self.libc),
        }
    }

    /// The pidfd of the process, when the kernel gave one.
    pub(crate) fn pidfd(&self) -> Option<&OwnedFd> {
        self.pidfd.as_deref()
    }
}

/// The object of `objects` that holds a CPython 3 interpreter (the
/// `python3.X` executable or `libpython3.X.so`, whichever defines
/// `PyObject_Malloc`), and whether its pymalloc can be probed.
fn python_of(objects: &[Library]) -> Option<(Library, Result<Probed, String>)> {
    objects.iter().find_map(|o| {
        let minor = crate::python::minor_of_name(&o.path)?;
        let data = fs::read(&o.host_path).ok()?;
        let verdict = crate::python::pymalloc::examine(&data, minor)?;
        Some((o.clone(), verdict))
    })
}

/// True for an executable built by the Go toolchain (it has a
/// `.go.buildinfo` section, stripped or not).
pub(crate) fn is_go_program(exe: &Path) -> bool {
    use object::Object as _;
    let Ok(data) = fs::read(exe) else {
        return false;
    };
    object::File::parse(&*data)
        .map(|file| file.section_by_name(".go.buildinfo").is_some())
        .unwrap_or(false)
}

/// The path of the libc mapped in a `/proc/PID/maps` listing: glibc's
/// `libc.so.6` (`libc-2.NN.so` before glibc 2.34), or musl's, which is also
/// its dynamic loader: `/lib/ld-musl-x86_64.so.1` (Alpine), or the
/// `libc.so` that name links to (`/usr/lib/x86_64-linux-musl/libc.so` on
/// Debian, `/usr/local/musl/lib/libc.so`). glibc's `libc.so` is a linker
/// script, never mapped.
pub(crate) fn find_libc(maps: &str) -> Option<String> {
    procfs::parse_maps(maps)
        .filter_map(|m| m.path)
        .find(|path| is_libc(path))
        .map(str::to_string)
}

/// True for the path of a libc (see [`find_libc`]).
fn is_libc(path: &str) -> bool {
    let base = base_name(path);
    base == "libc.so.6"
        || (base.starts_with("libc-2.") && base.ends_with(".so"))
        || is_musl_libc(path)
}

/// True for the path of musl's libc (see [`find_libc`]).
fn is_musl_libc(path: &str) -> bool {
    let base = base_name(path);
    base == "libc.so" || (base.starts_with("ld-musl-") && base.ends_with(".so.1"))
}

/// The name of the libc at `path`: `musl` or `glibc`.
fn libc_name(path: &str) -> &'static str {
    if is_musl_libc(path) {
        "musl"
    } else {
        "glibc"
    }
}

/// True for a statically linked musl executable whose symbol table has
/// `malloc` (musl's `__init_libc` tells it from glibc's static libc).
pub(crate) fn is_static_musl(exe: &Path) -> bool {
    let Ok(data) = fs::read(exe) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    let defines = |name: &str| {
        file.symbols()
            .any(|s| s.is_definition() && s.address() != 0 && s.name() == Ok(name))
    };
    defines("malloc") && defines("__init_libc")
}

/// The prefixed jemalloc API of `prefix` ([`PREFIXED_JEMALLOC`]).
fn prefixed_api(prefix: &str) -> &'static [(&'static str, Kind)] {
    PREFIXED_JEMALLOC
        .iter()
        .find(|(p, _)| *p == prefix)
        .map_or(&[], |(_, api)| api)
}

/// Resolves the probe sites of glibc's allocator functions in one ELF file;
/// with `placed`, each probe goes on its function's cheapest equivalent instruction.
#[cfg(test)]
pub(crate) fn probe_sites(library: &Path, placed: bool) -> anyhow::Result<Vec<ProbeSite>> {
    let library = Arc::new(Library {
        path: library.display().to_string(),
        host_path: library.to_path_buf(),
    });
    let wanted: Vec<(&'static str, Kind)> = FUNCTIONS
        .iter()
        .filter(|(_, _, family)| *family == Family::C)
        .map(|&(name, kind, _)| (name, kind))
        .collect();
    let sites = sites_in(library.clone(), &wanted, placed)?;
    if sites.is_empty() {
        return Err(Error::NoAllocatorSymbols {
            library: library.path.clone(),
        }
        .into());
    }
    Ok(sites)
}

/// The probe sites of the functions in `wanted` that `library` defines, one
/// per address.
fn sites_in(
    library: Arc<Library>,
    wanted: &[(&'static str, Kind)],
    placed: bool,
) -> anyhow::Result<Vec<ProbeSite>> {
    let path = &library.host_path;
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("parsing {} as ELF", path.display()))?;
    // Name -> (address, size).
    let defined: HashMap<&str, (u64, u64)> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.is_definition() && s.address() != 0)
        .filter_map(|s| Some((s.name().ok()?, (s.address(), s.size()))))
        .collect();
    let mut by_addr: BTreeMap<u64, (ProbeSite, u64)> = BTreeMap::new();
    for &(name, kind) in wanted {
        let Some((file_offset, size)) = defined
            .get(name)
            .and_then(|&(a, size)| Some((file_offset(&file, a)?, size)))
        else {
            continue;
        };
        let function = data
            .get(usize::try_from(file_offset).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        by_addr
            .entry(file_offset)
            .and_modify(|(site, _)| site.names.push(name))
            .or_insert_with(|| {
                let placement =
                    placement::at_entry(function, "placement is off (--probe-at-entry)");
                (
                    ProbeSite {
                        file_offset,
                        kind,
                        names: vec![name],
                        placement,
                        library: library.clone(),
                    },
                    size,
                )
            });
    }
    let landings = if placed && !by_addr.is_empty() {
        placement::Landings::cached(path, &data, &file)
    } else {
        Arc::default()
    };
    let mut sites = Vec::with_capacity(by_addr.len());
    for (mut site, size) in by_addr.into_values() {
        if placed {
            let needs = placement::Needs {
                args: site.kind.arguments(),
                returns: !site.kind.releases(),
                factors: match site.kind {
                    Kind::Calloc => Some((0, 1)),
                    Kind::ReallocArray | Kind::PyCalloc => Some((1, 2)),
                    _ => None,
                },
            };
            site.placement =
                placement::place_in_file(&data, &landings, site.file_offset, size, needs);
            site.file_offset += site.placement.offset;
        }
        log::debug!(
            "probe on {} in {}: {}",
            site.names.join("/"),
            library.path,
            site.placement.describe()
        );
        sites.push(site);
    }
    Ok(sites)
}

/// Probe sites at the entries of functions known by address, not by symbol
/// (`(name, kind)` and the ELF address): static functions of a stripped
/// file.
fn sites_at(
    library: Arc<Library>,
    functions: &[((&'static str, Kind), u64)],
) -> anyhow::Result<Vec<ProbeSite>> {
    let path = &library.host_path;
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("parsing {} as ELF", path.display()))?;
    let mut sites = Vec::new();
    for &((name, kind), addr) in functions {
        let Some(file_offset) = file_offset(&file, addr) else {
            anyhow::bail!(
                "{name} at {addr:#x} is outside the segments of {}",
                library.path
            );
        };
        let function = data
            .get(usize::try_from(file_offset).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        // Called once per arena: the entry, whatever it costs.
        let placement = placement::at_entry(function, "called once per arena: at the entry");
        log::debug!(
            "probe on {name} in {} (at {addr:#x}): {}",
            library.path,
            placement.describe()
        );
        sites.push(ProbeSite {
            file_offset,
            kind,
            names: vec![name],
            placement,
            library: library.clone(),
        });
    }
    Ok(sites)
}

/// The file-backed objects with executable mappings, in address order, once each.
fn mapped_objects(maps: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for path in procfs::parse_maps(maps)
        .filter(procfs::MapsEntry::executable)
        .filter_map(|m| m.file())
    {
        if !seen.iter().any(|p| p == path) {
            seen.push(path.to_string());
        }
    }
    seen
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The allocator whose `malloc` the target's calls resolve to: the
/// executable's own, else a library's other than libc (linked or
/// LD_PRELOADed), else a prefixed jemalloc beside libc's (the executable's,
/// else a library's), else libc's.
fn find_allocator(objects: &[Library], exe: &str, libc: &str) -> Allocator {
    let candidates = objects
        .iter()
        .filter(|o| o.path == exe)
        .chain(objects.iter().filter(|o| o.path != exe))
        .filter(|o| o.path != libc && !base_name(&o.path).starts_with("ld-linux"));
    let mut prefixed = None;
    for library in candidates {
        let Ok(data) = fs::read(&library.host_path) else {
            continue;
        };
        let Ok(file) = object::File::parse(&*data) else {
            continue;
        };
        // Named by a function only that allocator has (in the symbol table
        // too: an executable exports only what its libraries use).
        let defines = |name: &str| {
            file.dynamic_symbols()
                .chain(file.symbols())
                .any(|s| s.is_definition() && s.address() != 0 && s.name() == Ok(name))
        };
        // Exported, as symbol interposition needs.
        let exports_malloc = file
            .dynamic_symbols()
            .any(|s| s.is_definition() && s.address() != 0 && s.name() == Ok("malloc"));
        if !exports_malloc {
            if prefixed.is_none() {
                prefixed = PREFIXED_JEMALLOC
                    .iter()
                    .find(|(prefix, _)| {
                        defines(&format!("{prefix}malloc")) || defines(&format!("{prefix}mallocx"))
                    })
                    .map(|&(prefix, _)| Allocator {
                        name: "jemalloc".to_string(),
                        library: Some(library.clone()),
                        prefix: Some(prefix),
                    });
            }
            continue;
        }
        let name = [
            ("mallocx", "jemalloc"),
            ("tc_malloc", "tcmalloc"),
            ("mi_malloc", "mimalloc"),
        ]
        .into_iter()
        .find(|(symbol, _)| defines(symbol))
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| format!("malloc in {}", base_name(&library.path)));
        return Allocator {
            name,
            library: Some(library.clone()),
            prefix: None,
        };
    }
    prefixed.unwrap_or_else(|| Allocator {
        name: libc_name(libc).to_string(),
        library: None,
        prefix: None,
    })
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
    fn finds_musl_in_maps() {
        for path in [
            "/lib/ld-musl-x86_64.so.1",
            "/usr/lib/x86_64-linux-musl/libc.so",
            "/usr/local/musl/lib/libc.so",
        ] {
            let maps = format!("7f-8f r-xp 0 00:00 0 {path}\n");
            assert_eq!(find_libc(&maps).as_deref(), Some(path));
            assert_eq!(libc_name(path), "musl");
        }
        assert_eq!(libc_name("/usr/lib/x86_64-linux-gnu/libc.so.6"), "glibc");
        assert_eq!(
            find_libc("7f-8f r-xp 0 00:00 0 /usr/lib/libc.so.1.2\n"),
            None
        );
    }

    #[test]
    fn prefixed_jemalloc_functions_have_the_unprefixed_kinds() {
        for (prefix, api) in PREFIXED_JEMALLOC {
            assert_eq!(prefixed_api(prefix).len(), api.len());
            for (name, kind) in api.iter() {
                let bare = name.strip_prefix(prefix).unwrap();
                let unprefixed = FUNCTIONS.iter().find(|(n, _, _)| *n == bare);
                assert_eq!(unprefixed.map(|f| f.1), Some(*kind), "{name}");
            }
        }
        assert!(prefixed_api("nope_").is_empty());
    }

    #[test]
    fn this_test_binary_is_not_static_musl() {
        assert!(!is_static_musl(&std::env::current_exe().unwrap()));
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
    fn placed_probes_stay_inside_their_functions_and_are_reported() {
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let libc = find_libc(&maps).expect("the test binary maps glibc");
        let at_entry = probe_sites(Path::new(&libc), false).unwrap();
        let placed = probe_sites(Path::new(&libc), true).unwrap();
        assert_eq!(at_entry.len(), placed.len());
        for (entry, placed) in at_entry.iter().zip(&placed) {
            assert_eq!(entry.names, placed.names);
            assert_eq!(entry.placement.offset, 0);
            assert_eq!(
                placed.file_offset,
                entry.file_offset + placed.placement.offset,
                "{:?}",
                placed.names
            );
            assert_eq!(placed.placement.why.is_none(), placed.placement.emulated);
            let report = placed.placement_report();
            assert_eq!(report.library, libc);
            assert_eq!(report.offset, placed.placement.offset);
            assert_eq!(report.emulated, placed.placement.emulated);
            assert_eq!(
                report.functions,
                placed
                    .names
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn lists_each_executable_object_once() {
        let maps = "\
55d0c2a00000-55d0c2a01000 r-xp 00001000 fe:01 1234 /usr/bin/leaky
7f1c29000000-7f1c29001000 r-xp 00001000 fe:01 99 /usr/lib/libjemalloc.so.2
7f1c29001000-7f1c29002000 r--p 00002000 fe:01 99 /usr/lib/libjemalloc.so.2
7f1c2a028000-7f1c2a19d000 r-xp 00028000 fe:01 5678 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a19d000-7f1c2a19e000 r-xp 00028000 fe:01 5678 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2b000000-7f1c2b001000 rw-p 00000000 00:00 0
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            mapped_objects(maps),
            vec![
                "/usr/bin/leaky",
                "/usr/lib/libjemalloc.so.2",
                "/usr/lib/x86_64-linux-gnu/libc.so.6"
            ]
        );
    }

    #[test]
    fn this_process_uses_glibcs_malloc() {
        let target = TargetProcess::open(std::process::id()).unwrap();
        assert_eq!(target.allocator.name, "glibc");
        assert_eq!(target.allocator_description(), target.libc);
        let sites = target.probe_sites(true).unwrap();
        assert!(sites
            .iter()
            .any(|s| s.names.contains(&"malloc") && s.library.path == target.libc));
    }

    #[test]
    fn a_missing_pid_is_named() {
        let err = TargetProcess::open(u32::MAX - 1).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
