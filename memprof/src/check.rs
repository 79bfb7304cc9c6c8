//! The CI leak gate (`memprof check`): which stacks of a launched command's
//! report are suppressed (LeakSanitizer's `leak:` suppression format, and a
//! built-in list of the one-time allocations of libc, ld.so and libstdc++),
//! and whether what is left is over the budget. Pure: no I/O.

use std::fmt;

use crate::model::{Report, Stack, Totals};

/// What every program holds at its exit without leaking, by the runtime it
/// links: each a `leak:` line, with why it is not a leak.
const BUILT_IN: &str = include_str!("check_suppressions.txt");

/// How a rule's pattern is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `leak:PATTERN` (LeakSanitizer's): the function, source file or
    /// module of any frame.
    Leak,
    /// `leak-unnamed-caller:PATTERN` (memprof's): the module of the first
    /// frame (the allocator's caller) when its function has no name, as in a
    /// stripped library's internal functions.
    UnnamedCaller,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Leak => "leak",
            Kind::UnnamedCaller => "leak-unnamed-caller",
        }
    }
}

/// One `leak:PATTERN` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    pub pattern: String,
    /// Where it was read: `FILE:LINE`, or `built-in:LINE`.
    pub origin: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} ({})",
            self.kind.prefix(),
            self.pattern,
            self.origin
        )
    }
}

/// Suppression rules, in the order given (the first that matches a stack
/// takes it).
#[derive(Clone, Debug, Default)]
pub struct Suppressions {
    pub rules: Vec<Rule>,
}

impl Suppressions {
    /// The built-in rules.
    pub fn built_in() -> Suppressions {
        let mut s = Suppressions::default();
        // The list is part of the build: its lines are all `leak:` rules.
        let _ = s.add(BUILT_IN, "built-in");
        s
    }

    /// Adds the rules of a file in LeakSanitizer's format: `leak:PATTERN`
    /// lines, `#` comments, blank lines; and memprof's
    /// `leak-unnamed-caller:PATTERN`. Other kinds of LSan's (none is used by
    /// its leak check) are an error, as is a line of no kind.
    pub fn add(&mut self, text: &str, source: &str) -> Result<(), String> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let kind = match line.split_once(':') {
                Some(("leak", p)) if !p.trim().is_empty() => Some((Kind::Leak, p)),
                Some(("leak-unnamed-caller", p)) if !p.trim().is_empty() => {
                    Some((Kind::UnnamedCaller, p))
                }
                _ => None,
            };
            match kind {
                Some((kind, pattern)) => self.rules.push(Rule {
                    kind,
                    pattern: pattern.trim().to_string(),
                    origin: format!("{source}:{}", i + 1),
                }),
                _ => {
                    return Err(format!(
                        "{source}:{}: `{line}` is not a `leak:PATTERN` suppression",
                        i + 1
                    ))
                }
            }
        }
        Ok(())
    }

    /// The first rule that matches the stack (see [`Kind`]).
    pub fn matching(&self, stack: &Stack) -> Option<&Rule> {
        self.rules.iter().find(|rule| match rule.kind {
            Kind::Leak => stack.frames.iter().any(|f| {
                [&f.function, &f.file, &f.module]
                    .into_iter()
                    .flatten()
                    .any(|s| template_match(&rule.pattern, s))
            }),
            Kind::UnnamedCaller => stack.frames.first().is_some_and(|f| {
                f.function.is_none()
                    && f.module
                        .as_deref()
                        .is_some_and(|m| template_match(&rule.pattern, m))
            }),
        })
    }
}

