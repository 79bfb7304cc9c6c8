//! memprof: an eBPF-based memory allocation and leak profiler.
//!
//! Data flows one way, one module per step:
//! [`cli`] (the command line, converted at the edge into a plain [`config::Config`])
//! -> [`pipeline`] (one run, step by step), which calls in turn
//! [`select`] (which processes; [`launch`] starts a command) with [`target`]
//! (a process's allocator and probe sites), [`probes`] (load, attach, detach),
//! [`wait`] (the only async module), [`snapshot`] (read the maps),
//! [`aggregate`] (pure), [`symbolize`] (with [`debuginfo`]) and [`report`] (assembly of the
//! [`model::Report`]) -> [`render`].
//!
//! Continuous mode (`--every`) reports each period from [`periods`] while
//! the probes stay attached, and [`continuous`] sends it on (rotating files,
//! Pyroscope, Prometheus); [`check`] is the CI leak gate's verdict.
//!
//! Below them, [`procfs`] and [`tracefs`] read the system; [`session_link`]
//! and [`windows`] hold the kernel's uprobe sessions; [`sources`] records
//! what the heap does not show (`--mmap`, `--kernel`); [`profiles`] the
//! allocation profile, the peak and the timeline.

mod aggregate;
mod batch;
pub mod check;
pub mod cli;
pub mod compare;
pub mod config;
pub mod continuous;
mod debuginfo;
pub mod error;
mod exits;
mod launch;
mod load_order;
pub mod model;
mod perf_map;
mod periods;
mod pipeline;
mod placement;
mod probes;
mod procfs;
mod profiles;
mod python;
pub mod render;
mod report;
mod select;
mod session_link;
mod snapshot;
mod sources;
mod symbolize;
mod target;
mod tracefs;
mod unwind;
mod wait;
mod window_log;
mod windows;

pub use crate::session_link::MIN_KERNEL as SAMPLING_MIN_KERNEL;
pub use crate::symbolize::reaches_start;

use crate::config::Config;
use crate::model::Report;

/// Profiles what `config` selects (one process, a command, many processes,
/// a cgroup or the whole machine) and returns what it still holds.
/// `quiet`: no status line on a terminal.
pub fn profile(config: &Config, quiet: bool) -> anyhow::Result<Report> {
    pipeline::run(config, quiet, None)
}

/// Continuous mode (`config.every`): profiles as [`profile`] does, and
/// calls `on_period` with each period's number (from 1) and report, what is
/// outstanding at the period's end, while the probes stay attached. Returns
/// the report of the last period, cut short by the end of the run.
pub fn profile_every(
    config: &Config,
    quiet: bool,
    on_period: &mut dyn FnMut(u64, Report) -> anyhow::Result<()>,
) -> anyhow::Result<Report> {
    pipeline::run(config, quiet, Some(on_period))
}
