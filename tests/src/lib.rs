//! The harness of memprof's integration tests.
//!
//! The tests in `tests/tests/` profile real processes ("fixtures") that leak a
//! known number of bytes through known functions, and compare memprof's report
//! with that ground truth. This library:
//!
//! - finds the fixtures ([`Kind::path`]): `build.rs` compiles the C ones
//!   (`tests/fixtures/*.c`) with gcc and [`CFLAGS`] into `$OUT_DIR/fixtures/`;
//!   the Rust one is the `leaky-rust` binary of this package, which cargo
//!   builds before the integration tests (it needs frame pointers: see
//!   `build.rs` and [`rust_fixture_has_frame_pointers`]);
//! - runs a fixture ([`Fixture`]) and memprof ([`Memprof`]), and kills and
//!   reaps both on drop, so a failing test leaves no process behind;
//! - holds the ground truth ([`LEAKY_C`], [`LEAKY_RUST`]) and checks a report
//!   against it ([`check_leaks`]);
//! - decides when a test may skip ([`root_or_skip`], [`skip`]): never when the
//!   `CI` environment variable is set.
//!
//! Every fixture follows one protocol: it prints `ready <pid>`, waits for one
//! line on stdin ([`Fixture::go`], sent once memprof has attached), leaks and
//! churns, prints `done` ([`Fixture::wait_done`]), and exits 0 when stdin
//! reaches EOF ([`Fixture::finish`]), so it stays alive while memprof reads
//! its maps and symbolizes.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

pub use memprof::model::{Frame, Report, Stack, Stats, Totals};

/// How long a fixture may take to print `ready <pid>`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long memprof may take to load its programs and attach.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fixture may take to do its work under the probes.
pub const DONE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long memprof may take to detach, symbolize and print its report.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(120);

/// The gcc flags `build.rs` compiles the C fixtures with: frame pointers
/// everywhere, so the kernel's frame-pointer unwinder sees every frame.
pub const CFLAGS: &str = env!("MEMPROF_TESTS_CFLAGS");

/// True when this package, and so the `leaky-rust` fixture, was compiled with
/// `-C force-frame-pointers=yes` (found by `build.rs` in the flags cargo used).
pub fn rust_fixture_has_frame_pointers() -> bool {
    env!("MEMPROF_TESTS_FRAME_POINTERS") == "1"
}

/// Panics, saying what to do, unless the `leaky-rust` fixture was compiled
/// with frame pointers (without them its stacks skip the leaking functions).
#[track_caller]
pub fn assert_rust_fixture_has_frame_pointers() {
    assert!(
        rust_fixture_has_frame_pointers(),
        "the leaky-rust fixture was compiled without frame pointers, so its stacks cannot be \
         walked: add `rustflags = [\"-C\", \"force-frame-pointers=yes\"]` under \
         [target.x86_64-unknown-linux-gnu] in the workspace's .cargo/config.toml, or put that \
         flag in RUSTFLAGS if you set it (see tests/build.rs)"
    );
}

// ---------------------------------------------------------------------------
// Paths

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set (relative to the
/// workspace root), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The memprof binary under test: `MEMPROF_BIN` if set, else the newer of
/// `<target>/debug/memprof` and `<target>/release/memprof`.
pub fn memprof_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MEMPROF_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "MEMPROF_BIN={} is not a file", bin.display());
        return bin;
    }
    let target = target_dir();
    let candidates = [target.join("debug/memprof"), target.join("release/memprof")];
    candidates
        .iter()
        .filter_map(|p| mtime(p).map(|t| (t, p)))
        .max()
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| {
            panic!(
                "no memprof binary at {} or {}: build it first (`cargo build -p memprof`, \
                 or run the tests through `cargo xtask test`), or point MEMPROF_BIN at one",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

// ---------------------------------------------------------------------------
// Skipping

/// True when the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Writes a line to stderr past the test harness's output capture (which
/// only sees `print!`/`eprint!`), so it shows even when the test passes.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Skips the calling test with a printed reason: prints `SKIPPED: <reason>`
/// (always visible, see [`say`]). Panics instead when the `CI` environment
/// variable is set, because in CI nothing may skip. Use as
/// `skip("..."); return;`.
#[track_caller]
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot skip in CI (CI is set): {reason}");
    }
    say(&format!("SKIPPED: {reason}"));
}

/// True when the test can run (it needs root to load BPF programs). Otherwise
/// prints `SKIPPED: <reason>` and returns false, or panics when `CI` is set.
///
/// ```no_run
/// if !tests::root_or_skip() {
///     return;
/// }
/// ```
#[track_caller]
pub fn root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    skip(
        "integration tests load BPF programs and need root: run them with \
         `sudo -E cargo test -p tests -- --test-threads=1` (or `cargo xtask test`)",
    );
    false
}

/// True when the running kernel has uprobe session links (Linux 6.13),
/// which `--sample-rate` needs.
pub fn kernel_has_uprobe_sessions() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= memprof::session_link::MIN_KERNEL
}

