#![no_std]
// This file exists to enable the library target, so that build scripts
// depending on this crate are re-run when it changes.
