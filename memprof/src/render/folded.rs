//! Folded stacks: `root;caller;...;leaf bytes`, one stack per line.
//!
//! This is the input format of flame graph tools (inferno, flamegraph.pl,
//! speedscope). Frame names are [`Frame::display_name`], root first. Names are
//! made safe for the format by [`sanitize_frame_name`]:
//!
//! - `;` (the frame separator, found in Rust names such as `<[u8; 8]>::f`) becomes `:`;
//! - newlines, tabs and other whitespace or control characters become one space,
//!   and runs of spaces collapse to one; names are trimmed;
//! - a name whose last space-separated word is a number (which a parser would
//!   take for the sample count) has that space replaced by `_`;
//! - an empty name becomes `[unknown]`.
//!
//! A stack the kernel could not walk is the single frame `[stack lost]`. In a
//! run over many processes, every line starts with its process, `comm (pid)`.
//! Stacks whose names fold to the same line are summed, and lines are sorted
//! bytewise, so the output is deterministic.

use std::collections::BTreeMap;
use std::io::Write;

use crate::model::{Frame, Report, Stack};

/// The frame name of a stack the kernel could not walk.
pub(crate) const STACK_LOST: &str = "[stack lost]";

pub(crate) fn render(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    for (stack, bytes) in fold_all(report, |f| f.display_name()) {
        writeln!(out, "{stack} {bytes}")?;
    }
    Ok(())
}

/// [`fold`], and with optional sources (`--mmap`, `--kernel`) each source's
/// stacks under a root frame of its own (`[anonymous mmap]`, `[kernel]`) and
/// the heap's under `[heap]`, so they stay apart. Without them, [`fold`] as is.
pub(crate) fn fold_all(report: &Report, label: impl Fn(&Frame) -> String) -> BTreeMap<String, u64> {
    let extra = super::extra_sources(report);
    if extra.is_empty() {
        return fold(report, label);
    }
    let mut lines = BTreeMap::new();
    let mut add = |root: &str, folded: BTreeMap<String, u64>| {
        for (line, bytes) in folded {
            let sum: &mut u64 = lines.entry(format!("{root};{line}")).or_default();
            *sum = sum.saturating_add(bytes);
        }
    };
    add(super::HEAP_ROOT, fold(report, &label));
    for e in extra {
        add(e.root, fold_stacks(&e.source.stacks, &label, |_| None));
    }
    lines
}

/// Folds every stack of `report` into `root;...;leaf`, naming frames with
/// `label` (then [`sanitize_frame_name`]), and sums the bytes of equal lines.
pub(crate) fn fold(report: &Report, label: impl Fn(&Frame) -> String) -> BTreeMap<String, u64> {
    fold_stacks(&report.stacks, label, |s| report.process_label(s))
}

/// [`fold`] for `stacks`; `process` names the root frame of a stack's process
/// in a run over many.
fn fold_stacks(
    stacks: &[Stack],
    label: impl Fn(&Frame) -> String,
    process: impl Fn(&Stack) -> Option<String>,
) -> BTreeMap<String, u64> {
    let mut lines = BTreeMap::new();
    for stack in stacks {
        let mut line = if stack.frames.is_empty() {
            STACK_LOST.to_string()
        } else {
            stack
                .frames
                .iter()
                .rev()
                .map(|f| sanitize_frame_name(&label(f)))
                .collect::<Vec<_>>()
                .join(";")
        };
        if let Some(process) = process(stack) {
            line = format!("{};{line}", sanitize_frame_name(&process));
        }
        let sum: &mut u64 = lines.entry(line).or_default();
        *sum = sum.saturating_add(stack.bytes);
    }
    lines
}

/// Makes `name` safe as one frame of a folded line (see the module docs).
pub(crate) fn sanitize_frame_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        let c = match c {
            ';' => ':',
            c if c.is_whitespace() || c.is_control() => ' ',
            c => c,
        };
        if c == ' ' && (s.is_empty() || s.ends_with(' ')) {
            continue;
        }
        s.push(c);
    }
    while s.ends_with(' ') {
        s.pop();
    }
    if s.is_empty() {
        return "[unknown]".to_string();
    }
    if let Some(i) = s.rfind(' ') {
        if s[i + 1..].chars().all(|c| c.is_ascii_digit() || c == '.') {
            s.replace_range(i..=i, "_");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stack;

    fn frame(name: &str) -> Frame {
        Frame {
            function: Some(name.to_string()),
            ..Frame::default()
        }
    }

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_frame_name("main"), "main");
        assert_eq!(
            sanitize_frame_name("<[u8; 8] as Foo>::bar"),
            "<[u8: 8] as Foo>::bar"
        );
        assert_eq!(sanitize_frame_name(" a\n\tb  c\r"), "a b c");
        assert_eq!(sanitize_frame_name("thing 42"), "thing_42");
        assert_eq!(sanitize_frame_name("thing 4.2"), "thing_4.2");
        assert_eq!(sanitize_frame_name("f (x.c:12)"), "f (x.c:12)");
        assert_eq!(sanitize_frame_name(""), "[unknown]");
        assert_eq!(sanitize_frame_name(" \n"), "[unknown]");
    }

    #[test]
    fn folds_root_first_sums_and_sorts() {
        let report = Report {
            stacks: vec![
                Stack {
                    bytes: 10,
                    frames: vec![frame("leaf"), frame("main")],
                    ..Stack::default()
                },
                Stack {
                    bytes: 5,
                    frames: vec![],
                    ..Stack::default()
                },
                Stack {
                    bytes: 7,
                    frames: vec![frame("leaf"), frame("main")],
                    ..Stack::default()
                },
                Stack {
                    bytes: 1,
                    frames: vec![frame("a;b"), frame("main")],
                    ..Stack::default()
                },
            ],
            ..Report::default()
        };
        let mut out = Vec::new();
        render(&report, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[stack lost] 5\nmain;a:b 1\nmain;leaf 17\n"
        );
    }

    #[test]
    fn sources_get_roots_of_their_own() {
        use crate::model::SourceReport;
        let stack = |bytes, name: &str| Stack {
            bytes,
            frames: vec![frame(name), frame("main")],
            ..Stack::default()
        };
        let mut report = Report {
            stacks: vec![stack(10, "leak")],
            ..Report::default()
        };
        // Without other sources, the heap's lines are as they always were.
        assert_eq!(
            fold_all(&report, |f| f.display_name()),
            fold(&report, |f| f.display_name())
        );
        report.mmap = Some(SourceReport {
            stacks: vec![stack(4096, "map_it")],
            ..SourceReport::default()
        });
        report.kernel = Some(SourceReport {
            stacks: vec![stack(64, "do_eventfd")],
            ..SourceReport::default()
        });
        let lines: Vec<(String, u64)> = fold_all(&report, |f| f.display_name())
            .into_iter()
            .collect();
        assert_eq!(
            lines,
            vec![
                ("[anonymous mmap];main;map_it".to_string(), 4096),
                ("[heap];main;leak".to_string(), 10),
                ("[kernel];main;do_eventfd".to_string(), 64),
            ]
        );
    }
}
