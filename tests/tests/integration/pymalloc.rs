//! CPython's two allocators: a script (`tests/fixtures/pythree.py`) leaks
//! through three Python functions, `bytes(4096)` in `leak_big` (line 7,
//! malloc: pymalloc hands requests over 512 bytes to malloc), small strings
//! in `leak_small` (line 9, pymalloc) and `json.loads` of a large document in
//! `leak_json` (line 11, inside the C extension `_json`: its long strings
//! are malloc blocks, its lists' arrays pymalloc blocks). Each is named at
//! its function, file and line, with exact bytes and the allocator that
//! served them. Debian's python3 (built with link-time optimization, which
//! inlines pymalloc: its small objects are seen by the arenas they fill,
//! and the report says so; with `PYTHONMALLOC=malloc` they are malloc
//! blocks), attached with `-p` and launched, and growing by 300,000 small
//! strings (`tests/fixtures/pyarenas.py`: the arenas they fill);
//! every pyenv CPython 3.8 to 3.13 attached with `-p`, and the newest one
//! launched. Needs root (run through `cargo xtask test`).

use std::path::{Path, PathBuf};

use memprof::model::{HeapAllocator, Report, Stack};
use tests::{describe_report, frame_index, root_or_skip};

/// `leak_big`: 500 blocks of `bytes(4096)`: 4,096 bytes plus the bytes
/// object's 33-byte header (`PyBytesObject_SIZE`), from malloc.
const BIG: (u64, u64) = (500 * (4096 + 33), 500);
/// `leak_small`: 5,000 strings of 7 digits.
const SMALL_COUNT: u64 = 5000;
/// `leak_json`: 20 documents of 50 strings of 1,000 characters.
const JSON_STRINGS: u64 = 20 * 50;
const JSON_DOCS: u64 = 20;

fn fixture() -> PathBuf {
    tests::workspace_root().join("tests/fixtures/pythree.py")
}

/// pymalloc's arenas from CPython 3.10: 1 MiB.
const ARENA: u64 = 1 << 20;

/// What a version of CPython allocates for the fixture.
#[derive(Clone, Copy, Debug)]
struct Expect {
    /// Which allocator serves the small objects: pymalloc when probed,
    /// malloc with `PYTHONMALLOC=malloc`, None when not seen.
    small: Option<HeapAllocator>,
    /// `sizeof(PyASCIIObject)`: a compact ASCII string of n characters is
    /// this plus n + 1 bytes.
    ascii: u64,
    /// The capacity of a list after 50 appends (`list_resize`'s growth:
    /// 3.8 over-allocates by n/8 + 6, 3.9+ rounds that down to 4).
    list_capacity: u64,
}

impl Expect {
    fn of(minor: u32, small: Option<HeapAllocator>) -> Expect {
        Expect {
            small,
            ascii: if minor >= 12 { 40 } else { 48 },
            list_capacity: if minor == 8 { 58 } else { 52 },
        }
    }
}

/// True when `stack` has the fixture's Python frame `function` at `line`.
fn has_frame(stack: &Stack, function: &str, line: u32) -> bool {
    stack.frames.iter().any(|f| {
        f.function.as_deref() == Some(function)
            && f.line == Some(line)
            && f.file.as_deref().is_some_and(|p| p.ends_with("pythree.py"))
    })
}

/// The stacks of `allocator` under `function` at `line`.
fn stacks_at<'a>(
    report: &'a Report,
    function: &str,
    line: u32,
    allocator: HeapAllocator,
) -> Vec<&'a Stack> {
    report
        .stacks
        .iter()
        .filter(|s| s.allocator == allocator && has_frame(s, function, line))
        .collect()
}

/// Bytes and count of `stacks`.
fn sum(stacks: &[&Stack]) -> (u64, u64) {
    stacks
        .iter()
        .fold((0, 0), |(b, c), s| (b + s.bytes, c + s.count))
}

/// Of `stacks`, the blocks of stacks whose every block is `size` bytes
/// (bytes == count * size), and the others.
fn of_size<'a>(stacks: &[&'a Stack], size: u64) -> (u64, Vec<&'a Stack>) {
    let (pure, rest): (Vec<&Stack>, Vec<&Stack>) =
        stacks.iter().partition(|s| s.bytes == s.count * size);
    (pure.iter().map(|s| s.count).sum(), rest)
}

