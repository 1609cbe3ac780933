//! Emails: templates, rendering, and the MIME message handed to SMTP. No I/O here.
//!
//! - `templates`: the registry of template files under `outbox-relay/templates/`, one set
//!   (`subject.txt`, `body.txt`, `body.html`) per kind of email and [`Locale`], embedded at
//!   compile time.
//! - `locale`: which [`Locale`] a message's BCP 47 tag gets: the exact tag, then its language,
//!   then English.
//! - `link`: [`LinkTemplate`], the URL with `{token}` that an email links to.
//! - `expiry`: "expire in 24 hours, on Sunday 22 November 2026 at 10:00 UTC", in each locale.
//! - `render`: the [`Renderer`] and the [`RenderedEmail`] it produces; `verification`,
//!   `password_reset`, `password_changed` and `account_exists` each add their kind of email
//!   to it.
//! - `message`: [`build_message`], the multipart/alternative message with a stable Message-ID.
//!
//! ```ignore
//! let renderer = Renderer::new(Links {
//!     verify: LinkTemplate::parse("https://app.example.com/verify?token={token}")?,
//!     reset: LinkTemplate::parse("https://app.example.com/reset?token={token}")?,
//! })?;
//! let email = renderer.verification(&payload, OffsetDateTime::now_utc())?;
//! let message = build_message(&from, &payload.display_name, &payload.recipient, row_id, &email)?;
//! ```

mod account_exists;
mod expiry;
mod link;
mod locale;
mod message;
mod password_changed;
mod password_reset;
mod render;
mod templates;
mod verification;

pub use link::{LinkTemplate, LinkTemplateError};
pub use locale::Locale;
pub use message::{BuildError, build_message};
pub use render::{ConfigError, Links, RenderError, RenderedEmail, Renderer};
