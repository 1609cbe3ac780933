//! Abuse controls at the door, before any use case runs (so before any hashing or write).
//!
//! - [`client`]: who the caller is (the client IP, behind trusted proxies too).
//! - [`limits`]: which RPC is limited per IP and per address, and how fast.
//! - this module: the [`Door`] every handler calls once, which decides a call against the
//!   shared state in PostgreSQL ([`db::rate_limits`]) and answers with an [`Admission`] or a
//!   refusal ([`AdmitError::RateLimited`], mapped to RESOURCE_EXHAUSTED in `grpc/error.rs`).
//!
//! The decision is one statement per call, so the limits hold across any number of replicas.
//! A small in-process pre-filter remembers refusals until their retry instant: the shared
//! `tat` never decreases (and the janitor deletes a row only once its `tat` has passed), so a
//! key refused until `t` stays refused until `t` whatever other replicas do; the pre-filter
//! is never stricter than the shared state, it only spares the database during a flood.
//!
//! Generous single-key limits (burst of at least [`LEASE_MIN_BURST`], e.g. RefreshSession per
//! IP) are also spared most round trips: a call that finds no spare cell charges up to
//! [`LEASE_MAX_CELLS`] cells at once in the shared state and the replica hands the spares to the
//! next calls of that key within a second; spares not handed out by then are dropped. Every
//! admitted call was charged in the shared state, so together the replicas never admit more
//! calls than the limit; a spare only moves the charge of at most 15 calls per replica up to a
//! second earlier, and unused spares make the limit that much stricter for a moment. Near the
//! limit the batch does not fit and the call is decided alone, exactly.

pub mod client;
pub mod limits;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use self::{
    client::{ClientIdentity, ClientIp, ForwardedHeader, TrustedProxies},
    limits::{Action, Limits, Rate, Scope},
};
use crate::{
    clock::Clock,
    db::{self, StoreError, rate_limits::KeyLimit},
    domain::EmailAddress,
};

/// How the door identifies callers and what it lets through.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The limits; `None` turns rate limiting off (benchmarks, trusted internal deployments).
    pub limits: Option<Limits>,
    /// How the client IP is found.
    pub identity: ClientIdentity,
}

impl Default for Settings {
    /// The default limits; no trusted proxy.
    fn default() -> Self {
        Self {
            limits: Some(Limits::default()),
            identity: ClientIdentity::default(),
        }
    }
}

/// The outcome of an admitted call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admission {
    ip_usage: Option<Usage>,
}

/// How full a client IP's bucket for this action is in the shared state, counting the call just
/// admitted (and, for limits charged in batches, the spares this replica holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Calls' worth of the burst in use: 1 for the first call after a quiet spell, `burst` when
    /// the next call would be refused unless time passes.
    pub used: u32,
    /// The burst of the limit (calls allowed at once).
    pub burst: u32,
}

impl Usage {
    /// `used / burst`, from just above 0 to 1 (1: the hard limit is reached).
    pub fn fraction(&self) -> f64 {
        f64::from(self.used) / f64::from(self.burst)
    }
}

impl Admission {
    /// How close the client IP is to its hard limit for this action after this call, for
    /// policies that tighten before the limit (an adaptive challenge). `None` when the action
    /// has no per-IP limit or limiting is off.
    pub fn ip_usage(&self) -> Option<Usage> {
        self.ip_usage
    }
}

/// Why a call was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// A limit refused the call; nothing ran. Retry after `retry_after`.
    #[error("{action} is rate limited per {scope}; retry after {retry_after:?}")]
    RateLimited {
        action: Action,
        scope: Scope,
        retry_after: Duration,
    },
    /// The shared state could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most refusals the pre-filter remembers per replica.
const MAX_REMEMBERED_REFUSALS: usize = 10_000;

/// Least burst of a limit whose cells a replica charges in batches (tight limits are decided
/// call by call).
pub const LEASE_MIN_BURST: u32 = 64;

/// Most cells charged at once for a batch.
pub const LEASE_MAX_CELLS: u32 = 16;

/// Longest a spare cell is kept before it is dropped.
const LEASE_MAX_AGE: Duration = Duration::from_secs(1);

/// Spare cells of one key, charged in the shared state and not yet handed out.
#[derive(Debug, Clone, Copy)]
struct Lease {
    spare: u32,
    /// The key's `tat` after the batch was charged.
    tat: OffsetDateTime,
    /// When the spares are dropped.
    until: OffsetDateTime,
}

/// Cells to charge at once for a single-key call under `rate`: 1 for tight limits.
fn batch_cells(rate: &Rate) -> u32 {
    if rate.burst() < LEASE_MIN_BURST {
        1
    } else {
        (rate.burst() / 32).clamp(2, LEASE_MAX_CELLS)
    }
}

