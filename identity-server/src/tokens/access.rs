//! Access tokens: PASETO v4.public, signed by the [`KeyRing`]'s signing key of the moment.
//!
//! Payload: `iss`, `aud`, `sub` (user id), `sid` (session id), `jti` (random UUID), `iat`,
//! `nbf` (= `iat`), `exp` (times in RFC 3339, UTC, whole seconds) and `roles` (strings).
//! Footer: `{"kid":"k4.pid.…"}`, the id of the signing key. The footer is signed too, but it is
//! read before the signature is checked, so it only picks the key.
//!
//! pasetors' own claim validation reads the system clock; here time is a parameter, so the
//! payload is parsed and checked against the caller's `now`.

use pasetors::{
    Public,
    token::UntrustedToken,
    version4::{PublicToken, V4},
};
use serde_json::{Map, Value, json};
use time::{Duration, OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};
use uuid::Uuid;

use super::KeyRing;

/// How far a token's `nbf` and `iat` may lie ahead of the verifier's clock, for replicas whose
/// clocks disagree a little. Expiry gets no such allowance.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::seconds(30);

/// Longest token considered; a real one is about 570 characters with one role.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Who a token is for and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// `sub`: the user's id.
    pub subject: Uuid,
    /// `sid`: the session the token belongs to.
    pub session_id: Uuid,
    /// `roles`, for example `["user"]`.
    pub roles: Vec<String>,
}

/// A signed access token. Its `Debug` hides the token: it is a bearer credential.
#[derive(Clone)]
pub struct IssuedToken {
    /// `v4.public.…`, to hand to the client.
    pub token: String,
    /// `jti`.
    pub token_id: Uuid,
    /// `exp`, as written in the token (whole seconds).
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAccess {
    /// `sub`: the user's id.
    pub subject: Uuid,
    /// `sid`: the session.
    pub session_id: Uuid,
    /// `jti`.
    pub token_id: Uuid,
    /// `roles`.
    pub roles: Vec<String>,
    /// `exp`.
    pub expires_at: OffsetDateTime,
}

/// Why a token was not issued or not accepted. No message repeats any part of the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The footer names a key that is not (or no longer) in the ring.
    #[error("the access token was signed by an unknown key")]
    UnknownKey,
    /// Not a v4.public token with a `kid`, a bad signature, or a payload without the claims.
    #[error("the access token is malformed or its signature is invalid")]
    Invalid,
    /// `exp` has passed.
    #[error("the access token has expired")]
    Expired,
    /// `nbf` or `iat` is still ahead.
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("the access token comes from another issuer")]
    WrongIssuer,
    /// `aud` is not the expected audience.
    #[error("the access token is meant for another audience")]
    WrongAudience,
    /// Signing or encoding failed; a bug, not a caller error.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl KeyRing {
    /// Signs an access token valid from `issued_at` (truncated to the second) for `ttl`, with the
    /// key that signs at `issued_at`.
    pub fn issue(
        &self,
        claims: &AccessClaims,
        issued_at: OffsetDateTime,
        ttl: Duration,
    ) -> Result<IssuedToken, TokenError> {
        if !ttl.is_positive() {
            return Err(anyhow::anyhow!("an access token lifetime must be positive").into());
        }
        let iat = issued_at.to_offset(UtcOffset::UTC).truncate_to_second();
        let exp = iat
            .checked_add(ttl)
            .ok_or_else(|| anyhow::anyhow!("access token expiry out of range"))?
            .truncate_to_second();
        let token_id = random_uuid();
        let payload = json!({
            "iss": claims.issuer,
            "aud": claims.audience,
            "sub": claims.subject,
            "sid": claims.session_id,
            "jti": token_id,
            "iat": rfc3339(iat)?,
            "nbf": rfc3339(iat)?,
            "exp": rfc3339(exp)?,
            "roles": claims.roles,
        });
        let (secret, kid) = self
            .signer(issued_at)
            .ok_or_else(|| anyhow::anyhow!("no secret half for the signing key"))?;
        let footer = json!({ "kid": kid });
        let token = PublicToken::sign(
            secret,
            payload.to_string().as_bytes(),
            Some(footer.to_string().as_bytes()),
            None,
        )
        .map_err(|e| anyhow::anyhow!("PASETO signing failed: {e:?}"))?;
        Ok(IssuedToken {
            token,
            token_id,
            expires_at: exp,
        })
    }

    /// Checks a presented token: a known key's signature, then its times against `now`, then
    /// `iss` and `aud`.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<VerifiedAccess, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let untrusted =
            UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Invalid)?;
        let kid = footer_kid(untrusted.untrusted_footer()).ok_or(TokenError::Invalid)?;
        let key = self.find(&kid).ok_or(TokenError::UnknownKey)?;
        // No expected footer: it was used to pick the key, and the signature covers it.
        let trusted = PublicToken::verify(&key.public, &untrusted, None, None)
            .map_err(|_| TokenError::Invalid)?;
        let payload = Payload::parse(trusted.payload()).ok_or(TokenError::Invalid)?;

        if now >= payload.exp {
            return Err(TokenError::Expired);
        }
        let skewed_now = now.saturating_add(CLOCK_SKEW_ALLOWANCE);
        if skewed_now < payload.nbf || skewed_now < payload.iat {
            return Err(TokenError::NotYetValid);
        }
        if payload.iss != issuer {
            return Err(TokenError::WrongIssuer);
        }
        if payload.aud != audience {
            return Err(TokenError::WrongAudience);
        }
        Ok(VerifiedAccess {
            subject: payload.sub,
            session_id: payload.sid,
            token_id: payload.jti,
            roles: payload.roles,
            expires_at: payload.exp,
        })
    }
}

