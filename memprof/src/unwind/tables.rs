//! Puts unwind tables into the kernel and keeps each recorded process's
//! table of executable mappings current: a thread that rereads the
//! processes' memory maps a few times a second and compiles each object it
//! has not met yet (libraries that `dlopen` brings, a new program after
//! `exec`). An object is compiled once per run, whatever the number of
//! processes that map it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, Queue};
use memprof_common::unwind::{
    mapping, ExecMapping, PageChunk, ProcSlot, RowChunk, UnwindRow, MAX_MAPPINGS, PAGES_PER_CHUNK,
    ROWS_PER_CHUNK,
};

use super::compile;

/// How often the processes' memory maps are reread.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// How often the processes that called exec are taken from `UNWIND_EXECS`,
/// and those that did lately have their maps reread: their loader maps
/// their libraries in the first milliseconds.
const EXECS_EVERY: Duration = Duration::from_millis(5);

/// How long a process that called exec has its maps reread every [`EXECS_EVERY`].
const YOUNG_FOR: Duration = Duration::from_millis(300);

/// What the tables cost, for the report and the bench.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableStats {
    /// Objects with a table.
    pub objects: u64,
    /// Objects whose call frame information could not be compiled (walked by frame pointer).
    pub failed: u64,
    /// Rows in the kernel.
    pub rows: u64,
    /// Rows with a rule the BPF unwinder cannot follow.
    pub unsupported_rows: u64,
    /// Kernel memory the rows and page indexes take, bytes (whole chunks).
    pub kernel_bytes: u64,
    /// Objects built with frame pointers.
    pub fp_objects: u64,
    /// Objects without a page index (no room left): their rows are searched whole.
    pub no_page_index: u64,
    /// Time spent compiling and loading, microseconds.
    pub build_us: u64,
    /// Processes whose mappings did not all fit a table.
    pub mappings_dropped: u64,
    /// Processes that got no table: every slot was taken (their stacks are
    /// walked by frame pointer, counted as `unwind_no_table`).
    pub procs_without_table: u64,
}

/// Where an object's rows are, and how its file offsets map to its addresses.
#[derive(Debug, Clone)]
struct Object {
    /// `(start, len)` in `UNWIND_ROWS` rows; None: no table (frame pointers).
    rows: Option<(u32, u32)>,
    /// `(pages_start, page0, pages_len)` of its page index (len 0: none).
    pages: (u32, u32, u32),
    /// Bits of [`mapping`].
    flags: u32,
    /// Loadable segments.
    segments: Vec<Segment>,
}

impl Object {
    /// An object whose frames are walked by frame pointer.
    fn without_table() -> Object {
        Object {
            rows: None,
            pages: (0, 0, 0),
            flags: 0,
            segments: Vec::new(),
        }
    }
}

/// What identifies an executable mapping: start, end, file offset, (device, inode).
type MappingKey = (u64, u64, u64, (u64, u64));

/// The maps and what is in them.
struct Inner {
    rows: Array<MapData, RowChunk>,
    pages: Array<MapData, PageChunk>,
    procs: BpfHashMap<MapData, u32, ProcSlot>,
    mappings: Array<MapData, ExecMapping>,
    /// Slots of `mappings` no process uses.
    free_slots: Vec<u32>,
    /// Each process's slot.
    slots: HashMap<u32, u32>,
    /// The last table's [`ProcSlot::generation`].
    generation: u32,
    /// Next free chunk of `rows`.
    next_chunk: u32,
    max_chunks: u32,
    /// Next free chunk of `pages`, and their number.
    next_page_chunk: u32,
    max_page_chunks: u32,
    /// By (device, inode).
    objects: HashMap<(u64, u64), Object>,
    /// Each process's executable mappings as last written.
    written: HashMap<u32, Vec<MappingKey>>,
    /// Processes counted in `procs_without_table`.
    refused: std::collections::HashSet<u32>,
    stats: TableStats,
}

