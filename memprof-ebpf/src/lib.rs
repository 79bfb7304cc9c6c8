//! The library target of the BPF crate, empty: it exists so that the build
//! scripts that depend on this crate are re-run when it changes (the
//! programs are the `memprof` binary, `main.rs`).
#![no_std]
