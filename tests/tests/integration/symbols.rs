//! Names for stripped binaries, as distributions ship them: the leaky.c
//! fixture copied and stripped here the way Fedora (MiniDebugInfo) and
//! Debian (a debug file by build id) strip theirs, or with a
//! `.gnu_debuglink`, or not named at all (`module+0xoffset`). Every leak
//! keeps its exact bytes; only where the names come from changes. Needs
//! root and binutils and xz (run through `cargo xtask test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use memprof::model::Report;
use tests::{describe_report, profile_fixture_binary, root_or_skip, Kind};

/// Runs `program args` and panics with its output when it fails.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A copy of the leaky fixture (built with `-g`) in a fresh directory.
fn copy_leaky(dir: &Path, name: &str) -> PathBuf {
    let built = Kind::Leaky.path().unwrap_or_else(|e| panic!("{e}"));
    let copy = dir.join(name);
    std::fs::copy(&built, &copy).unwrap();
    copy
}

/// The fixture's leaks, with the bytes and names of its ground truth, in a
/// report of `bin` (a stripped copy of it).
fn profile_copy(bin: &Path) -> Report {
    let (output, _) = profile_fixture_binary(
        Kind::Leaky,
        bin,
        &[],
        &["--format", "json", "--top", "1000"],
    );
    output.report()
}

#[track_caller]
fn assert_leaks_named(report: &Report) {
    let dump = describe_report(report);
    let problems = Kind::Leaky.truth().check_leaks(report);
    assert!(problems.is_empty(), "{problems:?}\n{dump}");
}

/// True when some frame of `report` is `function` with a source line in leaky.c.
fn has_line_in_leaky_c(report: &Report, function: &str) -> bool {
    report.stacks.iter().flat_map(|s| &s.frames).any(|f| {
        tests::function_is(f, function)
            && f.file.as_deref().is_some_and(|p| p.ends_with("leaky.c"))
            && f.line.is_some()
    })
}

/// Fedora's MiniDebugInfo (`find-debuginfo`'s `add_minidebug`): the
/// function symbols that `.dynsym` lacks, in an ELF holding only a
/// `.symtab`, xz-compressed into `.gnu_debugdata` of the fully stripped
/// binary.
#[test]
fn minidebuginfo_names_a_binary_without_symtab() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = copy_leaky(dir.path(), "leaky-minidebug");
    let b = path_str(&bin);
    let d = |name: &str| dir.path().join(name);
    let posix_names = |args: &[&str]| -> Vec<String> {
        String::from_utf8(run("nm", args))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.to_string()))
            })
            .filter(|(_, kind)| ["T", "t"].contains(&kind.as_str()) || args.contains(&"-D"))
            .map(|(name, _)| name)
            .collect()
    };
    let dynamic = posix_names(&["-D", "--format=posix", "--defined-only", b]);
    let mut keep: Vec<String> = posix_names(&["--format=posix", "--defined-only", b])
        .into_iter()
        .filter(|n| !dynamic.contains(n))
        .collect();
    keep.sort();
    keep.dedup();
    assert!(keep.iter().any(|n| n == "leak_malloc"), "{keep:?}");
    std::fs::write(d("keep"), keep.join("\n") + "\n").unwrap();
    let debug = path_str(&d("debug")).to_string();
    let mini = path_str(&d("mini")).to_string();
    run("objcopy", &["--only-keep-debug", b, &debug]);
    run(
        "objcopy",
        &[
            "-S",
            "--remove-section",
            ".gdb_index",
            "--remove-section",
            ".comment",
            &format!("--keep-symbols={}", path_str(&d("keep"))),
            &debug,
            &mini,
        ],
    );
    run("xz", &["-k", "-f", &mini]);
    run("strip", &["--strip-all", "--remove-section=.comment", b]);
    run(
        "objcopy",
        &["--add-section", &format!(".gnu_debugdata={mini}.xz"), b],
    );
    let sections = String::from_utf8(run("readelf", &["-S", "-W", b])).unwrap();
    assert!(
        sections.contains(".gnu_debugdata") && !sections.contains(".symtab"),
        "{sections}"
    );

    let report = profile_copy(&bin);
    assert_leaks_named(&report);
}

/// Removes a file when dropped (the debug file a test put under
/// `/usr/lib/debug`).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(parent) = self.0.parent() {
            // Only when empty: other packages' files stay.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The hex build id of an ELF file.