/// Root and a kernel with uprobe sessions, or a printed reason to skip
/// (a failure in CI, like every skip).
pub fn sampling_or_skip() -> bool {
    if !root_or_skip() {
        return false;
    }
    if !kernel_has_uprobe_sessions() {
        skip("--sample-rate needs uprobe session links (Linux 6.13 or later)");
        return false;
    }
    true
}

/// The path of `program` on `PATH`, if it is there.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// The fixtures

/// Where `build.rs` put the C fixtures.
pub fn c_fixtures_dir() -> PathBuf {
    Path::new(env!("OUT_DIR")).join("fixtures")
}

/// The C fixture `name` built by `build.rs`, or why it was not built.
fn c_fixture(name: &str) -> Result<PathBuf, String> {
    let dir = c_fixtures_dir();
    if let Ok(error) = fs::read_to_string(dir.join(format!("{name}.error"))) {
        return Err(error);
    }
    let bin = dir.join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: rebuild the tests package",
            bin.display()
        ))
    }
}

/// The fixtures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `tests/fixtures/leaky.c`: ground truth [`LEAKY_C`].
    Leaky,
    /// `tests/fixtures/leaky.c` built with `-O2 -fomit-frame-pointer`: the
    /// same ground truth [`LEAKY_C`], stacks cut short.
    LeakyNoFramePointers,
    /// `tests/fixtures/phases.c`: allocations that change over time (a
    /// steadily growing stack, a large flat one, blocks freed halfway, churn;
    /// with `--young`, young blocks right before `done`). Ground truth
    /// [`PHASES`] and [`PHASES_YOUNG`].
    Phases,
    /// `tests/fixtures/stacks.c`: one 100-byte block leaked from each of 4096
    /// distinct call stacks (all ending in `leaf_alloc`).
    Stacks,
    /// `tests/fixtures/transient.c`: thousands of distinct stacks that each
    /// allocate and free one block, round after round, and 50 leaked 100-byte
    /// blocks from 50 distinct stacks (all ending in `leak_alloc`).
    Transient,
    /// `tests/fixtures/execer.c`: leaks 5 x 1000 bytes, execs itself, leaks
    /// 3 x 2000 bytes in `after_exec_leak` from the new program, then `done`.
    Execer,
    /// `tests/fixtures/soak.c SECS`: churns, meets new stacks and leaks one
    /// 1000-byte block in `soak_leak` every 50 ms, for SECS seconds.
    Soak,
    /// `tests/fixtures/leaky.c` linked with jemalloc or tcmalloc, which
    /// replace glibc's malloc: the same ground truth [`LEAKY_C`].
    LeakyJemalloc,
    LeakyTcmalloc,
    /// `tests/fixtures/leaky.c` with jemalloc linked into the executable.
    LeakyJemallocStatic,
    /// `tests/fixtures/leaky.c` built with musl-gcc, dynamically and
    /// statically linked: the same ground truth [`LEAKY_C`].
    LeakyMusl,
    LeakyMuslStatic,
    /// `tests/fixtures/leaky_cxx.cpp`: leaks through operator new (from
    /// libstdc++), ground truth [`LEAKY_CXX`].
    LeakyCxx,
    /// The same, linked with tcmalloc or mimalloc, which define operator new
    /// and delete themselves.
    LeakyCxxTcmalloc,
    LeakyCxxMimalloc,
    /// `tests/fixtures/gosleeper.go`, built with the Go toolchain: prints
    /// `ready <pid>` and waits for EOF on stdin.
    GoSleeper,
    /// `tests/fixtures/oneshot.c`: runs to its end by itself (no protocol),
    /// leaving [`ONESHOT`] outstanding at its exit; exits with status 3.
    OneShot,
    /// `tests/fixtures/forker.c`: after go, forks two children that leak
    /// [`FORKER_CHILD`] each, leaks [`FORKER_PARENT`], prints
    /// `children <pid> <pid>`, then `done`.
    Forker,
    /// `tests/fixtures/clean.c`: after go, 20,000 malloc/free pairs, nothing kept.
    Clean,
    /// `tests/fixtures/selfcheck.c RESULT_FILE`: checks its own allocations
    /// through every probed function and writes a checksum; frees everything.
    SelfCheck,
    /// The `leaky-rust` binary of this package: ground truth [`LEAKY_RUST`].
    LeakyRust,
    /// The `leaky-rust-jemalloc` binary of this package (jemalloc with the
    /// `_rjem_` prefix as its global allocator): ground truth [`LEAKY_RUST_JEMALLOC`].
    LeakyRustJemalloc,
    /// `tests/fixtures/demo.c`: the demo service of `cargo xtask demo`
    /// (prints `ready <pid>`, then serves until stdin EOF, a signal, or
    /// `argv[1]` seconds; no go/done protocol).
    Demo,
    /// `tests/fixtures/static.c` linked with `-static`: a process without a
    /// libc shared object. Same protocol as [`Kind::Leaky`], does nothing.
    Static,
    /// `tests/fixtures/sampled.c`: 25,000 equal-size leaks from three
    /// functions and a lot of churn, for `--sample-rate` (ground truth in
    /// `tests/tests/sampling.rs`).
    Sampled,
    /// `tests/fixtures/mmaps.c`: anonymous mappings kept, trimmed, holed,
    /// mremap'ed and churned (ground truth in `tests/tests/sources.rs`).
    Mmaps,
    /// `tests/fixtures/kernel_objects.c keep|close`: 64 eventfds kept open or
    /// closed again (for `--kernel`, see `tests/tests/sources.rs`).
    KernelObjects,
}

