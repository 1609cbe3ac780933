//! The ALTCHA v1 proof-of-work protocol, so the ALTCHA browser widget and altcha-lib solve our
//! challenges: minting signed challenges and checking solutions. No I/O; time is a parameter.
//!
//! A challenge is `challenge = hex(SHA-256(salt ‖ decimal(number)))` for a secret random
//! `number` in `0..=maxnumber`, signed with `signature = hex(HMAC-SHA256(key, challenge))`. The
//! client finds the number by brute force and sends back the base64 of the JSON object
//! `{algorithm, challenge, number, salt, signature}`.
//!
//! The expiry rides in the signed salt as `<24 hex digits>?expires=<unix seconds>&`, and the
//! final `&` is required. Without it (CVE-2025-68113) the hash covers `salt ‖ number` as one
//! string, so a client could move leading digits of the number to the end of the salt, keep the
//! same hash and signature, and multiply the expiry. Here the salt must match the one format we
//! mint, exactly: anything after the terminator, or a missing terminator, is refused.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::domain::Invalid;

/// The only algorithm we issue and accept.
pub const ALGORITHM: &str = "SHA-256";

/// Random bytes at the start of every salt (altcha-lib's default length).
const SALT_RANDOM_BYTES: usize = 12;

/// Longest payload accepted, in base64 characters: a real one is about 300.
const MAX_PAYLOAD_CHARS: usize = 1024;

/// Most digits of an expiry (Unix seconds up to the year 33658).
const MAX_EXPIRY_DIGITS: usize = 12;

/// The server's secret key for challenge signatures. Every replica needs the same key, so a
/// challenge one issues verifies on any other.
pub struct ChallengeKey(SecretSlice<u8>);

impl ChallengeKey {
    /// Fewest key bytes accepted.
    pub const MIN_BYTES: usize = 32;

    /// Takes a key of at least [`ChallengeKey::MIN_BYTES`] bytes. altcha-lib uses the UTF-8 bytes
    /// of its key string, so the same string verifies with both.
    pub fn new(key: Vec<u8>) -> Result<Self, Invalid> {
        if key.len() < Self::MIN_BYTES {
            return Err(Invalid("must be at least 32 bytes"));
        }
        Ok(Self(SecretSlice::from(key)))
    }

    fn mac(&self, challenge_hex: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // ALTCHA signs the challenge's hex text, not its bytes.
        mac.update(challenge_hex.as_bytes());
        mac
    }
}

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(<redacted>)")
    }
}

/// A signed challenge, as the client receives it (the ALTCHA JSON fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Always [`ALGORITHM`].
    pub algorithm: &'static str,
    /// hex(SHA-256(salt ‖ number)).
    pub challenge: String,
    /// The largest number to try: the difficulty.
    pub max_number: u32,
    /// Random hex digits and the terminated expiry.
    pub salt: String,
    /// hex(HMAC-SHA256(key, challenge)).
    pub signature: String,
}

impl Challenge {
    /// A fresh challenge with a random salt and a random number in `0..=max_number`, which
    /// expires at `expires`.
    pub fn mint(key: &ChallengeKey, max_number: u32, expires: OffsetDateTime) -> Self {
        let mut random = [0u8; SALT_RANDOM_BYTES];
        rand::fill(&mut random);
        let number = rand::random_range(0..=max_number);
        Self::with_secret(key, max_number, random, u64::from(number), expires)
    }

    /// The challenge for this salt randomness and number; [`Challenge::mint`] draws them.
    fn with_secret(
        key: &ChallengeKey,
        max_number: u32,
        random: [u8; SALT_RANDOM_BYTES],
        number: u64,
        expires: OffsetDateTime,
    ) -> Self {
        let salt = format!("{}?expires={}&", hex(&random), expires.unix_timestamp());
        let challenge = hex(&hash(&salt, number));
        let signature = hex(&key.mac(&challenge).finalize().into_bytes());
        Self {
            algorithm: ALGORITHM,
            challenge,
            max_number,
            salt,
            signature,
        }
    }
}

