//! When the sampling windows of a run were open (`--sample-by window`), as
//! plain data: what the window thread ([`crate::windows`]) hands back, and
//! what the estimates ([`crate::aggregate`]) scale by. Pure, no I/O.

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
}

impl WindowLog {
    /// Total time the windows were open, in ns.
    pub(crate) fn open_ns(&self) -> u64 {
        self.spans.iter().map(|&(open, close)| close - open).sum()
    }

    /// What each recorded figure stands for: the run's length over the
    /// windows' (1.0 when no window opened, when nothing was recorded either).
    pub(crate) fn scale(&self) -> f64 {
        let open = self.open_ns();
        if open == 0 {
            return 1.0;
        }
        self.end_ns.saturating_sub(self.start_ns) as f64 / open as f64
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
    fn a_block_belongs_to_the_last_window_opened_before_it() {
        let log = run_log(&[(2_000, 2_100), (5_000, 5_150)]);
        assert_eq!(log.window_of(2_000), 0);
        assert_eq!(log.window_of(2_050), 0);
        assert_eq!(log.window_of(2_101), 0, "returned just after the close");
        assert_eq!(log.window_of(5_000), 1);
        assert_eq!(log.window_of(9_000), 1);
    }
}
