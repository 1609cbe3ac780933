use super::Invalid;

/// The name used to greet a user: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Most characters accepted.
    pub const MAX_CHARS: usize = 100;

    /// Parses what a user typed.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(Invalid("is required"));
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(Invalid("must be at most 100 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(Invalid("must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

impl AsRef<str> for DisplayName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(
            DisplayName::parse("  Ada Lovelace ")
                .expect("valid")
                .as_ref(),
            "Ada Lovelace"
        );
        assert_eq!(DisplayName::parse(" \t"), Err(Invalid("is required")));
        assert_eq!(
            DisplayName::parse("Ada\u{0}"),
            Err(Invalid("must not contain control characters"))
        );
        assert!(DisplayName::parse(&"é".repeat(100)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(101)).is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(raw in "\\PC{0,200}") {
            let _ = DisplayName::parse(&raw);
        }

        #[test]
        fn valid_names_round_trip(raw in "[\\p{L}\\p{N}][\\p{L}\\p{N} .'-]{0,98}[\\p{L}\\p{N}]") {
            let parsed = DisplayName::parse(&raw).expect("valid name");
            prop_assert_eq!(parsed.as_ref(), raw.as_str());
        }
    }
}
