//! Sampling by time windows (`--sample-rate N --sample-by window`).
//!
//! Sampling by call still puts a breakpoint in every allocation function,
//! and a breakpoint costs the target a trap on every call whether the call
//! is sampled or not: on the benchmark's churn, the two traps of a
//! malloc/free pair are most of memprof's cost. Sampling by windows takes the
//! breakpoints of the functions that only allocate (malloc, calloc, the
//! memalign family) out between short windows: a thread of memprof attaches
//! their uprobe session links, opens the window (`CONTROL[WINDOW]`, which the
//! programs read), lets it run for the window's length, closes it and
//! detaches them again. Every call that enters during a window is recorded,
//! and no other. `free`, `realloc` and `reallocarray` stay attached: a block
//! recorded in a window must be seen leaving, whenever it leaves.
//!
//! # Estimates
//! Windows start at the times of a Poisson process (exponential intervals,
//! without memory: a program that allocates on a timer does not fall into or
//! out of step with them) of one window per N window lengths, so that they
//! cover 1/N of the run, busy spells of the target as much as quiet ones.
//! Every recorded figure is multiplied by the run's length over the windows'
//! total length as measured ([`WindowLog::scale`], pure data in
//! [`crate::window_log`], which the estimates read).
//!
//! The calls of one window are recorded together, so the error is that of a
//! cluster sample: Var(estimate) ~ s (s - 1) * sum over windows of x_w^2,
//! where x_w is what a stack's blocks recorded in window w add up to and s
//! the scale. Blocks a program allocates in bursts have a larger error than
//! with sampling by call; blocks allocated steadily, as leaks usually are,
//! about the same.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use memprof_common::control;

use crate::session_link;
use crate::snapshot::monotonic_ns;
use crate::window_log::WindowLog;

/// How far behind its schedule the window thread may fall before it skips
/// the windows it missed.
const BEHIND: Duration = Duration::from_secs(1);

/// Most windows whose links are still being closed; beyond it the next
/// window waits for them.
const MAX_CLOSING: usize = 64;

/// How long a closed window's probes stay attached before they are detached,
/// so that the calls that entered during the window reach their return.
const GRACE: Duration = Duration::from_micros(200);

/// A uprobe session link that exists only during windows.
pub(crate) struct Spec {
    /// The loaded session program.
    pub program: Arc<OwnedFd>,
    /// The library, as memprof reaches it (through `/proc/PID/root`).
    pub path: PathBuf,
    /// File offsets of the probed functions.
    pub offsets: Vec<u64>,
    /// Each offset's cookie (which function it is).
    pub cookies: Vec<u64>,
    /// The process the link is bound to; 0 for every process.
    pub pid: u32,
    /// What is probed, for the log.
    pub what: String,
}

/// The thread that opens and closes the windows, and what it needs.
pub(crate) struct Windows {
    specs: Arc<Mutex<Vec<Spec>>>,
    control: Arc<OwnedFd>,
    rate: u32,
    window: Duration,
    running: Option<(mpsc::Sender<()>, JoinHandle<WindowLog>)>,
    log: Option<WindowLog>,
}

impl Windows {
    /// Windows covering 1/`rate` of the time, each `window` long, switched
    /// through the `CONTROL` map `control`.
    pub(crate) fn new(control: OwnedFd, rate: u32, window: Duration) -> Windows {
        Windows {
            specs: Arc::new(Mutex::new(Vec::new())),
            control: Arc::new(control),
            rate: rate.max(2),
            window,
            running: None,
            log: None,
        }
    }

    /// Adds a link to make in every window from the next one on.
    pub(crate) fn add(&self, spec: Spec) {
        self.specs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(spec);
    }

    /// Starts opening windows (once).
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() || self.log.is_some() {
            return Ok(());
        }
        let (stop, stopped) = mpsc::channel();
        let specs = Arc::clone(&self.specs);
        let control = Arc::clone(&self.control);
        let (rate, window) = (self.rate, self.window);
        let handle = std::thread::Builder::new()
            .name("memprof-windows".into())
            .spawn(move || run(&specs, &control, rate, window, &stopped))?;
        self.running = Some((stop, handle));
        Ok(())
    }

    /// Closes the open window, if any, stops opening new ones and returns
    /// when they were open. Later calls return the same log.
    pub(crate) fn stop(&mut self) -> WindowLog {
        if let Some((stop, handle)) = self.running.take() {
            let _ = stop.send(());
            let log = handle.join().unwrap_or_default();
            log::debug!(
                "{} sampling windows, open {:.3} s of {:.3} s (1/{:.1})",
                log.spans.len(),
                log.open_ns() as f64 / 1e9,
                log.end_ns.saturating_sub(log.start_ns) as f64 / 1e9,
                log.scale()
            );
            self.log = Some(log);
        }
        self.log.clone().unwrap_or_default()
    }
}

