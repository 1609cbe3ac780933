//! When a caller must solve a challenge: the policy, and the pressure of the calling client IP
//! on its rate limit. Pure decisions, no I/O.

/// When the calls that send email (Register, ResendVerificationEmail, RequestPasswordReset)
/// require a solved challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Never; the `altcha` field is ignored.
    Off,
    /// On every call.
    Always,
    /// Once the client IP has used the soft threshold of its rate-limit burst: ordinary users
    /// never see a challenge, a client sending in bulk pays work for every call before the hard
    /// limit refuses it.
    Adaptive,
}

/// How much of its rate-limit burst the calling client IP has used, as the rate limiter knows
/// it: for IPv6 the fullest of its /64's, /48's and /32's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpPressure {
    /// The limiter said nothing (limits off, or no per-IP limit for the call): taken as below any
    /// threshold, so turning limits off never locks ordinary users out behind a challenge.
    Unknown,
    /// The share of the burst used, in percent (0 = untouched, 100 = at the hard limit).
    UsedPercent(u8),
}

impl IpPressure {
    /// `used` of `burst` calls, as a percentage (capped at 100; a zero burst counts as full).
    pub fn of_burst(used: u32, burst: u32) -> Self {
        let percent = u64::from(used) * 100 / u64::from(burst.max(1));
        Self::UsedPercent(u8::try_from(percent.min(100)).unwrap_or(100))
    }
}

/// The limiter's word on the client IP: how much of its burst for this action is in use, or
/// nothing when limits are off or the action has no per-IP limit.
impl From<Option<crate::abuse::Usage>> for IpPressure {
    fn from(usage: Option<crate::abuse::Usage>) -> Self {
        usage.map_or(Self::Unknown, |usage| {
            Self::of_burst(usage.used, usage.burst)
        })
    }
}

impl Policy {
    /// Whether a call under `pressure` must carry a solved challenge; `soft_threshold_percent`
    /// is where [`Policy::Adaptive`] starts asking.
    pub fn requires(self, pressure: IpPressure, soft_threshold_percent: u8) -> bool {
        match (self, pressure) {
            (Self::Off, _) => false,
            (Self::Always, _) => true,
            (Self::Adaptive, IpPressure::Unknown) => false,
            (Self::Adaptive, IpPressure::UsedPercent(used)) => used >= soft_threshold_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_and_always_always_requires() {
        for pressure in [
            IpPressure::Unknown,
            IpPressure::UsedPercent(0),
            IpPressure::UsedPercent(100),
        ] {
            assert!(!Policy::Off.requires(pressure, 50));
            assert!(Policy::Always.requires(pressure, 50));
        }
    }

    #[test]
    fn adaptive_requires_from_the_soft_threshold_on() {
        assert!(!Policy::Adaptive.requires(IpPressure::UsedPercent(0), 50));
        assert!(!Policy::Adaptive.requires(IpPressure::UsedPercent(49), 50));
        assert!(Policy::Adaptive.requires(IpPressure::UsedPercent(50), 50));
        assert!(Policy::Adaptive.requires(IpPressure::UsedPercent(100), 50));
    }

    #[test]
    fn adaptive_with_unknown_pressure_does_not_require() {
        assert!(!Policy::Adaptive.requires(IpPressure::Unknown, 1));
    }

    #[test]
    fn burst_use_becomes_a_percentage() {
        assert_eq!(IpPressure::of_burst(0, 10), IpPressure::UsedPercent(0));
        assert_eq!(IpPressure::of_burst(5, 10), IpPressure::UsedPercent(50));
        assert_eq!(IpPressure::of_burst(2, 3), IpPressure::UsedPercent(66));
        assert_eq!(IpPressure::of_burst(12, 10), IpPressure::UsedPercent(100));
        assert_eq!(IpPressure::of_burst(0, 0), IpPressure::UsedPercent(0));
        assert_eq!(
            IpPressure::of_burst(u32::MAX, 1),
            IpPressure::UsedPercent(100)
        );
    }
}
