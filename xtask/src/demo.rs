//! `cargo xtask demo`: build memprof, start a bundled leaking program, profile it, show the result.
//!
//! The demo program (`tests/fixtures/demo.c`) prints `ready <pid>` on stdout once started and runs
//! for `argv[1]` seconds. It is started in its own process group so a Ctrl-C at the terminal
//! reaches memprof (which stops early and still writes its report) but not the program memprof
//! is symbolizing; xtask catches Ctrl-C too, so its guard always kills and reaps the program.

use std::{
    fs,
    io::{self, BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, is_root},
    setup,
};

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long memprof profiles the demo program, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,
    /// Where leak.svg and leak.json are written [default: target/demo]
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// The demo program outlives the profile window by this much, to cover memprof loading and
/// attaching its probes before the window starts. xtask stops it (SIGTERM) as soon as memprof
/// exits, so the program's own deadline only matters if something goes wrong.
const SERVICE_EXTRA_SECS: u64 = 10;
/// How long the demo program may take to print `ready <pid>`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the demo program may take to exit after SIGTERM (it prints what it leaked).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Built like the C test fixtures: frame pointers everywhere, so every frame can be walked.
const CFLAGS: &[&str] = &[
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-pthread",
];

pub(crate) fn run(args: &DemoArgs) -> Result<()> {
    interrupt::catch().context("cannot install the Ctrl-C handler")?;
    setup::for_build()?;
    let memprof = cmd::build_release_memprof()?;

    let target = cmd::target_dir();
    let demo_dir = target.join("demo");
    let out_dir = match &args.out_dir {
        Some(dir) => std::path::absolute(dir)
            .with_context(|| format!("cannot resolve --out-dir {}", dir.display()))?,
        None => demo_dir.clone(),
    };
    for dir in [&demo_dir, &out_dir] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let source = cmd::root().join("tests/fixtures/demo.c");
    if !source.is_file() {
        bail!(
            "the demo program's source {} is missing (a C program that prints `ready <pid>` \
             and leaks memory for argv[1] seconds)",
            source.display()
        );
    }
    let service_bin = demo_dir.join("leaky-service");
    cmd::step(
        "compile demo program",
        Command::new("gcc")
            .args(CFLAGS)
            .arg("-o")
            .arg(&service_bin)
            .arg(&source),
    )?;

    let svg = out_dir.join("leak.svg");
    let json = out_dir.join("leak.json");
    // So that files left by an earlier run are never shown as this run's.
    for file in [&svg, &json] {
        if file.symlink_metadata().is_ok() {
            fs::remove_file(file).with_context(|| format!("cannot remove {}", file.display()))?;
        }
    }

    let mut profile = if is_root() {
        Command::new(&memprof)
    } else if which::which("sudo").is_ok() {
        println!("not root: running memprof through `sudo -E`");
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(&memprof);
        cmd
    } else {
        bail!(
            "memprof needs root (CAP_BPF and CAP_PERFMON) and sudo is not installed: \
             run `cargo xtask demo` as root"
        );
    };
    let mut service = Service::start(&service_bin, args.duration + SERVICE_EXTRA_SECS)?;
    profile
        .arg("-p")
        .arg(service.pid.to_string())
        .arg("--duration")
        .arg(args.duration.to_string())
        .arg("-o")
        .arg(&svg)
        .arg("-o")
        .arg(&json)
        .stdin(Stdio::null());
    let profiled = cmd::step(
        &format!("profile leaky-service (pid {})", service.pid),
        &mut profile,
    );
    let stopped = service.stop();
    profiled?;
    if interrupt::happened() {
        println!("interrupted: memprof stopped early");
    }
    if let Some(status) = stopped? {
        println!("note: leaky-service had already exited ({status}) before memprof finished");
    }

    for file in [&svg, &json] {
        if !file.is_file() {
            bail!("memprof succeeded but did not write {}", file.display());
        }
    }
    println!("==> demo done");
    println!("    leak flame graph: {}", svg.display());
    println!("    JSON report:      {}", json.display());
    Ok(())
}

/// The running demo program; dropping it kills and reaps the process.
struct Service {
    child: Child,
    /// The pid the program reported in its `ready <pid>` line.
    pid: u32,
}