/// The unwind tables of a run, and the thread that keeps them current.
pub(crate) struct UnwindTables {
    inner: Arc<Mutex<Inner>>,
    pids: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UnwindTables {
    /// Takes over the maps `UNWIND_ROWS`, `UNWIND_PAGES`, `UNWIND_PROCS`,
    /// `UNWIND_MAPPINGS` and `UNWIND_EXECS` and starts the thread that keeps
    /// them current.
    pub(crate) fn new(
        rows: Map,
        pages: Map,
        procs: Map,
        mappings: Map,
        execs: Map,
    ) -> anyhow::Result<UnwindTables> {
        let mut execs = Queue::<MapData, u32>::try_from(execs).context("UNWIND_EXECS map")?;
        let rows = Array::<MapData, RowChunk>::try_from(rows).context("UNWIND_ROWS map")?;
        let pages = Array::<MapData, PageChunk>::try_from(pages).context("UNWIND_PAGES map")?;
        let max_page_chunks = pages.len();
        let procs =
            BpfHashMap::<MapData, u32, ProcSlot>::try_from(procs).context("UNWIND_PROCS map")?;
        let mappings =
            Array::<MapData, ExecMapping>::try_from(mappings).context("UNWIND_MAPPINGS map")?;
        let max_chunks = rows.len();
        let slots = mappings.len() / MAX_MAPPINGS as u32;
        let inner = Arc::new(Mutex::new(Inner {
            rows,
            pages,
            procs,
            mappings,
            next_page_chunk: 0,
            max_page_chunks,
            free_slots: (0..slots).rev().collect(),
            slots: HashMap::new(),
            generation: 0,
            next_chunk: 0,
            max_chunks,
            objects: HashMap::new(),
            written: HashMap::new(),
            refused: Default::default(),
            stats: TableStats::default(),
        }));
        let pids: Arc<Mutex<Vec<u32>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inner, pids, stop) = (inner.clone(), pids.clone(), stop.clone());
            let inner_for_gone = inner.clone();
            std::thread::Builder::new()
                .name("memprof-unwind".into())
                .spawn(move || {
                    // Processes that called exec lately, and since when.
                    let mut young: HashMap<u32, Instant> = HashMap::new();
                    let mut last_all = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EXECS_EVERY);
                        while let Ok(pid) = execs.pop(0) {
                            young.insert(pid, Instant::now());
                        }
                        young.retain(|_, since| since.elapsed() < YOUNG_FOR);
                        let list = if last_all.elapsed() >= REFRESH_EVERY {
                            last_all = Instant::now();
                            let Ok(mut pids) = pids.lock() else { return };
                            // A process met first at its exec is followed from then on.
                            for &pid in young.keys() {
                                if !pids.contains(&pid) {
                                    pids.push(pid);
                                }
                            }
                            pids.clone()
                        } else if young.is_empty() {
                            continue;
                        } else {
                            young.keys().copied().collect()
                        };
                        let Ok(mut inner) = inner.lock() else { return };
                        let mut gone = Vec::new();
                        for pid in list {
                            if inner.update(pid).is_err() && !alive(pid) {
                                gone.push(pid);
                            }
                        }
                        drop(inner);
                        // A process that is gone gives its slot back (a
                        // pid reused meanwhile is added again when it is
                        // met).
                        if !gone.is_empty() {
                            young.retain(|pid, _| !gone.contains(pid));
                            if let Ok(mut inner) = inner_for_gone.lock() {
                                for &pid in &gone {
                                    inner.forget(pid);
                                }
                            }
                            if let Ok(mut pids) = pids.lock() {
                                pids.retain(|p| !gone.contains(p));
                            }
                        }
                    }
                })
                .context("starting the thread that keeps unwind tables current")?
        };
        Ok(UnwindTables {
            inner,
            pids,
            stop,
            thread: Some(thread),
        })
    }

    /// Builds the tables of `pid` now and keeps them current from then on.
    pub(crate) fn add_process(&self, pid: u32) -> anyhow::Result<()> {
        self.adder()(pid)
    }

    /// What [`UnwindTables::add_process`] does, for another thread (the
    /// tracer of a launched command, at its holds).
    pub(crate) fn adder(&self) -> impl Fn(u32) -> anyhow::Result<()> + Send + 'static {
        let (inner, pids) = (self.inner.clone(), self.pids.clone());
        move |pid| {
            inner
                .lock()
                .map_err(|_| anyhow::anyhow!("the unwind table thread panicked"))?
                .update(pid)?;
            if let Ok(mut pids) = pids.lock() {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
            Ok(())
        }
    }

    /// What the tables cost so far.
    pub(crate) fn stats(&self) -> TableStats {
        self.inner.lock().map(|i| i.stats).unwrap_or_default()
    }
}

