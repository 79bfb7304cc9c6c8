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

use crate::model::{Frame, Report};

/// The frame name of a stack the kernel could not walk.
pub(crate) const STACK_LOST: &str = "[stack lost]";

pub(crate) fn render(report: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    for (stack, bytes) in fold(report, |f| f.display_name()) {
        writeln!(out, "{stack} {bytes}")?;
    }
    Ok(())
}

/// Folds every stack of `report` into `root;...;leaf`, naming frames with
/// `label` (then [`sanitize_frame_name`]), and sums the bytes of equal lines.
pub(crate) fn fold(report: &Report, label: impl Fn(&Frame) -> String) -> BTreeMap<String, u64> {
    let mut lines = BTreeMap::new();
    for stack in &report.stacks {
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
        if let Some(process) = report.process_label(stack) {
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
}
