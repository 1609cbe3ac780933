use secrecy::{ExposeSecret, SecretString};

use super::Invalid;

/// A password that meets the policy (NIST SP 800-63B): 8 to 256 characters, any Unicode, no
/// composition rules, and not a commonly used or easily guessed one (zxcvbn score 2 or more).
///
/// It is kept as it was typed (no trimming) and is a secret: `Debug` does not show it.
#[derive(Debug)]
pub struct Password(SecretString);

impl Password {
    /// Fewest characters (Unicode scalar values) accepted.
    pub const MIN_CHARS: usize = 8;
    /// Most characters accepted.
    pub const MAX_CHARS: usize = 256;

    /// Checks `raw` against the policy. `context` holds words an attacker would try first, such
    /// as the user's address and name; a password built from them is rejected.
    pub fn parse(raw: &str, context: &[&str]) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(Invalid("must be at least 8 characters"));
        }
        if chars > Self::MAX_CHARS {
            return Err(Invalid("must be at most 256 characters"));
        }
        // zxcvbn looks at the first 100 characters only, which bounds its cost.
        if zxcvbn::zxcvbn(raw, context).score() < zxcvbn::Score::Two {
            return Err(Invalid("is too common or too easy to guess"));
        }
        Ok(Self(SecretString::from(raw)))
    }

    /// Checks `raw` against the policy for the account of `email` named `display_name`: a
    /// password built from the address, its local part, the name or a word of it is rejected
    /// (zxcvbn matches whole words only, hence each word).
    pub fn parse_for(raw: &str, email: &str, display_name: &str) -> Result<Self, Invalid> {
        let email = email.trim();
        let local_part = email.split('@').next().unwrap_or(email);
        let mut context = vec![email, local_part, display_name.trim()];
        context.extend(display_name.split_whitespace());
        Self::parse(raw, &context)
    }

    /// The password's bytes, for hashing.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn length_limits_count_characters_not_bytes() {
        assert!(Password::parse("ünïcødé-wörds-Ωμέγα", &[]).is_ok());
        assert_eq!(
            Password::parse("ab1!", &[]).map(|_| ()),
            Err(Invalid("must be at least 8 characters"))
        );
        let many = "kettle-orbit-".repeat(20) + "x";
        assert!(many.chars().count() > 256);
        assert_eq!(
            Password::parse(&many, &[]).map(|_| ()),
            Err(Invalid("must be at most 256 characters"))
        );
        // 256 characters of two bytes each: accepted.
        let pangram = "Съешь же ещё этих мягких французских булок, да выпей чаю. ";
        let wide: String = pangram.chars().cycle().take(256).collect();
        assert!(wide.len() > 256);
        assert!(Password::parse(&wide, &[]).is_ok());
    }

    #[test]
    fn common_and_contextual_passwords_are_rejected() {
        for common in [
            "password",
            "password123",
            "12345678",
            "qwertyuiop",
            "iloveyou1",
        ] {
            assert!(
                Password::parse(common, &[]).is_err(),
                "{common} should be rejected"
            );
        }
        let strong_elsewhere = "quillfeatherington";
        assert!(Password::parse(strong_elsewhere, &[]).is_ok());
        assert!(Password::parse(strong_elsewhere, &["quillfeatherington"]).is_err());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let password = Password::parse("tangerine-kettle-orbit", &[]).expect("valid");
        assert!(!format!("{password:?}").contains("tangerine"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn parsing_never_panics(raw in "\\PC{0,300}") {
            let _ = Password::parse(&raw, &["someone@example.com"]);
        }

        #[test]
        fn accepted_passwords_are_kept_verbatim(words in proptest::collection::vec("[a-z]{4,9}", 4..7), digits in 10u32..99_999) {
            let raw = format!(" {}-{digits} ", words.join("~"));
            let password = Password::parse(&raw, &[]).expect("four random words pass the policy");
            prop_assert_eq!(password.expose(), raw.as_str());
        }
    }
}
