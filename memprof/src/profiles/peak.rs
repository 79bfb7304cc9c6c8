//! Finding the peak of the outstanding total by replaying every allocation
//! and free in order: pure, no I/O.
//!
//! The BPF programs send each block that enters or leaves `LIVE` through a
//! ring buffer ([`memprof_common::HeapEvent`]); the order of the buffer is
//! an order in which the events really happened (a block's free is sent
//! after its allocation was, since the target only gets the address once
//! the allocation's program has run). Replaying them keeps the running
//! total and each stack's share.
//!
//! Copying every stack's share at each new peak would cost O(stacks) per
//! allocation while the heap rises. Instead the replay keeps, besides the
//! current shares, the shares at the last peak and each stack's net change
//! since then: a new peak folds the changes into the peak's shares and
//! clears them. Each event adds at most one entry to the changes, folded
//! once, so the cost is O(1) per event amortized, and the memory is
//! O(stacks), however long the run.

use std::collections::HashMap;

use memprof_common::{heap_event, HeapEvent};

/// A stack of one process: (tgid, stack id).
pub(crate) type StackKey = (u32, i64);

/// Bytes and count, signed so that a free whose allocation was lost (the
/// buffer was full) goes below zero instead of wrapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub bytes: i64,
    pub count: i64,
}

impl Held {
    /// Saturating: a block of an absurd size (a wrong argument read, a
    /// lying allocator) must not stop the replay.
    fn add(&mut self, other: Held) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.count = self.count.saturating_add(other.count);
    }

    fn is_zero(&self) -> bool {
        self.bytes == 0 && self.count == 0
    }
}

/// The replay and what it found.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeakReplay {
    total: Held,
    peak: Held,
    /// `bpf_ktime_get_ns()` of the event that reached the peak.
    peak_ns: u64,
    /// Each stack's share at the peak (stacks with nothing then left out).
    at_peak: HashMap<StackKey, Held>,
    /// Each stack's net change since the peak.
    since_peak: HashMap<StackKey, Held>,
    /// Events replayed.
    pub events: u64,
}

/// The peak, once the replay is over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeakFound {
    /// `bpf_ktime_get_ns()` when it was reached (0: nothing was ever held).
    pub at_ns: u64,
    pub bytes: u64,
    pub count: u64,
    /// What each stack held then, positive shares only.
    pub stacks: HashMap<StackKey, (u64, u64)>,
    pub events: u64,
}

impl PeakReplay {
    /// Replays one event.
    pub(crate) fn apply(&mut self, event: &HeapEvent) {
        let size = i64::try_from(event.size).unwrap_or(i64::MAX);
        let delta = match event.kind {
            heap_event::ALLOC => Held {
                bytes: size,
                count: 1,
            },
            heap_event::FREE => Held {
                bytes: -size,
                count: -1,
            },
            _ => return,
        };
        self.events += 1;
        self.total.add(delta);
        let key = (event.tgid, event.stack_id);
        let change = self.since_peak.entry(key).or_default();
        change.add(delta);
        if change.is_zero() {
            self.since_peak.remove(&key);
        }
        if self.total.bytes > self.peak.bytes {
            for (key, change) in self.since_peak.drain() {
                let share = self.at_peak.entry(key).or_default();
                share.add(change);
                if share.is_zero() {
                    self.at_peak.remove(&key);
                }
            }
            self.peak = self.total;
            self.peak_ns = event.timestamp_ns;
        }
    }

    /// The highest total seen and what held it.
    pub(crate) fn found(&self) -> PeakFound {
        PeakFound {
            at_ns: self.peak_ns,
            bytes: self.peak.bytes.max(0) as u64,
            count: self.peak.count.max(0) as u64,
            stacks: self
                .at_peak
                .iter()
                .filter(|(_, h)| h.bytes > 0 || h.count > 0)
                .map(|(k, h)| (*k, (h.bytes.max(0) as u64, h.count.max(0) as u64)))
                .collect(),
            events: self.events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_absurd_sizes_do_not_stop_the_replay() {
        let mut replay = PeakReplay::default();
        let event = |kind, size| HeapEvent {
            kind,
            size,
            tgid: 1,
            stack_id: 7,
            ..HeapEvent::default()
        };
        for _ in 0..3 {
            replay.apply(&event(heap_event::ALLOC, u64::MAX - 5));
        }
        replay.apply(&event(heap_event::FREE, u64::MAX - 5));
        // The first block reached the largest total that can be held.
        assert_eq!(replay.found().count, 1);
        assert_eq!(replay.found().bytes, i64::MAX as u64);
    }

    fn ev(kind: u32, ts: u64, size: u64, stack_id: i64) -> HeapEvent {
        HeapEvent {
            timestamp_ns: ts,
            size,
            stack_id,
            tgid: 7,
            kind,
        }
    }

    fn alloc(ts: u64, size: u64, stack: i64) -> HeapEvent {
        ev(heap_event::ALLOC, ts, size, stack)
    }

    fn free(ts: u64, size: u64, stack: i64) -> HeapEvent {
        ev(heap_event::FREE, ts, size, stack)
    }

    #[test]
    fn finds_the_peak_and_what_held_it() {
        let mut r = PeakReplay::default();
        // Stack 1 rises to 300, stack 2 to 1000, then most is freed, then
        // stack 3 churns below the peak.
        for (i, e) in [
            alloc(1, 100, 1),
            alloc(2, 100, 1),
            alloc(3, 100, 1),
            alloc(4, 500, 2),
            alloc(5, 500, 2),
            free(6, 100, 1),
            free(7, 500, 2),
            alloc(8, 50, 3),
            free(9, 50, 3),
            alloc(10, 90, 3),
        ]
        .iter()
        .enumerate()
        {
            let _ = i;
            r.apply(e);
        }
        let p = r.found();
        assert_eq!((p.at_ns, p.bytes, p.count), (5, 1300, 5));
        assert_eq!(p.stacks.len(), 2);
        assert_eq!(p.stacks[&(7, 1)], (300, 3));
        assert_eq!(p.stacks[&(7, 2)], (1000, 2));
        assert_eq!(p.events, 10);
    }

    #[test]
    fn a_later_higher_peak_replaces_the_first() {
        let mut r = PeakReplay::default();
        for e in [
            alloc(1, 1000, 1),
            free(2, 1000, 1),
            alloc(3, 600, 2),
            alloc(4, 600, 3),
            free(5, 600, 3),
        ] {
            r.apply(&e);
        }
        let p = r.found();
        assert_eq!((p.at_ns, p.bytes, p.count), (4, 1200, 2));
        assert_eq!(p.stacks.len(), 2);
        assert_eq!(p.stacks[&(7, 2)], (600, 1));
        assert_eq!(p.stacks[&(7, 3)], (600, 1));
    }

    #[test]
    fn nothing_held_is_no_peak() {
        let r = PeakReplay::default();
        assert_eq!(r.found(), PeakFound::default());
    }

    #[test]
    fn a_free_without_its_allocation_does_not_wrap() {
        let mut r = PeakReplay::default();
        r.apply(&free(1, 64, 1));
        r.apply(&alloc(2, 32, 2));
        let p = r.found();
        assert_eq!(p.bytes, 0);
        r.apply(&alloc(3, 64, 2));
        let p = r.found();
        assert_eq!((p.bytes, p.at_ns), (32, 3));
        assert_eq!(p.stacks[&(7, 2)], (96, 2));
    }
}
