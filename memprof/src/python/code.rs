//! Code objects read from the target's memory (`/proc/PID/mem`): the
//! function's name, file, first line and line table, and the line of an
//! instruction, decoded as CPython does for each version's table.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;

use super::layout::{Instr, Layout, LineTable};

/// Longest string read (function and file names).
const MAX_STRING: u64 = 4096;
/// Longest line table read.
const MAX_TABLE: u64 = 1 << 20;

/// What memprof keeps of one code object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Code {
    /// `co_qualname` (3.11+) or `co_name`.
    pub name: String,
    pub filename: String,
    pub firstlineno: i64,
    pub table: Vec<u8>,
    /// Where the instructions start (3.11+).
    pub code_start: u64,
    /// Instructions before this one (in code units) belong to a frame not
    /// started yet (3.11+).
    pub first_traceable: u64,
}

/// The location of one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub name: String,
    pub filename: String,
    pub line: Option<u32>,
}

/// Reads code objects of one process and keeps them, so that a code object
/// freed after it was read keeps its name.
pub(crate) struct Codes {
    mem: Option<File>,
    layout: Layout,
    cache: HashMap<u64, Option<Code>>,
}

impl Codes {
    pub(crate) fn new(pid: u32, layout: Layout) -> Codes {
        let mem = File::open(crate::procfs::dir(pid).join("mem"))
            .map_err(|e| log::debug!("cannot open the memory of pid {pid}: {e}"))
            .ok();
        Codes {
            mem,
            layout,
            cache: HashMap::new(),
        }
    }

    fn read(&self, addr: u64, len: u64) -> Option<Vec<u8>> {
        let mem = self.mem.as_ref()?;
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        mem.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }

