use super::Invalid;

/// An email address: trimmed, at most 254 octets, a valid RFC 5321 mailbox with a dotted domain.
///
/// Letter case is kept as typed (people like to see their address as they wrote it); equality
/// of accounts ignores case, which the database enforces with a unique index on `lower(email)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The longest address that fits in an SMTP forward path (RFC 5321 section 4.5.3.1.3).
    pub const MAX_OCTETS: usize = 254;

    /// Parses what a user typed.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(Invalid("is required"));
        }
        if trimmed.len() > Self::MAX_OCTETS {
            return Err(Invalid("must be at most 254 octets"));
        }
        let options = email_address::Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_required_tld();
        email_address::EmailAddress::parse_with_options(trimmed, options)
            .map_err(|_| Invalid("is not a valid email address"))?;
        Ok(Self(trimmed.to_owned()))
    }

    /// The address as accounts, the email budget and the login throttle compare it: in lower
    /// case, like the `lower(email)` indexes of `users`.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn surrounding_white_space_is_trimmed_and_case_kept() {
        let email = EmailAddress::parse("  Ada.Lovelace@Example.COM \n").expect("valid");
        assert_eq!(email.as_ref(), "Ada.Lovelace@Example.COM");
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for raw in [
            "",
            "   ",
            "ada",
            "ada@",
            "@example.com",
            "ada@@example.com",
            "ada@localhost",
            "Ada <ada@example.com>",
            "ada@[127.0.0.1]",
            "ada lovelace@example.com",
        ] {
            assert!(
                EmailAddress::parse(raw).is_err(),
                "{raw:?} should be rejected"
            );
        }
    }

    #[test]
    fn addresses_longer_than_254_octets_are_rejected() {
        let domain = format!(
            "{}.{}.{}.com",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63)
        );
        let fits = format!("{}@{domain}", "x".repeat(254 - domain.len() - 1));
        assert_eq!(fits.len(), 254);
        assert!(EmailAddress::parse(&fits).is_ok());
        let too_long = format!("x{fits}");
        assert_eq!(
            EmailAddress::parse(&too_long),
            Err(Invalid("must be at most 254 octets"))
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(raw in "\\PC{0,300}") {
            let _ = EmailAddress::parse(&raw);
        }

        #[test]
        fn valid_addresses_round_trip(
            local in "[a-zA-Z0-9][a-zA-Z0-9._+-]{0,20}[a-zA-Z0-9]",
            domain in "[a-z][a-z0-9-]{0,20}[a-z0-9]\\.[a-z]{2,6}",
        ) {
            prop_assume!(!local.contains(".."));
            let raw = format!("{local}@{domain}");
            let parsed = EmailAddress::parse(&format!(" {raw} ")).expect("valid address");
            prop_assert_eq!(parsed.as_ref(), raw.as_str());
            let again = EmailAddress::parse(parsed.as_ref()).expect("still valid");
            prop_assert_eq!(again, parsed);
        }
    }
}
