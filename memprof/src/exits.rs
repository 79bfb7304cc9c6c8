//! Which recorded processes exited during a run, and what of the blocks
//! left under a pid belongs to a process that exited.
//!
//! The BPF programs note the exit of a recorded process's last thread while
//! recording (`EXITS`: tgid -> time); a process not noted there was alive
//! when recording stopped, whatever `/proc` says by the time the report is
//! made (a process may exit meanwhile, or be caught between fork and exec
//! during discovery). Pure: no I/O.

use memprof_common::{AllocInfo, LiveKey};

use crate::aggregate::take_older;
use crate::model::Totals;

/// What became of the process that holds `live` under one pid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// The blocks still in `live` belong to a process that exited.
    pub(crate) exited: bool,
    /// What processes that exited held and that left `live` (counted as
    /// released at exit).
    pub(crate) released: Totals,
}

/// Settles the blocks `live` found under one pid, whose last noted exit
/// (if any) was at `exited_at_ns` (`CLOCK_MONOTONIC`): blocks made before
/// it belong to processes that exited; those made after, to a process that
/// took the pid since and was alive when recording stopped. With `keep`
/// (`--at-exit`, or the launched command) the blocks of an exited process
/// stay in `live` and are reported as its; else they leave it.
pub(crate) fn settle(
    live: &mut Vec<(LiveKey, AllocInfo)>,
    exited_at_ns: Option<u64>,
    keep: bool,
) -> Settled {
    let Some(at) = exited_at_ns else {
        return Settled::default();
    };
    if keep {
        return Settled {
            exited: live.iter().all(|(_, info)| info.timestamp_ns <= at),
            released: Totals::default(),
        };
    }
    // Made at or before the exit: the exit's (a block and an exit in the
    // same nanosecond can only be the exiting process's).
    let released = take_older(live, at.saturating_add(1));
    Settled {
        exited: false,
        released,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(addr: u64, size: u64, ts: u64) -> (LiveKey, AllocInfo) {
        (
            LiveKey {
                tgid: 7,
                _pad: 0,
                addr,
            },
            AllocInfo {
                size,
                timestamp_ns: ts,
                stack_id: 1,
            },
        )
    }

    #[test]
    fn a_process_not_noted_as_exited_is_alive_and_keeps_everything() {
        let mut live = vec![block(1, 10, 100), block(2, 20, 200)];
        let settled = settle(&mut live, None, false);
        assert_eq!(settled, Settled::default());
        assert_eq!(live.len(), 2);
    }

    #[test]
    fn an_exited_process_leaves_its_blocks_as_released() {
        let mut live = vec![block(1, 10, 100), block(2, 20, 200)];
        let settled = settle(&mut live, Some(200), false);
        assert!(live.is_empty());
        assert!(!settled.exited);
        assert_eq!(
            settled.released,
            Totals {
                bytes: 30,
                count: 2
            }
        );
    }

    #[test]
    fn a_newer_process_with_the_same_pid_keeps_its_own_blocks() {
        let mut live = vec![block(1, 10, 100), block(2, 20, 300)];
        let settled = settle(&mut live, Some(200), false);
        assert_eq!(live, vec![block(2, 20, 300)]);
        assert!(!settled.exited);
        assert_eq!(
            settled.released,
            Totals {
                bytes: 10,
                count: 1
            }
        );
        // Kept (--at-exit): the blocks are reported, and not all are the
        // exited process's, so the pid is not called exited.
        let mut live = vec![block(1, 10, 100), block(2, 20, 300)];
        let settled = settle(&mut live, Some(200), true);
        assert_eq!(live.len(), 2);
        assert!(!settled.exited);
    }

    #[test]
    fn kept_blocks_of_an_exited_process_are_reported_as_its() {
        let mut live = vec![block(1, 10, 100)];
        let settled = settle(&mut live, Some(200), true);
        assert_eq!(live.len(), 1);
        assert!(settled.exited);
        assert_eq!(settled.released, Totals::default());
    }
}
