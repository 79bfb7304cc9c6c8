//! The thread that empties the `--mmap` ring buffer during the run: the BPF
//! programs send every `mmap`, `munmap` and `mremap` of the target through
//! it, and this thread replays them, in order, on a [`Ledger`] it hands back
//! when stopped. The buffer must be read while the target runs (it would
//! fill up and lose events), so this is the one part of `--mmap` that is not
//! read at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{Map, RingBuf};
use memprof_common::MmapEvent;

use super::ledger::Ledger;

/// How often the ring buffer is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// The running thread. Dropping it stops the thread.
pub(crate) struct Drain {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Ledger>>>,
}

impl Drain {
    /// Starts replaying the events of the `MMAP_EVENTS` ring buffer `map`.
    pub(crate) fn start(map: Map) -> anyhow::Result<Drain> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("memprof-mmap".into())
            .spawn(move || drain(map, &flag))
            .context("starting the thread that reads mmap events")?;
        Ok(Drain {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread after one last pass over the buffer and returns the
    /// ledger, with the ranges of unfinished `mremap`s put back.
    pub(crate) fn finish(mut self) -> anyhow::Result<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .take()
            .context("the thread reading mmap events was already stopped")?;
        let mut ledger = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread reading mmap events panicked"))??;
        ledger.settle();
        Ok(ledger)
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// Replays the ring buffer's events on a ledger until `stop`, then once more.
fn drain(map: Map, stop: &AtomicBool) -> anyhow::Result<Ledger> {
    let mut ring = RingBuf::try_from(map).context("MMAP_EVENTS map")?;
    let mut ledger = Ledger::default();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(item) = ring.next() {
            if item.len() < size_of::<MmapEvent>() {
                continue;
            }
            // SAFETY: the programs write whole `MmapEvent`s (repr(C), integers
            // only); the item may not be aligned, hence the unaligned read.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<MmapEvent>()) };
            ledger.apply(&event);
        }
        if stopping {
            return Ok(ledger);
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}
