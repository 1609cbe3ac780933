//! Link templates: the http(s) URL an email points to, with `{token}` where the token goes.

use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

/// A link template such as `https://app.example.com/verify?token={token}`: an http(s) URL
/// containing the [`LinkTemplate::TOKEN_PLACEHOLDER`]. Parsed once, at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTemplate {
    raw: String,
    https: bool,
}

/// Why a link template was refused: a configuration mistake, to report at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkTemplateError {
    /// The template has no `{token}` placeholder.
    #[error("the link template must contain {{token}}")]
    MissingTokenPlaceholder,
    /// The template is not an http(s) URL.
    #[error("the link template must start with https:// or http://")]
    NotHttpUrl,
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a token.
const TOKEN_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl LinkTemplate {
    /// The placeholder replaced by the (percent-encoded) token.
    pub const TOKEN_PLACEHOLDER: &'static str = "{token}";

    /// Parses a template, ignoring surrounding white space.
    pub fn parse(raw: &str) -> Result<Self, LinkTemplateError> {
        let raw = raw.trim();
        if !raw.contains(Self::TOKEN_PLACEHOLDER) {
            return Err(LinkTemplateError::MissingTokenPlaceholder);
        }
        // As it will be once a (URL-safe) token is in it.
        let url = Url::parse(&raw.replace(Self::TOKEN_PLACEHOLDER, "token"))
            .map_err(|_| LinkTemplateError::NotHttpUrl)?;
        if !matches!(url.scheme(), "https" | "http") || !url.has_host() {
            return Err(LinkTemplateError::NotHttpUrl);
        }
        Ok(Self {
            raw: raw.to_owned(),
            https: url.scheme() == "https",
        })
    }

    /// Whether the link is `https` (only that is sent over SMTP unless http is allowed).
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The link for `token`, percent-encoded so that no token can break out of the URL.
    pub(super) fn with_token(&self, token: &str) -> String {
        let token = utf8_percent_encode(token, TOKEN_ESCAPES).to_string();
        self.raw.replace(Self::TOKEN_PLACEHOLDER, &token)
    }
}

impl FromStr for LinkTemplate {
    type Err = LinkTemplateError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl AsRef<str> for LinkTemplate {
    fn as_ref(&self) -> &str {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_without_the_token_placeholder_is_rejected() {
        for raw in [
            "https://app.example.com/verify?token=",
            "https://app.example.com/verify?token={TOKEN}",
            "",
        ] {
            assert_eq!(
                LinkTemplate::parse(raw),
                Err(LinkTemplateError::MissingTokenPlaceholder),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn a_template_that_is_not_http_is_rejected() {
        for raw in [
            "app.example.com/verify?t={token}",
            "javascript:{token}",
            "{token}://x",
            "ftp://example.com/{token}",
        ] {
            assert_eq!(
                LinkTemplate::parse(raw),
                Err(LinkTemplateError::NotHttpUrl),
                "{raw:?}"
            );
        }
        let http = LinkTemplate::parse("HTTP://localhost:8080/v/{token}").expect("valid");
        assert!(!http.is_https());
        assert!(
            LinkTemplate::parse("https://x.example/{token}")
                .expect("valid")
                .is_https()
        );
        assert_eq!(
            " https://x.example/{token}\n"
                .parse::<LinkTemplate>()
                .expect("valid")
                .as_ref(),
            "https://x.example/{token}"
        );
    }

    #[test]
    fn the_token_is_substituted_and_percent_encoded() {
        let template =
            LinkTemplate::parse("https://app.example.com/verify?token={token}&x=1").expect("valid");
        assert_eq!(
            template.with_token("abc-DEF_123"),
            "https://app.example.com/verify?token=abc-DEF_123&x=1"
        );
        assert_eq!(
            template.with_token("a&b=c d/é"),
            "https://app.example.com/verify?token=a%26b%3Dc%20d%2F%C3%A9&x=1"
        );
    }
}
