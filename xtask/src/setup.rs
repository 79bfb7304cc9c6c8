//! `cargo xtask setup`, and the part of it every other command runs first: install what a fresh
//! Debian 12 machine lacks, idempotently.
//!
//! What is installed depends on what it is for ([`Need`]): building memprof and running the demo
//! need a C toolchain, the nightly toolchain with `rust-src` and bpf-linker; the tests also need
//! what their fixtures are built with (a C++ compiler, other allocators, musl, Go) and the lint
//! components. `cargo xtask setup` installs everything. Each item is checked first and prints one
//! line, `ok` or `installing ...`, so a run that finds everything present takes a moment.
//!
//! bpf-linker links against the LLVM shared library that ships inside the nightly toolchain,
//! because Debian 12 packages no LLVM of the version rustc uses (see [`install_linker`]).

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::cmd::{self, is_root, output};

/// What a command needs installed; each level includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Need {
    /// `cargo xtask build` and `demo`: compile and link memprof and its eBPF object, the
    /// workspace's C build scripts and the demo program.
    Build,
    /// `cargo xtask test` and `soak`: also the test fixtures and the lint steps.
    Test,
}

/// A Debian package: its name and why memprof needs it (printed when it is installed).
pub(crate) type AptPackage = (&'static str, &'static str);

/// Debian packages the project needs, what for, and why.
const APT_PACKAGES: &[(Need, AptPackage)] = &[
    (
        Need::Build,
        ("gcc", "links Rust programs and compiles the demo program"),
    ),
    (
        Need::Build,
        (
            "libc6-dev",
            "libc headers and the static libc.a a fixture links",
        ),
    ),
    (
        Need::Build,
        (
            "libc6-dbg",
            "debug info: line numbers for libc frames in stacks",
        ),
    ),
    (
        Need::Build,
        (
            "make",
            "builds jemalloc from source for the tests' Rust fixture (tikv-jemalloc-sys), \
             which the workspace build includes",
        ),
    ),
    (
        Need::Test,
        ("util-linux", "setpriv, for tests that drop privileges"),
    ),
    (Need::Test, ("g++", "compiles the C++ fixture")),
    (
        Need::Test,
        ("libjemalloc-dev", "jemalloc, an allocator fixture links it"),
    ),
    (
        Need::Test,
        (
            "libgoogle-perftools-dev",
            "gperftools' tcmalloc, allocator fixtures link it",
        ),
    ),
    (
        Need::Test,
        ("libmimalloc-dev", "mimalloc, an allocator fixture links it"),
    ),
    (
        Need::Test,
        (
            "musl-tools",
            "musl-gcc: musl fixtures, dynamically and statically linked",
        ),
    ),
    (
        Need::Test,
        ("golang-go", "builds the Go program memprof must refuse"),
    ),
    (
        Need::Test,
        (
            "python3.11",
            "Debian's CPython, whose Python frames the tests read",
        ),
    ),
    (
        Need::Test,
        (
            "binutils",
            "objcopy, strip and nm: stripped fixtures, as distributions strip",
        ),
    ),
    (
        Need::Test,
        ("xz-utils", "xz: the MiniDebugInfo of a stripped fixture"),
    ),
];

/// Components of the nightly toolchain: rust-src for `-Z build-std=core`, clippy for the eBPF
/// lint step.
const NIGHTLY_COMPONENTS: &[(Need, &str)] = &[(Need::Build, "rust-src"), (Need::Test, "clippy")];
/// Components of the toolchain that runs xtask, for the lint steps of `cargo xtask test`.
const HOST_COMPONENTS: &[(Need, &str)] = &[(Need::Test, "rustfmt"), (Need::Test, "clippy")];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Overrides where bpf-linker is looked for and installed (`cargo install --root`), e.g. to try
/// the install path without touching the bpf-linker on PATH.
const BPF_LINKER_ROOT_ENV: &str = "MEMPROF_BPF_LINKER_ROOT";

/// `cargo xtask setup`: everything any command needs.
pub(crate) fn run() -> Result<()> {
    setup(Need::Test)
}

/// What building memprof and running the demo need.
pub(crate) fn for_build() -> Result<()> {
    setup(Need::Build)
}

/// What the tests need: the build's, and the fixtures' and the lint steps'.
pub(crate) fn for_tests() -> Result<()> {
    setup(Need::Test)
}

