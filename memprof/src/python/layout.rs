//! The offsets of CPython's structures that memprof reads, per version:
//! where the thread states and frames are (handed to the BPF programs as a
//! [`PyProc`]) and what a code object holds (read by user space).
//!
//! The figures are those of the release builds of each version (no
//! `Py_DEBUG`, no free threading), as `offsetof` gives them when compiled
//! against the version's internal headers; py-spy and the OpenTelemetry
//! profiler keep the same tables.

use memprof_common::python::{PyProc, NONE};

/// How a code object maps instructions to lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineTable {
    /// `co_lnotab` (3.8, 3.9): byte offsets.
    Lnotab,
    /// `co_linetable` of 3.10: byte offsets, pairs of deltas.
    Linetable310,
    /// `co_linetable` of 3.11+: the location table, in code units.
    Locations,
}

/// What a frame's instruction word is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Instr {
    /// `f_lasti` in bytes (3.8, 3.9).
    LastiBytes,
    /// `f_lasti` in code units (3.10).
    LastiUnits,
    /// A pointer to the instruction in `co_code_adaptive` (3.11+).
    Pointer,
}

/// How the interpreter's evaluation function calls map to Python frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// One evaluation call per Python frame (before 3.11).
    EachFrame,
    /// `is_entry` marks the first frame an evaluation call ran (3.11).
    Marked,
    /// Each evaluation call pushes a frame owned by the C stack (3.12+).
    CStackOwner,
}

/// The `owner` of the frames pushed by each evaluation call in 3.12+.
pub(crate) const FRAME_OWNED_BY_CSTACK: u8 = 3;

/// One version's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub minor: u32,
    /// The thread state and frame fields (without the runtime's address).
    pub proc: PyProc,
    pub co_filename: u64,
    pub co_name: u64,
    /// `co_qualname`, 3.11+.
    pub co_qualname: Option<u64>,
    pub co_firstlineno: u64,
    /// `co_lnotab` or `co_linetable`.
    pub co_linetable: u64,
    /// `co_code_adaptive` (3.11+): where the instructions start in the code object.
    pub co_code_adaptive: Option<u64>,
    /// `_co_firsttraceable` (3.11+): frames before it are not started yet.
    pub co_firsttraceable: Option<u64>,
    pub line_table: LineTable,
    pub instr: Instr,
    pub entry: Entry,
    /// `sizeof(PyASCIIObject)` and `sizeof(PyCompactUnicodeObject)`: where
    /// a compact string's characters start.
    pub ascii_size: u64,
    pub compact_size: u64,
}

/// The CPython 3 minor versions memprof knows.
pub(crate) const KNOWN: &[u32] = &[8, 9, 10, 11, 12, 13];

