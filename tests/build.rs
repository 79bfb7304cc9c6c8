//! Builds the C fixtures and checks how the Rust fixture is compiled.
//!
//! # C fixtures
//!
//! `fixtures/{leaky,phases,profiles,stacks,transient,execer,soak,oneshot,forker,spawner,clean,steps,selfcheck,demo,static,mmaps,kernel_objects,unwind,perf_map,ctorleak}.c` are compiled with gcc (`leaky.c` also with musl-gcc), the `.cpp` ones with g++, and [`CFLAGS`] into
//! `$OUT_DIR/fixtures/` (the static one also with `-static`; `ctorleak.c`
//! linked with `libctorleak.so` from `ctorleak_lib.c`), where the
//! harness finds them. Building here rather than from the tests means cargo
//! rebuilds them exactly when a source changes, the compiler runs as the
//! user who builds (the tests themselves may run as root through `sudo`, and
//! would leave root-owned files in `target/`), and no test races another to
//! compile. A fixture that fails to build (no gcc; no `libc.a` for the static
//! one) does not fail the build: the error goes to `<name>.error` next to
//! where the binary would be, and the test that needs it reports it.
//!
//! `fixtures/leaky_nofp.rs` (no crates) is compiled with `rustc` alone, at
//! `-C opt-level=2`, with and without frame pointers (`leaky-rust-fp`,
//! `leaky-rust-nofp`), whatever flags this package is built with.
//!
//! # Frame pointers of the Rust fixture
//!
//! memprof walks user stacks by frame pointer, so the `leaky-rust` fixture
//! must be compiled with `-C force-frame-pointers=yes`, or its stacks skip
//! the leaking functions. Stable cargo cannot set codegen flags for one
//! package (`[profile.*.package.*]` has no `rustflags`, and a build script can
//! only pass `-l`/`-L`/link args), so the flag comes from the workspace's
//! `.cargo/config.toml`:
//!
//! ```toml
//! [target.x86_64-unknown-linux-gnu]
//! rustflags = ["-C", "force-frame-pointers=yes"]
//! ```
//!
//! A `RUSTFLAGS` environment variable replaces that setting, so it has to
//! carry the flag itself. Cargo hands this script the flags it compiles the
//! package with (`CARGO_ENCODED_RUSTFLAGS`); whether the flag is there goes
//! to the harness as `MEMPROF_TESTS_FRAME_POINTERS` (`1` or `0`), and the
//! Rust fixture's tests fail with this explanation when it is `0`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Flags every C fixture is compiled with: frame pointers everywhere, so the
/// kernel's frame-pointer unwinder sees every frame of the fixture.
const CFLAGS: &[&str] = &[
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-pthread",
    "-Wall",
    "-Wextra",
];

/// The C and C++ fixtures: binary name, source (`fixtures/<source>.c`, or
/// the file named, `.cpp` for C++), extra flags (after [`CFLAGS`], so they win).
const C_FIXTURES: &[(&str, &str, &[&str])] = &[
    ("leaky", "leaky", &[]),
    // The same program as a distribution would build it: no frame pointers.
    (
        "leaky-nofp",
        "leaky",
        &["-O2", "-fomit-frame-pointer", "-momit-leaf-frame-pointer"],
    ),
    // Stacks only call frame information can walk (tests/tests/unwind.rs).
    (
        "unwind-nofp",
        "unwind",
        &["-O2", "-fomit-frame-pointer", "-momit-leaf-frame-pointer"],
    ),
    ("phases", "phases", &[]),
    ("profiles", "profiles", &[]),
    ("stacks", "stacks", &[]),
    ("transient", "transient", &[]),
    ("execer", "execer", &[]),
    ("soak", "soak", &[]),
    ("oneshot", "oneshot", &[]),
    ("forker", "forker", &[]),
    ("spawner", "spawner", &[]),
    ("clean", "clean", &[]),
    ("steps", "steps", &[]),
    // The same leaks through other allocators, which replace glibc's malloc.
    ("leaky-jemalloc", "leaky", ALLOC_JEMALLOC),
    ("leaky-tcmalloc", "leaky", ALLOC_TCMALLOC),
    // mimalloc's realloc(p, 0) returns a new block, as musl's does.
    (
        "leaky-mimalloc",
        "leaky",
        &[
            "-DLEAKY_REALLOC_0_ALLOCATES",
            "-Wl,--no-as-needed",
            "-lmimalloc",
        ],
    ),
    // A command that needs them (DT_NEEDED), for launch mode.
    ("oneshot-jemalloc", "oneshot", ALLOC_JEMALLOC),
    ("oneshot-tcmalloc", "oneshot", ALLOC_TCMALLOC),
    // jemalloc linked into the executable itself.
    (
        "leaky-jemalloc-static",
        "leaky",
        &[
            "-Wl,--no-as-needed",
            "-Wl,--whole-archive",
            "-l:libjemalloc.a",
            "-Wl,--no-whole-archive",
            "-lm",
            "-lstdc++",
            "-ldl",
        ],
    ),
    // C++: operator new from libstdc++, then from allocators that define it.
    // (leaky.c itself needs glibc's realloc(p, 0), which mimalloc does not mimic.)
    ("leaky-cxx", "leaky_cxx.cpp", &[]),
    ("leaky-cxx-tcmalloc", "leaky_cxx.cpp", ALLOC_TCMALLOC),
    ("leaky-cxx-mimalloc", "leaky_cxx.cpp", ALLOC_MIMALLOC),
    // C++ containers several calls below main, with and without frame pointers.
    ("containers", "containers.cpp", &[]),
    (
        "containers-nofp",
        "containers.cpp",
        &["-O2", "-fomit-frame-pointer", "-momit-leaf-frame-pointer"],
    ),
    ("selfcheck", "selfcheck", &[]),
    ("demo", "demo", &[]),
    ("static", "static", &["-static"]),
    ("sampled", "sampled", &[]),
    ("mmaps", "mmaps", &[]),
    ("kernel-objects", "kernel_objects", &[]),
    ("perf-map", "perf_map", &[]),
];

