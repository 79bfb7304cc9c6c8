//! Launch mode: `memprof [options] -- COMMAND ARGS...`.
//!
//! memprof forks the child and holds it on a pipe before it calls exec,
//! attaches the probes to it (they belong to the process and stay through
//! exec), then lets it exec: the program's very first allocation is seen.
//!
//! The child is traced with ptrace to stop it at its exit, just long enough
//! to read its memory map, through which its stacks are symbolized (a
//! process that has exited has none), and, when stacks are walked from
//! unwind tables, to write the tables of its objects before their code runs:
//! at its exec (the program and its loader are mapped) and each time its
//! dynamic loader has mapped objects (a uprobe on the loader's
//! `_dl_debug_state` stops the main thread with a `SIGSTOP` from the kernel,
//! which the tracer takes away). Every other signal it gets is handed on to
//! it unchanged.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::FromRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::sync::mpsc;

/// What the tracer thread reports about the child.
#[derive(Debug)]
pub(crate) enum ChildEvent {
    /// The child is about to exit and is stopped, its memory map still
    /// there; it goes on when the sender is used (or dropped).
    Exiting(std_mpsc::Sender<()>),
    /// The child ended with this wait status (and was reaped).
    Exited(i32),
}

/// How long the child is kept stopped at its exit at most.
const EXIT_STOP_LIMIT: Duration = Duration::from_secs(10);

/// Why the child is stopped for [`Launched::on_hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// It has just called exec: the program and its loader are mapped.
    Exec,
    /// Its dynamic loader has mapped objects (or is about to).
    Loader,
}

/// What the tracer calls while the child is stopped at a [`Hold`].
type HoldHook = Box<dyn FnMut(u32, Hold) + Send>;

/// A child started by memprof, held before exec until [`Launched::release`].
pub(crate) struct Launched {
    pub pid: u32,
    /// The program it will exec, found on `PATH`.
    pub program: PathBuf,
    /// The command line, for the report.
    pub cmdline: String,
    /// The command's name as the kernel will show it (`comm`).
    pub comm: String,
    /// Write end of the pipe the child waits on. Dropped without being
    /// released (an error while attaching), it gives the child EOF: it exits 127.
    go: Option<File>,
    /// Read end of a close-on-exec pipe: EOF once exec succeeded, else the errno.
    exec_error: Option<File>,
    /// Events of the tracer thread.
    pub events: mpsc::UnboundedReceiver<ChildEvent>,
    /// True when the tracer holds the child (its holds can be asked for).
    pub traced: bool,
    /// Called by the tracer at each hold.
    hook: Arc<Mutex<Option<HoldHook>>>,
}

/// Forks `command`, held before exec. Fails for a command that cannot be
/// found or that is statically linked (it has no libc for the probes).
pub(crate) fn spawn(command: &[OsString]) -> anyhow::Result<Launched> {
    let Some(program) = command.first() else {
        bail!("no command after --");
    };
    let path = find_program(Path::new(program))?;
    if crate::target::is_go_program(&path) {
        return Err(crate::error::Error::GoProgram {
            what: path.display().to_string(),
        }
        .into());
    }
    check_dynamic(&path)?;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL byte", path.display()))?;
    let c_args = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .context("an argument of the command has a NUL byte")?;
    let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());

    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    // SAFETY: after fork the child only calls async-signal-safe functions
    // (read, close, execv, write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: see above; every buffer and fd here was set up before fork.
        unsafe {
            libc::close(go_write);
            libc::close(err_read);
            let mut byte = 0u8;
            loop {
                let n = libc::read(go_read, (&raw mut byte).cast(), 1);
                if n == 1 {
                    break;
                }
                if n == 0 || *libc::__errno_location() != libc::EINTR {
                    // memprof went away before letting the command run.
                    libc::_exit(127);
                }
            }
            libc::execv(c_path.as_ptr(), argv.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(err_write, (&raw const errno).cast(), size_of::<i32>());
            libc::_exit(127);
        }
    }
    // SAFETY: the fds were just created by pipe2 and are owned here.
    let (go, exec_error) = unsafe {
        libc::close(go_read);
        libc::close(err_write);
        (File::from_raw_fd(go_write), File::from_raw_fd(err_read))
    };
    let pid = pid as u32;
    let (tx, events) = mpsc::unbounded_channel();
    let (seized_tx, seized_rx) = std_mpsc::channel();
    let hook: Arc<Mutex<Option<HoldHook>>> = Arc::default();
    let tracer_hook = hook.clone();
    std::thread::Builder::new()
        .name("memprof-tracer".to_string())
        .spawn(move || trace(pid, &seized_tx, &tx, &tracer_hook))
        .context("starting the tracer thread")?;
    let traced = match seized_rx.recv() {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            log::warn!(
                "cannot trace the command ({e}): stacks of allocations it holds at exit may not \
                 be symbolized, and its first allocations may be walked by frame pointer"
            );
            false
        }
        Err(_) => bail!("the tracer thread ended at once"),
    };
    let base = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Launched {
        pid,
        program: path.clone(),
        cmdline: command
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        // The kernel keeps the first 15 bytes of the file name.
        comm: base.chars().take(15).collect(),
        go: Some(go),
        exec_error: Some(exec_error),
        events,
        traced,
        hook,
    })
}

