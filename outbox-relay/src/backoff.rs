//! Retry delays: exponential backoff with full jitter (a uniformly random delay between zero and
//! the capped exponential), so relays that failed together do not retry together.

use std::time::Duration;

/// How failed deliveries are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The ceiling of the first retry's delay.
    pub base: Duration,
    /// How much the ceiling grows with each failure.
    pub factor: f64,
    /// The largest ceiling.
    pub cap: Duration,
    /// Failed deliveries after which a message is dead-lettered.
    pub max_attempts: i32,
}

impl RetryPolicy {
    /// The ceiling of the delay after the `failures`-th failure (1 for the first).
    pub fn ceiling(&self, failures: i32) -> Duration {
        let exponent = failures.saturating_sub(1).clamp(0, 64);
        let grown = self.base.as_secs_f64() * self.factor.powi(exponent);
        Duration::from_secs_f64(grown.min(self.cap.as_secs_f64()))
    }

    /// The delay after the `failures`-th failure, drawn with `unit`, a number in [0, 1).
    pub fn delay(&self, failures: i32, unit: f64) -> Duration {
        self.ceiling(failures).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The longest a message may be retried before it is given up: the sum of the ceilings of
    /// the delays between its attempts (the retry horizon).
    pub fn horizon(&self) -> Duration {
        (1..self.max_attempts).map(|n| self.ceiling(n)).sum()
    }

    /// Whether a message that has now failed `failures` times should be given up.
    pub fn exhausted(&self, failures: i32) -> bool {
        failures >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(60),
            max_attempts: 5,
        }
    }

    #[test]
    fn ceilings_grow_exponentially_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=8).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.ceiling(i32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn delays_are_jittered_between_zero_and_the_ceiling() {
        let p = policy();
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(2));
        assert!(p.delay(3, 0.999_999) < Duration::from_secs(4));
    }

    #[test]
    fn the_horizon_adds_up_the_ceilings_before_the_last_attempt() {
        // Five attempts: four delays, of at most 1, 2, 4 and 8 s.
        assert_eq!(policy().horizon(), Duration::from_secs(15));
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        assert_eq!(once.horizon(), Duration::ZERO);
    }

    #[test]
    fn messages_are_given_up_after_the_attempt_limit() {
        let p = policy();
        assert!(!p.exhausted(4));
        assert!(p.exhausted(5));
    }
}
