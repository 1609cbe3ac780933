//! Helpers for the token tests: a temporary key directory that cleans up after itself.

use std::path::{Path, PathBuf};

use time::{OffsetDateTime, macros::datetime};
use uuid::Uuid;

use super::KeyRing;

/// When the first test key was made.
pub(super) const T0: OffsetDateTime = datetime!(2026-11-21 07:00 UTC);

/// A directory under the system's temporary directory, removed (with its content) on drop.
/// Not created up front, so `KeyRing::generate` is seen creating it.
#[derive(Debug)]
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        Self(std::env::temp_dir().join(format!("identity-tokens-{}", Uuid::now_v7())))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A ring of keys made at each of `created`, with no activation delay, loaded (when the last was
/// made) from a fresh directory that is already gone when this returns (a loaded ring needs no
/// files). Each key signs from when it was made.
pub(super) fn ring_made_at(created: &[OffsetDateTime]) -> KeyRing {
    let dir = TempDir::new();
    for &at in created {
        KeyRing::generate(dir.path(), at).expect("key generated");
    }
    let newest = created.iter().copied().max().expect("at least one key");
    KeyRing::load(dir.path(), time::Duration::ZERO, newest).expect("keys load")
}
