//! Uprobe links made with the raw `bpf(2)` calls: *session* links for the
//! sampled mode (`--sample-rate N`), and `uprobe_multi` links for full
//! tracking.
//!
//! A uprobe session program runs at a function's entry and, only when that
//! entry run returned 0, again at the function's return (the kernel's
//! `BPF_TRACE_UPROBE_SESSION`, Linux 6.13). The sampled mode uses it so that
//! an allocation call that is not sampled pays for neither the return probe
//! nor the stack walk.
//!
//! A `uprobe_multi` link (`BPF_TRACE_UPROBE_MULTI`, Linux 6.6) attaches one
//! program at many offsets of a file, as entry or as return probes. Its
//! probes cost the same per call as perf-event uprobes, but closing the link
//! detaches them all with one wait for the kernel's grace period, where each
//! perf-event uprobe waits for its own (about 0.1 s each, one after the
//! other: 85 probes over 5 processes took 9.6 s to detach).
//!
//! aya 0.14 can neither load a program for these attach types nor create the
//! links, so this module does both with the raw `bpf(2)` calls while aya keeps
//! owning the maps:
//! 1. aya's `EbpfLoader` loads the object as usual: it creates every map
//!    (`.rodata` included, with the overridden globals). The programs linked
//!    here are parsed by aya as uprobes, but aya never loads them.
//! 2. [`SessionPrograms::parse`] parses the same object again with `aya-obj`
//!    and relocates its map references against the maps aya created, and its
//!    calls, exactly as aya does internally.
//! 3. [`SessionPrograms::load_for`]: `BPF_PROG_LOAD` with the link's
//!    `expected_attach_type`, and the object's BTF (loaded once with
//!    `BPF_BTF_LOAD`) with the program's function and line information, which
//!    the kernel needs to accept the stack unwinder's `bpf_loop` callback;
//!    [`attach_as`]: `BPF_LINK_CREATE` with the `uprobe_multi` attributes
//!    (path, file offsets, pid).
//!
//! Both return file descriptors; closing the link's detaches the probes, and
//! the program is unloaded once nothing refers to it any more.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Map, MapData};
use aya::Ebpf;
use aya_obj::generated::bpf_insn;

/// The kernel release that brought uprobe session links.
pub const MIN_KERNEL: (u32, u32) = (6, 13);

// Kernel ABI (include/uapi/linux/bpf.h); aya-obj 0.3's bindings stop before these.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_TRACE_UPROBE_SESSION: u32 = 57;
/// `uprobe_multi.flags`: the link's probes are return probes.
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;
/// The kernel's internal "operation not supported" (not in libc).
const ENOTSUPP: i32 = 524;

/// `union bpf_attr` as `BPF_BTF_LOAD` reads it.
#[repr(C)]
#[derive(Default)]
struct BtfLoadAttr {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    _pad: u32,
}

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it (up to `attach_btf_id`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    /// Explicit, so that it is zero (see [`LinkCreateAttr`]).
    attach_btf_id: u32,
}

/// `union bpf_attr` as `BPF_LINK_CREATE` reads it for a uprobe_multi or
/// uprobe session link.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    /// `link_create.flags`: must be 0.
    flags: u32,
    /// `uprobe_multi.path`: `const char *`.
    path: u64,
    /// `uprobe_multi.offsets`: `const u64 *`, file offsets.
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    /// `uprobe_multi.flags`: [`BPF_F_UPROBE_MULTI_RETURN`] for return probes,
    /// else 0 (the flag is not for sessions).
    multi_flags: u32,
    pid: u32,
    /// Explicit, so that it is zero: the kernel rejects (EINVAL) a nonzero
    /// byte past the last field it knows, and padding is not zeroed by Rust.
    _pad: u32,
}

/// What a link runs its program as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LinkKind {
    /// A uprobe session: at the entry, and at the return when the entry returned 0.
    Session,
    /// A `uprobe_multi` entry probe.
    Entry,
    /// A `uprobe_multi` return probe.
    Return,
}

impl LinkKind {
    /// The program's `expected_attach_type` and the link's `attach_type`.
    fn attach_type(self) -> u32 {
        match self {
            LinkKind::Session => BPF_TRACE_UPROBE_SESSION,
            LinkKind::Entry | LinkKind::Return => BPF_TRACE_UPROBE_MULTI,
        }
    }
}

/// Why loading or attaching a session program failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(
        "--sample-rate needs uprobe session links (BPF_TRACE_UPROBE_SESSION), which Linux {}.{} \
         brought; this kernel ({release}) refused them ({source}). Run without --sample-rate \
         (full tracking works on this kernel) or on a newer kernel",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    Unsupported { release: String, source: io::Error },
    #[error("the kernel's verifier rejected BPF program {program}: {source}\n{log}")]
    Rejected {
        program: String,
        source: io::Error,
        log: String,
    },
}