fn check(report: &Report, e: Expect) {
    let dump = describe_report(report);
    use HeapAllocator::{Malloc, Pymalloc, PymallocArena};
    // leak_big: malloc, exact; no small object kept there.
    assert_eq!(
        sum(&stacks_at(report, "leak_big", 7, Malloc)),
        BIG,
        "leak_big\n{dump}"
    );
    assert_eq!(
        sum(&stacks_at(report, "leak_big", 7, Pymalloc)),
        (0, 0),
        "{dump}"
    );
    // leak_small: 5,000 strings of the header plus 8 bytes, from the
    // allocator of small objects; besides them at most two single blocks
    // (3.8's per-code-object cache of the interpreter, made after the
    // function's 1,024th call: its instruction map and its entries).
    let string = e.ascii + 8;
    match e.small {
        Some(small) => {
            let at = stacks_at(report, "leak_small", 9, small);
            let (strings, rest) = of_size(&at, string);
            assert_eq!(strings, SMALL_COUNT, "strings of {string} bytes\n{dump}");
            assert!(sum(&rest).1 <= 2, "unexplained blocks: {rest:#?}\n{dump}");
            if small == Pymalloc {
                assert_eq!(
                    sum(&stacks_at(report, "leak_small", 9, Malloc)),
                    (0, 0),
                    "{dump}"
                );
            }
        }
        None => {
            // Seen only by the arenas they fill: 5,000 strings (320,000
            // bytes of blocks) open at most one.
            let seen: Vec<&Stack> = report
                .stacks
                .iter()
                .filter(|s| has_frame(s, "leak_small", 9))
                .collect();
            let (arenas, rest) = of_size(&seen, ARENA);
            assert!(
                rest.is_empty() && seen.iter().all(|s| s.allocator == PymallocArena),
                "small objects are seen by arenas only\n{dump}"
            );
            assert!(arenas <= 1, "{arenas} arenas\n{dump}");
        }
    }
    // leak_json: 1,000 strings of 1,000 characters (malloc blocks), and
    // the 20 lists' arrays of pointers, from the allocator of small
    // objects. (The list objects come from the interpreter's free list.)
    let json_malloc = stacks_at(report, "leak_json", 11, Malloc);
    let (strings, _) = of_size(&json_malloc, e.ascii + 1001);
    assert_eq!(strings, JSON_STRINGS, "{dump}");
    if let Some(small) = e.small {
        let arrays = 8 * e.list_capacity;
        // Under `list_resize` when the interpreter names it: 3.8's frame
        // objects kept for reuse by `loads` and its callees may have the
        // same size.
        let at = stacks_at(report, "leak_json", 11, small);
        let named = at.iter().any(|s| frame_index(s, "list_resize").is_some());
        let lists: Vec<&Stack> = at
            .into_iter()
            .filter(|s| !named || frame_index(s, "list_resize").is_some())
            .collect();
        let (found, _) = of_size(&lists, arrays);
        assert_eq!(found, JSON_DOCS, "20 arrays of {arrays} bytes\n{dump}");
    }
}

/// Runs `python fixture` (ready/go/done on stdio), with `env`, under
/// `memprof -p PID --format json`; returns the report.
fn attached(python: &Path, env: &[(&str, &str)]) -> Report {
    attached_to(python, &fixture(), env)
}

/// [`attached`] with the script `script`.
fn attached_to(python: &Path, script: &Path, env: &[(&str, &str)]) -> Report {
    let mut command = std::process::Command::new(python);
    command.arg(script).envs(env.iter().copied());
    tests::profile_stdio_program(command, tests::ready_pid, &["--top", "1000"])
}

/// `memprof -o JSON -- python fixture run`: the fixture runs straight
/// through (an argument), and what it holds at its exit is the report.
fn launched(python: &Path) -> Report {
    let json = tests::target_dir().join(format!("pymalloc-launch-{}.json", std::process::id()));
    let json_arg = json.display().to_string();
    let script = fixture();
    let output = tests::run_memprof(
        &[],
        &[
            "-o",
            &json_arg,
            "--top",
            "1000",
            "--",
            python.to_str().unwrap(),
            script.to_str().unwrap(),
            "run",
        ],
        tests::FINISH_TIMEOUT,
    );
    output.assert_success();
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("a JSON report")
}

/// Debian's python3, or None (skipped with a message).
fn debian_python() -> Option<PathBuf> {
    let python = Path::new("/usr/bin/python3.11");
    if !python.exists() {
        tests::skip("/usr/bin/python3.11 is not installed (cargo xtask setup installs it)");
        return None;
    }
    Some(python.to_path_buf())
}

/// Debian's pymalloc is inlined: the report says that its arenas are
/// probed and why; malloc's blocks are exact.
fn check_debian(report: &Report) {
    let allocator = &report.target.allocator;
    assert!(
        allocator.contains("pymalloc's arenas (/usr/bin/python3.11)")
            && allocator.contains("inlined")
            && allocator.contains("PYTHONMALLOC=malloc"),
        "{allocator}"
    );
    check(report, Expect::of(11, None));
}

