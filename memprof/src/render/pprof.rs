//! A gzipped pprof profile (`perftools.profiles.Profile`, see
//! <https://github.com/google/pprof/blob/main/proto/profile.proto>), encoded by
//! hand: the message is small and fixed, so a varint writer is all it takes.
//!
//! Two sample types, `inuse_space/bytes` (the default) and
//! `inuse_objects/count`; with the allocation profile, Go's four heap sample
//! types in Go's order (`alloc_objects`, `alloc_space`, `inuse_objects`,
//! `inuse_space`, the last the default), so that `go tool pprof
//! -sample_index=alloc_space` reads it. One sample per stack with its
//! location ids innermost first. Frames inlined into the next frame share that frame's location (a
//! location's lines are innermost first, the last one being the caller the
//! others were inlined into). Each module becomes a mapping spanning the
//! addresses seen in it. A stack the kernel could not walk is one location
//! at address 0 in the function `[stack lost]`.
//!
//! With `--mmap` or `--kernel`, their stacks are samples too, and every sample
//! carries a label `source` (`heap`, `anonymous mmap`, `kernel`) that tells
//! them apart (`pprof -tagfocus source=kernel`).

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::default_title;
use super::folded::STACK_LOST;
use crate::model::{Frame, Report, Stack};

pub(crate) fn render(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    let profile = encode(report);
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&profile)?;
    gz.finish()?;
    Ok(())
}

/// Field numbers of `perftools.profiles.Profile` and its messages.
mod field {
    pub(super) const PROFILE_SAMPLE_TYPE: u32 = 1;
    pub(super) const PROFILE_SAMPLE: u32 = 2;
    pub(super) const PROFILE_MAPPING: u32 = 3;
    pub(super) const PROFILE_LOCATION: u32 = 4;
    pub(super) const PROFILE_FUNCTION: u32 = 5;
    pub(super) const PROFILE_STRING_TABLE: u32 = 6;
    pub(super) const PROFILE_TIME_NANOS: u32 = 9;
    pub(super) const PROFILE_DURATION_NANOS: u32 = 10;
    pub(super) const PROFILE_COMMENT: u32 = 13;
    pub(super) const PROFILE_DEFAULT_SAMPLE_TYPE: u32 = 14;

    pub(super) const VALUE_TYPE_TYPE: u32 = 1;
    pub(super) const VALUE_TYPE_UNIT: u32 = 2;

    pub(super) const SAMPLE_LOCATION_ID: u32 = 1;
    pub(super) const SAMPLE_VALUE: u32 = 2;
    pub(super) const SAMPLE_LABEL: u32 = 3;

    pub(super) const LABEL_KEY: u32 = 1;
    pub(super) const LABEL_STR: u32 = 2;

    pub(super) const MAPPING_ID: u32 = 1;
    pub(super) const MAPPING_MEMORY_START: u32 = 2;
    pub(super) const MAPPING_MEMORY_LIMIT: u32 = 3;
    pub(super) const MAPPING_FILENAME: u32 = 5;
    pub(super) const MAPPING_HAS_FUNCTIONS: u32 = 7;
    pub(super) const MAPPING_HAS_FILENAMES: u32 = 8;
    pub(super) const MAPPING_HAS_LINE_NUMBERS: u32 = 9;
    pub(super) const MAPPING_HAS_INLINE_FRAMES: u32 = 10;

    pub(super) const LOCATION_ID: u32 = 1;
    pub(super) const LOCATION_MAPPING_ID: u32 = 2;
    pub(super) const LOCATION_ADDRESS: u32 = 3;
    pub(super) const LOCATION_LINE: u32 = 4;

    pub(super) const LINE_FUNCTION_ID: u32 = 1;
    pub(super) const LINE_LINE: u32 = 2;

    pub(super) const FUNCTION_ID: u32 = 1;
    pub(super) const FUNCTION_NAME: u32 = 2;
    pub(super) const FUNCTION_SYSTEM_NAME: u32 = 3;
    pub(super) const FUNCTION_FILENAME: u32 = 4;
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const LEN: u8 = 2;

/// Appends protobuf fields to a byte buffer.
#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire_type));
    }

    /// A `uint64` field; zero is the default and is not written.
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    /// An `int64` field: negative values are written in ten bytes, as protobuf does.
    fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    fn bool(&mut self, field: u32, v: bool) {
        self.uint(field, u64::from(v));
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, LEN);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A packed repeated varint field (omitted when empty).
    fn packed(&mut self, field: u32, values: impl IntoIterator<Item = u64>) {
        let mut inner = Encoder::default();
        for v in values {
            inner.varint(v);
        }
        if !inner.0.is_empty() {
            self.bytes(field, &inner.0);
        }
    }

    /// An embedded message, written by `f`.
    fn message(&mut self, field: u32, f: impl FnOnce(&mut Encoder)) {
        let mut inner = Encoder::default();
        f(&mut inner);
        self.bytes(field, &inner.0);
    }
}

