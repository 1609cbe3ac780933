//! The proof-of-work challenge that guards the calls that send email: issuing ALTCHA v1
//! challenges and accepting each solution once, across every replica.
//!
//! - [`altcha`]: the protocol (minting, parsing, verifying); no I/O.
//! - [`policy`]: when a solution is required.
//! - this module: [`Challenges`], which ties them to the clock and to the used-solution table
//!   ([`db::challenge_solutions`]).

pub mod altcha;
pub mod policy;

use std::sync::Arc;

use time::Duration;

pub use self::{
    altcha::{Challenge, ChallengeKey},
    policy::{IpPressure, Policy},
};
use crate::{
    clock::Clock,
    db::{self, StoreError},
};

/// How challenges are issued and when they are required.
#[derive(Debug)]
pub struct Settings {
    pub policy: Policy,
    /// Signs and verifies challenges; required unless the policy is off.
    pub key: Option<ChallengeKey>,
    /// The difficulty: the secret number is drawn from `0..=max_number`.
    pub max_number: u32,
    /// How long a challenge can be solved and submitted.
    pub ttl: Duration,
    /// For [`Policy::Adaptive`]: the share of its burst (percent) a client IP uses before
    /// challenges are required.
    pub soft_threshold_percent: u8,
}

impl Settings {
    /// Default difficulty: about 50,000 hashes on average.
    pub const DEFAULT_MAX_NUMBER: u32 = 100_000;
    /// Default lifetime: time to fill in a form after the widget solved the challenge.
    pub const DEFAULT_TTL: Duration = Duration::minutes(10);
    /// Default soft threshold of the adaptive policy.
    pub const DEFAULT_SOFT_THRESHOLD_PERCENT: u8 = 50;

    /// No challenges at all (no key needed).
    pub fn off() -> Self {
        Self {
            policy: Policy::Off,
            key: None,
            max_number: Self::DEFAULT_MAX_NUMBER,
            ttl: Self::DEFAULT_TTL,
            soft_threshold_percent: Self::DEFAULT_SOFT_THRESHOLD_PERCENT,
        }
    }
}

/// Why a call's challenge solution was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    /// A solution is required and none was given.
    #[error("a solved challenge is required")]
    Required,
    /// The solution is malformed, wrong, expired, signed by another key, or was used before.
    /// Which one is logged at debug only.
    #[error("the challenge solution is not valid")]
    Invalid,
    /// Challenges are off and the server has no key to issue them.
    #[error("challenges are disabled")]
    Disabled,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Issues challenges and checks solutions.
pub struct Challenges {
    pool: db::Pool,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Challenges {
    /// Challenges after `settings`; fails when the policy needs a key and there is none.
    pub fn new(pool: db::Pool, clock: Arc<dyn Clock>, settings: Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.policy == Policy::Off || settings.key.is_some(),
            "the challenge policy {:?} needs a challenge key",
            settings.policy
        );
        Ok(Self {
            pool,
            clock,
            settings,
        })
    }

    /// A fresh challenge that expires after the configured lifetime.
    pub fn issue(&self) -> Result<Challenge, ChallengeError> {
        let key = self.settings.key.as_ref().ok_or(ChallengeError::Disabled)?;
        let expires = self.clock.now() + self.settings.ttl;
        Ok(Challenge::mint(key, self.settings.max_number, expires))
    }

    /// Accepts a call when the policy does not require a solution under `pressure`, or when
    /// `altcha` (the widget's payload) is a valid solution never used before; marks it used.
    pub async fn check(&self, altcha: &str, pressure: IpPressure) -> Result<(), ChallengeError> {
        let settings = &self.settings;
        if !settings
            .policy
            .requires(pressure, settings.soft_threshold_percent)
        {
            return Ok(());
        }
        if altcha.is_empty() {
            return Err(ChallengeError::Required);
        }
        let key = settings.key.as_ref().ok_or(ChallengeError::Disabled)?;
        let verified = altcha::Solution::parse(altcha)
            .and_then(|solution| solution.verify(key, self.clock.now()))
            .map_err(|rejection| {
                tracing::debug!(%rejection, "challenge solution refused");
                ChallengeError::Invalid
            })?;
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let first_use =
            db::challenge_solutions::mark_used(&mut conn, &verified.challenge, verified.expires)
                .await?;
        if !first_use {
            tracing::debug!("challenge solution refused: already used");
            return Err(ChallengeError::Invalid);
        }
        Ok(())
    }
}
