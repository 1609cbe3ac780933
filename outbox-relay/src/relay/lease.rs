//! How long one delivery may take, and the lease that must cover it.
//!
//! A delivery (a pooled SMTP connection, connected if need be, then the send) is bounded:
//! connecting and sending are each limited by the SMTP timeout, and the relay never runs more
//! sends than its SMTP pool has connections, so no send waits for one. The relay still cuts a
//! delivery off at [`Budget::delivery`] whatever happens inside it.
//!
//! Before each send the relay makes sure its lease outlasts the delivery and a margin to record
//! the outcome; when it would not, the lease is extended first (a heartbeat), and a lease found
//! lost means the message is not sent. Lease times are counted on the relay's monotonic clock
//! from just before the statement that set them, so they end no later than the database's.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// Added to the two SMTP timeouts to make the delivery limit, so that they fire first.
const SLACK: Duration = Duration::from_secs(1);
/// Kept at the end of a lease to record the outcome of a delivery.
const RECORD_MARGIN: Duration = Duration::from_secs(1);
/// What a claim or an extension may use of the fresh lease it sets, before the send starts.
const ROUND_TRIP: Duration = Duration::from_secs(1);

/// A lease long enough for one delivery, and that delivery's limit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    lease: Duration,
    delivery: Duration,
}

/// The lease cannot cover one delivery (a start-up error, naming the settings).
#[derive(Debug, thiserror::Error)]
#[error(
    "RELAY_LEASE_SECS={lease} cannot cover one delivery: with RELAY_SMTP_TIMEOUT_SECS={smtp_timeout}, \
     connecting and sending may take {delivery} s (twice the SMTP timeout, plus 1 s), and 2 s are \
     kept for extending the lease and recording the outcome, so the lease must be at least {needed} s; \
     raise RELAY_LEASE_SECS or lower RELAY_SMTP_TIMEOUT_SECS"
)]
pub struct LeaseTooShort {
    lease: u64,
    smtp_timeout: u64,
    delivery: u64,
    needed: u64,
}

impl Budget {
    /// The budget for `lease`, or an error when it cannot cover a delivery limited by
    /// `smtp_timeout` per step.
    pub(super) fn new(lease: Duration, smtp_timeout: Duration) -> Result<Self, LeaseTooShort> {
        let delivery = smtp_timeout.saturating_mul(2).saturating_add(SLACK);
        let needed = delivery
            .saturating_add(RECORD_MARGIN)
            .saturating_add(ROUND_TRIP);
        if lease < needed {
            return Err(LeaseTooShort {
                lease: lease.as_secs(),
                smtp_timeout: smtp_timeout.as_secs(),
                delivery: delivery.as_secs(),
                needed: needed.as_secs(),
            });
        }
        Ok(Self { lease, delivery })
    }

    /// How long a claim or an extension leases a message.
    pub(super) fn lease(&self) -> Duration {
        self.lease
    }

    /// The longest one delivery may take.
    pub(super) fn delivery(&self) -> Duration {
        self.delivery
    }

    /// Whether a lease that started (at the latest) at `start` still covers a delivery that
    /// starts now, and the recording of its outcome.
    pub(super) fn covers(&self, start: Instant) -> bool {
        let left = (start + self.lease).saturating_duration_since(Instant::now());
        left >= self.delivery + RECORD_MARGIN
    }
}

/// The database's clock, read forward from one reading on the relay's monotonic clock. Expiry
/// is judged by it, so a relay host whose clock is off does not judge a link expired (or not).
#[derive(Debug, Clone, Copy)]
pub(super) struct DatabaseClock {
    read: OffsetDateTime,
    at: Instant,
}

impl DatabaseClock {
    /// The database's time was `read` at `at` (give or take the query's round trip).
    pub(super) fn new(read: OffsetDateTime, at: Instant) -> Self {
        Self { read, at }
    }

    /// The database's time now.
    pub(super) fn now(&self) -> OffsetDateTime {
        self.read + self.at.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_default_lease_covers_a_delivery_at_the_default_smtp_timeout() {
        let budget = Budget::new(30 * SECOND, 10 * SECOND).expect("the defaults fit");
        assert_eq!(budget.delivery(), 21 * SECOND);
        assert!(Budget::new(23 * SECOND, 10 * SECOND).is_ok());
    }

    #[test]
    fn a_lease_shorter_than_a_delivery_is_refused_naming_both_settings() {
        let error = Budget::new(22 * SECOND, 10 * SECOND)
            .expect_err("too short")
            .to_string();
        for named in [
            "RELAY_LEASE_SECS=22",
            "RELAY_SMTP_TIMEOUT_SECS=10",
            "at least 23 s",
        ] {
            assert!(error.contains(named), "{named} missing from: {error}");
        }
    }

    #[test]
    fn a_fresh_lease_of_the_least_length_allowed_covers_a_delivery() {
        let budget = Budget::new(23 * SECOND, 10 * SECOND).expect("long enough");
        // Sent 50 ms ago: a claim's round trip.
        if let Some(sent) = Instant::now().checked_sub(Duration::from_millis(50)) {
            assert!(budget.covers(sent));
        }
    }

    #[test]
    fn a_lease_covers_a_delivery_only_while_enough_of_it_is_left() {
        let budget = Budget::new(30 * SECOND, 10 * SECOND).expect("the defaults fit");
        let now = Instant::now();
        assert!(budget.covers(now));
        // 9 s into the lease, 21 s are left: not enough for 21 s of delivery and 1 s to record.
        if let Some(earlier) = now.checked_sub(9 * SECOND) {
            assert!(!budget.covers(earlier));
        }
    }

    #[test]
    fn the_database_clock_moves_on_from_its_reading() {
        let read = OffsetDateTime::UNIX_EPOCH;
        let clock = DatabaseClock::new(read, Instant::now());
        assert!(clock.now() >= read);
        assert!(clock.now() < read + 60 * SECOND);
    }
}