/// `bpf(cmd, attr)`: its return value, or the error.
///
/// `T` must be a properly laid out prefix of `union bpf_attr`, every pointer
/// in which points to memory that lives across the call.
pub(crate) fn bpf_call<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    let size = u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX);
    // SAFETY: as the caller promises (see above).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// [`bpf_call`] for the commands that return a new file descriptor.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = bpf_call(cmd, attr)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("bpf() returned no fd"))?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `MapData` behind a map (every type a uprobe program may use, so
/// that a new map of the object does not stop the links).
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m)
        | Map::BloomFilter(m)
        | Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::RingBuf(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m) => Some(m),
        _ => None,
    }
}

/// The running kernel's release (`uname -r`), and whether it is older than [`MIN_KERNEL`].
fn kernel_release() -> (String, bool) {
    let release = crate::procfs::kernel_release().unwrap_or_else(|| "unknown".to_string());
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let older = match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < MIN_KERNEL,
        _ => false,
    };
    (release, older)
}

/// True for the errors a kernel without uprobe sessions gives.
fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// The object's session programs, relocated against the maps of a loaded [`Ebpf`].
pub(crate) struct SessionPrograms {
    obj: aya_obj::Object,
    /// The object's BTF in the kernel (None: the programs load without it,
    /// and the kernel refuses a `bpf_loop` callback).
    btf: Option<OwnedFd>,
}

impl SessionPrograms {
    /// Parses `bytes` (the object `ebpf` was loaded from) and points its map
    /// references at `ebpf`'s maps.
    pub(crate) fn parse(ebpf: &Ebpf, bytes: &[u8]) -> anyhow::Result<SessionPrograms> {
        let mut obj = aya_obj::Object::parse(bytes).context("parsing the BPF object")?;
        let btf = load_btf(&mut obj);
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let mut fds: HashMap<String, RawFd> = HashMap::new();
        for (name, map) in ebpf.maps() {
            let data = map_data(map)
                .with_context(|| format!("BPF map {name} has a type memprof does not use"))?;
            fds.insert(name.to_string(), data.fd().as_fd().as_raw_fd());
        }
        let maps: Vec<(String, RawFd, aya_obj::Map)> = obj
            .maps
            .iter()
            .filter_map(|(name, map)| fds.get(name).map(|fd| (name.clone(), *fd, map.clone())))
            .collect();
        obj.relocate_maps(
            maps.iter().map(|(name, fd, map)| (name.as_str(), *fd, map)),
            &text_sections,
        )
        .context("relocating the map references of the session programs")?;
        obj.relocate_calls(&text_sections)
            .context("relocating the calls of the session programs")?;
        Ok(SessionPrograms { obj, btf })
    }

    /// Loads program `name` for a uprobe session link.
    pub(crate) fn load(&self, name: &str) -> anyhow::Result<OwnedFd> {
        self.load_for(name, LinkKind::Session)
    }

    /// Loads program `name` for links of `kind`.
    pub(crate) fn load_for(&self, name: &str, kind: LinkKind) -> anyhow::Result<OwnedFd> {
        let program = self
            .obj
            .programs
            .get(name)
            .with_context(|| format!("BPF program {name} missing from the object"))?;
        let function = self
            .obj
            .functions
            .get(&program.function_key())
            .with_context(|| format!("BPF program {name} has no code"))?;
        let insns: &[bpf_insn] = &function.instructions;
        let license: &CString = &self.obj.license;
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let (func_info, line_info) = (
            function.func_info.func_info_bytes(),
            function.line_info.line_info_bytes(),
        );
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_KPROBE,
            insn_cnt: u32::try_from(insns.len()).context("BPF program too long")?,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type: kind.attach_type(),
            ..ProgLoadAttr::default()
        };
        if let Some(btf) = &self.btf {
            attr.prog_btf_fd = u32::try_from(btf.as_raw_fd()).unwrap_or(u32::MAX);
            if function.func_info_rec_size > 0 {
                attr.func_info_rec_size = function.func_info_rec_size as u32;
                attr.func_info = func_info.as_ptr() as u64;
                // The entries of this function, not `num_info`: that counts
                // its section's before they were split by function.
                attr.func_info_cnt = u32::try_from(function.func_info.func_info.len())
                    .context("BPF program has too much function information")?;
            }
            if function.line_info_rec_size > 0 {
                attr.line_info_rec_size = function.line_info_rec_size as u32;
                attr.line_info = line_info.as_ptr() as u64;
                attr.line_info_cnt = u32::try_from(function.line_info.line_info.len())
                    .context("BPF program has too much line information")?;
            }
        }
        let err = match sys_bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => return Ok(fd),
            Err(err) => err,
        };
        // Again with the verifier's log, to tell a rejected program from a
        // kernel that does not know the attach type.
        let mut log = vec![0u8; 1 << 20];
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
        attr.log_buf = log.as_mut_ptr() as u64;
        if let Ok(fd) = sys_bpf(BPF_PROG_LOAD, &mut attr) {
            return Ok(fd);
        }
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let log = String::from_utf8_lossy(&log[..end]).trim().to_string();
        let (release, older) = kernel_release();
        if older || (log.is_empty() && unsupported(&err)) {
            return Err(SessionError::Unsupported {
                release,
                source: err,
            }
            .into());
        }
        Err(SessionError::Rejected {
            program: name.to_string(),
            source: err,
            log,
        }
        .into())
    }
}