impl Kind {
    /// The fixture's binary. Errors are readable messages (the static
    /// fixture is not built without `libc.a`).
    pub fn path(self) -> Result<PathBuf, String> {
        match self {
            Kind::Leaky => c_fixture("leaky"),
            Kind::LeakyNoFramePointers => c_fixture("leaky-nofp"),
            Kind::Phases => c_fixture("phases"),
            Kind::Stacks => c_fixture("stacks"),
            Kind::Transient => c_fixture("transient"),
            Kind::Execer => c_fixture("execer"),
            Kind::Soak => c_fixture("soak"),
            Kind::OneShot => c_fixture("oneshot"),
            Kind::Forker => c_fixture("forker"),
            Kind::Clean => c_fixture("clean"),
            Kind::GoSleeper => c_fixture("go-sleeper"),
            Kind::LeakyJemalloc => c_fixture("leaky-jemalloc"),
            Kind::LeakyTcmalloc => c_fixture("leaky-tcmalloc"),
            Kind::LeakyJemallocStatic => c_fixture("leaky-jemalloc-static"),
            Kind::LeakyMusl => c_fixture("leaky-musl"),
            Kind::LeakyMuslStatic => c_fixture("leaky-musl-static"),
            Kind::LeakyCxx => c_fixture("leaky-cxx"),
            Kind::LeakyCxxTcmalloc => c_fixture("leaky-cxx-tcmalloc"),
            Kind::LeakyCxxMimalloc => c_fixture("leaky-cxx-mimalloc"),
            Kind::SelfCheck => c_fixture("selfcheck"),
            Kind::Demo => c_fixture("demo"),
            Kind::Static => c_fixture("static"),
            Kind::Sampled => c_fixture("sampled"),
            Kind::Mmaps => c_fixture("mmaps"),
            Kind::KernelObjects => c_fixture("kernel-objects"),
            Kind::LeakyRust => rust_fixture_path("leaky-rust"),
            Kind::LeakyRustJemalloc => rust_fixture_path("leaky-rust-jemalloc"),
        }
    }
}