/// The layout of CPython 3.`minor`, or None for a version memprof does not know.
pub(crate) fn of_version(minor: u32) -> Option<Layout> {
    let old = |tstate_current: u32, f_lasti: u32, instr, table| Layout {
        minor,
        proc: PyProc {
            runtime: 0,
            tstate_current,
            interp_head: 32,
            interp_threads: 8,
            tstate_next: 8,
            tstate_tid: NONE,
            tstate_frame: 24,
            cframe_frame: NONE,
            frame_code: 32,
            frame_previous: 24,
            frame_instr: f_lasti,
            frame_entry: NONE,
            frame_owner: NONE,
            instr_is_index: 1,
        },
        co_filename: 104,
        co_name: 112,
        co_qualname: None,
        co_firstlineno: 40,
        co_linetable: 120,
        co_code_adaptive: None,
        co_firsttraceable: None,
        line_table: table,
        instr,
        entry: Entry::EachFrame,
        ascii_size: 48,
        compact_size: 72,
    };
    Some(match minor {
        8 => old(1368, 104, Instr::LastiBytes, LineTable::Lnotab),
        9 => old(568, 104, Instr::LastiBytes, LineTable::Lnotab),
        10 => old(568, 96, Instr::LastiUnits, LineTable::Linetable310),
        11 => Layout {
            minor,
            proc: PyProc {
                runtime: 0,
                tstate_current: 576,
                interp_head: 40,
                interp_threads: 16,
                tstate_next: 8,
                tstate_tid: 160,
                tstate_frame: 56,
                cframe_frame: 8,
                frame_code: 32,
                frame_previous: 48,
                frame_instr: 56,
                frame_entry: 68,
                frame_owner: 69,
                instr_is_index: 0,
            },
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_firstlineno: 72,
            co_linetable: 136,
            co_code_adaptive: Some(184),
            co_firsttraceable: Some(168),
            line_table: LineTable::Locations,
            instr: Instr::Pointer,
            entry: Entry::Marked,
            ascii_size: 48,
            compact_size: 72,
        },
        12 | 13 => {
            let twelve = minor == 12;
            Layout {
                minor,
                proc: PyProc {
                    runtime: 0,
                    tstate_current: NONE,
                    interp_head: if twelve { 40 } else { 632 },
                    interp_threads: if twelve { 72 } else { 7344 },
                    tstate_next: 8,
                    tstate_tid: if twelve { 144 } else { 160 },
                    tstate_frame: if twelve { 56 } else { 72 },
                    cframe_frame: if twelve { 0 } else { NONE },
                    frame_code: 0,
                    frame_previous: 8,
                    frame_instr: 56,
                    frame_entry: NONE,
                    frame_owner: 70,
                    instr_is_index: 0,
                },
                co_filename: 112,
                co_name: 120,
                co_qualname: Some(128),
                co_firstlineno: 68,
                co_linetable: 136,
                co_code_adaptive: Some(if twelve { 192 } else { 200 }),
                co_firsttraceable: Some(if twelve { 176 } else { 184 }),
                line_table: LineTable::Locations,
                instr: Instr::Pointer,
                entry: Entry::CStackOwner,
                ascii_size: 40,
                compact_size: 56,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_version_has_a_layout_and_no_other() {
        for &minor in KNOWN {
            assert_eq!(of_version(minor).map(|l| l.minor), Some(minor));
        }
        assert_eq!(of_version(7), None);
        assert_eq!(of_version(14), None);
    }

    /// 3.11: `_PyRuntime.gilstate.tstate_current` at 576,
    /// `PyThreadState.cframe` at 56, `_PyCFrame.current_frame` at 8,
    /// `_PyInterpreterFrame` with `f_code` at 32, `previous` at 48,
    /// `prev_instr` at 56, `is_entry` at 68, `owner` at 69.
    #[test]
    fn python_3_11() {
        let l = of_version(11).unwrap();
        let p = l.proc;
        assert_eq!(
            (p.tstate_current, p.interp_head, p.interp_threads),
            (576, 40, 16)
        );
        assert_eq!((p.tstate_tid, p.tstate_frame, p.cframe_frame), (160, 56, 8));
        assert_eq!(
            (p.frame_code, p.frame_previous, p.frame_instr),
            (32, 48, 56)
        );
        assert_eq!(
            (p.frame_entry, p.frame_owner, p.instr_is_index),
            (68, 69, 0)
        );
        assert_eq!(
            (l.co_filename, l.co_name, l.co_qualname, l.co_firstlineno),
            (112, 120, Some(128), 72)
        );
        assert_eq!(
            (l.co_linetable, l.co_code_adaptive, l.co_firsttraceable),
            (136, Some(184), Some(168))
        );
        assert_eq!((l.ascii_size, l.compact_size), (48, 72));
        assert_eq!(l.entry, Entry::Marked);
    }

    /// 3.12: no GIL holder in `_PyRuntime` (thread states are found by
    /// thread id), `current_frame` first in `_PyCFrame`, `f_code` first in
    /// the frame, `owner` at 70 marks the C stack's entry frames; strings
    /// lost `wstr` (smaller headers).
    #[test]
    fn python_3_12() {
        let l = of_version(12).unwrap();
        let p = l.proc;
        assert_eq!(p.tstate_current, NONE);
        assert_eq!(
            (p.interp_head, p.interp_threads, p.tstate_tid),
            (40, 72, 144)
        );
        assert_eq!((p.tstate_frame, p.cframe_frame), (56, 0));
        assert_eq!(
            (p.frame_code, p.frame_previous, p.frame_instr, p.frame_owner),
            (0, 8, 56, 70)
        );
        assert_eq!(p.frame_entry, NONE);
        assert_eq!(
            (l.co_firstlineno, l.co_code_adaptive, l.co_firsttraceable),
            (68, Some(192), Some(176))
        );
        assert_eq!((l.ascii_size, l.compact_size), (40, 56));
        assert_eq!(l.entry, Entry::CStackOwner);
    }

    /// 3.13: no `_PyCFrame`; `PyThreadState.current_frame` at 72; the
    /// thread list moved deep into the interpreter state.
    #[test]
    fn python_3_13() {
        let l = of_version(13).unwrap();
        let p = l.proc;
        assert_eq!(
            (p.interp_head, p.interp_threads, p.tstate_tid),
            (632, 7344, 160)
        );
        assert_eq!((p.tstate_frame, p.cframe_frame), (72, NONE));
        assert_eq!((p.frame_code, p.frame_instr, p.frame_owner), (0, 56, 70));
        assert_eq!(
            (l.co_code_adaptive, l.co_firsttraceable),
            (Some(200), Some(184))
        );
    }

    /// 3.8 to 3.10: heap frames (`PyFrameObject`: `f_back` at 24, `f_code`
    /// at 32, `f_lasti` at 104, 96 in 3.10), the GIL holder at
    /// `gilstate.tstate_current`.
    #[test]
    fn python_3_8_to_3_10() {
        for (minor, current, lasti, instr, table) in [
            (8, 1368, 104, Instr::LastiBytes, LineTable::Lnotab),
            (9, 568, 104, Instr::LastiBytes, LineTable::Lnotab),
            (10, 568, 96, Instr::LastiUnits, LineTable::Linetable310),
        ] {
            let l = of_version(minor).unwrap();
            let p = l.proc;
            assert_eq!(p.tstate_current, current, "3.{minor}");
            assert_eq!(
                (p.tstate_frame, p.cframe_frame, p.tstate_tid),
                (24, NONE, NONE)
            );
            assert_eq!(
                (p.frame_code, p.frame_previous, p.frame_instr),
                (32, 24, lasti)
            );
            assert_eq!(p.instr_is_index, 1);
            assert_eq!((l.instr, l.line_table), (instr, table));
            assert_eq!(
                (l.co_filename, l.co_name, l.co_firstlineno, l.co_linetable),
                (104, 112, 40, 120)
            );
            assert_eq!(l.entry, Entry::EachFrame);
        }
    }
}
