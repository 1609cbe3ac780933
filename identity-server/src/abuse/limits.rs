//! The limits: which RPC is limited per client IP (and, for IPv6, per /48 and /32 network) and
//! per address, at what rate, and the override syntax of IDENTITY_RATE_LIMITS.
//!
//! A rate `N/P+B` lets B calls through at once after a quiet spell, then one call every P/N
//! (N per period P, sustained). `N/P` alone means B = N. Periods take a unit: `s`, `m`, `h`,
//! `d` (`30s`, `10m`, `1h`, `1d`). `off` removes a limit.
//!
//! In GCRA terms: emission interval T = P/N, tolerance τ = T·(B−1); a call at `now` passes when
//! `now ≥ tat − τ` and moves `tat` to `max(tat, now) + T` (as `governor` computes it).

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

/// A limited RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// `RegistrationService.Register`.
    Register,
    /// `RegistrationService.VerifyEmail` (per address only with the email + code proof).
    VerifyEmail,
    /// `RegistrationService.ResendVerificationEmail`.
    ResendVerificationEmail,
    /// `SessionService.Login`.
    Login,
    /// `PasswordResetService.RequestPasswordReset`.
    RequestPasswordReset,
    /// `PasswordResetService.ResetPassword` (a token, no address: per IP only).
    ResetPassword,
    /// `SessionService.RefreshSession` (a token, no address: per IP only).
    RefreshSession,
}

impl Action {
    /// Every action, in the README's order.
    pub const ALL: [Self; 7] = [
        Self::Register,
        Self::VerifyEmail,
        Self::ResendVerificationEmail,
        Self::Login,
        Self::RequestPasswordReset,
        Self::ResetPassword,
        Self::RefreshSession,
    ];

    /// The name used in IDENTITY_RATE_LIMITS and in the keys of the shared state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::VerifyEmail => "verify_email",
            Self::ResendVerificationEmail => "resend_verification_email",
            Self::Login => "login",
            Self::RequestPasswordReset => "request_password_reset",
            Self::ResetPassword => "reset_password",
            Self::RefreshSession => "refresh_session",
        }
    }

    /// Whether calls of this action can carry an address to limit.
    pub fn has_address(self) -> bool {
        !matches!(self, Self::ResetPassword | Self::RefreshSession)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a limit counts calls of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The client IP (IPv6: its /64).
    Ip,
    /// The /48 of an IPv6 client: a site's allocation, 65,536 /64s that would otherwise each
    /// have a limit of their own. IPv4 clients have none.
    Ip48,
    /// The /32 of an IPv6 client: an ISP's allocation, with a high ceiling. IPv4 clients have
    /// none.
    Ip32,
    /// The email address the call names.
    Address,
}

/// How many times the per-IP limit the /48 of an IPv6 client gets, unless set: a site's
/// network shared by a few dozen machines, and one attacker's cheap allocation.
pub const IP48_MULTIPLE: u32 = 16;

/// How many times the per-IP limit the /32 of an IPv6 client gets, unless set: an ISP's
/// allocation, shared by its customers, so the ceiling only stops one holder of a whole /32.
pub const IP32_MULTIPLE: u32 = 1024;

impl Scope {
    /// The scopes of a client's IPv6 networks, beyond its own /64.
    pub const IPV6_NETWORKS: [Self; 2] = [Self::Ip48, Self::Ip32];