/// `Function`: string table indices of its name and file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Function {
    name: i64,
    filename: i64,
}

/// `Location`: one address and its lines (function id, line), innermost first.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Location {
    mapping_id: u64,
    address: u64,
    lines: Vec<(u64, i64)>,
}

/// `Mapping`: one module and what is known of its frames.
struct Mapping {
    filename: i64,
    start: u64,
    limit: u64,
    has_functions: bool,
    has_filenames: bool,
    has_line_numbers: bool,
    has_inline_frames: bool,
}

/// The tables of a profile, each entry's id being its index plus one (0 is "none").
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_index: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<Function, u64>,
    locations: Vec<Location>,
    location_ids: HashMap<Location, u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<String, u64>,
}

impl Tables {
    fn new() -> Self {
        let mut t = Tables::default();
        t.string(""); // index 0 must be the empty string
        t
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_index.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_index.insert(s.to_string(), i);
        i
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let f = Function {
            name: self.string(name),
            filename: file.map_or(0, |file| self.string(file)),
        };
        if let Some(&id) = self.function_ids.get(&f) {
            return id;
        }
        self.functions.push(f);
        let id = self.functions.len() as u64;
        self.function_ids.insert(f, id);
        id
    }

    fn location(&mut self, loc: Location) -> u64 {
        if let Some(&id) = self.location_ids.get(&loc) {
            return id;
        }
        self.locations.push(loc.clone());
        let id = self.locations.len() as u64;
        self.location_ids.insert(loc, id);
        id
    }

    /// The mapping of `module`, widened to cover `frame`.
    fn mapping(&mut self, module: &str, frame: &Frame) -> u64 {
        let id = match self.mapping_ids.get(module) {
            Some(&id) => id,
            None => {
                let filename = self.string(module);
                self.mappings.push(Mapping {
                    filename,
                    start: frame.addr,
                    limit: frame.addr.saturating_add(1),
                    has_functions: true,
                    has_filenames: true,
                    has_line_numbers: true,
                    has_inline_frames: false,
                });
                let id = self.mappings.len() as u64;
                self.mapping_ids.insert(module.to_string(), id);
                id
            }
        };
        if let Some(m) = self.mappings.get_mut(id as usize - 1) {
            m.start = m.start.min(frame.addr);
            m.limit = m.limit.max(frame.addr.saturating_add(1));
            m.has_functions &= frame.function.is_some();
            m.has_filenames &= frame.file.is_some();
            m.has_line_numbers &= frame.line.is_some();
            m.has_inline_frames |= frame.inlined;
        }
        id
    }