/// Loads the BTF of `obj` into the kernel, fixed up as aya does for its own
/// programs. None (logged) when the object has none or the kernel refuses it.
fn load_btf(obj: &mut aya_obj::Object) -> Option<OwnedFd> {
    // Every BTF kind: the session programs need Linux 6.13, which has them all.
    let features = aya_obj::btf::BtfFeatures::new(true, true, true, true, true, true, true, true);
    let bytes = match obj.fixup_and_sanitize_btf(&features) {
        Ok(Some(btf)) => btf.to_bytes(),
        Ok(None) => return None,
        Err(e) => {
            log::warn!("the BPF object's BTF cannot be fixed up ({e}): sampled runs walk stacks by frame pointer");
            return None;
        }
    };
    let mut attr = BtfLoadAttr {
        btf: bytes.as_ptr() as u64,
        btf_size: u32::try_from(bytes.len()).ok()?,
        ..BtfLoadAttr::default()
    };
    match sys_bpf(BPF_BTF_LOAD, &mut attr) {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::warn!("the kernel refused the BPF object's BTF ({e}): sampled runs walk stacks by frame pointer");
            None
        }
    }
}

/// Attaches `program` (loaded by [`SessionPrograms::load`]) as a uprobe
/// session at the file `offsets` of `library`, for the process `pid` only
/// (every process with 0). `cookies`, when not empty, gives each offset the
/// value `bpf_get_attach_cookie` returns there.
pub(crate) fn attach(
    program: &OwnedFd,
    library: &Path,
    offsets: &[u64],
    cookies: &[u64],
    pid: u32,
) -> Result<OwnedFd, io::Error> {
    attach_as(LinkKind::Session, program, library, offsets, cookies, pid)
}

/// Attaches `program` (loaded by [`SessionPrograms::load_for`] with the same
/// `kind`) as a link of `kind`, as [`attach`] does.
pub(crate) fn attach_as(
    kind: LinkKind,
    program: &OwnedFd,
    library: &Path,
    offsets: &[u64],
    cookies: &[u64],
    pid: u32,
) -> Result<OwnedFd, io::Error> {
    if !cookies.is_empty() && cookies.len() != offsets.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let path = CString::new(library.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = LinkCreateAttr {
        prog_fd: u32::try_from(program.as_raw_fd()).unwrap_or(u32::MAX),
        attach_type: kind.attach_type(),
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        // None when every cookie is 0: what a probe without one reads.
        cookies: if cookies.iter().all(|&c| c == 0) {
            0
        } else {
            cookies.as_ptr() as u64
        },
        cnt: u32::try_from(offsets.len()).unwrap_or(u32::MAX),
        multi_flags: if kind == LinkKind::Return {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        },
        pid,
        ..LinkCreateAttr::default()
    };
    sys_bpf(BPF_LINK_CREATE, &mut attr)
}

/// The error of a failed [`attach`], explained.
pub(crate) fn attach_error(err: io::Error, what: &str) -> anyhow::Error {
    let (release, older) = kernel_release();
    if older || matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | ENOTSUPP)) {
        return SessionError::Unsupported {
            release,
            source: err,
        }
        .into();
    }
    let hint = match err.raw_os_error() {
        Some(libc::EINVAL) => {
            ": another tracer may hold uprobes at the same addresses with different settings \
             (see dmesg), or this kernel lacks uprobe session links"
        }
        Some(libc::ESRCH) | Some(libc::ENOENT) => ": did the process exit?",
        _ => "",
    };
    anyhow::Error::new(err).context(format!("creating a uprobe session link on {what}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_have_the_kernel_layout() {
        // Offsets of include/uapi/linux/bpf.h's link_create.uprobe_multi.
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, path), 16);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, cookies), 40);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, cnt), 48);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, pid), 56);
        assert_eq!(std::mem::size_of::<LinkCreateAttr>(), 64);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 112, "no padding");
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, func_info), 80);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, line_info), 96);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, line_info_cnt), 104);
        assert_eq!(std::mem::size_of::<BtfLoadAttr>(), 32);
    }

    #[test]
    fn the_unsupported_error_names_the_kernel_requirement() {
        let err = SessionError::Unsupported {
            release: "6.1.0".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        let text = err.to_string();
        assert!(text.contains("Linux 6.13"), "{text}");
        assert!(text.contains("6.1.0"), "{text}");
        assert!(text.contains("without --sample-rate"), "{text}");
    }
}