impl Drop for UnwindTables {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// True while process `pid` exists (a zombie included).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// True when process `pid` still has its memory (not gone, not a zombie).
fn has_mappings(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/map_files"))
        .is_ok_and(|mut entries| entries.next().is_some())
}

/// One executable mapping of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapsLine {
    start: u64,
    end: u64,
    offset: u64,
    dev: u64,
    inode: u64,
    path: String,
}

/// The executable file mappings of `pid`, sorted by start.
fn exec_mappings(pid: u32) -> anyhow::Result<Vec<MapsLine>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps (is process {pid} gone?)"))?;
    Ok(text.lines().filter_map(parse_maps_line).collect())
}

fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut fields = line.split_ascii_whitespace();
    let (range, perms, offset, dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        path: fields.collect::<Vec<_>>().join(" "),
    })
}

impl Inner {
    /// Writes `pid`'s mapping table if its executable mappings changed,
    /// compiling the objects met for the first time.
    fn update(&mut self, pid: u32) -> anyhow::Result<()> {
        let lines = exec_mappings(pid)?;
        let key: Vec<_> = lines
            .iter()
            .map(|l| (l.start, l.end, l.offset, (l.dev, l.inode)))
            .collect();
        if self.written.get(&pid) == Some(&key) {
            return Ok(());
        }
        let mut table = Vec::new();
        for line in &lines {
            if table.len() == MAX_MAPPINGS {
                self.stats.mappings_dropped += 1;
                log::warn!("process {pid} has more than {MAX_MAPPINGS} executable mappings: frames in the others end its stacks");
                break;
            }
            let mut entry = ExecMapping {
                start: line.start,
                end: line.end,
                ..ExecMapping::default()
            };
            if line.inode != 0 {
                let object = self.object(pid, line);
                if let (Some((start, len)), Some(bias)) =
                    (object.rows, bias_of(&object.segments, line))
                {
                    entry.bias = bias;
                    entry.rows_start = start;
                    entry.rows_len = len;
                    (entry.pages_start, entry.page0, entry.pages_len) = object.pages;
                    entry.flags = object.flags;
                }
            }
            table.push(entry);
        }
        // A fresh slot, then the pointer to it: a walk sees the old table
        // or the new one, never half of each.
        let Some(slot) = self.free_slots.pop() else {
            if self.refused.insert(pid) {
                self.stats.procs_without_table += 1;
                log::debug!(
                    "no room for the mapping table of process {pid}: its stacks are walked by \
                     frame pointer"
                );
            }
            return Ok(());
        };
        let base = slot * MAX_MAPPINGS as u32;
        for (i, entry) in table.iter().enumerate() {
            if let Err(e) = self.mappings.set(base + i as u32, *entry, 0) {
                self.free_slots.push(slot);
                return Err(e)
                    .with_context(|| format!("writing the mapping table of process {pid}"));
            }
        }
        // 0 is never a table's: a walk's empty cache entries match none.
        self.generation = self.generation.wrapping_add(1).max(1);
        let header = ProcSlot {
            slot,
            len: table.len() as u32,
            generation: self.generation,
            _pad: 0,
        };
        if let Err(e) = self.procs.insert(pid, header, 0) {
            self.free_slots.push(slot);
            return Err(e).with_context(|| format!("writing the mapping table of process {pid}"));
        }
        if let Some(old) = self.slots.insert(pid, slot) {
            self.free_slots.push(old);
        }
        self.written.insert(pid, key);
        Ok(())
    }

    /// Lets the table of `pid`, which is gone, go.
    fn forget(&mut self, pid: u32) {
        let _ = self.procs.remove(&pid);
        if let Some(slot) = self.slots.remove(&pid) {
            self.free_slots.push(slot);
        }
        self.written.remove(&pid);
        self.refused.remove(&pid);
    }

