//! memprof: an eBPF-based memory allocation and leak profiler.
pub mod model;
pub mod render;