    fn word(&self, addr: u64) -> Option<u64> {
        let b = self.read(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    fn int(&self, addr: u64) -> Option<i32> {
        let b = self.read(addr, 4)?;
        Some(i32::from_le_bytes(b.try_into().ok()?))
    }

    /// A `str` object's text (compact strings only, as names are).
    fn string(&self, obj: u64) -> Option<String> {
        let head = self.read(obj, 40)?;
        let len = u64::from_le_bytes(head[16..24].try_into().ok()?);
        let state = u32::from_le_bytes(head[32..36].try_into().ok()?);
        let (kind, compact, ascii) = ((state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1);
        if compact == 0 || len > MAX_STRING || !matches!(kind, 1 | 2 | 4) {
            return None;
        }
        let data = obj
            + if ascii != 0 {
                self.layout.ascii_size
            } else {
                self.layout.compact_size
            };
        let bytes = self.read(data, len * u64::from(kind))?;
        Some(match kind {
            1 => bytes.iter().map(|&b| char::from(b)).collect(),
            2 => String::from_utf16_lossy(
                &bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect::<Vec<_>>(),
            ),
            _ => bytes
                .chunks_exact(4)
                .filter_map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        })
    }

    /// A `bytes` object's contents.
    fn bytes(&self, obj: u64) -> Option<Vec<u8>> {
        let len = self.word(obj + 16)?;
        if len > MAX_TABLE {
            return None;
        }
        self.read(obj + 32, len)
    }

    fn read_code(&self, addr: u64) -> Option<Code> {
        let l = &self.layout;
        let name_field = l.co_qualname.unwrap_or(l.co_name);
        let name = self.string(self.word(addr + name_field)?)?;
        let filename = self.string(self.word(addr + l.co_filename)?)?;
        let firstlineno = i64::from(self.int(addr + l.co_firstlineno)?);
        let table = self.bytes(self.word(addr + l.co_linetable)?)?;
        let first_traceable = match l.co_firsttraceable {
            Some(off) => u64::try_from(self.int(addr + off)?).unwrap_or(0),
            None => 0,
        };
        Some(Code {
            name,
            filename,
            firstlineno,
            table,
            code_start: l.co_code_adaptive.map_or(0, |off| addr + off),
            first_traceable,
        })
    }

    /// The code object at `addr`, read once.
    pub(crate) fn get(&mut self, addr: u64) -> Option<&Code> {
        if !self.cache.contains_key(&addr) {
            let code = self.read_code(addr);
            if code.is_none() {
                log::debug!("code object at {addr:#x} could not be read");
            }
            self.cache.insert(addr, code);
        }
        self.cache.get(&addr).and_then(Option::as_ref)
    }

    /// Where a frame running `code` at `instr` (the frame's instruction
    /// word) is; None for a frame that has not started running its code.
    pub(crate) fn locate(&mut self, addr: u64, instr: u64) -> Option<Location> {
        let kind = self.layout.instr;
        let table_kind = self.layout.line_table;
        let Some(code) = self.get(addr) else {
            return Some(Location {
                name: format!("[python code {addr:#x}]"),
                filename: String::new(),
                line: None,
            });
        };
        let line = match kind {
            Instr::Pointer => {
                if instr < code.code_start {
                    return None;
                }
                let unit = (instr - code.code_start) / 2;
                if unit < code.first_traceable {
                    return None;
                }
                line_of(table_kind, &code.table, code.firstlineno, unit)
            }
            Instr::LastiUnits => line_of(table_kind, &code.table, code.firstlineno, instr * 2),
            Instr::LastiBytes => line_of(table_kind, &code.table, code.firstlineno, instr),
        };
        Some(Location {
            name: code.name.clone(),
            filename: code.filename.clone(),
            line: line.and_then(|l| u32::try_from(l).ok()),
        })
    }
}

/// The line of the instruction at `at` (code units for the location table,
/// bytes for the older ones).
pub(crate) fn line_of(kind: LineTable, table: &[u8], first: i64, at: u64) -> Option<i64> {
    match kind {
        LineTable::Lnotab => Some(lnotab_line(table, first, at)),
        LineTable::Linetable310 => linetable310_line(table, first, at),
        LineTable::Locations => locations_line(table, first, at),
    }
}

/// `co_lnotab` (3.8, 3.9): pairs of (bytecode increment, signed line increment).
fn lnotab_line(table: &[u8], first: i64, at: u64) -> i64 {
    let (mut line, mut addr) = (first, 0u64);
    for pair in table.chunks_exact(2) {
        addr += u64::from(pair[0]);
        if addr > at {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    line
}

/// `co_linetable` of 3.10: pairs of (bytecode length, signed line delta;
/// -128 for no line).
fn linetable310_line(table: &[u8], first: i64, at: u64) -> Option<i64> {
    let (mut line, mut start) = (first, 0u64);
    for pair in table.chunks_exact(2) {
        let end = start + u64::from(pair[0]);
        let delta = pair[1] as i8;
        let this = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        if start <= at && at < end {
            return this;
        }
        start = end;
    }
    None
}

/// The location table of 3.11+ (`Objects/locations.md`): entries of a
/// header byte (bit 7 set, a 4-bit code, the length in code units less one)
/// then the code's fields.
fn locations_line(table: &[u8], first: i64, at: u64) -> Option<i64> {
    let mut i = 0usize;
    let mut line = first;
    let mut start = 0u64;
    let next = |i: &mut usize| -> Option<u8> {
        let b = *table.get(*i)?;
        *i += 1;
        Some(b)
    };
    let varint = |i: &mut usize| -> Option<u64> {
        let mut b = next(i)?;
        let mut value = u64::from(b & 63);
        let mut shift = 0;
        while b & 64 != 0 {
            b = next(i)?;
            shift += 6;
            value |= u64::from(b & 63) << shift;
        }
        Some(value)
    };
    let svarint = |i: &mut usize| -> Option<i64> {
        let v = varint(i)?;
        Some(if v & 1 != 0 {
            -((v >> 1) as i64)
        } else {
            (v >> 1) as i64
        })
    };
    while i < table.len() {
        let head = next(&mut i)?;
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let len = u64::from(head & 7) + 1;
        let this = match code {
            15 => None,
            14 => {
                line += svarint(&mut i)?;
                varint(&mut i)?;
                varint(&mut i)?;
                varint(&mut i)?;
                Some(line)
            }
            13 => {
                line += svarint(&mut i)?;
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                i += 2;
                Some(line)
            }
            _ => {
                i += 1;
                Some(line)
            }
        };
        if start <= at && at < start + len {
            return this;
        }
        start += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_adds_signed_increments_up_to_the_instruction() {
        // Line 10 at 0, 11 at 6, 13 at 20, 12 at 30.
        let table = [6, 1, 14, 2, 10, 0xff];
        assert_eq!(lnotab_line(&table, 10, 0), 10);
        assert_eq!(lnotab_line(&table, 10, 5), 10);
        assert_eq!(lnotab_line(&table, 10, 6), 11);
        assert_eq!(lnotab_line(&table, 10, 25), 13);
        assert_eq!(lnotab_line(&table, 10, 30), 12);
    }

    #[test]
    fn linetable_310_finds_the_range_of_the_instruction() {
        // [0, 4): +1 -> 11; [4, 10): no line; [10, 12): +2 -> 13.
        let table = [4, 1, 6, 0x80, 2, 2];
        assert_eq!(linetable310_line(&table, 10, 0), Some(11));
        assert_eq!(linetable310_line(&table, 10, 6), None);
        assert_eq!(linetable310_line(&table, 10, 11), Some(13));
        assert_eq!(linetable310_line(&table, 10, 12), None);
    }

    /// `handle` of `kept = []\n\ndef handle(n):\n    for _ in range(n):\n
    /// kept.append(bytes(4096))\n` compiled by CPython 3.11: its
    /// `co_positions()` gives line 3 for unit 0, 4 for units 1-17 and 58-59,
    /// 5 for units 18-57.
    #[test]
    fn location_table_of_a_real_function() {
        let table = [
            128, 0, 221, 13, 18, 144, 49, 137, 88, 140, 88, 240, 0, 1, 5, 33, 240, 0, 1, 5, 33,
            136, 1, 221, 8, 12, 143, 11, 138, 11, 149, 69, 152, 36, 145, 75, 148, 75, 209, 8, 32,
            212, 8, 32, 208, 8, 32, 208, 8, 32, 240, 3, 1, 5, 33, 240, 0, 1, 5, 33,
        ];
        let want = |unit: u64| match unit {
            0 => 3,
            1..=17 | 58..=59 => 4,
            _ => 5,
        };
        for unit in 0..60 {
            assert_eq!(
                line_of(LineTable::Locations, &table, 3, unit),
                Some(want(unit)),
                "unit {unit}"
            );
        }
        assert_eq!(line_of(LineTable::Locations, &table, 3, 60), None);
    }

    /// The same function by CPython 3.10 (`co_lines()`: bytes 0-11 line 4,
    /// 12-27 line 5, 28-31 line 4) and 3.9 (`co_lnotab`, line starts at
    /// bytes 0 and 12).
    #[test]
    fn older_tables_of_a_real_function() {
        let t310 = [12, 1, 16, 1, 4, 255];
        assert_eq!(line_of(LineTable::Linetable310, &t310, 3, 11), Some(4));
        assert_eq!(line_of(LineTable::Linetable310, &t310, 3, 12), Some(5));
        assert_eq!(line_of(LineTable::Linetable310, &t310, 3, 30), Some(4));
        let t39 = [0, 1, 12, 1];
        assert_eq!(line_of(LineTable::Lnotab, &t39, 3, 0), Some(4));
        assert_eq!(line_of(LineTable::Lnotab, &t39, 3, 20), Some(5));
    }

    #[test]
    fn location_table_codes() {
        let mut t = Vec::new();
        t.extend([0x81, 0x00]); // short (code 0): 2 units, line 20
        t.extend([0x80 | (11 << 3), 4, 9]); // one line +1: 1 unit, line 21
        t.extend([0x80 | (13 << 3) | 2, 0x05]); // no column, -2: 3 units, line 19
        t.extend([0x80 | (14 << 3), 0x0c, 0, 1, 2]); // long, +6: 1 unit, line 25
        t.extend([0x80 | (15 << 3) | 1]); // no location: 2 units
        t.extend([0x80 | (13 << 3), 0x40 | 0x02, 0x01]); // +(66 >> 1) = +33 -> 58
        assert_eq!(locations_line(&t, 20, 0), Some(20));
        assert_eq!(locations_line(&t, 20, 1), Some(20));
        assert_eq!(locations_line(&t, 20, 2), Some(21));
        assert_eq!(locations_line(&t, 20, 3), Some(19));
        assert_eq!(locations_line(&t, 20, 5), Some(19));
        assert_eq!(locations_line(&t, 20, 6), Some(25));
        assert_eq!(locations_line(&t, 20, 7), None);
        assert_eq!(locations_line(&t, 20, 9), Some(58));
        assert_eq!(locations_line(&t, 20, 10), None);
    }
}