impl Drop for Windows {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The window thread: gap, window, gap, ... until told to stop.
fn run(
    specs: &Mutex<Vec<Spec>>,
    control: &OwnedFd,
    rate: u32,
    window: Duration,
    stopped: &mpsc::Receiver<()>,
) -> WindowLog {
    let mut log = WindowLog {
        start_ns: monotonic_ns(),
        ..WindowLog::default()
    };
    let mut rng = fastrand::Rng::new();
    // Windows start at the times of a Poisson process of one window per
    // `rate` window lengths, whatever attaching takes: attaching is slower
    // while the target is busy (it waits for the target's memory map lock),
    // and windows that came later when the target is busy would cover its
    // busy spells less than the rest of the run.
    let interval_ns = window.as_nanos() as f64 * f64::from(rate);
    let mut next = log.start_ns + exponential(&mut rng, interval_ns) as u64;
    let mut number: u32 = 0;
    // Closing a link takes the breakpoints out at once, then waits for the
    // kernel's RCU grace periods (100 ms or more). Each window's links are
    // closed by a thread of their own, so that the next window need not wait
    // and the waits overlap (one grace period serves them all).
    let mut closing: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let now = monotonic_ns();
        if now > next + BEHIND.as_nanos() as u64 {
            // Stopped or starved for a long while: no flood of windows to catch up.
            next = now;
        }
        match stopped.recv_timeout(Duration::from_nanos(next.saturating_sub(now))) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break,
        }
        next += exponential(&mut rng, interval_ns) as u64;
        closing.retain(|handle| !handle.is_finished());
        if closing.len() >= MAX_CLOSING {
            // The kernel is slower than the windows: wait for it.
            closing.drain(..).for_each(|handle| {
                let _ = handle.join();
            });
        }
        let begin = monotonic_ns();
        let links: Vec<OwnedFd> = {
            let mut specs = specs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut links = Vec::with_capacity(specs.len());
            specs.retain(|spec| {
                let made = session_link::attach(
                    &spec.program,
                    &spec.path,
                    &spec.offsets,
                    &spec.cookies,
                    spec.pid,
                );
                match made {
                    Ok(link) => links.push(link),
                    // The process the link is for is gone: nothing to record there any more.
                    Err(err) if spec.pid != 0 && gone(&err) => {
                        log::debug!("window: {} gone ({err}): no more links", spec.what);
                        return false;
                    }
                    Err(err) => {
                        log::debug!("window: no link on {}: {err}", spec.what);
                        log.failed_links += 1;
                    }
                }
                true
            });
            links
        };
        number = number.wrapping_add(1).max(1);
        set(control, control::WINDOW, number);
        let open = monotonic_ns();
        let stop = !matches!(stopped.recv_timeout(window), Err(RecvTimeoutError::Timeout));
        set(control, control::WINDOW, 0);
        let close = monotonic_ns();
        log.spans.push((open, close));
        std::thread::sleep(GRACE);
        match std::thread::Builder::new()
            .name("memprof-detach".into())
            .spawn(move || drop(links))
        {
            Ok(handle) => closing.push(handle),
            // Dropped with the closure: closed here, waiting.
            Err(err) => log::debug!("window: closing its links here: {err}"),
        }
        log::trace!(
            "window {number}: attached in {} us, open {} us",
            (open - begin) / 1000,
            (close - open) / 1000,
        );
        if stop {
            break;
        }
    }
    log.end_ns = monotonic_ns();
    // Every link closed before the probes are said to be detached.
    for handle in closing {
        let _ = handle.join();
    }
    log
}

/// True for the errors of a link bound to a process that exited.
fn gone(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ESRCH | libc::ENOENT))
}

/// A draw from the exponential distribution of mean `mean`.
fn exponential(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    // 1 - f64() is in (0, 1]: its logarithm is finite.
    -(1.0 - rng.f64()).ln() * mean
}

/// `CONTROL[key] = value`, through the raw `bpf(2)` call (the map is aya's,
/// owned by the main thread).
fn set(control: &OwnedFd, key: u32, value: u32) {
    /// `union bpf_attr` as `BPF_MAP_UPDATE_ELEM` reads it.
    #[repr(C)]
    struct UpdateAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let mut attr = UpdateAttr {
        map_fd: u32::try_from(control.as_raw_fd()).unwrap_or(u32::MAX),
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: std::ptr::from_ref(&value) as u64,
        flags: 0,
    };
    if let Err(err) = session_link::bpf_call(BPF_MAP_UPDATE_ELEM, &mut attr) {
        log::warn!("switching sampling window {value}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_exponential() {
        let mut rng = fastrand::Rng::with_seed(7);
        let draws: Vec<f64> = (0..20_000).map(|_| exponential(&mut rng, 10.0)).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 10.0).abs() < 0.3, "mean {mean}");
        let over = draws.iter().filter(|&&d| d > 10.0).count() as f64 / draws.len() as f64;
        assert!((over - (-1.0f64).exp()).abs() < 0.02, "P(> mean) = {over}");
    }
}