/// Debian's python3 growing by 300,000 small strings: the arenas they
/// fill, each 1 MiB, all under `grow` at its line. The strings take 1,177
/// pools of 16 KiB (255 blocks of 64 bytes each), 63 or 64 pools an arena:
/// 19 arenas at most, and at least 16 (the arenas open before the growth
/// have at most two arenas' worth of free pools: 17 to 18 seen).
#[test]
fn debian_python_attached_sees_the_arenas_small_objects_fill() {
    if !root_or_skip() {
        return;
    }
    let Some(python) = debian_python() else {
        return;
    };
    let script = tests::workspace_root().join("tests/fixtures/pyarenas.py");
    let report = attached_to(&python, &script, &[]);
    let dump = describe_report(&report);
    let grow: Vec<&Stack> = report
        .stacks
        .iter()
        .filter(|s| {
            s.frames.iter().any(|f| {
                f.function.as_deref() == Some("grow")
                    && f.line == Some(5)
                    && f.file
                        .as_deref()
                        .is_some_and(|p| p.ends_with("pyarenas.py"))
            })
        })
        .filter(|s| s.allocator == HeapAllocator::PymallocArena)
        .collect();
    let (arenas, rest) = of_size(&grow, ARENA);
    assert!(
        rest.is_empty(),
        "blocks that are not arenas: {rest:#?}\n{dump}"
    );
    assert!((16..=19).contains(&arenas), "{arenas} arenas\n{dump}");
    let arena_stacks = report
        .stacks
        .iter()
        .filter(|s| s.allocator == HeapAllocator::PymallocArena)
        .count();
    assert_eq!(arena_stacks, grow.len(), "arenas elsewhere\n{dump}");
}

#[test]
fn debian_python_attached_names_each_allocator() {
    if !root_or_skip() {
        return;
    }
    let Some(python) = debian_python() else {
        return;
    };
    check_debian(&attached(&python, &[]));
    // Its small objects from malloc: seen, exact.
    let report = attached(&python, &[("PYTHONMALLOC", "malloc")]);
    check(&report, Expect::of(11, Some(HeapAllocator::Malloc)));
}

#[test]
fn debian_python_launched_names_each_allocator() {
    if !root_or_skip() {
        return;
    }
    let Some(python) = debian_python() else {
        return;
    };
    check_debian(&launched(&python));
}

/// pyenv's CPython 3.X, 3.8 to 3.13, installed: (minor, interpreter).
fn pyenv_pythons() -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    for minor in 8..=13 {
        let dirs = std::fs::read_dir("/root/.pyenv/versions")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|d| d.path())
            .filter(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("3.{minor}.")))
            });
        match dirs
            .map(|d| d.join(format!("bin/python3.{minor}")))
            .find(|p| p.exists())
        {
            Some(python) => found.push((minor, python)),
            None => tests::skip(&format!(
                "CPython 3.{minor} is not installed in /root/.pyenv/versions"
            )),
        }
    }
    found
}

#[test]
fn pyenv_pythons_attached_name_each_allocator() {
    if !root_or_skip() {
        return;
    }
    for (minor, python) in pyenv_pythons() {
        tests::say(&format!("{}", python.display()));
        let report = attached(&python, &[]);
        assert!(
            report.target.allocator.contains("; pymalloc ("),
            "{}",
            report.target.allocator
        );
        check(&report, Expect::of(minor, Some(HeapAllocator::Pymalloc)));
    }
}

/// Launched, the pymalloc probes are on before the interpreter's first
/// instruction. (A short script may end before the Python frames of an
/// interpreter in `libpython` are read, which happens once the process
/// maps it: the blocks are told apart here by the native functions that
/// made them, as pyenv's builds name them.)
#[test]
fn pyenv_python_launched_names_each_allocator() {
    if !root_or_skip() {
        return;
    }
    let Some((minor, python)) = pyenv_pythons().pop() else {
        return;
    };
    let report = launched(&python);
    let dump = describe_report(&report);
    let e = Expect::of(minor, Some(HeapAllocator::Pymalloc));
    let blocks = |functions: &[&str], allocator: HeapAllocator, size: u64| {
        let under: Vec<&Stack> = report
            .stacks
            .iter()
            .filter(|s| {
                s.allocator == allocator && functions.iter().all(|f| frame_index(s, f).is_some())
            })
            .collect();
        of_size(&under, size).0
    };
    use HeapAllocator::{Malloc, Pymalloc};
    assert_eq!(blocks(&["bytes_new"], Malloc, 4096 + 33), BIG.1, "{dump}");
    assert_eq!(
        blocks(&["long_to_decimal_string_internal"], Pymalloc, e.ascii + 8),
        SMALL_COUNT,
        "{dump}"
    );
    assert_eq!(
        blocks(&["scanstring_unicode"], Malloc, e.ascii + 1001),
        JSON_STRINGS,
        "{dump}"
    );
    assert_eq!(
        blocks(
            &["_parse_array_unicode", "list_resize"],
            Pymalloc,
            8 * e.list_capacity
        ),
        JSON_DOCS,
        "{dump}"
    );
}
