//! When the sampling windows of a run were open (`--sample-by window`), as
//! plain data: what the window thread ([`crate::windows`]) hands back, and
//! what the estimates ([`crate::aggregate`]) scale by. Pure, no I/O.

/// Frees the windows must see for the scale to count frees rather than time.
/// A busy target's allocations and frees rise and fall together from one
/// window to the next, so the ratio's error is mostly already in each
/// stack's stated one; a target that hardly frees is scaled by time.
pub(crate) const MIN_FREES_IN_WINDOWS: u64 = 100;

/// When the windows of a run were open.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct WindowLog {
    /// `CLOCK_MONOTONIC` ns when sampling started and ended.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Each window's opening and closing (`CLOCK_MONOTONIC` ns), in order.
    pub spans: Vec<(u64, u64)>,
    /// Links that could not be made for a window (a process that exited meanwhile).
    pub failed_links: u64,
    /// The target's frees while recording, and those made in windows.
    pub frees: u64,
    pub frees_in_windows: u64,
}

impl WindowLog {
    /// Total time the windows were open, in ns.
    pub(crate) fn open_ns(&self) -> u64 {
        self.spans.iter().map(|&(open, close)| close - open).sum()
    }

    /// What each recorded figure stands for: the share of the target's work
    /// that the windows saw, measured by its frees (every call of `free` is
    /// counted, in windows and out), when the windows saw at least
    /// [`MIN_FREES_IN_WINDOWS`]; else [`Self::time_scale`].
    ///
    /// Recording every call in a window slows the target down there (redis
    /// under redis-benchmark ran at about half its speed in the windows):
    /// a busy target makes fewer allocations in a window than in the same
    /// time outside, and the run's length over the windows' under-estimates
    /// what it allocates by that factor.
    pub(crate) fn scale(&self) -> f64 {
        if self.scaled_by_frees() {
            self.frees as f64 / self.frees_in_windows as f64
        } else {
            self.time_scale()
        }
    }

    /// True when [`Self::scale`] counts frees.
    pub(crate) fn scaled_by_frees(&self) -> bool {
        self.frees_in_windows >= MIN_FREES_IN_WINDOWS && self.frees > self.frees_in_windows
    }

    /// The run's length over the windows' (1.0 when no window opened, when
    /// nothing was recorded either).
    pub(crate) fn time_scale(&self) -> f64 {
        let open = self.open_ns();
        if open == 0 {
            return 1.0;
        }
        self.end_ns.saturating_sub(self.start_ns) as f64 / open as f64
    }

    /// How fast the target freed during the windows, against the rest of
    /// the run (frees per second in windows over frees per second outside);
    /// None without frees on either side. Below 1 when recording in the
    /// windows slowed the target down.
    pub(crate) fn window_pace(&self) -> Option<f64> {
        let open = self.open_ns();
        let closed = self
            .end_ns
            .saturating_sub(self.start_ns)
            .saturating_sub(open);
        let outside = self.frees.saturating_sub(self.frees_in_windows);
        if open == 0 || closed == 0 || outside == 0 || self.frees_in_windows == 0 {
            return None;
        }
        Some((self.frees_in_windows as f64 / open as f64) / (outside as f64 / closed as f64))
    }

    /// The window that a block recorded at `ns` belongs to: the last one
    /// opened at or before it (a call that entered during a window may
    /// return, and be timed, just after it closed).
    pub(crate) fn window_of(&self, ns: u64) -> usize {
        self.spans
            .partition_point(|&(open, _)| open <= ns)
            .saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_log(spans: &[(u64, u64)]) -> WindowLog {
        WindowLog {
            start_ns: 1_000,
            end_ns: 11_000,
            spans: spans.to_vec(),
            failed_links: 0,
            frees: 0,
            frees_in_windows: 0,
        }
    }

    #[test]
    fn the_scale_is_the_run_over_the_windows() {
        let log = run_log(&[(2_000, 2_100), (5_000, 5_150)]);
        assert_eq!(log.open_ns(), 250);
        assert!((log.scale() - 40.0).abs() < 1e-9);
        assert_eq!(run_log(&[]).scale(), 1.0);
    }

    #[test]
    fn with_enough_frees_in_windows_the_scale_counts_them() {
        // Windows 250 ns of a 10,000 ns run: time scale 40. The target freed
        // 100,000 times, 1,250 of them in windows: half its pace outside.
        let mut log = run_log(&[(2_000, 2_100), (5_000, 5_150)]);
        log.frees = 100_000;
        log.frees_in_windows = 1_250;
        const { assert!(MIN_FREES_IN_WINDOWS <= 1_250) };
        assert!(log.scaled_by_frees());
        assert!((log.scale() - 80.0).abs() < 1e-9);
        assert!((log.time_scale() - 40.0).abs() < 1e-9);
        let pace = log.window_pace().unwrap();
        assert!((pace - 1_250.0 / 250.0 / (98_750.0 / 9_750.0)).abs() < 1e-9);
        // Too few frees in the windows: the run over the windows.
        log.frees_in_windows = MIN_FREES_IN_WINDOWS - 1;
        assert!(!log.scaled_by_frees());
        assert!((log.scale() - 40.0).abs() < 1e-9);
    }

    #[test]
    fn a_block_belongs_to_the_last_window_opened_before_it() {
        let log = run_log(&[(2_000, 2_100), (5_000, 5_150)]);
        assert_eq!(log.window_of(2_000), 0);
        assert_eq!(log.window_of(2_050), 0);
        assert_eq!(log.window_of(2_101), 0, "returned just after the close");
        assert_eq!(log.window_of(5_000), 1);
        assert_eq!(log.window_of(9_000), 1);
    }
}
