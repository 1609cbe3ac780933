//! The key directory while the server runs: the [`KeyRing`] in use, replaced when the directory
//! changes, on SIGHUP and at a regular interval, without a restart.
//!
//! Issuing, ListPublicKeys and the bearer interceptor all ask [`KeyDirectory::ring`] for the
//! ring of the moment. A reload that fails (a malformed or unreadable file, an empty directory
//! while a Kubernetes Secret is being updated) keeps the ring in use and logs an error naming
//! the file; the next reload tries again.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration as StdDuration,
};

use time::{Duration, OffsetDateTime};

use super::{KeyError, KeyRing};
use crate::clock::Clock;

/// When keys are reloaded and when a new key starts signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// How long after it was made (the time in its file name) a key may start signing. It is
    /// published as soon as a reload finds it.
    pub activation_delay: Duration,
    /// How often the directory is checked for added or removed keys (SIGHUP checks at once).
    pub reload_interval: StdDuration,
}

impl Default for Rotation {
    /// A new key signs an hour after it was made; the directory is checked every minute.
    ///
    /// The delay must cover the time for every replica to see the file (the Kubernetes Secret
    /// volume update, about a minute, plus one reload interval) and for every verifier to fetch
    /// ListPublicKeys again (verifiers refetch when they see an unknown key id, and are asked to
    /// cache the keys for at most 10 minutes): about 15 minutes at most. An hour leaves a wide
    /// margin; a rotation is planned, and an emergency one replaces the key instead (a sole key
    /// signs at once).
    fn default() -> Self {
        Self {
            activation_delay: Duration::hours(1),
            reload_interval: StdDuration::from_secs(60),
        }
    }
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The same keys as before; the ring in use was kept.
    Unchanged,
    /// Keys were added or removed; the new ring is in use.
    Changed,
}

/// The key directory and the ring loaded from it.
pub struct KeyDirectory {
    dir: PathBuf,
    rotation: Rotation,
    ring: RwLock<Arc<KeyRing>>,
}

impl std::fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDirectory")
            .field("dir", &self.dir)
            .field("rotation", &self.rotation)
            .field("ring", &*self.ring())
            .finish()
    }
}

impl KeyDirectory {
    /// Loads the keys in `dir` at `now`; fails if there is none or a file is unusable.
    pub fn open(dir: &Path, rotation: Rotation, now: OffsetDateTime) -> Result<Self, KeyError> {
        let ring = KeyRing::load(dir, rotation.activation_delay, now)?;
        log_ring("signing keys loaded", &ring, now);
        Ok(Self {
            dir: dir.into(),
            rotation,
            ring: RwLock::new(Arc::new(ring)),
        })
    }

    /// The ring in use.
    pub fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.ring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The directory the keys come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again at `now` and puts the new ring in use if its keys differ. On
    /// error the ring in use stays.
    pub fn reload(&self, now: OffsetDateTime) -> Result<Reloaded, KeyError> {
        let ring = KeyRing::load(&self.dir, self.rotation.activation_delay, now)?;
        if ring.same_keys(&self.ring()) {
            return Ok(Reloaded::Unchanged);
        }
        log_ring("signing keys reloaded", &ring, now);
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        Ok(Reloaded::Changed)
    }

    /// Reloads on every `hangups` signal and every reload interval, forever; errors are logged.
    pub async fn watch(self: Arc<Self>, clock: Arc<dyn Clock>, mut hangups: Option<Hangups>) {
        // `interval` refuses a zero period; the command line refuses it with a clear message.
        let period = self
            .rotation
            .reload_interval
            .max(StdDuration::from_millis(1));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // The first tick is immediate; the keys were just loaded.
        loop {
            let trigger = tokio::select! {
                _ = ticks.tick() => "interval",
                () = next_hangup(&mut hangups) => "SIGHUP",
            };
            let directory = Arc::clone(&self);
            let now = clock.now();
            let reloaded = tokio::task::spawn_blocking(move || directory.reload(now)).await;
            match reloaded {
                Ok(Ok(outcome)) => tracing::debug!(trigger, ?outcome, "key directory checked"),
                Ok(Err(e)) => tracing::error!(
                    trigger,
                    error.message = %e,
                    "reloading the signing keys failed; the keys in use stay"
                ),
                Err(e) => tracing::error!(trigger, error.message = %e, "key reload task failed"),
            }
        }
    }
}

/// SIGHUP, where there is such a thing.
#[cfg(unix)]
pub type Hangups = tokio::signal::unix::Signal;
/// SIGHUP, where there is such a thing.
#[cfg(not(unix))]
pub type Hangups = std::convert::Infallible;

/// Listens for SIGHUP from now on (so it no longer ends the process); `None`, logged, if that
/// is not possible.
pub fn hangups() -> Option<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())
            .inspect_err(|e| tracing::error!(error.message = %e, "cannot listen for SIGHUP"))
            .ok()
    }
    #[cfg(not(unix))]
    None
}

async fn next_hangup(hangups: &mut Option<Hangups>) {
    #[cfg(unix)]
    if let Some(signal) = hangups
        && signal.recv().await.is_some()
    {
        return;
    }
    #[cfg(not(unix))]
    let _ = hangups;
    std::future::pending().await
}

fn log_ring(message: &'static str, ring: &KeyRing, now: OffsetDateTime) {
    let pending: Vec<String> = ring
        .pending(now)
        .into_iter()
        .map(|(kid, from)| format!("{kid} from {from}"))
        .collect();
    tracing::info!(
        signing = ring.signing_key_id(now),
        published = ring.public_keys(now, Duration::ZERO).len(),
        ?pending,
        "{message}"
    );
    if !ring.signs_before_activation(now) {
        return;
    }
    let signing = ring.signing_key_id(now);
    if ring.public_keys(now, Duration::ZERO).len() == 1 {
        tracing::info!(
            signing,
            "the only key signs at once, before its activation delay: a fresh install (or a key replaced in an emergency)"
        );
    } else {
        tracing::warn!(
            signing,
            "no key has passed its activation delay, so the oldest signs at once; on a rotation, keep the old key next to the new one, or verifiers may meet a key they do not know yet"
        );
    }
}
