//! The harness of memprof's integration tests.
//!
//! The integration tests (`tests/tests/integration/`, one module per feature)
//! profile real processes ("fixtures") that leak a known number of bytes
//! through known functions, and compare memprof's report with that ground
//! truth. This library:
//!
//! - finds the fixtures ([`Kind::path`]): `build.rs` compiles the C ones
//!   (`tests/fixtures/*.c`) with gcc and [`CFLAGS`] into `$OUT_DIR/fixtures/`;
//!   the Rust one is the `leaky-rust` binary of this package, which cargo
//!   builds before the integration tests (it needs frame pointers: see
//!   `build.rs` and [`rust_fixture_has_frame_pointers`]);
//! - runs a fixture ([`Fixture`]) and memprof ([`Memprof`]), and kills and
//!   reaps both on drop, so a failing test leaves no process behind;
//! - holds each fixture's ground truth ([`Kind::truth`]) and checks a report
//!   against it ([`assert_ground_truth`], [`check_leaks`]);
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

mod fixtures;

pub use fixtures::{alloc_truth, c_fixtures_dir, leak, total, AllocTruth, GroundTruth, Kind, Leak};
// The report's types, as memprof writes them in JSON: the one place the
// tests name memprof's library.
pub use memprof::model::{
    Frame, Process, Report, SampleMethod, Stack, Stats, Totals, SCHEMA_VERSION,
};

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
    version >= memprof::SAMPLING_MIN_KERNEL
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
        Fixture::spawn_binary(kind, &bin, wrapper, args)
    }

    /// Like [`Fixture::spawn_with`], with `bin` a copy of the fixture `kind`
    /// (stripped, moved, ...) that speaks its protocol.
    pub fn spawn_binary(kind: Kind, bin: &Path, wrapper: &[&str], args: &[&str]) -> Fixture {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
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

    /// Panics with stderr unless memprof exited with `code` (launch mode
    /// passes the command's exit status on).
    pub fn assert_exit_code(&self, code: i32) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "memprof exited {} instead of {code}; stderr:\n{}",
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

/// Profiles a program that speaks the fixtures' protocol on its stdio
/// (a first line `ready ...`, then `done` once it read `go`), started by
/// `command`: `memprof -p PID --format json` and `memprof_args`, where
/// `pid` finds the process to attach to from the program and its ready
/// line; go, done, Ctrl-C. Checks that memprof and the program exit
/// cleanly and returns the report.
pub fn profile_stdio_program(
    mut command: Command,
    pid: impl FnOnce(&Child, &str) -> String,
    memprof_args: &[&str],
) -> Report {
    let what = format!("{:?}", command.get_program());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    let pid = pid(&child, ready.trim());
    let mut args = vec!["-p", pid.as_str(), "--format", "json"];
    args.extend_from_slice(memprof_args);
    let mut memprof = Memprof::spawn(&args);
    memprof.wait_attached(ATTACH_TIMEOUT);
    writeln!(stdin, "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap().trim(), "done");
    memprof.interrupt();
    let output = memprof.finish(FINISH_TIMEOUT);
    drop(stdin);
    let status = child.wait().unwrap();
    output.assert_success();
    assert!(status.success(), "{what} exited with {status}");
    output.report()
}

/// The pid of a `ready PID` line.
pub fn ready_pid(_: &Child, ready: &str) -> String {
    ready
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("not a ready line: {ready}"))
        .trim()
        .to_owned()
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
    let bin = kind
        .path()
        .unwrap_or_else(|e| panic!("the {kind:?} fixture is not available: {e}"));
    profile_fixture_binary(kind, &bin, fixture_args, memprof_args)
}

/// [`profile_fixture_with`] of `bin`, a copy of the fixture `kind`.
pub fn profile_fixture_binary(
    kind: Kind,
    bin: &Path,
    fixture_args: &[&str],
    memprof_args: &[&str],
) -> (Output, u32) {
    let mut fixture = Fixture::spawn_binary(kind, bin, &[], fixture_args);
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

/// Profiles `kind` from go to done ([`profile_fixture`]) with `--format
/// json --top 1000` and returns the report, after checking that it has this
/// schema version and the fixture's pid.
pub fn profile_json(kind: Kind) -> Report {
    let (output, pid) = profile_fixture(kind, &["--format", "json", "--top", "1000"]);
    let report = output.report();
    assert_eq!(report.version, SCHEMA_VERSION);
    assert_eq!(report.target.pid, pid);
    report
}

impl GroundTruth {
    /// [`check_leaks`] against this table, its clean functions and depth.
    pub fn check_leaks(&self, report: &Report) -> Vec<String> {
        check_leaks(report, self.leaks, self.clean, self.max_depth)
    }
}

/// Asserts that `report`, a run over `kind` from go to done, matches the
/// fixture's ground truth ([`Kind::truth`]): its leaks, clean functions and
/// depth ([`check_leaks`]); nothing lost ([`check_no_loss`]); the failed
/// allocations it makes on purpose counted; and its churn seen: at least
/// `min_churn` allocations besides the leaks, and as many frees. Every
/// problem is listed, with the whole report.
#[track_caller]
pub fn assert_ground_truth(report: &Report, kind: Kind) {
    let truth = kind.truth();
    let mut problems = truth.check_leaks(report);
    problems.extend(check_no_loss(&report.stats));
    let stats = &report.stats;
    if stats.failed_allocs < truth.min_failed_allocs {
        problems.push(format!(
            "stats.failed_allocs = {}, expected >= {} (fail_alloc's malloc of half the \
             address space failed)",
            stats.failed_allocs, truth.min_failed_allocs
        ));
    }
    // The churn must have been seen, or "no churn_worker stack" proves nothing.
    let min_allocs = truth.min_churn + truth.total().count;
    if stats.allocs < min_allocs {
        problems.push(format!(
            "stats.allocs = {}, expected >= {min_allocs} (the churn's allocations and the leaks)",
            stats.allocs
        ));
    }
    if stats.frees < truth.min_churn {
        problems.push(format!(
            "stats.frees = {}, expected >= {} (the churn's frees)",
            stats.frees, truth.min_churn
        ));
    }
    assert!(
        problems.is_empty(),
        "the report does not match the {kind:?} fixture's ground truth:\n- {}\n\nreport:\n{}",
        problems.join("\n- "),
        describe_report(report)
    );
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
            Kind::Leaky.truth().total(),
            Totals {
                bytes: 1_393_680,
                count: 41
            }
        );
        assert_eq!(
            Kind::Phases.truth().total(),
            Totals {
                bytes: 30 * 4096 + 512 * 1024,
                count: 31
            }
        );
        assert_eq!(
            Kind::LeakyRust.truth().total(),
            Totals {
                bytes: 75_629,
                count: 23
            }
        );
        assert_eq!(
            Kind::LeakyRustJemalloc.truth().total(),
            Totals {
                bytes: 78_189,
                count: 27
            }
        );
    }

    #[test]
    fn each_table_names_a_function_once_and_never_as_clean() {
        let tables = [
            Kind::Leaky,
            Kind::LeakyCxx,
            Kind::LeakyRust,
            Kind::LeakyRustJemalloc,
            Kind::Phases,
            Kind::Forker,
            Kind::OneShot,
            Kind::Execer,
            Kind::Stacks,
            Kind::Transient,
        ]
        .map(|kind| (format!("{kind:?}"), kind.truth()));
        let child = ("Forker's child".to_owned(), &Kind::FORKER_CHILD);
        for (name, truth) in tables
            .iter()
            .map(|(n, t)| (n, *t))
            .chain([(&child.0, child.1)])
        {
            assert!(!truth.leaks.is_empty(), "{name}");
            for (i, leak) in truth.leaks.iter().enumerate() {
                assert!(leak.count > 0 && leak.bytes > 0, "{name}: {leak:?}");
                assert!(
                    truth.leaks[i + 1..]
                        .iter()
                        .all(|l| l.function != leak.function),
                    "{name} names {} twice",
                    leak.function
                );
                assert!(!truth.clean.contains(&leak.function), "{name}: {leak:?}");
            }
        }
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