/// `leaky.c` built against musl with `musl-gcc` (from `musl-tools`), with
/// [`CFLAGS`] and these: dynamically linked (musl's libc.so is its loader),
/// and statically linked (malloc inside the executable). musl's realloc(p,
/// 0) returns a block, which the fixture then frees.
const MUSL_FIXTURES: &[(&str, &str, &[&str])] = &[
    ("leaky-musl", "leaky", &["-DLEAKY_REALLOC_0_ALLOCATES"]),
    (
        "leaky-musl-static",
        "leaky",
        &["-DLEAKY_REALLOC_0_ALLOCATES", "-static"],
    ),
];

/// Link flags of the fixtures that use another allocator: kept as a
/// dependency even where the linker drops unused libraries by default.
const ALLOC_JEMALLOC: &[&str] = &["-Wl,--no-as-needed", "-ljemalloc"];
const ALLOC_TCMALLOC: &[&str] = &["-Wl,--no-as-needed", "-ltcmalloc"];
const ALLOC_MIMALLOC: &[&str] = &["-Wl,--no-as-needed", "-lmimalloc"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=fixtures/fixture.h");
    println!("cargo:rustc-env=MEMPROF_TESTS_CFLAGS={}", CFLAGS.join(" "));

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("fixtures");
    if let Err(e) = fs::create_dir_all(&out_dir) {
        println!("cargo:warning=cannot create {}: {e}", out_dir.display());
    }
    for (name, source, extra) in C_FIXTURES {
        // A bare name is a C file; C++ sources give their extension.
        let src = match source.contains('.') {
            true => Path::new("fixtures").join(source),
            false => Path::new("fixtures").join(format!("{source}.c")),
        };
        println!("cargo:rerun-if-changed={}", src.display());
        record(&out_dir, name, compile(&src, extra, &out_dir.join(name)));
    }
    // A program whose first allocations are in constructors: its library's,
    // then its own (tests/tests/integration/unwind.rs).
    let lib = out_dir.join("libctorleak.so");
    let lib_src = Path::new("fixtures/ctorleak_lib.c");
    println!("cargo:rerun-if-changed={}", lib_src.display());
    let nofp = ["-O2", "-fomit-frame-pointer", "-momit-leaf-frame-pointer"];
    let lib_flags = [
        &nofp[..],
        &["-shared", "-fPIC", "-Wl,-soname,libctorleak.so"],
    ]
    .concat();
    record(
        &out_dir,
        "libctorleak.so",
        compile(lib_src, &lib_flags, &lib),
    );
    let exe_src = Path::new("fixtures/ctorleak.c");
    println!("cargo:rerun-if-changed={}", exe_src.display());
    let lib_arg = lib.display().to_string();
    let exe_flags = [
        &nofp[..],
        &["-Wl,--no-as-needed", &lib_arg, "-Wl,-rpath,$ORIGIN"],
    ]
    .concat();
    record(
        &out_dir,
        "ctorleak-nofp",
        compile(exe_src, &exe_flags, &out_dir.join("ctorleak-nofp")),
    );
    for (name, source, extra) in MUSL_FIXTURES {
        let src = Path::new("fixtures").join(format!("{source}.c"));
        println!("cargo:rerun-if-changed={}", src.display());
        let built = compile_with("musl-gcc", &src, extra, &out_dir.join(name));
        record(&out_dir, name, built);
    }
    let rust = Path::new("fixtures/leaky_nofp.rs");
    println!("cargo:rerun-if-changed={}", rust.display());
    for (name, frame_pointers) in [("leaky-rust-fp", "yes"), ("leaky-rust-nofp", "no")] {
        record(
            &out_dir,
            name,
            compile_rust(rust, frame_pointers, &out_dir.join(name)),
        );
    }
    let go = Path::new("fixtures/gosleeper.go");
    println!("cargo:rerun-if-changed={}", go.display());
    record(&out_dir, "go-sleeper", compile_go(go, &out_dir));

    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let on = frame_pointers(flags.split('\x1f').filter(|f| !f.is_empty()));
    println!(
        "cargo:rustc-env=MEMPROF_TESTS_FRAME_POINTERS={}",
        if on { 1 } else { 0 }
    );
    if !on {
        println!(
            "cargo:warning=the leaky-rust fixture is built without frame pointers; add \
             `rustflags = [\"-C\", \"force-frame-pointers=yes\"]` under \
             [target.x86_64-unknown-linux-gnu] in .cargo/config.toml (or to RUSTFLAGS)"
        );
    }
}