fn setup(need: Need) -> Result<()> {
    let start = Instant::now();
    let packages: Vec<AptPackage> = APT_PACKAGES
        .iter()
        .filter(|(needed_for, _)| *needed_for <= need)
        .map(|(_, package)| *package)
        .collect();
    install_apt_packages(&packages).context("setup: apt packages")?;
    let nightly = toolchains(need).context("setup: Rust toolchains")?;
    bpf_linker(&nightly).context("setup: bpf-linker")?;
    println!("setup: done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn ok(item: &str, detail: &str) {
    if detail.is_empty() {
        println!("setup: {item}: ok");
    } else {
        println!("setup: {item}: ok ({detail})");
    }
}

fn installing(item: &str, detail: &str) {
    println!("setup: {item}: installing {detail}");
}

// ---------------------------------------------------------------------------------------------
// apt

/// Installs those of `packages` that dpkg does not list as installed, with one `apt-get update`
/// and one `apt-get install` (through sudo when not root); does nothing when all are there.
/// Prints one line per package. Without dpkg (not Debian), says what to install and returns.
pub(crate) fn install_apt_packages(packages: &[AptPackage]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = packages.iter().map(|(name, _)| *name).collect();
    if which::which("dpkg-query").is_err() {
        println!(
            "setup: apt packages: skipped, dpkg-query not found (not Debian?): \
             install the equivalents of {} yourself",
            names.join(", ")
        );
        return Ok(());
    }
    let installed = dpkg_installed(&names)?;
    let mut missing = Vec::new();
    for &(name, why) in packages {
        if installed.contains(&name) {
            ok(name, "");
        } else {
            installing(name, &format!("with apt-get ({why})"));
            missing.push(name);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    cmd::run(&mut privileged(&missing, &["apt-get", "update"])?)?;
    let mut install = vec!["apt-get", "install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    cmd::run(&mut privileged(&missing, &install)?)?;
    let installed = dpkg_installed(&missing)?;
    if let Some(name) = missing.iter().find(|name| !installed.contains(name)) {
        bail!("apt-get reported success but {name} is still not installed");
    }
    Ok(())
}

/// Those of `names` that dpkg knows as installed, from one `dpkg-query` call (which prints the
/// packages it knows and fails for those it never heard of).
fn dpkg_installed<'a>(names: &[&'a str]) -> Result<Vec<&'a str>> {
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${Status}\n")
        .args(names)
        .stdin(Stdio::null())
        .output()
        .context("could not run dpkg-query")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    Ok(names
        .iter()
        .copied()
        .filter(|name| installed_in(&listing, name))
        .collect())
}

/// Whether `dpkg-query -f='${Package} ${Status}\n'` output shows `name` as installed: the status
/// is "want error-flag state", e.g. "install ok installed".
fn installed_in(listing: &str, name: &str) -> bool {
    listing.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.next() == Some(name) && fields.nth(2) == Some("installed")
    })
}

/// An apt-get command line, run through sudo when not root.
fn privileged(missing: &[&str], argv: &[&str]) -> Result<Command> {
    let mut cmd = if is_root() {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    } else if which::which("sudo").is_ok() {
        let mut cmd = Command::new("sudo");
        cmd.args(["env", "DEBIAN_FRONTEND=noninteractive"])
            .args(argv);
        cmd
    } else {
        bail!(
            "installing {} needs root and sudo is not installed: run `cargo xtask setup` as root",
            missing.join(" ")
        );
    };
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

// ---------------------------------------------------------------------------------------------
// rustup toolchains

fn rustup(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(args);
    cmd
}

/// The nightly toolchain and the components `need` calls for, on it and on the toolchain that
/// runs fmt and clippy; returns the nightly's sysroot.
fn toolchains(need: Need) -> Result<PathBuf> {
    let list = output(&mut rustup(&["toolchain", "list"])).context(
        "memprof builds its eBPF programs with a nightly toolchain managed by rustup: \
         install rustup (https://rustup.rs) and put ~/.cargo/bin on PATH",
    )?;
    if has_undated_nightly(&list) {
        ok("nightly toolchain", "");
    } else {
        installing("nightly toolchain", "with rustup (profile minimal)");
        cmd::run(&mut rustup(&[
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let nightly = sysroot(&mut rustup(&[
        "run", "nightly", "rustc", "--print", "sysroot",
    ]))?;
    components("nightly", &nightly, &needed(NIGHTLY_COMPONENTS, need))?;

    let host = needed(HOST_COMPONENTS, need);
    if !host.is_empty() {
        // The toolchain `cargo` resolves to here (rustup's RUSTUP_TOOLCHAIN, override or
        // default), which runs fmt and clippy in `cargo xtask test`: rustup keeps it in a
        // directory named after it.
        let active = sysroot(
            Command::new("rustc")
                .args(["--print", "sysroot"])
                .current_dir(cmd::root()),
        )?;
        let name = active
            .file_name()
            .with_context(|| format!("the toolchain's sysroot {} has no name", active.display()))?
            .to_string_lossy()
            .into_owned();
        components(&name, &active, &host)?;
    }
    Ok(nightly)
}

/// The sysroot a `rustc --print sysroot` command prints.
fn sysroot(rustc: &mut Command) -> Result<PathBuf> {
    Ok(PathBuf::from(output(rustc)?.trim()))
}

/// The components of `list` that `need` calls for.
fn needed<'a>(list: &[(Need, &'a str)], need: Need) -> Vec<&'a str> {
    list.iter()
        .filter(|(needed_for, _)| *needed_for <= need)
        .map(|(_, component)| *component)
        .collect()
}

/// Whether `rustup toolchain list` shows a plain `nightly` (not a dated `nightly-2024-05-01`).
fn has_undated_nightly(list: &str) -> bool {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| match name.strip_prefix("nightly") {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('-')
                .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit())),
            None => false,
        })
}