/// Decides whether a call may go on; see the module documentation.
pub struct Door {
    pool: db::Pool,
    clock: Arc<dyn Clock>,
    limits: Option<Limits>,
    identity: ClientIdentity,
    /// Keys refused until the instant they hold (the pre-filter).
    refused_until: Mutex<HashMap<String, OffsetDateTime>>,
    /// Spare cells of generous single-key limits.
    leases: Mutex<HashMap<String, Lease>>,
    /// One refill of a key's spares at a time: calls that find none wait for the refill in
    /// flight and take its spares, instead of each charging a batch of its own.
    refills: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("limits", &self.limits)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Door {
    /// A door deciding against `pool`, telling time by `clock`.
    pub fn new(pool: db::Pool, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        Self {
            pool,
            clock,
            limits: settings.limits,
            identity: settings.identity,
            refused_until: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            refills: Mutex::new(HashMap::new()),
        }
    }

    /// The client of `request`: its socket peer, or behind a trusted proxy the address the
    /// proxy forwarded ([`client`]). A call without a TCP peer (none today) counts as
    /// `0.0.0.0`, one shared client.
    pub fn client_of<T>(&self, request: &tonic::Request<T>) -> ClientIp {
        let peer = request
            .remote_addr()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |addr| addr.ip());
        self.identity.client_ip(peer, request.metadata().as_ref())
    }

    /// Admits a call of `action` from `client` naming `address` (if the call names one), or
    /// refuses it. One statement against the shared state decides every limit of the call.
    pub async fn admit(
        &self,
        client: ClientIp,
        action: Action,
        address: Option<&EmailAddress>,
    ) -> Result<Admission, AdmitError> {
        let Some(limits) = &self.limits else {
            return Ok(Admission::default());
        };
        let mut keys = Vec::with_capacity(2);
        let mut rates = Vec::with_capacity(2);
        if let Some(rate) = limits.get(action, Scope::Ip) {
            keys.push(key_limit(action, Scope::Ip, &client.to_string(), rate));
            rates.push((Scope::Ip, rate));
        }
        if let (Some(rate), Some(address)) = (limits.get(action, Scope::Address), address) {
            keys.push(key_limit(
                action,
                Scope::Address,
                &address_digest(address),
                rate,
            ));
            rates.push((Scope::Address, rate));
        }
        if keys.is_empty() {
            return Ok(Admission::default());
        }
        let now = whole_micros(self.clock.now());
        if let Some((i, until)) = self.remembered_refusal(&keys, now) {
            return Err(refusal(action, rates[i].0, until - now));
        }

        if let [(scope, rate)] = rates[..] {
            let cells = batch_cells(&rate);
            if cells > 1 {
                if let Some(tat) = self.take_spare(&keys[0].key, now) {
                    return Ok(admission(scope, tat - now, &rate));
                }
                let refill = self.refill_gate(&keys[0].key);
                let _refilling = refill.lock().await;
                // The refill this call waited for may have left spares.
                let now = whole_micros(self.clock.now());
                if let Some(tat) = self.take_spare(&keys[0].key, now) {
                    return Ok(admission(scope, tat - now, &rate));
                }
                let mut batch = keys.clone();
                batch[0].cells = i64::from(cells);
                let outcome = self.decide(now, &batch).await?[0];
                if let Some(tat) = outcome.charged_tat {
                    self.store_spares(&keys[0].key, cells - 1, tat, now, now + LEASE_MAX_AGE);
                    return Ok(admission(scope, tat - now, &rate));
                }
                // The batch does not fit (near the limit): decide this call alone.
            }
        }
        let outcomes = self.decide(now, &keys).await?;

        let mut ip_usage = None;
        // The key that refuses longest, as the committed state stood.
        let mut refused: Option<(Scope, time::Duration)> = None;
        // A key left uncharged although the committed state let it through: the call lost a
        // race for its row lock (see db::rate_limits) after another call moved the state on.
        let mut lost_race = None;
        for ((key, (scope, rate)), outcome) in keys.iter().zip(&rates).zip(&outcomes) {
            if outcome.allowed_from > now {
                self.remember_refusal(&key.key, outcome.allowed_from, now);
                let wait = outcome.allowed_from - now;
                if refused.is_none_or(|(_, longest)| wait > longest) {
                    refused = Some((*scope, wait));
                }
            } else if let Some(tat) = outcome.charged_tat {
                if *scope == Scope::Ip {
                    ip_usage = Some(usage(tat - now, rate));
                }
            } else if lost_race.is_none() {
                // One emission interval is a fair estimate of the wait.
                let wait = time::Duration::try_from(rate.emission_interval())
                    .unwrap_or(time::Duration::SECOND);
                lost_race = Some((*scope, wait));
            }
        }
        match refused.or(lost_race) {
            Some((scope, wait)) => Err(refusal(action, scope, wait)),
            None => Ok(Admission { ip_usage }),
        }
    }

