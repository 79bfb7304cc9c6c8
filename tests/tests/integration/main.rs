//! memprof's integration tests, one module per feature, built into one test
//! binary (one link of memprof and the harness instead of one per feature).
//!
//! Each test profiles real processes (the fixtures of `tests/fixtures/` and
//! `tests/src/bin/`) with the memprof binary and checks the report against
//! the fixture's ground truth (`tests::Kind::truth`). They load BPF programs,
//! so they run as root, one at a time:
//!
//! ```sh
//! sudo -E cargo test -p tests -- --test-threads=1            # all of them
//! sudo -E cargo test -p tests -- --test-threads=1 many::     # one feature
//! ```
//!
//! `cargo xtask test` builds memprof and runs them this way.
//!
//! A new feature's tests go in a new module here, not in a new file of
//! `tests/tests/` (which cargo would build as a test binary of its own).

mod allocators;
mod busy;
mod c_fixture;
mod check;
mod continuous;
mod demo;
mod detach;
mod errors;
mod exec;
mod exit;
mod frame_pointers;
mod growth;
mod harmless;
mod launch;
mod long_run;
mod many;
mod outputs;
mod perf_map;
// The messages of pprof's profile.proto, shared with memprof's own pprof test.
#[path = "../../../memprof/tests/common/pprof_proto.rs"]
mod pprof_proto;
mod profiles;
mod pymalloc;
mod python;
mod python_runs;
mod rust_fixture;
mod sampling;
mod sources;
mod stacks;
mod symbols;
mod unwind;
