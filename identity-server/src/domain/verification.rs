//! The two proofs a verification email carries: a link token and a 6-digit code. Only their
//! hashes are stored; the plaintext travels in the outbox message and nowhere else.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Invalid;

/// An opaque secret token: 32 random bytes, base64url without padding (43 characters), stored
/// only as its SHA-256. Verification links and refresh tokens are both made of it.
#[derive(Clone, PartialEq, Eq)]
pub struct VerificationToken(String);

impl VerificationToken {
    const BYTES: usize = 32;
    const ENCODED_LEN: usize = 43;

    /// A fresh token from the operating system's CSPRNG (through `rand`'s thread RNG).
    pub fn generate() -> Self {
        let mut bytes = [0u8; Self::BYTES];
        rand::fill(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a token a caller presents.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(Invalid("is required"));
        }
        let well_formed = raw.len() == Self::ENCODED_LEN
            && URL_SAFE_NO_PAD
                .decode(raw)
                .is_ok_and(|bytes| bytes.len() == Self::BYTES);
        if !well_formed {
            return Err(Invalid("must be a 43-character base64url token"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The text to put in the link.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database stores and looks tokens up by.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl std::fmt::Debug for VerificationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerificationToken(<redacted>)")
    }
}

/// SHA-256 of a [`VerificationToken`]. A token has 256 bits of entropy, so a fast unkeyed hash
/// is enough: nobody can search that space.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// A 6-digit code, uniformly drawn from 000000 to 999999.
#[derive(Clone, PartialEq, Eq)]
pub struct VerificationCode(String);

impl VerificationCode {
    /// A fresh, uniformly random code.
    pub fn generate() -> Self {
        Self(format!("{:06}", rand::random_range(0..1_000_000u32)))
    }

    /// Parses a code a caller presents: exactly six ASCII digits (surrounding white space is
    /// ignored, since people paste it).
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let raw = raw.trim();
        if raw.len() != 6 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid("must be the 6 digits from the verification email"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The digits, for the email.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for VerificationCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerificationCode(<redacted>)")
    }
}

/// The server's secret key for code MACs. A code has only a million values, so an unkeyed hash
/// would be reversed in a blink by anyone who reads the table; the key keeps it out of reach.
pub struct CodeKey(SecretSlice<u8>);

impl CodeKey {
    /// Fewest key bytes accepted.
    pub const MIN_BYTES: usize = 32;

    /// Takes a key of at least [`CodeKey::MIN_BYTES`] bytes.
    pub fn new(key: Vec<u8>) -> Result<Self, Invalid> {
        if key.len() < Self::MIN_BYTES {
            return Err(Invalid("must be at least 32 bytes"));
        }
        Ok(Self(SecretSlice::from(key)))
    }

    fn mac(&self, secret_id: Uuid) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // Binding the MAC to the row's id makes equal codes in different rows look unrelated.
        mac.update(secret_id.as_bytes());
        mac
    }

    /// The MAC stored for `code` in the verification secret `secret_id`.
    pub fn sign(&self, secret_id: Uuid, code: &VerificationCode) -> [u8; 32] {
        let mut mac = self.mac(secret_id);
        mac.update(code.0.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `code` is the one `stored` was made from, compared in constant time.
    pub fn verify(&self, secret_id: Uuid, code: &VerificationCode, stored: &[u8]) -> bool {
        let mut mac = self.mac(secret_id);
        mac.update(code.0.as_bytes());
        mac.verify_slice(stored).is_ok()
    }
}

impl std::fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_parse_and_hash_stably() {
        let token = VerificationToken::generate();
        assert_eq!(token.expose().len(), 43);
        let parsed = VerificationToken::parse(token.expose()).expect("round trip");
        assert_eq!(parsed.hash(), token.hash());
        assert_ne!(VerificationToken::generate().hash(), token.hash());
    }

    #[test]
    fn generated_codes_are_six_digits() {
        for _ in 0..1000 {
            let code = VerificationCode::generate();
            assert_eq!(
                VerificationCode::parse(code.expose()).expect("round trip"),
                code
            );
        }
        assert!(VerificationCode::parse("12345").is_err());
        assert!(VerificationCode::parse("12345a").is_err());
        assert!(
            VerificationCode::parse("١٢٣٤٥٦").is_err(),
            "only ASCII digits"
        );
        assert_eq!(
            VerificationCode::parse(" 012345 ")
                .expect("trimmed")
                .expose(),
            "012345"
        );
    }

    #[test]
    fn code_macs_depend_on_key_row_and_code() {
        let key = CodeKey::new(vec![7; 32]).expect("long enough");
        let other_key = CodeKey::new(vec![8; 32]).expect("long enough");
        let (row, other_row) = (Uuid::now_v7(), Uuid::now_v7());
        let code = VerificationCode::parse("123456").expect("valid");
        let stored = key.sign(row, &code);

        assert!(key.verify(row, &code, &stored));
        assert!(!key.verify(other_row, &code, &stored));
        assert!(!other_key.verify(row, &code, &stored));
        let wrong = VerificationCode::parse("123457").expect("valid");
        assert!(!key.verify(row, &wrong, &stored));
        assert!(CodeKey::new(vec![0; 31]).is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let token = VerificationToken::generate();
        let code = VerificationCode::generate();
        assert!(!format!("{token:?}").contains(token.expose()));
        assert!(!format!("{code:?}").contains(code.expose()));
    }

    proptest! {
        #[test]
        fn token_and_code_parsing_never_panic(raw in "\\PC{0,80}") {
            let _ = VerificationToken::parse(&raw);
            let _ = VerificationCode::parse(&raw);
        }
    }
}