/// Adds those of `wanted` whose files are not in `sysroot` to `toolchain` with rustup.
fn components(toolchain: &str, sysroot: &Path, wanted: &[&str]) -> Result<()> {
    for &component in wanted {
        let item = format!("{toolchain} {component}");
        if component_present(sysroot, component) {
            ok(&item, "");
        } else {
            installing(&item, "with rustup");
            cmd::run(&mut rustup(&[
                "component",
                "add",
                component,
                "--toolchain",
                toolchain,
            ]))?;
        }
    }
    Ok(())
}

/// Whether the files of `component` are in `sysroot`. Looking costs nothing, where asking
/// `rustup component list --installed` takes about 150 ms a toolchain; a component this does not
/// know, or one it misses, goes to `rustup component add`, which does nothing for a component
/// that is there after all.
fn component_present(sysroot: &Path, component: &str) -> bool {
    let files: &[&str] = match component {
        "rust-src" => &["lib/rustlib/src/rust/library/core/src/lib.rs"],
        "clippy" => &["bin/cargo-clippy", "bin/clippy-driver"],
        "rustfmt" => &["bin/rustfmt", "bin/cargo-fmt"],
        _ => return false,
    };
    files.iter().all(|file| sysroot.join(file).is_file())
}

// ---------------------------------------------------------------------------------------------
// bpf-linker

/// The LLVM that ships inside the nightly toolchain.
struct NightlyLlvm {
    major: u32,
    /// `<nightly sysroot>/lib`, the rpath bpf-linker is linked with.
    lib_dir: PathBuf,
    /// The real `libLLVM.so.<ver>-rust-<rustc version>` file in `lib_dir`.
    libllvm: PathBuf,
}

fn nightly_llvm(sysroot: &Path) -> Result<NightlyLlvm> {
    let version = output(&mut rustup(&["run", "nightly", "rustc", "-vV"]))?;
    let major = llvm_major(&version)?;
    let lib_dir = sysroot.join("lib");
    let libllvm = find_libllvm(&lib_dir)?;
    Ok(NightlyLlvm {
        major,
        lib_dir,
        libllvm,
    })
}

/// The major version in `rustc -vV`'s `LLVM version: 22.1.4` line.
fn llvm_major(rustc_vv: &str) -> Result<u32> {
    let version = rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .context("`rustc +nightly -vV` prints no `LLVM version:` line")?
        .trim();
    version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {version:?}"))
}

/// The largest regular file named `libLLVM.so.*` in `lib_dir` (the `libLLVM-*.so` next to it is a
/// tiny linker script, and symlinks are skipped).
fn find_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", lib_dir.display()))?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("libLLVM.so.")
        {
            continue;
        }
        let meta = entry
            .metadata()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        if meta.is_file() && best.as_ref().is_none_or(|(size, _)| meta.len() > *size) {
            best = Some((meta.len(), entry.path()));
        }
    }
    best.map(|(_, path)| path).with_context(|| {
        format!(
            "the nightly toolchain ships no libLLVM.so.* in {}: bpf-linker cannot be built \
             against it (try `rustup update nightly`)",
            lib_dir.display()
        )
    })
}

/// Why an existing bpf-linker cannot be used, or its `--version` line if it can.
enum Linker {
    Usable(String),
    Missing,
    Unusable(String),
}