    /// `ip`, `ip48`, `ip32` or `address`, as in IDENTITY_RATE_LIMITS and in a refusal's
    /// ErrorInfo.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Ip48 => "ip48",
            Self::Ip32 => "ip32",
            Self::Address => "address",
        }
    }

    /// Whether this scope counts calls by where they come from (so its usage is the client's
    /// pressure, see [`crate::abuse::Admission::ip_usage`]).
    pub fn is_network(self) -> bool {
        self != Self::Address
    }

    /// The prefix length of the IPv6 network this scope counts, for the network scopes.
    pub fn ipv6_prefix(self) -> Option<u8> {
        match self {
            Self::Ip48 => Some(48),
            Self::Ip32 => Some(32),
            Self::Ip | Self::Address => None,
        }
    }

    /// The multiple of the per-IP limit this network scope gets unless set.
    fn multiple(self) -> Option<u32> {
        match self {
            Self::Ip48 => Some(IP48_MULTIPLE),
            Self::Ip32 => Some(IP32_MULTIPLE),
            Self::Ip | Self::Address => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// N calls per period, B at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    period: Duration,
    burst: u32,
}

/// Longest period accepted: a week; longer is almost certainly a typo.
const MAX_PERIOD: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl Rate {
    /// `count` per `period`, `burst` at once; see [`Rate::from_str`] for the rules.
    pub fn new(count: u32, period: Duration, burst: u32) -> Result<Self, String> {
        if count == 0 || burst == 0 {
            return Err(
                "the count and the burst must be at least 1 (use `off` for no limit)".into(),
            );
        }
        if period.is_zero() || period > MAX_PERIOD {
            return Err("the period must be between 1s and 7d".into());
        }
        let rate = Self {
            count,
            period,
            burst,
        };
        if rate.emission_interval().is_zero() {
            return Err("at most 1000000 calls per second (one per microsecond)".into());
        }
        Ok(rate)
    }

    /// Time one call "costs": period / count (whole microseconds, PostgreSQL's precision).
    pub fn emission_interval(&self) -> Duration {
        let micros = self.period.as_micros() / u128::from(self.count);
        Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// How far ahead of `now` the state may run: emission interval × (burst − 1).
    pub fn tolerance(&self) -> Duration {
        self.emission_interval() * (self.burst - 1)
    }

    /// Calls let through at once after a quiet spell.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Calls per period, sustained.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// This rate `factor` times over (count and burst alike), at most one call per
    /// microsecond: the limit of a network of many clients.
    pub fn times(&self, factor: u32) -> Self {
        let most = u32::try_from(self.period.as_micros()).unwrap_or(u32::MAX);
        Self {
            count: self.count.saturating_mul(factor).min(most),
            period: self.period,
            burst: self.burst.saturating_mul(factor),
        }
    }
}

const fn rate(count: u32, period_secs: u64, burst: u32) -> Rate {
    Rate {
        count,
        period: Duration::from_secs(period_secs),
        burst,
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `N/P` or `N/P+B`, e.g. `10/1h+5`.
    fn from_str(raw: &str) -> Result<Self, String> {
        let shape = || format!("{raw:?} is not a rate like 10/1h or 10/1h+5");
        let (count, rest) = raw.split_once('/').ok_or_else(shape)?;
        let (period, burst) = match rest.split_once('+') {
            Some((period, burst)) => (period, Some(burst)),
            None => (rest, None),
        };
        let count: u32 = count.trim().parse().map_err(|_| shape())?;
        let period = parse_period(period.trim()).ok_or_else(shape)?;
        let burst = match burst {
            Some(b) => b.trim().parse().map_err(|_| shape())?,
            None => count,
        };
        Self::new(count, period, burst).map_err(|e| format!("{raw:?}: {e}"))
    }
}

fn parse_period(raw: &str) -> Option<Duration> {
    let unit_at = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(unit_at);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return None,
    };
    number.checked_mul(seconds).map(Duration::from_secs)
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let period = match secs {
            s if s % 86_400 == 0 => format!("{}d", s / 86_400),
            s if s % 3600 == 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        };
        write!(f, "{}/{period}+{}", self.count, self.burst)
    }
}

/// Every limit in force: for each action and scope, a rate or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits(BTreeMap<(Action, Scope), Rate>);

impl Default for Limits {
    /// The defaults the README's table lists, with their reasons; the IPv6 networks' limits are
    /// the per-IP ones times [`IP48_MULTIPLE`] and [`IP32_MULTIPLE`].
    fn default() -> Self {
        const HOUR: u64 = 60 * 60;
        let table = [
            (Action::Register, Scope::Ip, rate(10, HOUR, 5)),
            (Action::Register, Scope::Address, rate(5, HOUR, 3)),
            (Action::VerifyEmail, Scope::Ip, rate(60, HOUR, 20)),
            (Action::VerifyEmail, Scope::Address, rate(10, HOUR, 5)),
            (
                Action::ResendVerificationEmail,
                Scope::Ip,
                rate(10, HOUR, 5),
            ),
            (
                Action::ResendVerificationEmail,
                Scope::Address,
                rate(5, HOUR, 3),
            ),
            (Action::Login, Scope::Ip, rate(100, HOUR, 20)),
            (Action::Login, Scope::Address, rate(30, HOUR, 10)),
            (Action::RequestPasswordReset, Scope::Ip, rate(10, HOUR, 5)),
            (
                Action::RequestPasswordReset,
                Scope::Address,
                rate(5, HOUR, 3),
            ),
            (Action::ResetPassword, Scope::Ip, rate(20, HOUR, 10)),
            (Action::RefreshSession, Scope::Ip, rate(3600, HOUR, 300)),
        ];
        let mut limits = Self(
            table
                .into_iter()
                .map(|(action, scope, rate)| ((action, scope), rate))
                .collect(),
        );
        limits.derive_networks(&[]);
        limits
    }
}

impl Limits {
    /// No limit at all.
    pub fn none() -> Self {
        Self(BTreeMap::new())
    }

    /// The limit on `action` per `scope`, if any.
    pub fn get(&self, action: Action, scope: Scope) -> Option<Rate> {
        self.0.get(&(action, scope)).copied()
    }

    /// Sets (or with `None` removes) one limit.
    pub fn set(&mut self, action: Action, scope: Scope, rate: Option<Rate>) {
        match rate {
            Some(rate) => self.0.insert((action, scope), rate),
            None => self.0.remove(&(action, scope)),
        };
    }

    /// The defaults with the overrides in `spec` applied: a comma-separated list of
    /// `action.scope=RATE` or `action.scope=off`, e.g. `register.ip=20/1h+5,login.address=off`;
    /// `action=...` sets `ip` and `address`. Empty keeps the defaults. The IPv6 networks'
    /// limits (`ip48`, `ip32`) not set follow the action's per-IP limit, overridden or not.
    pub fn with_overrides(spec: &str) -> Result<Self, String> {
        let mut limits = Self::default();
        let mut seen = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (target, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not action.scope=RATE or action.scope=off"))?;
            let (action, scopes) = parse_target(target.trim())?;
            let rate = match value.trim() {
                "off" => None,
                rate => Some(rate.parse::<Rate>()?),
            };
            for scope in scopes {
                if seen.contains(&(action, scope)) {
                    return Err(format!("{action}.{scope} is set twice"));
                }
                seen.push((action, scope));
                limits.set(action, scope, rate);
            }
        }
        limits.derive_networks(&seen);
        Ok(limits)
    }

    /// Sets each IPv6 network's limit not in `explicit` to the action's per-IP limit times the
    /// network's multiple (none when the action has no per-IP limit).
    fn derive_networks(&mut self, explicit: &[(Action, Scope)]) {
        for action in Action::ALL {
            let ip = self.get(action, Scope::Ip);
            for scope in Scope::IPV6_NETWORKS {
                if !explicit.contains(&(action, scope)) {
                    let multiple = scope.multiple().unwrap_or(1);
                    self.set(action, scope, ip.map(|rate| rate.times(multiple)));
                }
            }
        }
    }

    /// Every limit in force, for the start-up log.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|((action, scope), rate)| format!("{action}.{scope}={rate}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn parse_target(target: &str) -> Result<(Action, Vec<Scope>), String> {
    let (action, scope) = match target.split_once('.') {
        Some((action, scope)) => (action, Some(scope)),
        None => (target, None),
    };
    let action = Action::ALL
        .into_iter()
        .find(|a| a.name() == action)
        .ok_or_else(|| {
            let names: Vec<_> = Action::ALL.iter().map(|a| a.name()).collect();
            format!(
                "unknown action {action:?}; expected one of {}",
                names.join(", ")
            )
        })?;
    let scopes = match scope {
        None if action.has_address() => vec![Scope::Ip, Scope::Address],
        None | Some("ip") => vec![Scope::Ip],
        Some("ip48") => vec![Scope::Ip48],
        Some("ip32") => vec![Scope::Ip32],
        Some("address") if action.has_address() => vec![Scope::Address],
        Some("address") => {
            return Err(format!(
                "{action} carries no address; only {action}.ip, .ip48 or .ip32"
            ));
        }
        Some(other) => {
            return Err(format!(
                "unknown scope {other:?}; expected ip, ip48, ip32 or address"
            ));
        }
    };
    Ok((action, scopes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_and_without_a_burst() {
        let r: Rate = "10/1h+5".parse().expect("valid");
        assert_eq!(
            (r.count(), r.period(), r.burst()),
            (10, Duration::from_secs(3600), 5)
        );
        assert_eq!(r.emission_interval(), Duration::from_secs(360));
        assert_eq!(r.tolerance(), Duration::from_secs(360 * 4));
        let r: Rate = "30/10m".parse().expect("valid");
        assert_eq!(r.burst(), 30);
        assert_eq!(r.to_string(), "30/10m+30");
    }

    #[test]
    fn malformed_rates_are_refused_with_the_reason() {
        for (raw, expected) in [
            ("10", "not a rate"),
            ("10/1x", "not a rate"),
            ("ten/1h", "not a rate"),
            ("10/h", "not a rate"),
            ("0/1h", "at least 1"),
            ("10/1h+0", "at least 1"),
            ("10/0s", "between 1s and 7d"),
            ("10/8d", "between 1s and 7d"),
            ("2000000/1s", "1000000 calls per second"),
        ] {
            let error = raw.parse::<Rate>().expect_err(raw);
            assert!(error.contains(expected), "{raw}: {error}");
        }
    }

    #[test]
    fn overrides_change_only_what_they_name() {
        let limits =
            Limits::with_overrides("register.ip=20/1h+2, login.address=off, refresh_session=off")
                .expect("valid");
        assert_eq!(
            limits.get(Action::Register, Scope::Ip),
            Some(Rate::new(20, Duration::from_secs(3600), 2).expect("valid"))
        );
        assert_eq!(
            limits.get(Action::Register, Scope::Address),
            Limits::default().get(Action::Register, Scope::Address)
        );
        assert_eq!(limits.get(Action::Login, Scope::Address), None);
        assert_eq!(limits.get(Action::RefreshSession, Scope::Ip), None);
        assert_eq!(Limits::with_overrides(""), Ok(Limits::default()));
    }

    #[test]
    fn bad_overrides_name_what_is_wrong() {
        for (spec, expected) in [
            ("register", "not action.scope=RATE"),
            ("signup.ip=1/1h", "unknown action \"signup\""),
            ("register.user=1/1h", "unknown scope \"user\""),
            ("register.ip64=1/1h", "expected ip, ip48, ip32 or address"),
            ("login.ip48=1/1h,login.ip48=off", "set twice"),
            ("refresh_session.address=1/1h", "carries no address"),
            ("login.ip=1/1h,login.ip=off", "set twice"),
            ("login.ip=fast", "not a rate"),
        ] {
            let error = Limits::with_overrides(spec).expect_err(spec);
            assert!(error.contains(expected), "{spec}: {error}");
        }
    }

    #[test]
    fn every_default_is_a_valid_rate() {
        for ((action, scope), r) in &Limits::default().0 {
            assert!(
                Rate::new(r.count, r.period, r.burst).is_ok(),
                "{action}.{scope}"
            );
            assert!(scope.is_network() || action.has_address());
        }
    }

    #[test]
    fn ipv6_networks_get_multiples_of_the_per_ip_limit_unless_set() {
        let hour = Duration::from_secs(3600);
        let rate = |count, burst| Some(Rate::new(count, hour, burst).expect("valid"));
        let defaults = Limits::default();
        assert_eq!(defaults.get(Action::Register, Scope::Ip), rate(10, 5));
        assert_eq!(defaults.get(Action::Register, Scope::Ip48), rate(160, 80));
        assert_eq!(
            defaults.get(Action::Register, Scope::Ip32),
            rate(10_240, 5_120)
        );

        // An overridden per-IP limit carries its networks along; a set one stays as set.
        let limits = Limits::with_overrides(
            "register.ip=20/1h+2,login.ip48=50/1h+10,login.ip32=off,reset_password.ip=off",
        )
        .expect("valid");
        assert_eq!(limits.get(Action::Register, Scope::Ip48), rate(320, 32));
        assert_eq!(
            limits.get(Action::Register, Scope::Ip32),
            rate(20_480, 2_048)
        );
        assert_eq!(limits.get(Action::Login, Scope::Ip48), rate(50, 10));
        assert_eq!(limits.get(Action::Login, Scope::Ip32), None);
        assert_eq!(limits.get(Action::ResetPassword, Scope::Ip48), None);
        // A network limit may stand without a per-IP one.
        let limits = Limits::with_overrides("refresh_session.ip=off,refresh_session.ip48=1/1s")
            .expect("valid");
        assert_eq!(limits.get(Action::RefreshSession, Scope::Ip), None);
        assert_eq!(
            limits.get(Action::RefreshSession, Scope::Ip48),
            Some(Rate::new(1, Duration::from_secs(1), 1).expect("valid"))
        );
        assert_eq!(limits.get(Action::RefreshSession, Scope::Ip32), None);
    }

    #[test]
    fn a_multiplied_rate_stays_at_most_one_call_per_microsecond() {
        let fast = Rate::new(1_000_000, Duration::from_secs(1), 10).expect("valid");
        let times = fast.times(IP32_MULTIPLE);
        assert_eq!(times.emission_interval(), Duration::from_micros(1));
        assert_eq!(times.burst(), 10 * IP32_MULTIPLE);
        assert!(Rate::new(times.count(), times.period(), times.burst()).is_ok());
    }
}