    /// The object of `line`, compiled and loaded the first time it is met.
    fn object(&mut self, pid: u32, line: &MapsLine) -> Object {
        let key = (line.dev, line.inode);
        if let Some(object) = self.objects.get(&key) {
            return object.clone();
        }
        let began = Instant::now();
        // The file that is mapped, even if deleted or in another mount namespace.
        let path = PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            line.start, line.end
        ));
        let object = match std::fs::read(&path)
            .or_else(|_| std::fs::read(format!("/proc/{pid}/root{}", line.path)))
        {
            Ok(data) => self.load(&data, &line.path),
            Err(e) if !has_mappings(pid) => {
                // The process left before its objects could be read: not
                // the object's fault, so the next process to map it has it
                // read again.
                log::debug!("{}: {e}: process {pid} is gone", line.path);
                return Object::without_table();
            }
            Err(e) => {
                log::warn!("{}: {e}: its frames are walked by frame pointer", line.path);
                self.stats.failed += 1;
                Object::without_table()
            }
        };
        self.stats.build_us += began.elapsed().as_micros() as u64;
        self.objects.insert(key, object.clone());
        object
    }

    /// Compiles `data` and writes its rows.
    fn load(&mut self, data: &[u8], name: &str) -> Object {
        let segments = segments(data);
        let (mut pages, mut flags) = ((0, 0, 0), 0);
        let rows = match compile::compile(data) {
            Ok(compiled) => match self.write_rows(&compiled.rows) {
                Ok(place) => {
                    if compiled.frame_pointers() {
                        flags |= mapping::FRAME_POINTERS;
                        self.stats.fp_objects += 1;
                    }
                    pages = match compile::page_index(&compiled.rows)
                        .map(|(page0, index)| (page0, self.write_pages(&index)))
                    {
                        Some((page0, Ok((start, len)))) => (start, page0, len),
                        Some((_, Err(e))) => {
                            log::debug!("{name}: {e:#}: its rows are searched whole");
                            self.stats.no_page_index += 1;
                            (0, 0, 0)
                        }
                        None => {
                            self.stats.no_page_index += 1;
                            (0, 0, 0)
                        }
                    };
                    self.stats.objects += 1;
                    self.stats.rows += compiled.rows.len() as u64;
                    self.stats.unsupported_rows += compiled.unsupported;
                    log::debug!(
                        "{name}: {} FDEs ({} with a frame pointer), {} rows ({} unsupported, \
                         {} PLT), {} index pages",
                        compiled.fdes,
                        compiled.fp_fdes,
                        compiled.rows.len(),
                        compiled.unsupported,
                        compiled.plt,
                        pages.2
                    );
                    Some(place)
                }
                Err(e) => {
                    log::warn!("{name}: {e:#}: its frames are walked by frame pointer");
                    self.stats.failed += 1;
                    None
                }
            },
            Err(e) => {
                log::info!("{name}: {e:#}: its frames are walked by frame pointer");
                self.stats.failed += 1;
                None
            }
        };
        Object {
            rows,
            pages,
            flags,
            segments,
        }
    }

    /// Writes a page index from the next free chunk of `UNWIND_PAGES`;
    /// returns (first entry, count).
    fn write_pages(&mut self, index: &[u32]) -> anyhow::Result<(u32, u32)> {
        let chunks = index.len().div_ceil(PAGES_PER_CHUNK) as u32;
        if index.is_empty() || self.next_page_chunk + chunks > self.max_page_chunks {
            anyhow::bail!(
                "no room for {} page index entries ({} of {} used)",
                index.len(),
                u64::from(self.next_page_chunk) * PAGES_PER_CHUNK as u64,
                u64::from(self.max_page_chunks) * PAGES_PER_CHUNK as u64
            );
        }
        let first = self.next_page_chunk;
        for (i, part) in index.chunks(PAGES_PER_CHUNK).enumerate() {
            let mut chunk = PageChunk {
                pages: [0; PAGES_PER_CHUNK],
            };
            chunk.pages[..part.len()].copy_from_slice(part);
            self.pages
                .set(first + i as u32, chunk, 0)
                .context("writing an unwind page index")?;
        }
        self.next_page_chunk += chunks;
        self.stats.kernel_bytes += u64::from(chunks) * std::mem::size_of::<PageChunk>() as u64;
        Ok((first * PAGES_PER_CHUNK as u32, index.len() as u32))
    }

    /// Writes `rows` from the next free chunk; returns (first row, count).
    fn write_rows(&mut self, rows: &[UnwindRow]) -> anyhow::Result<(u32, u32)> {
        let chunks = rows.len().div_ceil(ROWS_PER_CHUNK) as u32;
        if rows.is_empty() || self.next_chunk + chunks > self.max_chunks {
            anyhow::bail!(
                "no room for {} unwind rows ({} of {} used): raise --unwind-rows",
                rows.len(),
                u64::from(self.next_chunk) * ROWS_PER_CHUNK as u64,
                u64::from(self.max_chunks) * ROWS_PER_CHUNK as u64
            );
        }
        let first = self.next_chunk;
        for (i, part) in rows.chunks(ROWS_PER_CHUNK).enumerate() {
            let mut chunk = RowChunk {
                rows: [UnwindRow::default(); ROWS_PER_CHUNK],
            };
            chunk.rows[..part.len()].copy_from_slice(part);
            self.rows
                .set(first + i as u32, chunk, 0)
                .context("writing unwind rows")?;
        }
        self.next_chunk += chunks;
        self.stats.kernel_bytes += u64::from(chunks) * std::mem::size_of::<RowChunk>() as u64;
        Ok((first * ROWS_PER_CHUNK as u32, rows.len() as u32))
    }
}