impl Launched {
    /// The command as a target: its allocator is the one the program will
    /// load (the first object in its loader's order that defines `malloc`;
    /// see [`crate::load_order`]), not what the child held before exec maps.
    /// A static program is read from the child, as it maps the libc the
    /// command will use.
    pub(crate) fn target(&self) -> anyhow::Result<crate::target::TargetProcess> {
        use crate::target::TargetProcess;
        let mut target = match crate::load_order::load_order(&self.program)? {
            Some(objects) => TargetProcess::before_exec(
                self.pid,
                self.comm.clone(),
                self.cmdline.clone(),
                &self.program,
                &objects,
            )?,
            None => TargetProcess::open(self.pid)?,
        };
        target.comm = self.comm.clone();
        target.cmdline = self.cmdline.clone();
        log::debug!(
            "{} will call the allocator {}",
            self.cmdline,
            target.allocator_description()
        );
        Ok(target)
    }

    /// Calls `hook` (in the tracer thread) each time the child is held,
    /// before it goes on.
    pub(crate) fn on_hold(&self, hook: impl FnMut(u32, Hold) + Send + 'static) {
        if let Ok(mut slot) = self.hook.lock() {
            *slot = Some(Box::new(hook));
        }
    }

    /// Lets the child exec the command; fails when exec failed.
    pub(crate) fn release(&mut self) -> anyhow::Result<()> {
        if let Some(mut go) = self.go.take() {
            go.write_all(b"g").context("releasing the command")?;
        }
        let Some(mut exec_error) = self.exec_error.take() else {
            return Ok(());
        };
        let mut errno = [0u8; 4];
        match exec_error.read(&mut errno) {
            Ok(4) => {
                let e = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
                bail!("cannot run {}: {e}", self.cmdline)
            }
            _ => Ok(()),
        }
    }
}

/// The tracer thread: seizes the child, stops it at its exit until
/// memprof has read its memory map, and reaps it.
fn trace(
    pid: u32,
    seized: &std_mpsc::Sender<Result<(), std::io::Error>>,
    events: &mpsc::UnboundedSender<ChildEvent>,
    hook: &Mutex<Option<HoldHook>>,
) {
    let hold = |why: Hold| {
        if let Ok(mut hook) = hook.lock() {
            if let Some(hook) = hook.as_mut() {
                hook(pid, why);
            }
        }
    };
    let pid = pid as libc::pid_t;
    // SAFETY: plain ptrace request on our own child.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            0,
            (libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC) as libc::c_long,
        )
    };
    let _ = seized.send(if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    });
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; status is ours.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            let _ = events.send(ChildEvent::Exited(status));
            return;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        // SAFETY (all three): ptrace requests on our stopped tracee.
        if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
            let (ack, acked) = std_mpsc::channel();
            if events.send(ChildEvent::Exiting(ack)).is_ok() {
                let _ = acked.recv_timeout(EXIT_STOP_LIMIT);
            }
            unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, 0) };
        } else if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXEC {
            hold(Hold::Exec);
            unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, 0) };
        } else if sig == libc::SIGSTOP && event == 0 && from_kernel(pid) {
            // The loader's hold (memprof's own BPF program sent it): taken away.
            hold(Hold::Loader);
            unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, 0) };
        } else if event == libc::PTRACE_EVENT_STOP {
            // A group stop (SIGSTOP and the like): stay stopped until SIGCONT.
            unsafe { libc::ptrace(libc::PTRACE_LISTEN, pid, 0, 0) };
        } else {
            // A signal for the child: hand it on.
            unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, sig as libc::c_long) };
        }
    }
}

/// True when the signal that stopped the tracee `pid` was sent by the
/// kernel (`SI_KERNEL`: a BPF program's `bpf_send_signal_thread`), not by a
/// process (`kill -STOP` is `SI_USER`).
fn from_kernel(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain data; PTRACE_GETSIGINFO fills it for a
    // tracee in a signal-delivery stop.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETSIGINFO, pid, 0, &raw mut info) };
    rc == 0 && info.si_code == libc::SI_KERNEL
}

/// The program to exec: a path as given, else the first match in `PATH`.
fn find_program(program: &Path) -> anyhow::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        if program.is_file() {
            return Ok(program.to_path_buf());
        }
        bail!("cannot run {}: no such file", program.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("cannot run {}: not found in PATH", program.display()))
}

/// Fails for a statically linked ELF executable (no `PT_INTERP`): it maps
/// no libc, so there is nothing to probe, unless it is a musl one (its
/// malloc is in the executable). Scripts and others pass.
fn check_dynamic(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !data.starts_with(b"\x7fELF") {
        return Ok(());
    }
    let has_interp = match object::File::parse(&*data) {
        Ok(object::File::Elf64(elf)) => elf
            .elf_program_headers()
            .iter()
            .any(|ph| ph.p_type.get(elf.endian()) == object::elf::PT_INTERP),
        _ => true,
    };
    if !has_interp && !crate::target::is_static_musl(path) {
        return Err(crate::error::Error::StaticCommand {
            command: path.display().to_string(),
        }
        .into());
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end) as raw fds.
fn pipe() -> anyhow::Result<(i32, i32)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    Ok((fds[0], fds[1]))
}