/// The binary `name` of this package (`leaky-rust`) next to the running test
/// binary: cargo puts integration tests in `<target>/<profile>/deps/` and the
/// package's binaries in `<target>/<profile>/`, and builds the binaries
/// before the tests.
fn rust_fixture_path(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| format!("unexpected test binary path {}", exe.display()))?;
    let bin = profile_dir.join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build -p tests --bins` (cargo test builds it \
             before the integration tests)",
            bin.display()
        ))
    }
}

// ---------------------------------------------------------------------------
// Running a fixture

/// A running fixture. Dropping it kills and reaps the process.
pub struct Fixture {
    kind: Kind,
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Fixture {
    /// Starts a fixture with stdin and stdout piped,
    /// and waits for its `ready <pid>` line.
    pub fn spawn(kind: Kind) -> Fixture {
        Fixture::spawn_with(kind, &[], &[])
    }

    /// Like [`Fixture::spawn`], with the fixture run through `wrapper` (a
    /// command and its arguments that execs the rest, e.g. `setpriv ...`)
    /// and given `args`.
    pub fn spawn_with(kind: Kind, wrapper: &[&str], args: &[&str]) -> Fixture {
        let bin = kind
            .path()
            .unwrap_or_else(|e| panic!("the {kind:?} fixture is not available: {e}"));
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut fixture = Fixture {
            kind,
            pid: child.id(),
            child,
            stdin,
            lines,
        };
        let line = fixture.expect_line("ready", READY_TIMEOUT);
        let pid: u32 = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{kind:?} fixture printed {line:?}, not `ready <pid>`"));
        assert_eq!(
            pid, fixture.pid,
            "{kind:?} fixture reported pid {pid} but was started as {}",
            fixture.pid
        );
        fixture
    }

    /// The fixture's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The fixture's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Sends the "go" line: the fixture starts leaking and churning.
    pub fn go(&mut self) {
        let kind = self.kind;
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{kind:?} fixture's stdin is already closed"));
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot send go to the {kind:?} fixture: {e}"));
    }

    /// Waits for the fixture's `done` line.
    pub fn wait_done(&mut self, timeout: Duration) {
        let line = self.expect_line("done", timeout);
        assert_eq!(
            line.trim(),
            "done",
            "{:?} fixture printed {line:?}",
            self.kind
        );
    }

    /// Waits for the next stdout line, described as `what` in the panic on
    /// timeout or exit.
    pub fn expect_line(&mut self, what: &str, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{:?} fixture (pid {}) did not print `{what}` within {timeout:?}",
                self.kind, self.pid
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = wait_timeout(&mut self.child, Duration::from_secs(5));
                panic!(
                    "{:?} fixture (pid {}) closed stdout before printing `{what}` (exit: {status:?})",
                    self.kind, self.pid
                )
            }
        }
    }

    /// Closes stdin and waits for the fixture to exit; returns its status.
    /// Panics if it does not exit within `timeout`.
    pub fn finish(mut self, timeout: Duration) -> ExitStatus {
        drop(self.stdin.take());
        wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "{:?} fixture (pid {}) did not exit within {timeout:?} of stdin closing",
                self.kind, self.pid
            )
        })
    }

    /// Sends a signal to the fixture.
    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.pid, signal);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

pub fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        panic!("pid {pid} out of range");
    };
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A process id that belongs to no process: a child that has exited and
/// been reaped (checked through `/proc`).
pub fn dead_pid() -> u32 {
    for _ in 0..100 {
        let mut child = Command::new("true").spawn().expect("cannot run `true`");
        let pid = child.id();
        child.wait().expect("cannot reap `true`");
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return pid;
        }
    }
    panic!("could not find a dead pid");
}

// ---------------------------------------------------------------------------
// Running memprof

/// What memprof left when it exited.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// The report (or nothing, when it failed). Bytes: pprof is binary.
    pub stdout: Vec<u8>,
    /// All of stderr.
    pub stderr: String,
}

impl Output {
    /// stdout as text; panics if it is not UTF-8.
    pub fn stdout_text(&self) -> &str {
        std::str::from_utf8(&self.stdout)
            .unwrap_or_else(|e| panic!("memprof's stdout is not UTF-8: {e}"))
    }

    /// Panics with stderr unless memprof exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "memprof failed ({}); stderr:\n{}",
            self.status,
            self.stderr
        );
    }

    /// stdout parsed as a JSON report (`--format json`).
    pub fn report(&self) -> Report {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            let text = String::from_utf8_lossy(&self.stdout);
            let head: String = text.chars().take(4000).collect();
            panic!(
                "memprof's stdout is not a JSON report: {e}\nstdout (head):\n{head}\nstderr:\n{}",
                self.stderr
            )
        })
    }
}

/// A running memprof. Dropping it kills and reaps the process.
pub struct Memprof {
    child: Child,
    stderr_lines: Receiver<String>,
    stderr_all: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<Vec<u8>>>,
}

impl Memprof {
    /// Starts `memprof args...` ([`memprof_bin`]) with stdout and stderr piped.
    pub fn spawn(args: &[&str]) -> Memprof {
        Memprof::spawn_with(&[], args)
    }

    /// Like [`Memprof::spawn`], run through `wrapper` (e.g. `setpriv ...`).
    pub fn spawn_with(wrapper: &[&str], args: &[&str]) -> Memprof {
        let bin = memprof_bin();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        say(&format!("running {command:?}"));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let stdout_reader = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = BufReader::new(stdout).read_to_end(&mut buf);
            buf
        });
        let stderr_all = Arc::new(Mutex::new(Vec::new()));
        let all = Arc::clone(&stderr_all);
        let (tx, stderr_lines) = mpsc::channel();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Echoed, visibly, so the test's output shows what memprof
                // attached to and what it complained about.
                say(&format!("[memprof] {line}"));
                all.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.clone());
                let _ = tx.send(line);
            }
        });
        Memprof {
            child,
            stderr_lines,
            stderr_all,
            stderr_reader: Some(stderr_reader),
            stdout_reader: Some(stdout_reader),
        }
    }

    /// memprof's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_so_far(&self) -> String {
        self.stderr_all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits for the stderr line that contains `attached`. Panics, with
    /// everything memprof printed, if it exits or times out first.
    pub fn wait_attached(&mut self, timeout: Duration) {
        self.wait_line("attached", timeout);
    }

    /// Waits for a stderr line that contains `needle`. Panics, with
    /// everything memprof printed, if it exits or times out first.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "memprof printed no line with {needle:?} within {timeout:?}; stderr so far:\n{}",
                    self.stderr_so_far()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_timeout(&mut self.child, Duration::from_secs(10));
                    panic!(
                        "memprof exited before printing {needle:?} ({status:?}); stderr:\n{}",
                        self.stderr_so_far()
                    )
                }
            }
        }
    }

    /// Sends SIGINT: memprof detaches and prints its report.
    pub fn interrupt(&self) {
        send_signal(self.child.id(), libc::SIGINT);
    }

    /// Waits for memprof to exit and collects its output. Panics, with
    /// stderr, if it does not exit within `timeout` (it is then killed).
    pub fn finish(mut self, timeout: Duration) -> Output {
        let Some(status) = wait_timeout(&mut self.child, timeout) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "memprof did not exit within {timeout:?}; stderr:\n{}",
                self.stderr_so_far()
            );
        };
        let stdout = self
            .stdout_reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        if let Some(r) = self.stderr_reader.take() {
            let _ = r.join();
        }
        Output {
            status,
            stdout,
            stderr: self.stderr_so_far(),
        }
    }
}

impl Drop for Memprof {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs memprof to completion (for runs that end by themselves: errors,
/// `--duration`).
pub fn run_memprof(wrapper: &[&str], args: &[&str], timeout: Duration) -> Output {
    Memprof::spawn_with(wrapper, args).finish(timeout)
}

/// The whole dance for a go/done fixture: start it, attach memprof with
/// `-p PID` and `memprof_args`, send go, wait for done, interrupt memprof,
/// collect its output, and check that the fixture then exits 0 (a profiler
/// must leave its target working). Returns memprof's output and the pid.
pub fn profile_fixture(kind: Kind, memprof_args: &[&str]) -> (Output, u32) {
    profile_fixture_with(kind, &[], memprof_args)
}

/// [`profile_fixture`] with `fixture_args` given to the fixture.
pub fn profile_fixture_with(
    kind: Kind,
    fixture_args: &[&str],
    memprof_args: &[&str],
) -> (Output, u32) {
    let mut fixture = Fixture::spawn_with(kind, &[], fixture_args);
    let pid = fixture.pid();
    let pid_arg = pid.to_string();
    let mut args = vec!["-p", pid_arg.as_str()];
    args.extend_from_slice(memprof_args);
    let mut memprof = Memprof::spawn(&args);
    memprof.wait_attached(ATTACH_TIMEOUT);
    fixture.go();
    fixture.wait_done(DONE_TIMEOUT);
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    output.assert_success();
    let status = fixture.finish(Duration::from_secs(10));
    assert!(
        status.success(),
        "the {kind:?} fixture did not exit cleanly after memprof detached: {status}"
    );
    (output, pid)
}

// ---------------------------------------------------------------------------
// Ground truth

/// What `leaky_cxx.cpp` leaks.
pub const LEAKY_CXX: &[Leak] = &[
    leak("leak_new", 5, 240),
    leak("leak_new_array", 3, 300),
    leak("leak_aligned_new", 2, 256),
];

/// Functions of `leaky_cxx.cpp` that leave nothing outstanding.
pub const LEAKY_CXX_CLEAN: &[&str] = &["churn_new"];

/// What `forker.c`'s parent holds after `done`.
pub const FORKER_PARENT: &[Leak] = &[leak("parent_leak", 2, 1000)];

/// What each child of `forker.c` holds after `done`.
pub const FORKER_CHILD: &[Leak] = &[leak("child_leak", 3, 3000)];

/// What `oneshot.c` holds at its exit.
pub const ONESHOT: &[Leak] = &[
    leak("oneshot_malloc", 7, 2100),
    leak("oneshot_calloc", 1, 1000),
    leak("oneshot_realloc", 1, 5000),
];

/// Outstanding memory one leaking function leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leak {
    /// The function that called the allocator (last path segment for Rust).
    pub function: &'static str,
    /// Outstanding allocations.
    pub count: u64,
    /// Outstanding bytes (sum of requested sizes).
    pub bytes: u64,
}

/// The ground truth of `tests/fixtures/leaky.c` (the table at its top;
/// checked with valgrind).
pub const LEAKY_C: &[Leak] = &[
    // 10 x malloc(1000)
    leak("leak_malloc", 10, 10_000),
    // 5 x calloc(4, 256)
    leak("leak_calloc", 5, 5_120),
    // 1 x calloc(1, 1 MiB): served by mmap
    leak("leak_calloc_big", 1, 1_048_576),
    // 4 chains ending at 2000, 2 (from realloc(NULL, 32)) at 3000, 1 at 300000
    // (mremap), and one realloc(p, 0) that frees
    leak("leak_realloc_chain", 7, 314_000),
    // 6 x posix_memalign(64, 512)
    leak("leak_posix_memalign", 6, 3_072),
    // 4 x aligned_alloc(64, 640) + 3 x memalign(128, 384)
    leak("leak_aligned_alloc", 7, 3_712),
    // 3 x reallocarray(NULL, 10, 100) -> reallocarray(p, 30, 100)
    leak("leak_reallocarray", 3, 9_000),
    // 2 x valloc(100)
    leak("leak_valloc", 2, 200),
];

/// Functions of `leaky.c` that allocate but leave nothing outstanding.
pub const LEAKY_C_CLEAN: &[&str] = &["churn_worker", "fail_alloc"];

/// Allocations `leaky.c`'s churn makes at least (4 threads x 50000 mallocs),
/// and frees at least as many.
pub const LEAKY_C_MIN_CHURN: u64 = 4 * 50_000;

/// The ground truth of the `leaky-rust` fixture (the table in
/// `src/bin/leaky_rust.rs`; checked with valgrind).
pub const LEAKY_RUST: &[Leak] = &[
    // 8 x Box<[u8; 4096]>: malloc(4096)
    leak("leak_boxes", 8, 32_768),
    // 4 x Vec::<u64>::with_capacity(1000): malloc(8000)
    leak("leak_vec", 4, 32_000),
    // 100 pushes of u32 then shrink_to_fit: realloc(p, 400)
    leak("leak_vec_grow", 1, 400),
    // 2 x vec![0u8; 3000]: calloc(3000, 1)
    leak("leak_zeroed", 2, 6_000),
    // 3 x Box<Aligned64> (192 bytes, align 64): posix_memalign(64, 192)
    leak("leak_aligned", 3, 576),
    // 5 x libc::malloc(777)
    leak("leak_libc_malloc", 5, 3_885),
];

/// The ground truth of the `leaky-rust-jemalloc` fixture (the table in
/// `src/bin/leaky_rust_jemalloc.rs`).
pub const LEAKY_RUST_JEMALLOC: &[Leak] = &[
    // 8 x Box<[u8; 4096]>: _rjem_malloc(4096)
    leak("leak_boxes", 8, 32_768),
    // 4 x Vec::<u64>::with_capacity(1000): _rjem_malloc(8000)
    leak("leak_vec", 4, 32_000),
    // 100 pushes of u32 then shrink_to_fit: _rjem_realloc(p, 400)
    leak("leak_vec_grow", 1, 400),
    // 2 x vec![0u8; 3000]: _rjem_calloc(1, 3000)
    leak("leak_zeroed", 2, 6_000),
    // 3 x Box<Aligned64> (192 bytes, align 64): _rjem_mallocx(192, align 64)
    leak("leak_aligned", 3, 576),
    // 2 x alloc_zeroed(256, align 64): _rjem_mallocx(256, align 64 | zero)
    leak("leak_aligned_zeroed", 2, 512),
    // 2 x alloc(128, align 64) -> realloc(1024): _rjem_rallocx(p, 1024, align 64)
    leak("leak_aligned_realloc", 2, 2_048),
    // 5 x libc::malloc(777): glibc's malloc
    leak("leak_libc_malloc", 5, 3_885),
];

/// Functions of `leaky-rust` and `leaky-rust-jemalloc` that allocate but
/// leave nothing outstanding.
pub const LEAKY_RUST_CLEAN: &[&str] = &["churn_worker", "fail_alloc"];

/// Allocations `leaky-rust`'s churn makes at least (2 threads x 20000 boxes),
/// and frees at least as many.
pub const LEAKY_RUST_MIN_CHURN: u64 = 2 * 20_000;

/// The ground truth of `tests/fixtures/phases.c` (the table at its top):
/// what is outstanding after `done`, with or without `--young`.
pub const PHASES: &[Leak] = &[
    // 30 x malloc(4096), one every 100 ms for 3 s: growing
    leak("grow_steadily", 30, 122_880),
    // 1 x malloc(512 KiB) right after go: large and flat
    leak("hold_flat", 1, 524_288),
];

/// What `phases --young` leaves outstanding besides [`PHASES`]: 7 x
/// malloc(3000) right before `done`, at least 3 s after everything else.
pub const PHASES_YOUNG: Leak = leak("young_blocks", 7, 21_000);

/// Functions of `phases.c` that allocate but leave nothing outstanding:
/// `free_later` (20 x malloc(1000), all freed at ~1.5 s) and the churn.
pub const PHASES_CLEAN: &[&str] = &["free_later", "short_lived"];

/// Blocks `phases.c`'s `free_later` allocates (and frees).
pub const PHASES_FREE_LATER_BLOCKS: u64 = 20;

/// Allocations `phases.c`'s churn makes at least, and frees at least as many.
pub const PHASES_MIN_CHURN: u64 = 10_000;

/// A [`Leak`], shorter (for the tables).
pub const fn leak(function: &'static str, count: u64, bytes: u64) -> Leak {
    Leak {
        function,
        count,
        bytes,
    }
}

/// The sum of a ground-truth table.
pub fn total(leaks: &[Leak]) -> Totals {
    Totals {
        bytes: leaks.iter().map(|l| l.bytes).sum(),
        count: leaks.iter().map(|l| l.count).sum(),
    }
}

// ---------------------------------------------------------------------------
// Checking reports

/// True when `frame` is the function `name`: a C name matches exactly, a
/// Rust path by its last segment (`leaky_rust::leak_boxes` is `leak_boxes`),
/// with or without the legacy-mangling hash (`::h0123456789abcdef`).
pub fn function_is(frame: &Frame, name: &str) -> bool {
    let Some(function) = frame.function.as_deref() else {
        return false;
    };
    let function = strip_hash(function);
    // A demangled C++ function carries its parameter list: `leak_new()`.
    let function = match function.find('(') {
        Some(at) if at > 0 => &function[..at],
        _ => function,
    };
    function == name
        || function
            .strip_suffix(name)
            .is_some_and(|rest| rest.ends_with("::"))
}

fn strip_hash(function: &str) -> &str {
    match function.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => function,
    }
}

/// Index of the innermost frame of `stack` that is the function `name`.
pub fn frame_index(stack: &Stack, name: &str) -> Option<usize> {
    stack.frames.iter().position(|f| function_is(f, name))
}

/// One line per stack: size, count and up to 16 frames, innermost first.
pub fn describe_stack(stack: &Stack) -> String {
    let mut frames: Vec<String> = stack
        .frames
        .iter()
        .take(16)
        .map(|f| f.display_name())
        .collect();
    if stack.frames.len() > 16 {
        frames.push(format!("... ({} frames)", stack.frames.len()));
    }
    if frames.is_empty() {
        frames.push("<no frames>".to_owned());
    }
    format!(
        "{} B in {} allocs: {}",
        stack.bytes,
        stack.count,
        frames.join(" <- ")
    )
}

/// Every stack of a report, one per line.
pub fn describe_report(report: &Report) -> String {
    let mut text = format!(
        "totals: {} B in {} allocs; stats: {:?}\n",
        report.totals.bytes, report.totals.count, report.stats
    );
    for stack in &report.stacks {
        text.push_str("  ");
        text.push_str(&describe_stack(stack));
        text.push('\n');
    }
    text
}

/// Compares a report with a ground-truth table and returns every mismatch
/// (empty when the report is right):
///
/// - each function's outstanding bytes and count, summed over the stacks
///   that contain it, equal the table's (exactly);
/// - when `max_depth` is given, the function is among the first `max_depth`
///   frames of each of those stacks (the stack is taken where the allocator
///   returns, so the caller should be `frames[0]`);
/// - no stack contains two leaking functions or any of the `clean` ones;
/// - every stack belongs to a leaking function, and the report's totals are
///   the table's sum.
pub fn check_leaks(
    report: &Report,
    expected: &[Leak],
    clean: &[&str],
    max_depth: Option<usize>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut found = vec![Totals::default(); expected.len()];
    for stack in &report.stacks {
        let hits: Vec<(usize, usize)> = expected
            .iter()
            .enumerate()
            .filter_map(|(i, leak)| frame_index(stack, leak.function).map(|depth| (i, depth)))
            .collect();
        for name in clean {
            if frame_index(stack, name).is_some() {
                problems.push(format!(
                    "a stack contains {name}, which leaves nothing outstanding: {}",
                    describe_stack(stack)
                ));
            }
        }
        match hits.as_slice() {
            [] => problems.push(format!(
                "a stack belongs to no leaking function: {}",
                describe_stack(stack)
            )),
            [(i, depth)] => {
                found[*i].bytes += stack.bytes;
                found[*i].count += stack.count;
                if let Some(max) = max_depth {
                    if *depth >= max {
                        problems.push(format!(
                            "{} is frame {depth}, expected within the first {max}: {}",
                            expected[*i].function,
                            describe_stack(stack)
                        ));
                    }
                }
            }
            _ => problems.push(format!(
                "a stack contains several leaking functions: {}",
                describe_stack(stack)
            )),
        }
    }
    for (leak, got) in expected.iter().zip(&found) {
        if (got.bytes, got.count) != (leak.bytes, leak.count) {
            problems.push(format!(
                "{}: {} B in {} allocs outstanding, expected {} B in {}",
                leak.function, got.bytes, got.count, leak.bytes, leak.count
            ));
        }
    }
    let want = total(expected);
    if report.totals != want {
        problems.push(format!(
            "totals: {} B in {} allocs, expected {} B in {}",
            report.totals.bytes, report.totals.count, want.bytes, want.count
        ));
    }
    problems
}

/// Checks that nothing was lost: no stack walk failed, no map overflowed.
pub fn check_no_loss(stats: &Stats) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, value) in [
        ("stack_lost", stats.stack_lost),
        ("live_map_full", stats.live_map_full),
        ("pending_map_full", stats.pending_map_full),
        ("stack_map_full", stats.stack_map_full),
    ] {
        if value != 0 {
            problems.push(format!("stats.{name} = {value}, expected 0"));
        }
    }
    problems
}

/// The JSON ground-truth test of a leaking fixture with churn (`leaky.c`,
/// `leaky-rust`): profiles `kind` with `--format json --top 1000` and asserts
/// that the report has this schema version and the fixture's pid, and that
/// it matches `expected` and `clean` ([`check_leaks`] with `max_depth`), lost
/// nothing ([`check_no_loss`]), counted the fixture's failed allocation, and
/// saw the churn: at least `min_churn` allocations besides the leaks, and as
/// many frees. Every problem is listed, with the whole report, which is
/// returned for further checks.
pub fn assert_ground_truth(
    kind: Kind,
    expected: &[Leak],
    clean: &[&str],
    max_depth: Option<usize>,
    min_churn: u64,
) -> Report {
    let (output, pid) = profile_fixture(kind, &["--format", "json", "--top", "1000"]);
    let report = output.report();
    let dump = describe_report(&report);

    assert_eq!(report.version, memprof::model::SCHEMA_VERSION);
    assert_eq!(report.target.pid, pid);

    let mut problems = check_leaks(&report, expected, clean, max_depth);
    problems.extend(check_no_loss(&report.stats));
    let stats = &report.stats;
    if stats.failed_allocs < 1 {
        problems.push(format!(
            "stats.failed_allocs = {}, expected >= 1 (fail_alloc's malloc of half the \
             address space failed)",
            stats.failed_allocs
        ));
    }
    // The churn must have been seen, or "no churn_worker stack" proves nothing.
    if stats.allocs < min_churn + total(expected).count {
        problems.push(format!(
            "stats.allocs = {}, expected >= {} (the churn threads' allocations)",
            stats.allocs,
            min_churn + total(expected).count
        ));
    }
    if stats.frees < min_churn {
        problems.push(format!(
            "stats.frees = {}, expected >= {min_churn}",
            stats.frees
        ));
    }
    assert!(
        problems.is_empty(),
        "the report does not match the {kind:?} fixture's ground truth:\n- {}\n\nreport:\n{dump}",
        problems.join("\n- ")
    );
    report
}

/// The functions of `leaks` that `text` does not name as a word ([`find_word`]).
pub fn unnamed_leaks(text: &str, leaks: &[Leak]) -> Vec<&'static str> {
    leaks
        .iter()
        .map(|l| l.function)
        .filter(|f| find_word(text, f).is_none())
        .collect()
}

/// Byte offset of the first occurrence of `word` in `text` that is not part
/// of a longer identifier (`leak_calloc` does not match in `leak_calloc_big`).
pub fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str) -> Frame {
        Frame {
            function: Some(function.to_owned()),
            ..Frame::default()
        }
    }

    fn stack(bytes: u64, count: u64, functions: &[&str]) -> Stack {
        Stack {
            bytes,
            count,
            frames: functions.iter().map(|f| frame(f)).collect(),
            ..Stack::default()
        }
    }

    #[test]
    fn function_names_match_c_and_rust_forms() {
        assert!(function_is(&frame("leak_malloc"), "leak_malloc"));
        assert!(function_is(&frame("leaky_rust::leak_boxes"), "leak_boxes"));
        assert!(function_is(
            &frame("leaky_rust::leak_boxes::h0123456789abcdef"),
            "leak_boxes"
        ));
        assert!(!function_is(&frame("leak_calloc_big"), "leak_calloc"));
        assert!(!function_is(&frame("my_leak_malloc"), "leak_malloc"));
        assert!(!function_is(&Frame::default(), "leak_malloc"));
    }

    #[test]
    fn ground_truth_tables_add_up() {
        assert_eq!(
            total(LEAKY_C),
            Totals {
                bytes: 1_393_680,
                count: 41
            }
        );
        assert_eq!(
            total(PHASES),
            Totals {
                bytes: 30 * 4096 + 512 * 1024,
                count: 31
            }
        );
        assert_eq!(
            total(LEAKY_RUST),
            Totals {
                bytes: 75_629,
                count: 23
            }
        );
        assert_eq!(
            total(LEAKY_RUST_JEMALLOC),
            Totals {
                bytes: 78_189,
                count: 27
            }
        );
    }

    #[test]
    fn check_leaks_accepts_the_truth_and_names_each_mismatch() {
        let expected = [leak("a", 2, 30), leak("b", 1, 5)];
        let mut report = Report {
            stacks: vec![
                stack(20, 1, &["a", "main"]),
                stack(10, 1, &["x", "a", "main"]),
                stack(5, 1, &["b", "main"]),
            ],
            totals: Totals {
                bytes: 35,
                count: 3,
            },
            ..Report::default()
        };
        assert_eq!(
            check_leaks(&report, &expected, &["churn"], Some(2)),
            Vec::<String>::new()
        );
        assert_eq!(
            check_leaks(&report, &expected, &["churn"], Some(1)).len(),
            1
        );

        report.stacks.push(stack(7, 1, &["churn", "main"]));
        report.totals = Totals {
            bytes: 42,
            count: 4,
        };
        let problems = check_leaks(&report, &expected, &["churn"], None);
        assert_eq!(problems.len(), 3, "{problems:#?}"); // clean, no leak fn, totals
    }

    #[test]
    fn find_word_respects_identifier_boundaries() {
        let text = "1 MiB leak_calloc_big\n  5 KiB leak_calloc (x.c:3)";
        assert_eq!(find_word(text, "leak_calloc_big"), Some(6));
        assert_eq!(find_word(text, "leak_calloc"), text.find("leak_calloc ("));
        assert_eq!(find_word(text, "calloc"), None);
    }
}