/// Why a solution was refused. Only logged (at debug): the caller is told "invalid", whatever
/// the reason, so an attacker learns nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the payload is not base64 of the ALTCHA JSON object ({0})")]
    Malformed(&'static str),
    #[error("the algorithm is not SHA-256")]
    Algorithm,
    #[error("the salt is not one we issue: <24 hex digits>?expires=<digits>&")]
    Salt,
    #[error("the signature does not match the challenge")]
    Signature,
    #[error("the challenge has expired")]
    Expired,
    #[error("SHA-256(salt ‖ number) is not the challenge")]
    WrongNumber,
}

/// A solution as the widget submits it, parsed but not yet checked against the key and clock.
pub struct Solution {
    challenge_hex: String,
    challenge: [u8; 32],
    signature: [u8; 32],
    salt: String,
    expires: OffsetDateTime,
    number: u64,
}

/// The widget's JSON; other fields (`took`) are ignored.
#[derive(Deserialize)]
struct Payload {
    algorithm: String,
    challenge: String,
    number: u64,
    salt: String,
    signature: String,
}

impl Solution {
    /// Parses the widget's payload: base64 (standard alphabet, padded, as `btoa` writes it) of
    /// the JSON object; the challenge and signature must be 64 lowercase hex digits and the
    /// salt of the exact form we mint.
    pub fn parse(payload: &str) -> Result<Self, Rejection> {
        if payload.len() > MAX_PAYLOAD_CHARS {
            return Err(Rejection::Malformed("too long"));
        }
        let json = STANDARD
            .decode(payload)
            .map_err(|_| Rejection::Malformed("not base64"))?;
        let payload: Payload =
            serde_json::from_slice(&json).map_err(|_| Rejection::Malformed("not the JSON"))?;
        if payload.algorithm != ALGORITHM {
            return Err(Rejection::Algorithm);
        }
        let challenge = unhex32(&payload.challenge).ok_or(Rejection::Malformed("challenge"))?;
        let signature = unhex32(&payload.signature).ok_or(Rejection::Malformed("signature"))?;
        let expires = parse_salt(&payload.salt)?;
        Ok(Self {
            challenge_hex: payload.challenge,
            challenge,
            signature,
            salt: payload.salt,
            expires,
            number: payload.number,
        })
    }

    /// Checks the signature (in constant time), the expiry against `now`, and the work.
    pub fn verify(&self, key: &ChallengeKey, now: OffsetDateTime) -> Result<Verified, Rejection> {
        key.mac(&self.challenge_hex)
            .verify_slice(&self.signature)
            .map_err(|_| Rejection::Signature)?;
        if self.expires <= now {
            return Err(Rejection::Expired);
        }
        if hash(&self.salt, self.number) != self.challenge {
            return Err(Rejection::WrongNumber);
        }
        Ok(Verified {
            challenge: self.challenge,
            expires: self.expires,
        })
    }
}

impl std::fmt::Debug for Solution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solution")
            .field("challenge", &self.challenge_hex)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A solution that passed every check but one-time use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The challenge hash: what marks the solution as used.
    pub challenge: [u8; 32],
    /// When the challenge expires; its used-mark is needed until then.
    pub expires: OffsetDateTime,
}

/// The expiry of a salt of the exact form `<24 lowercase hex>?expires=<digits>&`.
fn parse_salt(salt: &str) -> Result<OffsetDateTime, Rejection> {
    let (random, rest) = salt.split_once("?expires=").ok_or(Rejection::Salt)?;
    // The terminator: without it, digits of the number could be spliced onto the expiry.
    let digits = rest.strip_suffix('&').ok_or(Rejection::Salt)?;
    let canonical_digits = !digits.is_empty()
        && digits.len() <= MAX_EXPIRY_DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if random.len() != 2 * SALT_RANDOM_BYTES || !is_lower_hex(random) || !canonical_digits {
        return Err(Rejection::Salt);
    }
    let seconds: i64 = digits.parse().map_err(|_| Rejection::Salt)?;
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| Rejection::Salt)
}

