//! Abuse controls at the door, before any use case runs (so before any hashing or write).
//!
//! - [`client`]: who the caller is (the client IP, behind trusted proxies too).
//! - [`limits`]: which RPC is limited per IP (for IPv6 also per /48 and /32) and per address,
//!   and how fast.
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
//! Calls whose every limit is generous (burst of at least [`LEASE_MIN_BURST`], e.g.
//! RefreshSession per IP, and per /48 and /32 for IPv6) are also spared most round trips: a call
//! that finds no spare cell charges up to [`LEASE_MAX_CELLS`] cells at once on all its keys in
//! the shared state and the replica hands the spares to the next calls with the same keys within
//! a second; spares not handed out by then are dropped. Every
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
    client::{ClientIdentity, ClientIp, ForwardedHeader, TraceContextTrust, TrustedProxies},
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

/// How full a bucket of the client for this action is in the shared state, counting the call
/// just admitted (and, for limits charged in batches, the spares this replica holds).
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

    /// Whether a larger share of this bucket's burst is in use than of `other`'s.
    pub fn is_fuller_than(&self, other: &Self) -> bool {
        u64::from(self.used) * u64::from(other.burst)
            > u64::from(other.used) * u64::from(self.burst)
    }
}

impl Admission {
    /// How close the client is to a hard limit for this action after this call, for policies
    /// that tighten before the limit (an adaptive challenge): the fullest of its buckets by
    /// where it calls from (its IP; for IPv6 its /64, /48 and /32), so many /64s of one /48
    /// raise the pressure on all of them. `None` when the action has no such limit or limiting
    /// is off.
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

/// Spare cells of one call's keys (an IP, or an IPv6 client's /64, /48 and /32 together),
/// charged in the shared state and not yet handed out.
#[derive(Debug, Clone)]
struct Lease {
    spare: u32,
    /// Each key's `tat` after the batch was charged, in the order of the call's keys.
    tats: Vec<OffsetDateTime>,
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
    /// refuses it. One statement against the shared state decides every limit of the call: the
    /// client IP's, for IPv6 its /48's and /32's, and the address's.
    pub async fn admit(
        &self,
        client: ClientIp,
        action: Action,
        address: Option<&EmailAddress>,
    ) -> Result<Admission, AdmitError> {
        let Some(limits) = &self.limits else {
            return Ok(Admission::default());
        };
        let mut keys = Vec::with_capacity(4);
        let mut rates = Vec::with_capacity(4);
        if let Some(rate) = limits.get(action, Scope::Ip) {
            keys.push(key_limit(action, Scope::Ip, &client.to_string(), rate));
            rates.push((Scope::Ip, rate));
        }
        for scope in Scope::IPV6_NETWORKS {
            let network = scope
                .ipv6_prefix()
                .and_then(|prefix| client.ipv6_network(prefix));
            if let (Some(rate), Some(network)) = (limits.get(action, scope), network) {
                keys.push(key_limit(action, scope, &network.to_string(), rate));
                rates.push((scope, rate));
            }
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

        let cells = rates
            .iter()
            .map(|(_, rate)| batch_cells(rate))
            .min()
            .unwrap_or(1);
        if cells > 1 {
            // Every key generous: the call's keys are charged together, in batches.
            let lease = lease_key(&keys);
            if let Some(tats) = self.take_spare(&lease, now) {
                return Ok(admission(&rates, &tats, now));
            }
            let refill = self.refill_gate(&lease);
            let _refilling = refill.lock().await;
            // The refill this call waited for may have left spares.
            let now = whole_micros(self.clock.now());
            if let Some(tats) = self.take_spare(&lease, now) {
                return Ok(admission(&rates, &tats, now));
            }
            let batch: Vec<KeyLimit> = keys
                .iter()
                .map(|key| KeyLimit {
                    cells: i64::from(cells),
                    ..key.clone()
                })
                .collect();
            let outcomes = self.decide(now, &batch).await?;
            if let Some(tats) = outcomes
                .iter()
                .map(|outcome| outcome.charged_tat)
                .collect::<Option<Vec<_>>>()
            {
                let admitted = admission(&rates, &tats, now);
                self.store_spares(&lease, cells - 1, tats, now, now + LEASE_MAX_AGE);
                return Ok(admitted);
            }
            // The batch does not fit (near the limit): decide this call alone.
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
                if scope.is_network() {
                    ip_usage = fullest(ip_usage, usage(tat - now, rate));
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

    /// Hands out a spare cell of `lease` if one is left and still fresh; returns the `tat`s
    /// its batch left behind, one per key.
    fn take_spare(&self, lease: &str, now: OffsetDateTime) -> Option<Vec<OffsetDateTime>> {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let held = leases.get_mut(lease)?;
        if held.spare == 0 || held.until <= now {
            leases.remove(lease);
            return None;
        }
        held.spare -= 1;
        Some(held.tats.clone())
    }

    /// The lock that makes refills of `key`'s spares take turns, forgetting idle locks when full.
    fn refill_gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut refills = self.refills.lock().unwrap_or_else(PoisonError::into_inner);
        if refills.len() >= MAX_REMEMBERED_REFUSALS {
            refills.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        Arc::clone(refills.entry(key.to_owned()).or_default())
    }

    /// Keeps `spare` cells of `lease` until `until`, dropping lapsed leases when full.
    fn store_spares(
        &self,
        lease: &str,
        spare: u32,
        tats: Vec<OffsetDateTime>,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if leases.len() >= MAX_REMEMBERED_REFUSALS {
            leases.retain(|_, held| held.until > now && held.spare > 0);
        }
        if leases.len() < MAX_REMEMBERED_REFUSALS {
            leases.insert(lease.to_owned(), Lease { spare, tats, until });
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

/// An admission whose keys (limited at `rates`) left their state at `tats`.
fn admission(rates: &[(Scope, Rate)], tats: &[OffsetDateTime], now: OffsetDateTime) -> Admission {
    let ip_usage = rates
        .iter()
        .zip(tats)
        .filter(|((scope, _), _)| scope.is_network())
        .fold(None, |fuller, ((_, rate), tat)| {
            fullest(fuller, usage(*tat - now, rate))
        });
    Admission { ip_usage }
}

/// The fuller of `so_far` (if any) and `next`, by the share of its burst in use.
fn fullest(so_far: Option<Usage>, next: Usage) -> Option<Usage> {
    match so_far {
        Some(so_far) if !next.is_fuller_than(&so_far) => Some(so_far),
        _ => Some(next),
    }
}

/// The key of a batch of spares: the call's keys, which are charged together.
fn lease_key(keys: &[KeyLimit]) -> String {
    keys.iter()
        .map(|key| key.key.as_str())
        .collect::<Vec<_>>()
        .join(" ")
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
