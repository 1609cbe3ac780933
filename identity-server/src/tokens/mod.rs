//! PASETO v4.public access tokens and the Ed25519 keys that sign them.
//!
//! - [`keys`]: the [`KeyRing`] loaded from a directory of PASERK `k4.secret` files, key
//!   generation for `identity-server keygen`, and the public keys to publish.
//! - [`access`]: issuing and verifying access tokens with a [`KeyRing`].
//! - [`directory`]: the [`KeyDirectory`], which reloads the ring while the server runs (SIGHUP
//!   and a periodic check) so keys rotate without a restart.
//!
//! Keys are named by their PASERK id (`k4.pid.…`), which every token carries in its footer as
//! `{"kid":"k4.pid.…"}`. Another service verifies a token with nothing but a PASETO library and
//! the published `k4.public` key whose id matches.

pub mod access;
pub mod directory;
mod key_files;
pub mod keys;

#[cfg(test)]
mod test_support;

use time::Duration;
use uuid::Uuid;

pub use access::{AccessClaims, CLOCK_SKEW_ALLOWANCE, IssuedToken, TokenError, VerifiedAccess};
pub use directory::{KeyDirectory, Reloaded, Rotation};
pub use keys::{KeyError, KeyRing, PublishedKey};

/// What the server puts in, and expects of, the access tokens it issues; from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The `iss` claim: who issues the tokens (for example `https://id.example.com`).
    pub issuer: String,
    /// The `aud` claim: who the tokens are for (for example `example-api`).
    pub audience: String,
    /// How long an access token stays valid.
    pub access_ttl: Duration,
}

impl TokenSettings {
    /// The claims of an access token for `subject` in session `session_id`.
    pub fn claims(&self, subject: Uuid, session_id: Uuid, roles: Vec<String>) -> AccessClaims {
        AccessClaims {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            subject,
            session_id,
            roles,
        }
    }
}