fn build_id(path: &Path) -> String {
    use object::Object as _;
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let id = file
        .build_id()
        .unwrap()
        .unwrap_or_else(|| panic!("{} has no build id", path.display()));
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Debian's way: the binary stripped of everything, its symbols and DWARF
/// in `/usr/lib/debug/.build-id/xx/rest.debug` (no debug link): names and
/// source lines come from there.
#[test]
fn a_debug_file_found_by_build_id_names_a_stripped_binary() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = copy_leaky(dir.path(), "leaky-buildid");
    let b = path_str(&bin);
    let id = build_id(&bin);
    let debug = Path::new("/usr/lib/debug/.build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
    let _cleanup = RemoveOnDrop(debug.clone());
    run("objcopy", &["--only-keep-debug", b, path_str(&debug)]);
    run("strip", &["--strip-all", b]);
    let sections = String::from_utf8(run("readelf", &["-S", "-W", b])).unwrap();
    assert!(
        !sections.contains(".symtab") && !sections.contains(".gnu_debuglink"),
        "{sections}"
    );

    let report = profile_copy(&bin);
    assert_leaks_named(&report);
    assert!(
        has_line_in_leaky_c(&report, "leak_malloc"),
        "no source line from the debug file\n{}",
        describe_report(&report)
    );
}

/// A container's debug files are in its own file system: here the debug
/// file by build id is only in the target's mount namespace (a directory
/// mounted over `/usr/lib/debug` there), and memprof finds it through
/// `/proc/PID/root`.
#[test]
fn a_debug_file_in_the_targets_mount_namespace_is_found() {
    if !root_or_skip() {
        return;
    }
    if !Path::new("/usr/lib/debug").is_dir() {
        tests::skip("/usr/lib/debug does not exist (cargo xtask setup installs libc6-dbg)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = copy_leaky(dir.path(), "leaky-namespace");
    let b = path_str(&bin);
    let id = build_id(&bin);
    let theirs = dir.path().join("debug");
    let debug = theirs
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
    run("objcopy", &["--only-keep-debug", b, path_str(&debug)]);
    run("strip", &["--strip-all", b]);
    let mount = format!(
        "mount --bind '{}' /usr/lib/debug && exec \"$0\"",
        path_str(&theirs)
    );
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        mount.as_str(),
    ];

    let mut fixture = tests::Fixture::spawn_binary(Kind::Leaky, &bin, &wrapper, &[]);
    let pid = fixture.pid().to_string();
    let mut memprof = tests::Memprof::spawn(&["-p", &pid, "--format", "json", "--top", "1000"]);
    memprof.wait_attached(tests::ATTACH_TIMEOUT);
    fixture.go();
    fixture.wait_done(tests::DONE_TIMEOUT);
    memprof.interrupt();
    let output = memprof.finish(tests::FINISH_TIMEOUT);
    output.assert_success();
    let report = output.report();
    assert_leaks_named(&report);
    assert!(
        has_line_in_leaky_c(&report, "leak_malloc"),
        "no source line from the debug file\n{}",
        describe_report(&report)
    );
}

/// The binary names its debug file in `.gnu_debuglink`, next to it.
#[test]
fn a_debug_link_names_a_stripped_binary() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = copy_leaky(dir.path(), "leaky-debuglink");
    let b = path_str(&bin);
    let debug = dir.path().join("leaky-debuglink.debug");
    run("objcopy", &["--only-keep-debug", b, path_str(&debug)]);
    run("strip", &["--strip-all", b]);
    // Run from the directory: objcopy records the file name only.
    let status = Command::new("objcopy")
        .current_dir(dir.path())
        .args([
            "--add-gnu-debuglink=leaky-debuglink.debug",
            "leaky-debuglink",
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let report = profile_copy(&bin);
    assert_leaks_named(&report);
    assert!(
        has_line_in_leaky_c(&report, "leak_malloc"),
        "no source line from the debug file\n{}",
        describe_report(&report)
    );
}

/// Nothing names the leak functions of a fully stripped binary (they are not
/// exported, so not in `.dynsym`): their frames read `module+0xoffset`, the
/// offset being the ELF address inside the function (as in the unstripped
/// binary's symbol table), never a bare address; the bytes stay exact.
#[test]
fn unnamed_code_shows_as_module_plus_offset() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = copy_leaky(dir.path(), "leaky-stripped");
    // Where leak_malloc is, from the symbols before stripping.
    let symbols = String::from_utf8(run("nm", &["--defined-only", "-S", path_str(&bin)])).unwrap();
    let (start, size) = symbols
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 4 && w[3] == "leak_malloc").then(|| {
                (
                    u64::from_str_radix(w[0], 16).unwrap(),
                    u64::from_str_radix(w[1], 16).unwrap(),
                )
            })
        })
        .unwrap_or_else(|| panic!("no leak_malloc in\n{symbols}"));
    run("strip", &["--strip-all", path_str(&bin)]);

    let report = profile_copy(&bin);
    let dump = describe_report(&report);
    assert_eq!(report.totals, Kind::Leaky.truth().total(), "{dump}");
    for stack in &report.stacks {
        for frame in &stack.frames {
            let name = frame.display_name();
            assert!(
                !name.starts_with("0x"),
                "a bare address in {}\n{dump}",
                tests::describe_stack(stack)
            );
        }
    }
    // leak_malloc's 10 x 1000 bytes, from a frame inside it (a return
    // address: after the call, at most its end).
    let in_leak_malloc = |offset: u64| start < offset && offset <= start + size;
    let stacks: Vec<_> = report
        .stacks
        .iter()
        .filter(|s| {
            s.frames.first().is_some_and(|f| {
                f.function.is_none()
                    && f.module_name() == Some("leaky-stripped")
                    && f.module_offset.is_some_and(in_leak_malloc)
            })
        })
        .collect();
    let bytes: u64 = stacks.iter().map(|s| s.bytes).sum();
    let count: u64 = stacks.iter().map(|s| s.count).sum();
    assert_eq!((bytes, count), (10_000, 10), "{dump}");
    let name = stacks[0].frames[0].display_name();
    assert!(
        name.starts_with("leaky-stripped+0x"),
        "{name} is not module+0xoffset"
    );
}
