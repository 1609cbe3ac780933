//! Test support shared by the workspace's tests, plus the end-to-end tests (`tests/`) and the
//! load generator (`src/bin/loadgen.rs`).
//!
//! - [`pg`]: a fresh PostgreSQL database per test, cloned from a migrated template, and
//!   throwaway clusters a test may stop and start.
//! - [`process`]: runs the built binaries as a user would and captures their logs.
//! - [`wait`]: waits for a condition with a deadline, never a bare sleep.

pub mod pg;
pub mod process;
pub mod wait;
