//! Reading a BPF hash map a few thousand entries per system call
//! (`BPF_MAP_LOOKUP_BATCH`), a part at a time, for the walks of maps of a
//! million entries while the programs record: aya's iterator takes two
//! system calls per entry (the next key, then its value), about 15 s for a
//! full `LIVE` on a loaded 2-CPU machine, where batches take about 2 s, and
//! a part of a walk a bounded share of that.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;
use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd` in the kernel's uapi `bpf.h`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries read per call: 4,096 keys and values of `LIVE` are 160 KiB.
const CHUNK: u32 = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Where a walk of a map stands between calls of [`read_some`].
#[derive(Default)]
pub(crate) struct Cursor {
    /// The kernel's position in the map (a bucket index for hash maps);
    /// room for any key, as libbpf gives.
    token: [u64; 8],
    /// Whether a walk is under way (else the next read starts one).
    under_way: bool,
}

impl Cursor {
    /// Whether the next read starts a new walk of the map.
    pub(crate) fn at_start(&self) -> bool {
        !self.under_way
    }
}

/// Calls `each` with the next entries of the hash map `map` (keys `K`,
/// values `V`, one value per entry: not for per-CPU maps), from where
/// `cursor` stands, until at least `budget` entries were read or the walk
/// reached the end of the map. Returns how many were read and whether the
/// walk ended (the cursor then starts over). Entries added or removed
/// meanwhile may be seen or not, as with any walk of a live map. Fails when
/// the kernel has no batch operations (before 5.6): the caller then walks
/// the map entry by entry.
pub(crate) fn read_some<K: Pod, V: Pod>(
    map: &MapData,
    cursor: &mut Cursor,
    budget: usize,
    mut each: impl FnMut(&K, &V),
) -> io::Result<(usize, bool)> {
    let info = map
        .info()
        .map_err(|e| io::Error::other(format!("reading the map's sizes: {e}")))?;
    if (info.key_size() as usize, info.value_size() as usize) != (size_of::<K>(), size_of::<V>()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the map's key or value size differs from the types read",
        ));
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let chunk = CHUNK as usize;
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk);
    keys.resize_with(chunk, MaybeUninit::uninit);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk);
    values.resize_with(chunk, MaybeUninit::uninit);
    let mut token_out = [0u64; 8];
    let mut total = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if cursor.under_way {
                cursor.token.as_ptr() as u64
            } else {
                0
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` batch member of the size
        // passed; the buffers it points to hold CHUNK keys and values of the
        // map's sizes (checked above) and the tokens 64 bytes, more than the
        // kernel writes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let read = (attr.count as usize).min(chunk);
        for i in 0..read {
            // SAFETY: the kernel filled the first `attr.count` entries; K and
            // V are Pod, valid for any bytes.
            let (key, value) = unsafe { (keys[i].assume_init_ref(), values[i].assume_init_ref()) };
            each(key, value);
        }
        total += read;
        match err {
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                cursor.under_way = false;
                return Ok((total, true));
            }
            Some(e) => {
                cursor.under_way = false;
                return Err(e);
            }
            None => {}
        }
        cursor.token = token_out;
        cursor.under_way = true;
        if total >= budget {
            return Ok((total, false));
        }
    }
}
