//! Running external commands with errors that say what failed.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The eBPF crate: built for `bpfel-unknown-none` with nightly, never for the host (see `test.rs`).
pub(crate) const EBPF_CRATE: &str = "memprof-ebpf";

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set (see [`pin_target_dir`]), else `<root>/target`.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// Cargo resolves a relative `CARGO_TARGET_DIR` against its working directory, and the cargo
/// commands xtask runs work in the workspace root, not where the user typed `cargo xtask`:
/// make it absolute once, before any child starts, so every cargo agrees on one directory.
pub(crate) fn pin_target_dir() -> Result<()> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.as_os_str().is_empty() && dir.is_relative() {
            let absolute = std::path::absolute(&dir)
                .with_context(|| format!("cannot resolve CARGO_TARGET_DIR={}", dir.display()))?;
            std::env::set_var("CARGO_TARGET_DIR", absolute);
        }
    }
    Ok(())
}

/// `cargo` (the toolchain that runs xtask, through rustup's `RUSTUP_TOOLCHAIN`), in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root());
    cmd
}

/// `cargo` from the nightly toolchain, in the workspace root.
pub(crate) fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]).current_dir(root());
    cmd
}

/// Whether xtask runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command line as a user would type it, for messages.
pub(crate) fn display(cmd: &Command) -> String {
    let mut out = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            out.push_str(&format!("{}={} ", key.to_string_lossy(), quote(value)));
        }
    }
    out.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(arg));
    }
    out
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}` (is it installed and on PATH?)"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Prints a step header for CI logs, then runs `cmd`; a failure names the step.
pub(crate) fn step(name: &str, cmd: &mut Command) -> Result<()> {
    println!("==> {name}: {}", display(cmd));
    run(cmd).with_context(|| format!("step `{name}` failed"))
}

/// Builds memprof in release and returns the path of the binary.
pub(crate) fn build_release_memprof() -> Result<PathBuf> {
    step(
        "build memprof",
        cargo().args(["build", "--release", "-p", "memprof"]),
    )?;
    let memprof = target_dir().join("release/memprof");
    if !memprof.is_file() {
        anyhow::bail!(
            "{} is missing after `cargo build --release -p memprof`",
            memprof.display()
        );
    }
    Ok(memprof)
}

/// Runs `cmd` and returns its stdout; fails with its stderr unless it exits 0.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}` (is it installed and on PATH?)"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("cargo");
        cmd.args(["clippy", "--", "-D", "warnings", "a b", "it's"])
            .env("RUSTFLAGS", "-C link-arg=-Wl,-rpath,/x");
        assert_eq!(
            display(&cmd),
            r"RUSTFLAGS='-C link-arg=-Wl,-rpath,/x' cargo clippy -- -D warnings 'a b' 'it'\''s'"
        );
    }

    #[test]
    fn root_holds_the_workspace_manifest() {
        assert!(root().join("Cargo.toml").is_file());
        assert!(root().join("xtask").is_dir());
    }
}
