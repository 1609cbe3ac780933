//! The locales emails are written in, and how a message's BCP 47 tag picks one.

/// A locale with a full set of templates and words. Adding a variant makes the compiler ask for
/// its templates (in `templates.rs`) and its words (in `expiry.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Locale {
    /// English, the fallback.
    En,
    /// French.
    Fr,
}

impl Locale {
    /// Every locale, in no particular order.
    pub const ALL: [Self; 2] = [Self::En, Self::Fr];
    /// The locale used when nothing better matches.
    pub const FALLBACK: Self = Self::En;

    /// The BCP 47 tag of this locale, as written in `templates/<kind>/<tag>/`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Fr => "fr",
        }
    }

    /// The best locale for a message tagged `requested` ("pt-BR", "fr-CA", "EN-gb"): the exact
    /// tag, then its language subtag, then [`Locale::FALLBACK`]. Tags compare case-insensitively;
    /// `_` is read as `-`, as some clients write "pt_BR".
    pub fn negotiate(requested: &str) -> Self {
        let requested = requested.trim();
        let language = requested.split(['-', '_']).next().unwrap_or_default();
        Self::find(requested)
            .or_else(|| Self::find(language))
            .unwrap_or(Self::FALLBACK)
    }

    fn find(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|locale| {
            let ours = locale.tag();
            ours.len() == tag.len()
                && ours
                    .bytes()
                    .zip(tag.bytes())
                    .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'-' && b == b'_'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_tag_wins_in_any_case() {
        assert_eq!(Locale::negotiate("fr"), Locale::Fr);
        assert_eq!(Locale::negotiate("FR"), Locale::Fr);
        assert_eq!(Locale::negotiate(" en "), Locale::En);
    }

    #[test]
    fn a_regional_tag_falls_back_to_its_language() {
        assert_eq!(Locale::negotiate("fr-CA"), Locale::Fr);
        assert_eq!(Locale::negotiate("fr_ca"), Locale::Fr);
        assert_eq!(Locale::negotiate("EN-gb"), Locale::En);
    }

    #[test]
    fn an_unknown_language_falls_back_to_english() {
        assert_eq!(Locale::negotiate("pt-BR"), Locale::En);
        assert_eq!(
            Locale::negotiate("frr"),
            Locale::En,
            "North Frisian is not French"
        );
        assert_eq!(Locale::negotiate(""), Locale::En);
        assert_eq!(Locale::negotiate("-"), Locale::En);
    }

    #[test]
    fn every_locale_negotiates_to_itself() {
        for locale in Locale::ALL {
            assert_eq!(Locale::negotiate(locale.tag()), locale);
        }
    }
}
