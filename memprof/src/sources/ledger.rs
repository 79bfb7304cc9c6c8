//! Replaying the target's `mmap`, `munmap` and `mremap` calls (`--mmap`) on
//! a map of the anonymous address ranges it holds: pure, no I/O.
//!
//! A [`Ledger`] keeps the anonymous address ranges the target mapped while
//! memprof watched, each with the time and user stack of the call that
//! mapped it. Doing the range arithmetic here keeps it exact where a BPF hash
//! map cannot be: a `munmap` of the front or the back of a mapping shrinks its
//! record, one of the middle splits it in two (both keep the stack), one
//! spanning several mappings removes them all. An `mremap` takes its old range
//! out at its entry and puts the result back at its return (or the old range,
//! when it failed); the result belongs to the `mremap`'s stack, as a
//! `realloc`'ed block belongs to the `realloc` in the heap report.

use std::collections::{BTreeMap, HashMap};

use memprof_common::{mmap_event, AllocInfo, MmapEvent};

/// One anonymous address range and the call that mapped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    end: u64,
    timestamp_ns: u64,
    stack_id: i64,
}

/// A region's key: the process (tgid) and its start address.
type Key = (u64, u64);

/// The anonymous mappings seen during the run, by process and start address
/// (the ranges of one process never overlap), and what replaying the events
/// counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ledger {
    regions: BTreeMap<Key, Region>,
    /// Ranges taken out by an `mremap` entry, by thread, until its return.
    remapping: HashMap<u64, Vec<(Key, Region)>>,
    pub counts: LedgerCounts,
}

/// What [`Ledger::apply`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LedgerCounts {
    pub maps: u64,
    pub unmaps: u64,
    pub unmaps_partial: u64,
    pub holes: u64,
    pub unmaps_untracked: u64,
    pub remaps: u64,
    pub remaps_untracked: u64,
    pub remaps_failed: u64,
    pub remaps_unmatched: u64,
}

impl Ledger {
    /// Takes `[start, end)` out of every region; returns the pieces taken,
    /// and whether a region kept a part outside the range (a partial unmap).
    fn remove_range(&mut self, pid: u64, start: u64, end: u64) -> (Vec<(Key, Region)>, bool) {
        let overlapping: Vec<u64> = self
            .regions
            .range((pid, 0)..(pid, end))
            .rev()
            .take_while(|(_, r)| r.end > start)
            .map(|(&(_, s), _)| s)
            .collect();
        let mut taken = Vec::with_capacity(overlapping.len());
        let mut partial = false;
        for s in overlapping.into_iter().rev() {
            let Some(r) = self.regions.remove(&(pid, s)) else {
                continue;
            };
            if s < start {
                self.regions.insert((pid, s), Region { end: start, ..r });
                partial = true;
            }
            if r.end > end {
                self.regions.insert((pid, end), r);
                partial = true;
            }
            if s < start && r.end > end {
                self.counts.holes += 1;
            }
            taken.push((
                (pid, s.max(start)),
                Region {
                    end: r.end.min(end),
                    ..r
                },
            ));
        }
        (taken, partial)
    }

    /// Replays one event.
    pub(crate) fn apply(&mut self, e: &MmapEvent) {
        let old_end = e.addr.saturating_add(e.len);
        match e.kind {
            mmap_event::MAP => {
                // Whatever was there is replaced (MAP_FIXED).
                self.remove_range(e.pid, e.addr, old_end);
                if e.anonymous != 0 && e.len > 0 {
                    self.counts.maps += 1;
                    self.regions.insert(
                        (e.pid, e.addr),
                        Region {
                            end: old_end,
                            timestamp_ns: e.timestamp_ns,
                            stack_id: e.stack_id,
                        },
                    );
                }
            }
            mmap_event::UNMAP => {
                let (taken, partial) = self.remove_range(e.pid, e.addr, old_end);
                if taken.is_empty() {
                    self.counts.unmaps_untracked += 1;
                } else {
                    self.counts.unmaps += 1;
                    self.counts.unmaps_partial += u64::from(partial);
                }
            }
            mmap_event::REMAP_BEGIN => {
                let (taken, _) = self.remove_range(e.pid, e.addr, old_end);
                self.remapping.insert(e.tid, taken);
            }
            mmap_event::REMAP_END => {
                let taken = match self.remapping.remove(&e.tid) {
                    Some(taken) => taken,
                    None => {
                        // Its entry came before recording started.
                        self.counts.remaps_unmatched += 1;
                        self.remove_range(e.pid, e.addr, old_end).0
                    }
                };
                let failed = (e.new_addr as i64) < 0 && (e.new_addr as i64) >= -4095;
                if failed {
                    self.counts.remaps_failed += 1;
                    for (s, r) in taken {
                        self.regions.insert(s, r);
                    }
                    return;
                }
                let new_end = e.new_addr.saturating_add(e.new_len);
                self.remove_range(e.pid, e.new_addr, new_end);
                if taken.is_empty() {
                    // A file mapping, or one made before memprof attached.
                    self.counts.remaps_untracked += 1;
                    return;
                }
                self.counts.remaps += 1;
                self.regions.insert(
                    (e.pid, e.new_addr),
                    Region {
                        end: new_end,
                        timestamp_ns: e.timestamp_ns,
                        stack_id: e.stack_id,
                    },
                );
            }
            _ => {}
        }
    }

    /// Puts back the ranges of `mremap`s whose return was not seen.
    pub(crate) fn settle(&mut self) {
        for (_, taken) in std::mem::take(&mut self.remapping) {
            for (s, r) in taken {
                self.regions.insert(s, r);
            }
        }
    }