/// A random (version 4) UUID from the thread's CSPRNG.
fn random_uuid() -> Uuid {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn rfc3339(at: OffsetDateTime) -> Result<String, TokenError> {
    Ok(at
        .format(&Rfc3339)
        .map_err(|e| anyhow::anyhow!("cannot write {at} in RFC 3339: {e}"))?)
}

/// The `kid` of a footer, if the footer is a JSON object with a string `kid`.
fn footer_kid(footer: &[u8]) -> Option<String> {
    let mut footer: Map<String, Value> = serde_json::from_slice(footer).ok()?;
    match footer.remove("kid")? {
        Value::String(kid) => Some(kid),
        _ => None,
    }
}

/// The claims of a token whose signature checked out.
struct Payload {
    iss: String,
    aud: String,
    sub: Uuid,
    sid: Uuid,
    jti: Uuid,
    iat: OffsetDateTime,
    nbf: OffsetDateTime,
    exp: OffsetDateTime,
    roles: Vec<String>,
}

impl Payload {
    fn parse(json: &str) -> Option<Self> {
        let claims: Map<String, Value> = serde_json::from_str(json).ok()?;
        let text = |name: &str| claims.get(name)?.as_str();
        let id = |name: &str| Uuid::parse_str(text(name)?).ok();
        let time = |name: &str| OffsetDateTime::parse(text(name)?, &Rfc3339).ok();
        let roles = claims
            .get("roles")?
            .as_array()?
            .iter()
            .map(|role| role.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            iss: text("iss")?.to_owned(),
            aud: text("aud")?.to_owned(),
            sub: id("sub")?,
            sid: id("sid")?,
            jti: id("jti")?,
            iat: time("iat")?,
            nbf: time("nbf")?,
            exp: time("exp")?,
            roles,
        })
    }
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use pasetors::{
        claims::ClaimsValidationRules,
        footer::Footer,
        keys::AsymmetricPublicKey,
        paserk::{FormatAsPaserk, Id},
        public,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::tokens::{
        TokenSettings,
        test_support::{T0, TempDir, ring_made_at},
    };

    const TTL: Duration = Duration::minutes(15);
    const ISSUER: &str = "https://id.example.test";
    const AUDIENCE: &str = "example-api";

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            access_ttl: TTL,
        }
    }

    fn claims() -> AccessClaims {
        settings().claims(Uuid::now_v7(), Uuid::now_v7(), vec!["user".into()])
    }

    /// The token's parts: header, payload+signature, footer.
    fn parts(token: &str) -> Vec<&str> {
        token.split('.').collect()
    }

    fn decoded_footer(token: &str) -> Value {
        let footer = URL_SAFE_NO_PAD.decode(parts(token)[3]).expect("base64url");
        serde_json::from_slice(&footer).expect("JSON footer")
    }

    #[test]
    fn a_token_carries_the_claims_and_verifies() {
        let ring = ring_made_at(&[T0]);
        let claims = claims();
        let issued_at = T0 + Duration::hours(1) + Duration::milliseconds(250);

        let issued = ring.issue(&claims, issued_at, TTL).expect("signed");
        let verified = ring
            .verify(
                &issued.token,
                ISSUER,
                AUDIENCE,
                issued_at + Duration::minutes(1),
            )
            .expect("valid");

        assert!(issued.token.starts_with("v4.public."));
        assert_eq!(issued.expires_at, T0 + Duration::hours(1) + TTL);
        assert_eq!(
            verified,
            VerifiedAccess {
                subject: claims.subject,
                session_id: claims.session_id,
                token_id: issued.token_id,
                roles: vec!["user".into()],
                expires_at: issued.expires_at,
            }
        );
    }

    #[test]
    fn the_payload_has_exactly_the_documented_claims() {
        let ring = ring_made_at(&[T0]);
        let claims = claims();
        let issued = ring.issue(&claims, T0, TTL).expect("signed");
        let untrusted = UntrustedToken::<Public, V4>::try_from(&issued.token).expect("parses");
        let payload: Value =
            serde_json::from_slice(untrusted.untrusted_payload()).expect("JSON payload");

        assert_eq!(
            payload,
            json!({
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": claims.subject.to_string(),
                "sid": claims.session_id.to_string(),
                "jti": issued.token_id.to_string(),
                "iat": "2026-11-21T07:00:00Z",
                "nbf": "2026-11-21T07:00:00Z",
                "exp": "2026-11-21T07:15:00Z",
                "roles": ["user"],
            })
        );
        assert_eq!(issued.token_id.get_version_num(), 4);
        let again = ring.issue(&claims, T0, TTL).expect("signed");
        assert_ne!(again.token_id, issued.token_id);
    }

    #[test]
    fn the_signing_key_names_itself_in_the_footer() {
        let made = T0 + Duration::days(30);
        let ring = ring_made_at(&[T0, made]);

        let issued = ring.issue(&claims(), made, TTL).expect("signed");

        let newest = &ring.public_keys(made, TTL)[0];
        assert!(newest.active);
        assert_eq!(ring.signing_key_id(made), newest.key_id);
        assert_eq!(
            decoded_footer(&issued.token),
            json!({ "kid": newest.key_id })
        );
    }

    #[test]
    fn tokens_signed_by_the_previous_key_verify_after_rotation() {
        let dir = TempDir::new();
        KeyRing::generate(dir.path(), T0).expect("generated");
        let before = KeyRing::load(dir.path(), Duration::ZERO, T0).expect("loads");
        let old_token = before.issue(&claims(), T0, TTL).expect("signed");
        let rotated_at = T0 + Duration::minutes(5);
        KeyRing::generate(dir.path(), rotated_at).expect("generated");

        let after = KeyRing::load(dir.path(), Duration::ZERO, rotated_at).expect("loads");

        assert_ne!(
            after.signing_key_id(rotated_at),
            before.signing_key_id(rotated_at)
        );
        assert!(
            after
                .verify(&old_token.token, ISSUER, AUDIENCE, rotated_at)
                .is_ok()
        );
        let new_token = after.issue(&claims(), rotated_at, TTL).expect("signed");
        assert!(
            after
                .verify(&new_token.token, ISSUER, AUDIENCE, rotated_at)
                .is_ok()
        );
        // Verifiers still on the old ring reject the new key until they reload.
        assert!(matches!(
            before.verify(&new_token.token, ISSUER, AUDIENCE, rotated_at),
            Err(TokenError::UnknownKey)
        ));
    }

    #[test]
    fn a_tampered_payload_is_rejected() {
        let ring = ring_made_at(&[T0]);
        let issued = ring.issue(&claims(), T0, TTL).expect("signed");
        let mut parts = parts(&issued.token);
        let body = parts[2];
        let middle = body.len() / 4; // well inside the payload, before the signature
        let flipped = if &body[middle..=middle] == "A" {
            "B"
        } else {
            "A"
        };
        let body = format!("{}{flipped}{}", &body[..middle], &body[middle + 1..]);
        parts[2] = &body;
        let tampered = parts.join(".");

        let result = ring.verify(&tampered, ISSUER, AUDIENCE, T0);

        assert!(matches!(result, Err(TokenError::Invalid)), "{result:?}");
    }

    #[test]
    fn a_footer_naming_another_key_in_the_ring_does_not_verify() {
        let ring = ring_made_at(&[T0, T0 + Duration::days(1)]);
        let issued = ring.issue(&claims(), T0, TTL).expect("signed");
        let older = &ring.public_keys(T0, TTL)[1].key_id;
        let footer = URL_SAFE_NO_PAD.encode(json!({ "kid": older }).to_string());
        let mut parts = parts(&issued.token);
        parts[3] = &footer;

        let result = ring.verify(&parts.join("."), ISSUER, AUDIENCE, T0);

        assert!(matches!(result, Err(TokenError::Invalid)), "{result:?}");
    }

    #[test]
    fn an_expired_token_is_rejected() {
        let ring = ring_made_at(&[T0]);
        let issued = ring.issue(&claims(), T0, TTL).expect("signed");
        let last_second = issued.expires_at - Duration::seconds(1);

        assert!(
            ring.verify(&issued.token, ISSUER, AUDIENCE, last_second)
                .is_ok()
        );
        for late in [issued.expires_at, issued.expires_at + Duration::days(1)] {
            assert!(matches!(
                ring.verify(&issued.token, ISSUER, AUDIENCE, late),
                Err(TokenError::Expired)
            ));
        }
    }

    #[test]
    fn a_token_from_the_future_is_rejected_beyond_the_skew_allowance() {
        let ring = ring_made_at(&[T0]);
        let issued = ring.issue(&claims(), T0, TTL).expect("signed");
        let slightly_behind = T0 - CLOCK_SKEW_ALLOWANCE;
        let far_behind = T0 - CLOCK_SKEW_ALLOWANCE - Duration::seconds(1);

        assert!(
            ring.verify(&issued.token, ISSUER, AUDIENCE, slightly_behind)
                .is_ok()
        );
        assert!(matches!(
            ring.verify(&issued.token, ISSUER, AUDIENCE, far_behind),
            Err(TokenError::NotYetValid)
        ));
    }

    #[test]
    fn a_token_for_another_issuer_or_audience_is_rejected() {
        let ring = ring_made_at(&[T0]);
        let issued = ring.issue(&claims(), T0, TTL).expect("signed");

        assert!(matches!(
            ring.verify(&issued.token, "https://evil.example.test", AUDIENCE, T0),
            Err(TokenError::WrongIssuer)
        ));
        assert!(matches!(
            ring.verify(&issued.token, ISSUER, "other-api", T0),
            Err(TokenError::WrongAudience)
        ));
    }

    #[test]
    fn a_token_signed_by_a_key_outside_the_ring_is_rejected_as_unknown() {
        let ring = ring_made_at(&[T0]);
        let stranger = ring_made_at(&[T0]);
        let issued = stranger.issue(&claims(), T0, TTL).expect("signed");

        let result = ring.verify(&issued.token, ISSUER, AUDIENCE, T0);

        assert!(matches!(result, Err(TokenError::UnknownKey)), "{result:?}");
    }

    #[test]
    fn malformed_tokens_are_invalid() {
        let ring = ring_made_at(&[T0]);
        let issued = ring.issue(&claims(), T0, TTL).expect("signed");
        let no_footer = parts(&issued.token)[..3].join(".");
        let local = issued.token.replacen("v4.public.", "v4.local.", 1);
        let huge = format!("{}{}", issued.token, "A".repeat(MAX_TOKEN_LEN));

        for token in ["", "v4.public.", "v4.public..", &no_footer, &local, &huge] {
            assert!(
                matches!(
                    ring.verify(token, ISSUER, AUDIENCE, T0),
                    Err(TokenError::Invalid)
                ),
                "{token}"
            );
        }
    }

    #[test]
    fn errors_and_debug_output_never_show_the_token() {
        let ring = ring_made_at(&[T0]);
        let issued = ring.issue(&claims(), T0, TTL).expect("signed");
        let signature_part = &parts(&issued.token)[2][..40];
        let errors = [
            ring.verify(&issued.token, ISSUER, AUDIENCE, T0 + TTL),
            ring.verify(&issued.token, "x", AUDIENCE, T0),
            ring.verify(&issued.token, ISSUER, "x", T0),
            ring.verify(&format!("{}x", issued.token), ISSUER, AUDIENCE, T0),
        ];

        for error in errors {
            let error = error.expect_err("rejected");
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(signature_part), "{shown}");
        }
        assert!(!format!("{issued:?}").contains(signature_part));
    }

    #[test]
    fn a_non_positive_lifetime_is_refused() {
        let ring = ring_made_at(&[T0]);

        for ttl in [Duration::ZERO, Duration::seconds(-1)] {
            assert!(matches!(
                ring.issue(&claims(), T0, ttl),
                Err(TokenError::Unexpected(_))
            ));
        }
    }

    /// What another service does: it knows the published `k4.public` keys and the PASETO
    /// standard, and nothing of this crate.
    #[test]
    fn another_service_verifies_a_token_with_pasetors_and_the_published_key_alone() {
        let ring = ring_made_at(&[T0]);
        let published: Vec<String> = ring
            .public_keys(T0, TTL)
            .into_iter()
            .map(|key| key.public_key)
            .collect();
        let claims = claims();
        // pasetors checks times against the system clock.
        let issued = ring
            .issue(&claims, OffsetDateTime::now_utc(), TTL)
            .expect("signed");

        let untrusted = UntrustedToken::<Public, V4>::try_from(&issued.token).expect("parses");
        let mut footer = Footer::new();
        footer
            .parse_bytes(untrusted.untrusted_footer())
            .expect("JSON footer");
        let kid = footer
            .get_claim("kid")
            .and_then(Value::as_str)
            .expect("kid");
        let key = published
            .iter()
            .map(|paserk| AsymmetricPublicKey::<V4>::try_from(paserk.as_str()).expect("k4.public"))
            .find(|key| {
                let mut id = String::new();
                FormatAsPaserk::fmt(&Id::from(key), &mut id).expect("formats");
                id == kid
            })
            .expect("the footer names a published key");
        let mut rules = ClaimsValidationRules::new();
        rules.validate_issuer_with(ISSUER);
        rules.validate_audience_with(AUDIENCE);
        let trusted = public::verify(&key, &untrusted, &rules, None, None).expect("verifies");

        let payload = trusted.payload_claims().expect("claims");
        assert_eq!(
            payload.get_claim("sub"),
            Some(&json!(claims.subject.to_string()))
        );
        assert_eq!(
            payload.get_claim("sid"),
            Some(&json!(claims.session_id.to_string()))
        );
        assert_eq!(payload.get_claim("roles"), Some(&json!(["user"])));
    }

    static RING: std::sync::LazyLock<KeyRing> = std::sync::LazyLock::new(|| ring_made_at(&[T0]));

    proptest! {
        #[test]
        fn verifying_any_text_is_an_error_never_a_panic(raw in "\\PC{0,300}") {
            let ring = &*RING;
            prop_assert!(ring.verify(&raw, ISSUER, AUDIENCE, T0).is_err());
            let forged = format!("v4.public.{raw}");
            prop_assert!(ring.verify(&forged, ISSUER, AUDIENCE, T0).is_err());
        }
    }
}