/// A loadable segment of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    file_size: u64,
    address: u64,
    executable: bool,
}

/// The loadable segments of the ELF object `data`.
fn segments(data: &[u8]) -> Vec<Segment> {
    use object::{Object as _, ObjectSegment as _, SegmentFlags};
    let Ok(file) = object::File::parse(data) else {
        return Vec::new();
    };
    file.segments()
        .map(|s| {
            let (offset, file_size) = s.file_range();
            Segment {
                offset,
                file_size,
                address: s.address(),
                executable: matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & 1 != 0),
            }
        })
        .collect()
}

/// The load bias of the mapping `line` of an object with `segments`:
/// runtime address - object address. The segment is the executable one that
/// begins in the mapped range: a linker that packs segments (lld) starts the
/// code in the middle of a page whose start belongs to the segment before.
fn bias_of(segments: &[Segment], line: &MapsLine) -> Option<u64> {
    let len = line.end - line.start;
    let in_range = |s: &&Segment| line.offset <= s.offset && s.offset < line.offset + len;
    let segment = segments
        .iter()
        .filter(|s| s.executable)
        .find(in_range)
        .or_else(|| segments.iter().find(in_range))?;
    // runtime(address) = line.start + (segment.offset - line.offset)
    Some(
        line.start
            .wrapping_add(segment.offset - line.offset)
            .wrapping_sub(segment.address),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_comes_from_the_executable_segment_of_a_packed_object() {
        // lld's layout: the code begins mid-page, in a page that starts in
        // the read-only segment.
        let segments = [
            Segment {
                offset: 0,
                file_size: 0x1a360,
                address: 0,
                executable: false,
            },
            Segment {
                offset: 0x1a360,
                file_size: 0x4a460,
                address: 0x1b360,
                executable: true,
            },
        ];
        let line = MapsLine {
            start: 0x5600_0001_b000,
            end: 0x5600_0006_5000,
            offset: 0x1a000,
            dev: 0,
            inode: 1,
            path: String::new(),
        };
        let bias = bias_of(&segments, &line).unwrap();
        // The segment's first byte, 0x1b360 in the object, is mapped at
        // start + 0x360.
        assert_eq!(0x1b360 + bias, 0x5600_0001_b360);
    }

    #[test]
    fn maps_lines_keep_executable_mappings_only() {
        let text = "55d0c8a00000-55d0c8a22000 r--p 00000000 fd:01 1234 /usr/bin/x\n\
                    55d0c8a22000-55d0c8b00000 r-xp 00022000 fd:01 1234 /usr/bin/x\n\
                    7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]\n";
        let lines: Vec<_> = text.lines().filter_map(parse_maps_line).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].start, 0x55d0_c8a2_2000);
        assert_eq!(lines[0].offset, 0x22000);
        assert_eq!(lines[0].dev, (0xfd << 32) | 1);
        assert_eq!(lines[0].inode, 1234);
        assert_eq!(lines[0].path, "/usr/bin/x");
        assert_eq!(lines[1].inode, 0);
    }
}
