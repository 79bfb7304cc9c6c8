//! The shared objects a program will load, in the dynamic loader's order,
//! before it runs: launch mode must probe the allocator the program will
//! call, and a child held before exec still maps only memprof's libraries.
//!
//! The program's own loader (its `PT_INTERP`) says it without running the
//! program: glibc's with `--list` (what `ldd` does), musl's when invoked as
//! `ldd`. It runs under memprof's environment, which the command inherits,
//! so `LD_PRELOAD` and `LD_LIBRARY_PATH` count as they will for the command.
//! Running the loader a program names is no more trust than running the
//! program, which launch mode does next.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The program's `PT_INTERP`, or None for a static program (or no ELF).
pub(crate) fn interpreter(program: &Path) -> anyhow::Result<Option<PathBuf>> {
    use object::read::elf::ProgramHeader as _;
    let data = std::fs::read(program).with_context(|| format!("reading {}", program.display()))?;
    let Ok(object::File::Elf64(elf)) = object::File::parse(&*data) else {
        return Ok(None);
    };
    let endian = elf.endian();
    for header in elf.elf_program_headers() {
        if header.p_type(endian) != object::elf::PT_INTERP {
            continue;
        }
        let Ok(bytes) = header.data(endian, &*data) else {
            continue;
        };
        let path = bytes.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(PathBuf::from(
            String::from_utf8_lossy(path).into_owned(),
        )));
    }
    Ok(None)
}

/// The shared objects `program` loads, in the order its loader searches
/// them for a symbol after the program itself: the preloaded ones, then
/// the needed ones breadth first. None for a static program.
pub(crate) fn load_order(program: &Path) -> anyhow::Result<Option<Vec<PathBuf>>> {
    let Some(loader) = interpreter(program)? else {
        return Ok(None);
    };
    let mut command = Command::new(&loader);
    let musl = loader
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ld-musl-"));
    if musl {
        command.arg0("ldd");
    } else {
        command.arg("--list");
    }
    let output = command
        .arg(program)
        .output()
        .with_context(|| format!("running {} to list what it loads", loader.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{} could not list the libraries of {} ({}): {}",
            loader.display(),
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_list(&text).map(Some)
}

/// The objects of a loader's list (`ldd`'s format): `name => /path (0x...)`
/// or `/path (0x...)`; the vDSO (no path) is left out.
fn parse_list(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut objects = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!(
                        "the program needs {} and its loader does not find it",
                        name.trim()
                    );
                }
                rest.split(" (").next().unwrap_or(rest).trim()
            }
            None => line.split(" (").next().unwrap_or(line).trim(),
        };
        if path.starts_with('/') {
            objects.push(PathBuf::from(path));
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_glibc_and_musl_lists() {
        let glibc = "\
\tlinux-vdso.so.1 (0x00007ffc1d5f2000)
\t/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4 (0x00007f0000000000)
\tlibjemalloc.so.2 => /lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f93e0200000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f93dfea5000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f93e06a8000)
";
        let paths: Vec<PathBuf> = [
            "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
            "/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(parse_list(glibc).unwrap(), paths);
        let musl = "\
\t/lib/ld-musl-x86_64.so.1 (0x7f0000000000)
\tlibc.musl-x86_64.so.1 => /lib/ld-musl-x86_64.so.1 (0x7f0000000000)
";
        assert_eq!(
            parse_list(musl).unwrap(),
            vec![
                PathBuf::from("/lib/ld-musl-x86_64.so.1"),
                PathBuf::from("/lib/ld-musl-x86_64.so.1")
            ]
        );
        let missing = "\tlibnope.so.1 => not found\n";
        assert!(parse_list(missing)
            .unwrap_err()
            .to_string()
            .contains("libnope.so.1"));
    }

    #[test]
    fn a_dynamic_program_lists_its_libc_and_a_static_one_nothing() {
        let sh = Path::new("/bin/sh");
        let interp = interpreter(sh).unwrap().expect("/bin/sh is dynamic");
        assert!(interp.is_absolute(), "{}", interp.display());
        let objects = load_order(sh).unwrap().unwrap();
        assert!(
            objects.iter().any(|p| p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc"))),
            "{objects:?}"
        );
        assert_eq!(load_order(Path::new("/proc/self/status")).unwrap(), None);
    }
}
