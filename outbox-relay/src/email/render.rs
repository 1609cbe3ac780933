//! The [`Renderer`] and what it produces. Each kind of email adds its own `impl Renderer` block
//! in its own module (see `verification.rs`).

use super::Locale;
use super::templates::Templates;

/// Renders emails from the embedded templates. Build one at startup and share it.
#[derive(Debug)]
pub struct Renderer {
    pub(super) templates: Templates,
    verify_url: String,
}

/// Why a [`Renderer`] could not be built: a configuration mistake, to report at startup.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The verification URL template has no `{token}` placeholder.
    #[error("the verification URL template must contain {{token}}")]
    MissingTokenPlaceholder,
    /// The verification URL template is not an http(s) URL.
    #[error("the verification URL template must start with https:// or http://")]
    NotHttpUrl,
    /// An embedded template does not compile (a bug the unit tests catch).
    #[error("the embedded email templates do not compile")]
    Templates(#[source] minijinja::Error),
}

/// Why an email could not be rendered. Both are permanent: retrying gives the same result.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The link and code expired before the email was rendered; sending it would be useless.
    #[error("the email's link expired before it could be sent")]
    Expired,
    /// A template failed to render (a bug the unit tests catch).
    #[error("rendering the email templates failed")]
    Template(#[from] minijinja::Error),
}

impl Renderer {
    /// The placeholder replaced by the (percent-encoded) token in the verification URL.
    pub const TOKEN_PLACEHOLDER: &'static str = "{token}";

    /// Compiles the templates. `verify_url_template` is the link of verification emails, such
    /// as `https://app.example.com/verify?token={token}`; it must contain `{token}`.
    pub fn new(verify_url_template: &str) -> Result<Self, ConfigError> {
        let verify_url = verify_url_template.trim();
        if !verify_url.contains(Self::TOKEN_PLACEHOLDER) {
            return Err(ConfigError::MissingTokenPlaceholder);
        }
        let scheme_end = verify_url.find("://").unwrap_or(0);
        let scheme = &verify_url[..scheme_end];
        if !(scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http")) {
            return Err(ConfigError::NotHttpUrl);
        }
        Ok(Self {
            templates: Templates::load().map_err(ConfigError::Templates)?,
            verify_url: verify_url.to_owned(),
        })
    }

    /// The verification link for `token`.
    pub(super) fn verify_link(&self, token: &str) -> String {
        self.verify_url
            .replace(Self::TOKEN_PLACEHOLDER, &percent_encode(token))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters. Tokens are base64url, which
/// passes through unchanged; this keeps any other value from breaking out of the URL.
fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A rendered email, ready for [`build_message`](super::build_message). Its bodies and link carry
/// secrets (a link token, a code), so its `Debug` shows only the locale and the subject.
#[derive(Clone)]
pub struct RenderedEmail {
    pub(super) locale: Locale,
    pub(super) subject: String,
    pub(super) text: String,
    pub(super) html: String,
    pub(super) link: String,
}

impl RenderedEmail {
    /// The locale the email was written in, after fallback.
    pub fn locale(&self) -> Locale {
        self.locale
    }

    /// The subject, on one line.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The plain-text body. Secret.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The HTML body. Secret.
    pub fn html(&self) -> &str {
        &self.html
    }

    /// The link the email asks the user to open. Secret.
    pub fn link(&self) -> &str {
        &self.link
    }
}

impl std::fmt::Debug for RenderedEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedEmail")
            .field("locale", &self.locale)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_template_without_the_token_placeholder_is_rejected() {
        let error = Renderer::new("https://app.example.com/verify?token=").expect_err("rejected");
        assert!(matches!(error, ConfigError::MissingTokenPlaceholder));
        assert!(matches!(
            Renderer::new("https://app.example.com/verify?token={TOKEN}"),
            Err(ConfigError::MissingTokenPlaceholder)
        ));
    }

    #[test]
    fn a_url_template_that_is_not_http_is_rejected() {
        for url in [
            "app.example.com/verify?t={token}",
            "javascript:{token}",
            "{token}://x",
        ] {
            assert!(
                matches!(Renderer::new(url), Err(ConfigError::NotHttpUrl)),
                "{url}"
            );
        }
        assert!(Renderer::new("HTTP://localhost:8080/v/{token}").is_ok());
    }

    #[test]
    fn the_token_is_substituted_and_percent_encoded() {
        let renderer = Renderer::new("https://app.example.com/verify?token={token}&x=1")
            .expect("valid template");
        assert_eq!(
            renderer.verify_link("abc-DEF_123"),
            "https://app.example.com/verify?token=abc-DEF_123&x=1"
        );
        assert_eq!(
            renderer.verify_link("a&b=c d/é"),
            "https://app.example.com/verify?token=a%26b%3Dc%20d%2F%C3%A9&x=1"
        );
    }
}