/// LeakSanitizer's pattern match: `*` matches any run of characters, a
/// leading `^` anchors at the start and a trailing `$` at the end; an
/// unanchored pattern matches anywhere in `s`.
pub fn template_match(pattern: &str, s: &str) -> bool {
    let (start, pattern) = match pattern.strip_prefix('^') {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    let (end, pattern) = match pattern.strip_suffix('$') {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    let whole = format!(
        "{}{pattern}{}",
        if start { "" } else { "*" },
        if end { "" } else { "*" }
    );
    glob(whole.as_bytes(), s.as_bytes())
}

/// Whether `pattern` (`*` for any run of bytes) matches all of `s`.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    // The classic greedy walk with one backtrack point: linear in practice.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pattern.len() && pattern[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What the gate decided.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// What the command held at its exit.
    pub held: Totals,
    /// What of it the rules suppressed, by rule (in the order first met).
    pub suppressed: Vec<(Rule, Totals)>,
    /// What is left: compared with the budget.
    pub leaked: Totals,
    /// The budget (`--max-leak`).
    pub max_leak: u64,
    /// Whether `leaked` is over it.
    pub failed: bool,
}

/// Applies `suppressions` to what `report` says the command held.
pub fn verdict(report: &Report, suppressions: &Suppressions, max_leak: u64) -> Verdict {
    let held = report.totals;
    let mut suppressed: Vec<(Rule, Totals)> = Vec::new();
    for stack in &report.stacks {
        let Some(rule) = suppressions.matching(stack) else {
            continue;
        };
        let i = match suppressed.iter().position(|(r, _)| r == rule) {
            Some(i) => i,
            None => {
                suppressed.push((rule.clone(), Totals::default()));
                suppressed.len() - 1
            }
        };
        let t = &mut suppressed[i].1;
        t.bytes = t.bytes.saturating_add(stack.bytes);
        t.count = t.count.saturating_add(stack.count);
    }
    let gone = suppressed
        .iter()
        .fold(Totals::default(), |a, (_, t)| Totals {
            bytes: a.bytes.saturating_add(t.bytes),
            count: a.count.saturating_add(t.count),
        });
    let leaked = Totals {
        bytes: held.bytes.saturating_sub(gone.bytes),
        count: held.count.saturating_sub(gone.count),
    };
    Verdict {
        held,
        suppressed,
        leaked,
        max_leak,
        failed: leaked.bytes > max_leak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Frame;

    fn frame(function: &str, file: Option<&str>, module: &str) -> Frame {
        Frame {
            addr: 1,
            function: Some(function.to_string()),
            module: Some(module.to_string()),
            file: file.map(str::to_string),
            line: None,
            inlined: false,
        }
    }

    fn stack(bytes: u64, frames: Vec<Frame>) -> Stack {
        Stack {
            bytes,
            count: 1,
            frames,
            ..Stack::default()
        }
    }

    #[test]
    fn unnamed_callers_match_by_module_and_only_the_first_frame() {
        let mut s = Suppressions::default();
        s.add("leak-unnamed-caller:libstdc++.so", "f").unwrap();
        let mut unnamed = frame("x", None, "/usr/lib/libstdc++.so.6.0.30");
        unnamed.function = None;
        assert!(s.matching(&stack(1, vec![unnamed.clone()])).is_some());
        let named = frame("_M_create", None, "/usr/lib/libstdc++.so.6.0.30");
        assert!(s.matching(&stack(1, vec![named])).is_none());
        let user = frame("main", None, "/bin/app");
        assert!(s.matching(&stack(1, vec![user, unnamed])).is_none());
    }

    #[test]
    fn the_built_in_list_suppresses_libc_one_time_allocations_only() {
        let s = Suppressions::built_in();
        for (function, file, module) in [
            (
                "_nl_intern_locale_data",
                Some("./locale/loadlocale.c"),
                "libc.so.6",
            ),
            (
                "__GI__IO_file_doallocate",
                Some("./libio/filedoalloc.c"),
                "libc.so.6",
            ),
            ("getpwuid", Some("./pwd/../nss/getXXbyYY.c"), "libc.so.6"),
            ("__nss_module_allocate", None, "libc.so.6"),
            ("_dl_allocate_tls", None, "ld-linux-x86-64.so.2"),
        ] {
            let st = stack(1, vec![frame(function, file, module)]);
            assert!(s.matching(&st).is_some(), "{function} is not suppressed");
        }
        for (function, module) in [("leak_malloc", "/bin/app"), ("__GI___strdup", "libc.so.6")] {
            let st = stack(
                1,
                vec![
                    frame(function, None, module),
                    frame("main", None, "/bin/app"),
                ],
            );
            assert!(s.matching(&st).is_none(), "{function} is suppressed");
        }
    }

    #[test]
    fn patterns_match_as_lsan_does() {
        assert!(template_match("leak_", "leak_small"));
        assert!(template_match("^leak_", "leak_small"));
        assert!(!template_match("^small", "leak_small"));
        assert!(template_match("small$", "leak_small"));
        assert!(!template_match("leak$", "leak_small"));
        assert!(template_match("^leak_small$", "leak_small"));
        assert!(!template_match("^leak_smal$", "leak_small"));
        assert!(template_match("lib*.so", "/usr/lib/libfoo.so.6"));
        assert!(template_match(
            "^/usr/*/libc.so.6$",
            "/usr/lib/x86_64/libc.so.6"
        ));
        assert!(!template_match(
            "^/usr/*/libc.so$",
            "/usr/lib/x86_64/libc.so.6"
        ));
        assert!(template_match("*", "anything"));
        assert!(template_match("a*b*c", "xxaYYbZZcxx"));
        assert!(!template_match("a*b*c", "xxaYYcZZbxx"));
    }

    #[test]
    fn files_parse_and_bad_lines_are_named() {
        let mut s = Suppressions::default();
        s.add(
            "# comment\n\nleak:leak_small\n  leak:libfoo.so  \n",
            "my.supp",
        )
        .unwrap();
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.rules[1].pattern, "libfoo.so");
        assert_eq!(s.rules[1].origin, "my.supp:4");
        s.add("leak-unnamed-caller:libstdc++.so\n", "my.supp")
            .unwrap();
        assert_eq!(s.rules[2].kind, Kind::UnnamedCaller);
        assert_eq!(
            s.rules[2].to_string(),
            "leak-unnamed-caller:libstdc++.so (my.supp:1)"
        );
        let e = s.add("race:foo\n", "bad.supp").unwrap_err();
        assert!(e.contains("bad.supp:1"), "{e}");
        assert!(Suppressions::built_in().rules.len() > 3);
    }

    #[test]
    fn the_first_matching_rule_takes_a_stack_and_the_rest_is_the_leak() {
        let mut s = Suppressions::default();
        s.add("leak:^leak_small$\nleak:leak.c\nleak:libfoo", "f")
            .unwrap();
        let report = Report {
            totals: Totals {
                bytes: 1000,
                count: 4,
            },
            stacks: vec![
                stack(600, vec![frame("leak_big", Some("leak.c"), "/bin/leak")]),
                stack(200, vec![frame("leak_small", Some("leak.c"), "/bin/leak")]),
                stack(150, vec![frame("g", None, "/bin/leak")]),
                stack(
                    50,
                    vec![frame("f", None, "/lib/libfoo.so"), frame("main", None, "x")],
                ),
            ],
            ..Report::default()
        };
        let v = verdict(&report, &s, 100);
        assert_eq!(v.suppressed.len(), 3);
        assert_eq!(v.suppressed[0].0.pattern, "leak.c");
        assert_eq!(v.suppressed[0].1.bytes, 600);
        assert_eq!(v.suppressed[1].0.pattern, "^leak_small$");
        assert_eq!(v.suppressed[2].1.bytes, 50);
        assert_eq!(v.leaked.bytes, 150);
        assert_eq!(v.leaked.count, 1);
        assert!(v.failed);
        assert!(!verdict(&report, &s, 150).failed);
    }
}