    /// The regions as live "allocations" for [`crate::aggregate::by_stack`].
    pub(crate) fn live(&self) -> Vec<(u64, AllocInfo)> {
        self.regions
            .iter()
            .map(|(&(_, s), r)| {
                (
                    s,
                    AllocInfo {
                        size: r.end - s,
                        timestamp_ns: r.timestamp_ns,
                        stack_id: r.stack_id,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn map(ledger: &mut Ledger, addr: u64, len: u64, stack_id: i64) {
        ledger.apply(&MmapEvent {
            kind: mmap_event::MAP,
            addr,
            len,
            stack_id,
            anonymous: 1,
            ..MmapEvent::default()
        });
    }

    fn unmap(ledger: &mut Ledger, addr: u64, len: u64) {
        ledger.apply(&MmapEvent {
            kind: mmap_event::UNMAP,
            addr,
            len,
            ..MmapEvent::default()
        });
    }

    fn remap(ledger: &mut Ledger, addr: u64, len: u64, new_addr: u64, new_len: u64, stack: i64) {
        let begin = MmapEvent {
            kind: mmap_event::REMAP_BEGIN,
            tid: 7,
            addr,
            len,
            ..MmapEvent::default()
        };
        ledger.apply(&begin);
        ledger.apply(&MmapEvent {
            kind: mmap_event::REMAP_END,
            new_addr,
            new_len,
            stack_id: stack,
            ..begin
        });
    }

    fn ranges(ledger: &Ledger) -> Vec<(u64, u64, i64)> {
        ledger
            .regions
            .iter()
            .map(|(&(_, s), r)| (s, r.end, r.stack_id))
            .collect()
    }

    #[test]
    fn unmaps_whole_front_back_and_middle() {
        let mut l = Ledger::default();
        map(&mut l, 0x10000, 16 * PAGE, 1);
        map(&mut l, 0x100000, 4 * PAGE, 2);
        unmap(&mut l, 0x100000, 4 * PAGE); // whole
        unmap(&mut l, 0x10000, 2 * PAGE); // front
        unmap(&mut l, 0x10000 + 14 * PAGE, 2 * PAGE); // back
        assert_eq!(ranges(&l), vec![(0x12000, 0x1e000, 1)]);
        unmap(&mut l, 0x14000, PAGE); // middle: a hole
        assert_eq!(
            ranges(&l),
            vec![(0x12000, 0x14000, 1), (0x15000, 0x1e000, 1)]
        );
        unmap(&mut l, 0x200000, PAGE); // never mapped
        assert_eq!(l.counts.maps, 2);
        assert_eq!(l.counts.unmaps, 4);
        assert_eq!(l.counts.unmaps_partial, 3);
        assert_eq!(l.counts.holes, 1);
        assert_eq!(l.counts.unmaps_untracked, 1);
        // One munmap over both pieces and the hole between them.
        unmap(&mut l, 0x10000, 16 * PAGE);
        assert!(ranges(&l).is_empty());
    }

    #[test]
    fn remaps_grow_move_shrink_and_fail() {
        let mut l = Ledger::default();
        map(&mut l, 0x10000, 4 * PAGE, 1);
        remap(&mut l, 0x10000, 4 * PAGE, 0x10000, 8 * PAGE, 2); // grow in place
        assert_eq!(ranges(&l), vec![(0x10000, 0x18000, 2)]);
        remap(&mut l, 0x10000, 8 * PAGE, 0x80000, 16 * PAGE, 3); // move and grow
        assert_eq!(ranges(&l), vec![(0x80000, 0x90000, 3)]);
        remap(&mut l, 0x80000, 16 * PAGE, 0x80000, PAGE, 4); // shrink
        assert_eq!(ranges(&l), vec![(0x80000, 0x81000, 4)]);
        remap(&mut l, 0x80000, PAGE, (-12i64) as u64, 2 * PAGE, 5); // ENOMEM
        assert_eq!(ranges(&l), vec![(0x80000, 0x81000, 4)]);
        remap(&mut l, 0x900000, PAGE, 0x900000, 2 * PAGE, 6); // a file mapping
        assert_eq!(ranges(&l), vec![(0x80000, 0x81000, 4)]);
        assert_eq!(l.counts.remaps, 3);
        assert_eq!(l.counts.remaps_failed, 1);
        assert_eq!(l.counts.remaps_untracked, 1);
    }

    #[test]
    fn a_fixed_mapping_replaces_what_it_covers() {
        let mut l = Ledger::default();
        map(&mut l, 0x10000, 4 * PAGE, 1);
        l.apply(&MmapEvent {
            kind: mmap_event::MAP,
            addr: 0x11000,
            len: PAGE,
            anonymous: 0,
            ..MmapEvent::default()
        });
        assert_eq!(
            ranges(&l),
            vec![(0x10000, 0x11000, 1), (0x12000, 0x14000, 1)]
        );
    }

    #[test]
    fn processes_have_address_spaces_of_their_own() {
        let mut l = Ledger::default();
        for pid in [1, 2] {
            l.apply(&MmapEvent {
                kind: mmap_event::MAP,
                pid,
                addr: 0x10000,
                len: PAGE,
                stack_id: pid as i64,
                anonymous: 1,
                ..MmapEvent::default()
            });
        }
        l.apply(&MmapEvent {
            kind: mmap_event::UNMAP,
            pid: 1,
            addr: 0x10000,
            len: PAGE,
            ..MmapEvent::default()
        });
        assert_eq!(ranges(&l), vec![(0x10000, 0x11000, 2)]);
    }
}