    /// One decision against the shared state.
    async fn decide(
        &self,
        now: OffsetDateTime,
        keys: &[KeyLimit],
    ) -> Result<Vec<db::rate_limits::KeyOutcome>, AdmitError> {
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        Ok(db::rate_limits::decide(&mut conn, now, keys).await?)
    }

    /// Hands out a spare cell of `key` if one is left and still fresh; returns the `tat` its
    /// batch left behind.
    fn take_spare(&self, key: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let lease = leases.get_mut(key)?;
        if lease.spare == 0 || lease.until <= now {
            leases.remove(key);
            return None;
        }
        lease.spare -= 1;
        Some(lease.tat)
    }

    /// The lock that makes refills of `key`'s spares take turns, forgetting idle locks when full.
    fn refill_gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut refills = self.refills.lock().unwrap_or_else(PoisonError::into_inner);
        if refills.len() >= MAX_REMEMBERED_REFUSALS {
            refills.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        Arc::clone(refills.entry(key.to_owned()).or_default())
    }

    /// Keeps `spare` cells of `key` until `until`, dropping lapsed leases when full.
    fn store_spares(
        &self,
        key: &str,
        spare: u32,
        tat: OffsetDateTime,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if leases.len() >= MAX_REMEMBERED_REFUSALS {
            leases.retain(|_, lease| lease.until > now && lease.spare > 0);
        }
        if leases.len() < MAX_REMEMBERED_REFUSALS {
            leases.insert(key.to_owned(), Lease { spare, tat, until });
        }
    }

    /// The first of `keys` the pre-filter knows is refused at `now`, with its retry instant.
    fn remembered_refusal(
        &self,
        keys: &[KeyLimit],
        now: OffsetDateTime,
    ) -> Option<(usize, OffsetDateTime)> {
        let refused = self
            .refused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        keys.iter().enumerate().find_map(|(i, key)| {
            refused
                .get(&key.key)
                .filter(|until| **until > now)
                .map(|until| (i, *until))
        })
    }

    /// Remembers that `key` is refused until `until`, forgetting lapsed refusals when full.
    fn remember_refusal(&self, key: &str, until: OffsetDateTime, now: OffsetDateTime) {
        let mut refused = self
            .refused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if refused.len() >= MAX_REMEMBERED_REFUSALS {
            refused.retain(|_, until| *until > now);
        }
        if refused.len() < MAX_REMEMBERED_REFUSALS {
            refused.insert(key.to_owned(), until);
        }
    }
}

/// An admission whose key of `scope` runs `ahead` of now.
fn admission(scope: Scope, ahead: time::Duration, rate: &Rate) -> Admission {
    Admission {
        ip_usage: (scope == Scope::Ip).then(|| usage(ahead, rate)),
    }
}

fn refusal(action: Action, scope: Scope, wait: time::Duration) -> AdmitError {
    AdmitError::RateLimited {
        action,
        scope,
        retry_after: Duration::try_from(wait).unwrap_or(Duration::ZERO),
    }
}

/// The bucket after a call that left the state `ahead` of now.
fn usage(ahead: time::Duration, rate: &Rate) -> Usage {
    let emission = rate.emission_interval().as_micros().max(1);
    let ahead = u128::try_from(ahead.whole_microseconds()).unwrap_or(0);
    let used = ahead.div_ceil(emission);
    Usage {
        used: u32::try_from(used).unwrap_or(u32::MAX).min(rate.burst()),
        burst: rate.burst(),
    }
}

fn key_limit(action: Action, scope: Scope, subject: &str, rate: Rate) -> KeyLimit {
    let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    KeyLimit {
        key: format!("{action}:{scope}:{subject}"),
        emission_us: micros(rate.emission_interval()),
        tolerance_us: micros(rate.tolerance()),
        cells: 1,
    }
}

/// The address as the shared state knows it: a SHA-256 of its lower-cased form (addresses
/// are one account whatever their letter case), so the table holds no address.
fn address_digest(address: &EmailAddress) -> String {
    let digest = Sha256::digest(address.as_ref().to_lowercase().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `at` truncated to microseconds, PostgreSQL's precision, so the state compares exactly.
fn whole_micros(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.microsecond() * 1_000)
        .unwrap_or(at)
}