/// `gcc CFLAGS extra src -o out`. Ok holds gcc's warnings; the error is the
/// command and gcc's output.
fn compile(src: &Path, extra: &[&str], out: &Path) -> Result<String, String> {
    // g++ for C++ sources: it links libstdc++.
    let compiler = match src.extension().and_then(|e| e.to_str()) {
        Some("cpp") => "g++",
        _ => "gcc",
    };
    compile_with(compiler, src, extra, out)
}

/// `compiler CFLAGS extra src -o out`, as [`compile`].
fn compile_with(compiler: &str, src: &Path, extra: &[&str], out: &Path) -> Result<String, String> {
    let mut cmd = Command::new(compiler);
    cmd.args(CFLAGS)
        .args(extra)
        .arg(src)
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null());
    build(&mut cmd, compiler)
}

/// `rustc -C opt-level=2 -C force-frame-pointers=<frame_pointers> src -o
/// out`: a Rust fixture without crates, built as a release build would be,
/// with or without frame pointers whatever this package is built with.
fn compile_rust(src: &Path, frame_pointers: &str, out: &Path) -> Result<String, String> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let mut cmd = Command::new(&rustc);
    cmd.args(["--edition", "2021", "-C", "opt-level=2", "-g", "-C"])
        .arg(format!("force-frame-pointers={frame_pointers}"))
        .arg(src)
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null());
    build(&mut cmd, "rustc")
}

/// Runs a compiler: its warnings (stderr), or why it failed.
fn build(cmd: &mut Command, compiler: &str) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let output = cmd.output().map_err(|e| {
        format!(
            "cannot run {compiler} (is it installed? cargo xtask setup installs it): {e}\n\
             command: {shown}"
        )
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    } else {
        Err(format!(
            "{compiler} failed ({})\ncommand: {shown}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Leaves the outcome of building fixture `name` where the harness looks:
/// warnings as cargo warnings, an error in `<name>.error`.
fn record(out_dir: &Path, name: &str, built: Result<String, String>) {
    let error_file = out_dir.join(format!("{name}.error"));
    match built {
        Ok(warnings) => {
            let _ = fs::remove_file(&error_file);
            for line in warnings.lines() {
                println!("cargo:warning=fixture {name}: {line}");
            }
        }
        Err(e) => {
            println!(
                "cargo:warning=fixture {name} not built: {}",
                e.lines().next().unwrap_or_default()
            );
            let _ = fs::write(&error_file, e);
        }
    }
}

/// Builds the Go fixture with the Go toolchain, its caches inside `out_dir`.
fn compile_go(src: &Path, out_dir: &Path) -> Result<String, String> {
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(out_dir.join("go-sleeper"))
        .arg(src)
        .env("GOCACHE", out_dir.join("go-cache"))
        .env("GOPATH", out_dir.join("go-path"))
        .stdin(Stdio::null());
    build(&mut cmd, "go")
}

/// The value of the last `force-frame-pointers` codegen option, as rustc reads it.
fn frame_pointers<'a>(flags: impl Iterator<Item = &'a str>) -> bool {
    let mut on = false;
    let mut after_c = false;
    for flag in flags {
        let opt = if after_c {
            Some(flag)
        } else {
            flag.strip_prefix("-C")
                .or_else(|| flag.strip_prefix("--codegen="))
                .filter(|rest| !rest.is_empty())
        };
        after_c = flag == "-C" || flag == "--codegen";
        if let Some(opt) = opt {
            match opt.strip_prefix("force-frame-pointers") {
                Some("" | "=yes" | "=y" | "=on" | "=true" | "=always") => on = true,
                Some(value) if value.starts_with('=') => on = false,
                _ => {}
            }
        }
    }
    on
}
