//! The email budget per address: however a caller mixes Register, ResendVerificationEmail and
//! RequestPasswordReset, at most `per_hour` emails in any hour and `per_day` in any day go to
//! one address. Exact sliding windows over the times of earlier sends; no I/O here (the sends
//! are read and recorded by `db::email_budget`).

use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};

/// The length of the short window.
const HOUR: Duration = Duration::hours(1);
/// The length of the long window.
const DAY: Duration = Duration::days(1);

/// How many emails one address may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmailBudget {
    per_hour: usize,
    per_day: usize,
}

/// What the budget says about one more email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// It may be sent.
    Allowed,
    /// It may not; the budget allows one again after `retry_after`.
    Exhausted { retry_after: StdDuration },
}

impl EmailBudget {
    /// How long a send counts against the budget at most: older sends never count again.
    pub const WINDOW: Duration = DAY;

    /// A budget of `per_hour` emails an hour and `per_day` a day: both at least 1, and
    /// `per_day` at least `per_hour`.
    pub fn new(per_hour: usize, per_day: usize) -> Result<Self, &'static str> {
        if per_hour == 0 {
            return Err("the hourly email budget must be at least 1");
        }
        if per_day < per_hour {
            return Err("the daily email budget must be at least the hourly one");
        }
        Ok(Self { per_hour, per_day })
    }

    /// Emails allowed in any hour.
    pub fn per_hour(self) -> usize {
        self.per_hour
    }

    /// Emails allowed in any day.
    pub fn per_day(self) -> usize {
        self.per_day
    }

    /// Whether one more email may go at `now`, given when the address's earlier emails went
    /// (those of the last day at least; any order). A send counts while it is less than the
    /// window old.
    pub fn decide(self, sent: &[OffsetDateTime], now: OffsetDateTime) -> Spend {
        let mut newest: Vec<OffsetDateTime> = sent.to_vec();
        newest.sort_unstable_by(|a, b| b.cmp(a));
        let nth_in = |window: Duration, n: usize| {
            newest
                .iter()
                .copied()
                .filter(|t| now - *t < window)
                .nth(n - 1)
        };
        self.decide_from(
            Limits {
                hour: nth_in(HOUR, self.per_hour),
                day: nth_in(DAY, self.per_day),
            },
            now,
        )
    }

    /// Whether one more email may go at `now`, given the sends that fill each window (see
    /// [`Limits`]): with `per_hour` sends in the last hour, one more is allowed once the oldest
    /// of them leaves it, and likewise for the day.
    pub fn decide_from(self, limits: Limits, now: OffsetDateTime) -> Spend {
        let free_at = [limits.hour.map(|t| t + HOUR), limits.day.map(|t| t + DAY)]
            .into_iter()
            .flatten()
            .max();
        match free_at {
            None => Spend::Allowed,
            Some(at) => Spend::Exhausted {
                retry_after: StdDuration::try_from(at - now).unwrap_or_default(),
            },
        }
    }
}

/// When the sends went that fill each window: the `per_hour`-th newest send of the last hour
/// and the `per_day`-th newest of the last day, each `None` while the window has room. This is
/// all the budget needs, so the database can answer it in one row whatever the address's
/// history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub hour: Option<OffsetDateTime>,
    pub day: Option<OffsetDateTime>,
}

impl Default for EmailBudget {
    /// 3 an hour, 10 a day.
    fn default() -> Self {
        Self {
            per_hour: 3,
            per_day: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-12-01 12:00 UTC);

    fn ago(minutes: i64) -> OffsetDateTime {
        NOW - Duration::minutes(minutes)
    }

    #[test]
    fn sends_below_both_limits_are_allowed() {
        let budget = EmailBudget::default();
        assert_eq!(budget.decide(&[], NOW), Spend::Allowed);
        assert_eq!(budget.decide(&[ago(1), ago(2)], NOW), Spend::Allowed);
    }

    #[test]
    fn the_hourly_limit_frees_when_the_oldest_send_of_the_hour_leaves_it() {
        let budget = EmailBudget::default();
        let decision = budget.decide(&[ago(10), ago(50), ago(30)], NOW);
        assert_eq!(
            decision,
            Spend::Exhausted {
                retry_after: StdDuration::from_secs(10 * 60)
            }
        );
        // Exactly an hour old no longer counts.
        assert_eq!(
            budget.decide(&[ago(10), ago(60), ago(30)], NOW),
            Spend::Allowed
        );
    }

    #[test]
    fn the_daily_limit_counts_sends_across_hours() {
        let budget = EmailBudget::new(3, 4).expect("valid");
        let sent = [ago(23 * 60), ago(5 * 60), ago(4 * 60), ago(3 * 60)];
        assert_eq!(
            budget.decide(&sent, NOW),
            Spend::Exhausted {
                retry_after: StdDuration::from_secs(60 * 60)
            }
        );
        assert_eq!(budget.decide(&sent[1..], NOW), Spend::Allowed);
    }

    #[test]
    fn when_both_limits_bite_the_later_release_wins() {
        let budget = EmailBudget::new(2, 3).expect("valid");
        let sent = [ago(20 * 60), ago(20), ago(10)];
        let Spend::Exhausted { retry_after } = budget.decide(&sent, NOW) else {
            panic!("exhausted");
        };
        assert_eq!(retry_after, StdDuration::from_secs(4 * 60 * 60));
    }

    #[test]
    fn limits_are_validated() {
        assert!(EmailBudget::new(0, 10).is_err());
        assert!(EmailBudget::new(5, 4).is_err());
        assert_eq!(EmailBudget::new(3, 10), Ok(EmailBudget::default()));
    }
}