fn check_linker(bin: &Path, llvm: &NightlyLlvm) -> Linker {
    if !bin.exists() {
        return Linker::Missing;
    }
    let version = match Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => {
            return Linker::Unusable(format!(
                "`{} --version` fails: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(err) => return Linker::Unusable(format!("cannot run {}: {err}", bin.display())),
    };
    let ldd = match output(Command::new("ldd").arg(bin)) {
        Ok(ldd) => ldd,
        Err(err) => return Linker::Unusable(format!("{err:#}")),
    };
    match loaded_libllvm(&ldd) {
        Some(loaded) if same_file(Path::new(loaded), &llvm.libllvm) => Linker::Usable(version),
        Some(loaded) => Linker::Unusable(format!(
            "it loads {loaded}, not the nightly's {}",
            llvm.libllvm.display()
        )),
        None => Linker::Unusable("ldd shows no libLLVM it loads".to_owned()),
    }
}

/// The path ldd resolved libLLVM to (`libLLVM.so.22.1-rust-... => /path (0x...)`), or `not found`.
fn loaded_libllvm(ldd: &str) -> Option<&str> {
    ldd.lines().find_map(|line| {
        let (name, resolved) = line.split_once("=>")?;
        if !name.trim().starts_with("libLLVM") {
            return None;
        }
        let resolved = resolved.trim();
        Some(match resolved.rfind(" (0x") {
            Some(end) => &resolved[..end],
            None => resolved,
        })
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// bpf-linker, checked to load the LLVM of the nightly toolchain at `nightly_sysroot`.
fn bpf_linker(nightly_sysroot: &Path) -> Result<()> {
    let llvm = nightly_llvm(nightly_sysroot)?;
    let root = env::var_os(BPF_LINKER_ROOT_ENV).map(PathBuf::from);
    let bin = match &root {
        Some(root) => Some(root.join("bin/bpf-linker")),
        None => which::which("bpf-linker").ok(),
    };
    let state = bin
        .as_deref()
        .map_or(Linker::Missing, |bin| check_linker(bin, &llvm));
    match state {
        Linker::Usable(version) => {
            let at = bin.as_deref().unwrap_or(Path::new("?")).display();
            ok(
                "bpf-linker",
                &format!("{version} at {at}, on the nightly's LLVM {}", llvm.major),
            );
            return Ok(());
        }
        Linker::Missing => installing(
            "bpf-linker",
            &format!(
                "{BPF_LINKER_VERSION} with cargo, against the nightly's LLVM {} (about a minute)",
                llvm.major
            ),
        ),
        Linker::Unusable(why) => installing(
            "bpf-linker",
            &format!(
                "{BPF_LINKER_VERSION} with cargo, against the nightly's LLVM {}, because {why} \
                 (about a minute)",
                llvm.major
            ),
        ),
    }
    install_linker(&llvm, root.as_deref())?;

    // Check what builds will actually run.
    let bin = match &root {
        Some(root) => root.join("bin/bpf-linker"),
        None => which::which("bpf-linker").context(
            "bpf-linker was installed but is not on PATH: add cargo's bin directory \
             ($CARGO_HOME/bin, usually ~/.cargo/bin) to PATH",
        )?,
    };
    match check_linker(&bin, &llvm) {
        Linker::Usable(version) => {
            println!(
                "setup: bpf-linker: installed {version} at {}",
                bin.display()
            );
            if root.is_some() {
                println!(
                    "setup: bpf-linker: {BPF_LINKER_ROOT_ENV} is set: put {} on PATH to use it",
                    bin.parent().unwrap_or(&bin).display()
                );
            }
            Ok(())
        }
        Linker::Missing => bail!("bpf-linker was installed but {} is missing", bin.display()),
        Linker::Unusable(why) => bail!(
            "the bpf-linker found at {} cannot be used: {why}; if another bpf-linker shadows \
             the one cargo installed, remove it or put cargo's bin directory first in PATH",
            bin.display()
        ),
    }
}

/// Where the LLVM prefix for building bpf-linker lives: `$XDG_CACHE_HOME` or `~/.cache`.
fn llvm_prefix_dir() -> Result<PathBuf> {
    let cache = match env::var_os("XDG_CACHE_HOME") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => env::var_os("HOME")
            .map(|home| Path::new(&home).join(".cache"))
            .context("neither XDG_CACHE_HOME nor HOME is set: cannot place the LLVM prefix")?,
    };
    Ok(cache.join("memprof/llvm-prefix"))
}

/// `cargo install bpf-linker` against the nightly's libLLVM: no system LLVM is needed.
fn install_linker(llvm: &NightlyLlvm, root: Option<&Path>) -> Result<()> {
    // A prefix whose lib/libLLVM.so is the nightly's libLLVM, for llvm-sys to link against.
    let prefix = llvm_prefix_dir()?;
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    let link = prefix_lib.join("libLLVM.so");
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    symlink(&llvm.libllvm, &link).with_context(|| {
        format!(
            "cannot link {} to {}",
            link.display(),
            llvm.libllvm.display()
        )
    })?;

    let mut install = cmd::cargo();
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{}", llvm.major))
        .env("LLVM_PREFIX", &prefix)
        // Outside the workspace, so its .cargo/config.toml (rustflags, ...) does not apply.
        .current_dir(&prefix)
        .stdin(Stdio::null());
    if let Some(root) = root {
        install.arg("--root").arg(root);
    }
    // The rpath makes bpf-linker find the nightly's libLLVM at run time.
    let rpath = format!("link-arg=-Wl,-rpath,{}", llvm.lib_dir.display());
    if rpath.contains(char::is_whitespace) {
        install
            .env_remove("RUSTFLAGS")
            .env("CARGO_ENCODED_RUSTFLAGS", format!("-C\x1f{rpath}"));
    } else {
        install
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", format!("-C {rpath}"));
    }
    cmd::run(&mut install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_installed_packages_from_dpkg_query() {
        let listing = "gcc install ok installed\nmake deinstall ok config-files\n\
                       g++ install ok half-installed\n";
        assert!(installed_in(listing, "gcc"));
        assert!(!installed_in(listing, "make"));
        assert!(!installed_in(listing, "g++"));
        assert!(!installed_in(listing, "golang-go"));
    }

    #[test]
    fn building_needs_none_of_the_fixtures_tools() {
        let build: Vec<&str> = APT_PACKAGES
            .iter()
            .filter(|(need, _)| *need == Need::Build)
            .map(|(_, (name, _))| *name)
            .collect();
        for fixture_only in ["g++", "golang-go", "musl-tools", "libjemalloc-dev"] {
            assert!(!build.contains(&fixture_only), "{fixture_only}");
        }
        assert_eq!(needed(NIGHTLY_COMPONENTS, Need::Build), ["rust-src"]);
        assert!(needed(HOST_COMPONENTS, Need::Build).is_empty());
        assert_eq!(needed(HOST_COMPONENTS, Need::Test), ["rustfmt", "clippy"]);
    }

    #[test]
    fn reads_llvm_major() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                  host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv).unwrap(), 22);
        assert!(llvm_major("rustc 1.0\n").is_err());
    }

    #[test]
    fn finds_undated_nightly_only() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_undated_nightly(list));
        assert!(has_undated_nightly("nightly\n"));
        assert!(!has_undated_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2024-05-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!has_undated_nightly("no installed toolchains\n"));
    }

    #[test]
    fn finds_components_by_their_files() {
        let dir = std::env::temp_dir().join(format!("xtask-sysroot-{}", std::process::id()));
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/cargo-clippy"), "").unwrap();
        assert!(!component_present(&dir, "clippy"), "half of clippy");
        fs::write(dir.join("bin/clippy-driver"), "").unwrap();
        let clippy = component_present(&dir, "clippy");
        let rustfmt = component_present(&dir, "rustfmt");
        let unknown = component_present(&dir, "rust-analyzer");
        fs::remove_dir_all(&dir).unwrap();
        assert!(clippy);
        assert!(!rustfmt);
        assert!(!unknown);
    }

    #[test]
    fn reads_libllvm_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ff4925ee000)\n\
                   \tlibLLVM.so.22.1-rust-1.97.0-nightly => /root/.rustup/toolchains/nightly/lib/libLLVM.so.22.1-rust-1.97.0-nightly (0x00007ff487a00000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ff48781e000)\n";
        assert_eq!(
            loaded_libllvm(ldd),
            Some("/root/.rustup/toolchains/nightly/lib/libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(
            loaded_libllvm("\tlibLLVM.so.22.1-rust-1.97.0-nightly => not found\n"),
            Some("not found")
        );
        assert_eq!(
            loaded_libllvm("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            None
        );
    }

    #[test]
    fn picks_the_real_libllvm_not_the_linker_script() {
        let dir = std::env::temp_dir().join(format!("xtask-libllvm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("libLLVM-22-rust-1.97.0-nightly.so"), "INPUT(x)").unwrap();
        fs::write(
            dir.join("libLLVM.so.22.1-rust-1.97.0-nightly"),
            vec![0u8; 4096],
        )
        .unwrap();
        let found = find_libllvm(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found.unwrap().file_name().unwrap(),
            "libLLVM.so.22.1-rust-1.97.0-nightly"
        );
    }
}