impl Service {
    fn start(bin: &Path, run_secs: u64) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg(run_secs.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0);
        die_with_xtask(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take();
        // From here on, the guard kills the program on every error path.
        let mut service = Service { child, pid: 0 };
        let stdout = stdout.context("the demo program's stdout was not captured")?;

        // Read stdout on a thread so the wait has a timeout; the thread keeps draining the pipe
        // afterwards so the program never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let stop = line.is_err();
                // Once the receiver is gone, lines are drained and dropped.
                let _ = tx.send(line);
                if stop {
                    break;
                }
            }
        });

        println!("==> start demo program: {} {run_secs}", bin.display());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(line)) => {
                    if let Some(pid) = ready_pid(&line) {
                        service.pid = pid;
                        println!("    ready, pid {pid}");
                        return Ok(service);
                    }
                }
                Ok(Err(err)) => {
                    return Err(err).context("cannot read the demo program's stdout");
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = service
                        .child
                        .wait()
                        .context("cannot wait for the demo program")?;
                    bail!("the demo program exited ({status}) without printing `ready <pid>`");
                }
                Err(RecvTimeoutError::Timeout) => {
                    if interrupt::happened() {
                        bail!("interrupted while waiting for the demo program");
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "the demo program printed no `ready <pid>` line within {}s",
                            READY_TIMEOUT.as_secs()
                        );
                    }
                }
            }
        }
    }

    /// Stops the program with SIGTERM (it then prints on stderr what it leaked, to compare with
    /// memprof's report), or SIGKILL if it does not exit in time, and reaps it. Returns its exit
    /// status if it had already exited by itself.
    fn stop(&mut self) -> Result<Option<ExitStatus>> {
        let check =
            |child: &mut Child| child.try_wait().context("cannot check on the demo program");
        if let Some(status) = check(&mut self.child)? {
            return Ok(Some(status));
        }
        println!("==> stop demo program (SIGTERM)");
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet, so the
        // pid still names it.
        if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if check(&mut self.child)?.is_some() {
                    return Ok(None);
                }
                thread::sleep(Duration::from_millis(50));
            }
            println!("    no exit within {}s: SIGKILL", STOP_TIMEOUT.as_secs());
        }
        self.child.kill().context("cannot kill the demo program")?;
        self.child
            .wait()
            .context("cannot wait for the demo program")?;
        Ok(None)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Already reaped (stop ran) or still running: kill is harmless either way.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Makes the child started by `cmd` die (SIGKILL) when xtask dies, even if xtask is killed
/// outright and no guard runs. Call it from the thread that spawns the child: the kernel ties
/// the signal to the death of that thread.
pub(crate) fn die_with_xtask(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl and getppid syscalls; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            // xtask died before prctl took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The pid in a `ready <pid>` line (the demo program's, and the bench workloads').
pub(crate) fn ready_pid(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("ready"), Some(pid), None) => pid.parse().ok(),
        _ => None,
    }
}

/// Ctrl-C (SIGINT) and SIGTERM set a flag instead of killing xtask, so the demo program is
/// always stopped by its guard. Children start with the default disposition again (a caught
/// signal is reset on exec), so memprof still receives Ctrl-C and stops early.
pub(crate) mod interrupt {
    use super::*;

    static HAPPENED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_signal: libc::c_int) {
        HAPPENED.store(true, Ordering::SeqCst);
    }

    pub(crate) fn happened() -> bool {
        HAPPENED.load(Ordering::SeqCst)
    }

    pub(crate) fn catch() -> io::Result<()> {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler only
            // stores to an atomic, which is async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                if libc::sigemptyset(&mut action.sa_mask) == -1
                    || libc::sigaction(signal, &action, std::ptr::null_mut()) == -1
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_line() {
        assert_eq!(ready_pid("ready 4242"), Some(4242));
        assert_eq!(ready_pid("ready 4242\r"), Some(4242));
        assert_eq!(ready_pid("ready"), None);
        assert_eq!(ready_pid("ready 12 extra"), None);
        assert_eq!(ready_pid("starting up"), None);
    }
}
