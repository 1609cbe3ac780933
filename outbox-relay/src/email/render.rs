//! The [`Renderer`] and what it produces. Each kind of email adds its own `impl Renderer` block
//! in its own module (see `verification.rs`, `password_reset.rs`, `password_changed.rs`,
//! `account_exists.rs`).

use super::templates::{Parts, Templates};
use super::{LinkTemplate, Locale};

/// Renders emails from the embedded templates. Build one at startup and share it.
#[derive(Debug)]
pub struct Renderer {
    pub(super) templates: Templates,
    pub(super) links: Links,
}

/// Where the links in emails point.
#[derive(Debug, Clone)]
pub struct Links {
    /// The link of verification emails (`VERIFY_URL_TEMPLATE`).
    pub verify: LinkTemplate,
    /// The link of password-reset emails (`RESET_URL_TEMPLATE`).
    pub reset: LinkTemplate,
}

/// Why a [`Renderer`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An embedded template does not compile (a bug the unit tests catch).
    #[error("the embedded email templates do not compile")]
    Templates(#[source] minijinja::Error),
}

/// Why an email could not be rendered. Both are permanent: retrying gives the same result.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The link (and code) expired before the email was rendered; sending it would be useless.
    #[error("the email's link expired before it could be sent")]
    Expired,
    /// A template failed to render (a bug the unit tests catch).
    #[error("rendering the email templates failed")]
    Template(#[from] minijinja::Error),
}

impl Renderer {
    /// Compiles the templates; emails will link to `links`.
    pub fn new(links: Links) -> Result<Self, ConfigError> {
        Ok(Self {
            templates: Templates::load().map_err(ConfigError::Templates)?,
            links,
        })
    }

    /// A renderer linking to `https://app.example.com/verify?token=…` and
    /// `https://app.example.com/reset?token=…`.
    #[cfg(test)]
    pub(super) fn for_tests() -> Self {
        let link = |raw| LinkTemplate::parse(raw).expect("a valid link template");
        Self::new(Links {
            verify: link("https://app.example.com/verify?token={token}"),
            reset: link("https://app.example.com/reset?token={token}"),
        })
        .expect("the templates compile")
    }
}

/// A rendered email, ready for [`build_message`](super::build_message). Its bodies and link carry
/// secrets (a link token, a code), so its `Debug` shows only the locale and the subject.
#[derive(Clone)]
pub struct RenderedEmail {
    pub(super) locale: Locale,
    pub(super) subject: String,
    pub(super) text: String,
    pub(super) html: String,
    pub(super) link: Option<String>,
}

impl RenderedEmail {
    /// `parts` rendered in `locale`, asking the reader to open `link` if there is one.
    pub(super) fn new(locale: Locale, parts: Parts, link: Option<String>) -> Self {
        Self {
            locale,
            subject: parts.subject,
            text: parts.text,
            html: parts.html,
            link,
        }
    }

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

    /// The link the email asks the user to open, if it has one. Secret.
    pub fn link(&self) -> Option<&str> {
        self.link.as_deref()
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