/// SHA-256 of the salt followed by the number in decimal, as ALTCHA hashes them.
fn hash(salt: &str, number: u64) -> [u8; 32] {
    Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(number.to_string().as_bytes())
        .finalize()
        .into()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex, as ALTCHA writes digests.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// 32 bytes from exactly 64 lowercase hex digits.
fn unhex32(text: &str) -> Option<[u8; 32]> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::Duration;

    fn key() -> ChallengeKey {
        ChallengeKey::new(b"challenge-key-0123456789abcdef-0123".to_vec()).expect("long enough")
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time")
    }

    /// The widget's payload for `challenge` solved with `number`, salt as given.
    fn payload(challenge: &Challenge, salt: &str, number: u64) -> String {
        STANDARD.encode(
            serde_json::json!({
                "algorithm": challenge.algorithm,
                "challenge": challenge.challenge,
                "number": number,
                "salt": salt,
                "signature": challenge.signature,
                "took": 42,
            })
            .to_string(),
        )
    }

    fn check(payload: &str, at: OffsetDateTime) -> Result<Verified, Rejection> {
        Solution::parse(payload)?.verify(&key(), at)
    }

    fn minted(number: u64) -> Challenge {
        Challenge::with_secret(
            &key(),
            100_000,
            [7; 12],
            number,
            now() + Duration::minutes(10),
        )
    }

    #[test]
    fn a_minted_challenge_has_the_altcha_shape_and_a_terminated_salt() {
        let challenge = minted(4321);
        assert_eq!(challenge.algorithm, "SHA-256");
        assert_eq!(challenge.challenge.len(), 64);
        assert_eq!(challenge.signature.len(), 64);
        assert_eq!(
            challenge.salt,
            "070707070707070707070707?expires=1800000600&"
        );
    }

    #[test]
    fn the_right_number_verifies_until_the_expiry() {
        let challenge = minted(4321);
        let solution = payload(&challenge, &challenge.salt, 4321);
        let verified = check(&solution, now()).expect("valid");
        assert_eq!(hex(&verified.challenge), challenge.challenge);
        assert_eq!(verified.expires, now() + Duration::minutes(10));
        assert_eq!(
            check(&solution, now() + Duration::minutes(10)),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn a_wrong_number_is_refused() {
        let challenge = minted(4321);
        assert_eq!(
            check(&payload(&challenge, &challenge.salt, 4320), now()),
            Err(Rejection::WrongNumber)
        );
    }

    #[test]
    fn a_signature_made_with_another_key_is_refused() {
        let other = ChallengeKey::new(vec![1; 32]).expect("long enough");
        let challenge = Challenge::with_secret(&other, 10, [7; 12], 5, now() + Duration::hours(1));
        assert_eq!(
            check(&payload(&challenge, &challenge.salt, 5), now()),
            Err(Rejection::Signature)
        );
    }

    #[test]
    fn digits_moved_from_the_number_into_the_salt_are_refused() {
        // The hash and the signature still match: only the salt's form gives it away.
        let challenge = minted(4321);
        let spliced_salt = format!("{}43", challenge.salt);
        assert_eq!(hash(&spliced_salt, 21), hash(&challenge.salt, 4321));
        assert_eq!(
            check(&payload(&challenge, &spliced_salt, 21), now()),
            Err(Rejection::Salt)
        );
    }

    #[test]
    fn an_unterminated_salt_cannot_have_its_expiry_extended() {
        // A challenge in the vulnerable format (no "&"), expired, then spliced to expire a
        // hundred times later: the hash still matches, the form does not.
        let expired = now() - Duration::seconds(1);
        let salt = format!("{}?expires={}", "07".repeat(12), expired.unix_timestamp());
        let number = 98_765;
        let challenge_hex = hex(&hash(&salt, number));
        let challenge = Challenge {
            algorithm: ALGORITHM,
            signature: hex(&key().mac(&challenge_hex).finalize().into_bytes()),
            challenge: challenge_hex,
            max_number: 100_000,
            salt: salt.clone(),
        };
        let spliced_salt = format!("{salt}98");
        assert_eq!(hash(&spliced_salt, 765), hash(&salt, number));
        assert_eq!(
            check(&payload(&challenge, &spliced_salt, 765), now()),
            Err(Rejection::Salt)
        );
    }

    #[test]
    fn salts_of_any_other_form_are_refused() {
        let random = "07".repeat(12);
        for salt in [
            format!("{random}?expires=1800000600"),
            format!("{random}?expires=1800000600&&"),
            format!("{random}?expires=01800000600&"),
            format!("{random}?expires=&"),
            format!("{random}?expires=-5&"),
            format!("{random}?expires=1800000600&x=1&"),
            format!("{random}?expire=1800000600&"),
            format!("{random}&"),
            format!("{}?expires=1800000600&", "07".repeat(11)),
            format!("{}?expires=1800000600&", "0A".repeat(12)),
            format!("{random}?expires=1234567890123&"),
        ] {
            assert_eq!(parse_salt(&salt), Err(Rejection::Salt), "{salt}");
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let challenge = minted(1);
        let good: serde_json::Value = serde_json::from_slice(
            &STANDARD
                .decode(payload(&challenge, &challenge.salt, 1))
                .expect("base64"),
        )
        .expect("JSON");
        let with = |field: &str, value: serde_json::Value| {
            let mut json = good.clone();
            json[field] = value;
            STANDARD.encode(json.to_string())
        };
        assert!(matches!(
            Solution::parse("not base64!"),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            Solution::parse(&"A".repeat(2000)),
            Err(Rejection::Malformed(_))
        ));
        for (field, value) in [
            ("number", serde_json::json!(-1)),
            ("number", serde_json::json!(1.5)),
            ("number", serde_json::json!("1")),
            (
                "challenge",
                serde_json::json!(challenge.challenge.to_uppercase()),
            ),
            ("signature", serde_json::json!(&challenge.signature[..62])),
        ] {
            assert!(
                matches!(
                    Solution::parse(&with(field, value.clone())),
                    Err(Rejection::Malformed(_))
                ),
                "{field}={value}"
            );
        }
        assert_eq!(
            Solution::parse(&with("algorithm", serde_json::json!("SHA-1"))).err(),
            Some(Rejection::Algorithm)
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(ChallengeKey::new(vec![0; 31]).is_err());
        assert!(ChallengeKey::new(vec![0; 32]).is_ok());
    }

    #[test]
    fn minted_numbers_stay_within_the_difficulty_and_brute_force_finds_them() {
        let challenge = Challenge::mint(&key(), 50, now() + Duration::minutes(1));
        let number = (0..=50u64)
            .find(|n| hex(&hash(&challenge.salt, *n)) == challenge.challenge)
            .expect("a number in 0..=50");
        check(&payload(&challenge, &challenge.salt, number), now()).expect("valid");
    }

    proptest! {
        #[test]
        fn any_payload_parses_or_is_refused_without_panicking(payload in ".{0,1200}") {
            let _ = Solution::parse(&payload);
        }

        #[test]
        fn any_base64_of_text_parses_or_is_refused(json in ".{0,600}") {
            let _ = Solution::parse(&STANDARD.encode(json));
        }

        #[test]
        fn any_salt_parses_or_is_refused(salt in "[0-9a-f]{24}\\?expires=[0-9&-]{0,14}") {
            let _ = parse_salt(&salt);
        }

        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            prop_assert_eq!(unhex32(&hex(&bytes)), Some(bytes));
        }
    }
}
