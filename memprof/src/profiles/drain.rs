//! The thread that empties the `HEAP_EVENTS` ring buffer during the run and
//! replays its events on a [`PeakReplay`], handed back when stopped. The
//! buffer must be read while the target runs (it would fill up and lose
//! events), so the peak is the one profile not read from the maps at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{Map, RingBuf};
use memprof_common::HeapEvent;

use super::peak::PeakReplay;

/// How often the ring buffer is drained.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// The running thread. Dropping it stops the thread.
pub(crate) struct HeapDrain {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<PeakReplay>>>,
}

impl HeapDrain {
    /// Starts replaying the events of the `HEAP_EVENTS` ring buffer `map`.
    pub(crate) fn start(map: Map) -> anyhow::Result<HeapDrain> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("memprof-peak".into())
            .spawn(move || drain(map, &flag))
            .context("starting the thread that reads heap events")?;
        Ok(HeapDrain {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread after one last pass over the buffer and returns the replay.
    pub(crate) fn finish(mut self) -> anyhow::Result<PeakReplay> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .take()
            .context("the thread reading heap events was already stopped")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread reading heap events panicked"))?
    }
}

impl Drop for HeapDrain {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// Replays the ring buffer's events until `stop`, then once more.
fn drain(map: Map, stop: &AtomicBool) -> anyhow::Result<PeakReplay> {
    let mut ring = RingBuf::try_from(map).context("HEAP_EVENTS map")?;
    let mut replay = PeakReplay::default();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some(item) = ring.next() {
            if item.len() < size_of::<HeapEvent>() {
                continue;
            }
            // SAFETY: the programs write whole `HeapEvent`s (repr(C), integers
            // only); the item may not be aligned, hence the unaligned read.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HeapEvent>()) };
            replay.apply(&event);
        }
        if stopping {
            return Ok(replay);
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}
