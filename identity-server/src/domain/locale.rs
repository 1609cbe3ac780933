use std::str::FromStr;

use unic_langid::LanguageIdentifier;

use super::Invalid;

/// A BCP 47 language tag in canonical form ("pt-BR", not "pt_br"). Empty input means English.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locale(String);

impl Locale {
    /// The locale used when the caller gives none.
    pub const DEFAULT: &'static str = "en";
    /// Longest tag accepted; real tags are far shorter.
    const MAX_LEN: usize = 35;

    /// Parses a language tag; empty (after trimming) gives [`Locale::DEFAULT`].
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(Self(Self::DEFAULT.to_owned()));
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(Invalid("must be at most 35 characters"));
        }
        let tag = LanguageIdentifier::from_str(trimmed)
            .map_err(|_| Invalid("must be a BCP 47 language tag such as \"en\" or \"pt-BR\""))?;
        if tag.language.is_empty() {
            return Err(Invalid("must name a language"));
        }
        Ok(Self(tag.to_string()))
    }
}

impl AsRef<str> for Locale {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tags_are_canonicalized_and_empty_means_english() {
        assert_eq!(Locale::parse("pt_br").expect("valid").as_ref(), "pt-BR");
        assert_eq!(Locale::parse("EN").expect("valid").as_ref(), "en");
        assert_eq!(Locale::parse("").expect("valid").as_ref(), "en");
        assert!(Locale::parse("not a locale").is_err());
        assert!(Locale::parse("und").is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(raw in "\\PC{0,60}") {
            let _ = Locale::parse(&raw);
        }

        #[test]
        fn valid_tags_round_trip(lang in "[a-z]{2,3}", region in proptest::option::of("[A-Z]{2}")) {
            prop_assume!(lang != "und");
            let raw = match &region { Some(r) => format!("{lang}-{r}"), None => lang.clone() };
            let parsed = Locale::parse(&raw).expect("well-formed tag");
            prop_assert_eq!(parsed.as_ref(), raw.as_str());
            prop_assert_eq!(Locale::parse(parsed.as_ref()).expect("canonical tag parses"), parsed);
        }
    }
}