    /// The location of a group of frames at one address: inlined frames, then
    /// the frame they were inlined into.
    fn frames_location(&mut self, group: &[&Frame]) -> u64 {
        let mut mapping_id = 0;
        let mut lines = Vec::with_capacity(group.len());
        for frame in group {
            if let Some(module) = &frame.module {
                mapping_id = self.mapping(module, frame);
            }
            if let Some(name) = &frame.function {
                let function_id = self.function(name, frame.file.as_deref());
                lines.push((function_id, frame.line.map_or(0, i64::from)));
            }
        }
        // The frame the others were inlined into carries the address.
        let address = group.last().map_or(0, |f| f.addr);
        self.location(Location {
            mapping_id,
            address,
            lines,
        })
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn secs_to_nanos(secs: f64) -> i64 {
    if !(secs.is_finite() && secs > 0.0) {
        return 0;
    }
    // Whole seconds and the fraction apart: `secs * 1e9` would round away the
    // nanoseconds of a Unix time. `as` saturates.
    let whole = (secs.trunc() as i64).saturating_mul(1_000_000_000);
    whole.saturating_add((secs.fract() * 1e9).round() as i64)
}

/// The uncompressed `Profile` message for `report`.
fn encode(report: &Report) -> Vec<u8> {
    let mut t = Tables::new();
    let inuse_space = (t.string("inuse_space"), t.string("bytes"));
    let inuse_objects = (t.string("inuse_objects"), t.string("count"));

    // With optional sources (--mmap, --kernel), every sample has a `source`
    // label: `heap`, `anonymous mmap` or `kernel` (pprof -tagfocus and
    // -tagignore select them; the sample types stay inuse_space/inuse_objects
    // so that tools that know heap profiles read it as one).
    let extra = super::extra_sources(report);
    let source_key = (!extra.is_empty()).then(|| t.string("source"));
    let heap = if extra.is_empty() {
        0
    } else {
        t.string("heap")
    };
    let mut groups = vec![(heap, report.stacks.as_slice())];
    for e in &extra {
        let name = e.root.trim_start_matches('[').trim_end_matches(']');
        groups.push((t.string(name), e.source.stacks.as_slice()));
    }
    // With the allocation profile: Go's four heap sample types, in Go's
    // order, each outstanding stack matched with its allocations.
    let alloc_types = report.allocations.as_ref().map(|_| {
        (
            (t.string("alloc_objects"), t.string("count")),
            (t.string("alloc_space"), t.string("bytes")),
        )
    });
    let mut rows: Vec<(i64, std::borrow::Cow<'_, Stack>, Vec<i64>)> = groups
        .into_iter()
        .flat_map(|(label, stacks)| stacks.iter().map(move |s| (label, s)))
        .map(|(label, s)| {
            let inuse = [saturating_i64(s.bytes), saturating_i64(s.count)];
            let values = match alloc_types {
                Some(_) => vec![0, 0, inuse[1], inuse[0]],
                None => inuse.to_vec(),
            };
            (label, std::borrow::Cow::Borrowed(s), values)
        })
        .collect();
    if let Some(allocations) = &report.allocations {
        let key = |pid: Option<u32>, frames: &[Frame]| -> (Option<u32>, Vec<u64>) {
            (pid, frames.iter().map(|f| f.addr).collect())
        };
        let mut index: HashMap<(Option<u32>, Vec<u64>), usize> = HashMap::new();
        for (i, (label, s, _)) in rows.iter().enumerate() {
            if *label == heap {
                index.entry(key(s.pid, &s.frames)).or_insert(i);
            }
        }
        for a in &allocations.stacks {
            let (count, bytes) = (
                saturating_i64(a.totals.count),
                saturating_i64(a.totals.bytes),
            );
            match index.get(&key(a.pid, &a.frames)) {
                Some(&i) => {
                    rows[i].2[0] = rows[i].2[0].saturating_add(count);
                    rows[i].2[1] = rows[i].2[1].saturating_add(bytes);
                }
                None => {
                    let stack = Stack {
                        frames: a.frames.clone(),
                        pid: a.pid,
                        ..Stack::default()
                    };
                    rows.push((
                        heap,
                        std::borrow::Cow::Owned(stack),
                        vec![count, bytes, 0, 0],
                    ));
                }
            }
        }
    }
    let mut samples: Vec<(Vec<u64>, Vec<i64>, i64)> = Vec::with_capacity(rows.len());
    for (label, stack, values) in &rows {
        let (label, stack) = (*label, stack.as_ref());
        let mut location_ids = Vec::new();
        // Leaf first: the process, in a run over many, is the root.
        let process = report.process_label(stack).map(|label| {
            let function_id = t.function(&label, None);
            t.location(Location {
                mapping_id: 0,
                address: 0,
                lines: vec![(function_id, 0)],
            })
        });
        if stack.frames.is_empty() {
            let function_id = t.function(STACK_LOST, None);
            location_ids.push(t.location(Location {
                mapping_id: 0,
                address: 0,
                lines: vec![(function_id, 0)],
            }));
        }
        let mut group: Vec<&Frame> = Vec::new();
        for frame in &stack.frames {
            group.push(frame);
            if !frame.inlined {
                location_ids.push(t.frames_location(&group));
                group.clear();
            }
        }
        if !group.is_empty() {
            // Inlined frames with nothing after them: keep them anyway.
            location_ids.push(t.frames_location(&group));
        }
        location_ids.extend(process);
        samples.push((location_ids, values.clone(), label));
    }

    let target = &report.target;
    let mut comments = vec![default_title(report)];
    if !target.cmdline.is_empty() {
        comments.push(format!("command: {}", target.cmdline));
    }
    if !target.allocator.is_empty() {
        comments.push(format!("allocator: {}", target.allocator));
    }
    let host = &report.host;
    if !host.is_empty() {
        comments.push(format!(
            "host: {} (boot id {}, Linux {})",
            host.hostname, host.boot_id, host.kernel
        ));
    }
    if let Some(started) = target.started_unix_secs {
        comments.push(format!(
            "process: pid {} started at {started:.3} s after the Unix epoch",
            target.pid
        ));
    }
    let released = report.released;
    if target.execs > 0 {
        comments.push(format!(
            "the process called exec {} times; {} allocations ({} bytes) of the programs it \
             replaced are left out",
            target.execs, released.at_exec.count, released.at_exec.bytes
        ));
    }
    if let Some(exited) = target.exited_after_secs {
        comments.push(format!(
            "the process exited {exited:.3} s after memprof attached; {} allocations ({} bytes) \
             it held then are left out",
            released.at_exit.count, released.at_exit.bytes
        ));
    }
    comments.push("only allocations made while memprof was attached are seen".to_string());
    if let Some(statement) = super::sampling_statement(report) {
        comments.push(statement);
    }
    if report.stats.lost_data() {
        comments.push(
            "WARNING: totals are lower bounds: memprof's maps were full and some allocations \
             were not counted"
                .to_string(),
        );
    }
    let comment_ids: Vec<u64> = comments.iter().map(|c| t.string(c) as u64).collect();

    let mut p = Encoder::default();
    let sample_types = match alloc_types {
        Some((alloc_objects, alloc_space)) => {
            vec![alloc_objects, alloc_space, inuse_objects, inuse_space]
        }
        None => vec![inuse_space, inuse_objects],
    };
    for (ty, unit) in sample_types {
        p.message(field::PROFILE_SAMPLE_TYPE, |m| {
            m.int(field::VALUE_TYPE_TYPE, ty);
            m.int(field::VALUE_TYPE_UNIT, unit);
        });
    }
    for (location_ids, values, label) in &samples {
        p.message(field::PROFILE_SAMPLE, |m| {
            m.packed(field::SAMPLE_LOCATION_ID, location_ids.iter().copied());
            m.packed(field::SAMPLE_VALUE, values.iter().map(|&v| v as u64));
            if let Some(key) = source_key {
                m.message(field::SAMPLE_LABEL, |l| {
                    l.int(field::LABEL_KEY, key);
                    l.int(field::LABEL_STR, *label);
                });
            }
        });
    }
    for (i, mapping) in t.mappings.iter().enumerate() {
        p.message(field::PROFILE_MAPPING, |m| {
            m.uint(field::MAPPING_ID, i as u64 + 1);
            m.uint(field::MAPPING_MEMORY_START, mapping.start);
            m.uint(field::MAPPING_MEMORY_LIMIT, mapping.limit);
            m.int(field::MAPPING_FILENAME, mapping.filename);
            m.bool(field::MAPPING_HAS_FUNCTIONS, mapping.has_functions);
            m.bool(field::MAPPING_HAS_FILENAMES, mapping.has_filenames);
            m.bool(field::MAPPING_HAS_LINE_NUMBERS, mapping.has_line_numbers);
            m.bool(field::MAPPING_HAS_INLINE_FRAMES, mapping.has_inline_frames);
        });
    }
    for (i, location) in t.locations.iter().enumerate() {
        p.message(field::PROFILE_LOCATION, |m| {
            m.uint(field::LOCATION_ID, i as u64 + 1);
            m.uint(field::LOCATION_MAPPING_ID, location.mapping_id);
            m.uint(field::LOCATION_ADDRESS, location.address);
            for &(function_id, line) in &location.lines {
                m.message(field::LOCATION_LINE, |l| {
                    l.uint(field::LINE_FUNCTION_ID, function_id);
                    l.int(field::LINE_LINE, line);
                });
            }
        });
    }
    for (i, function) in t.functions.iter().enumerate() {
        p.message(field::PROFILE_FUNCTION, |m| {
            m.uint(field::FUNCTION_ID, i as u64 + 1);
            m.int(field::FUNCTION_NAME, function.name);
            m.int(field::FUNCTION_SYSTEM_NAME, function.name);
            m.int(field::FUNCTION_FILENAME, function.filename);
        });
    }
    for s in &t.strings {
        p.bytes(field::PROFILE_STRING_TABLE, s.as_bytes());
    }
    p.int(
        field::PROFILE_TIME_NANOS,
        secs_to_nanos(report.start_unix_secs),
    );
    p.int(
        field::PROFILE_DURATION_NANOS,
        secs_to_nanos(report.duration_secs),
    );
    p.packed(field::PROFILE_COMMENT, comment_ids);
    p.int(field::PROFILE_DEFAULT_SAMPLE_TYPE, inuse_space.0);
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut e = Encoder::default();
        e.varint(0);
        e.varint(1);
        e.varint(300);
        e.varint(u64::MAX);
        assert_eq!(
            e.0,
            [0, 1, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn fields() {
        let mut e = Encoder::default();
        e.uint(1, 0); // default: omitted
        e.uint(1, 150);
        e.int(2, -1);
        e.bytes(6, b"ab");
        e.packed(1, [3, 270]);
        e.packed(2, []); // empty: omitted
        assert_eq!(
            e.0,
            [
                0x08, 0x96, 0x01, // 1: 150
                0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // 2: -1
                0x32, 0x02, b'a', b'b', // 6: "ab"
                0x0a, 0x03, 0x03, 0x8e, 0x02, // 1: packed [3, 270]
            ]
        );
    }
}
