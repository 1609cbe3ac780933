//! Emails: templates, rendering, and the MIME message handed to SMTP. No I/O here.
//!
//! - `templates`: the registry of template files under `outbox-relay/templates/`, one set
//!   (`subject.txt`, `body.txt`, `body.html`) per kind of email and [`Locale`], embedded at
//!   compile time.
//! - `locale`: which [`Locale`] a message's BCP 47 tag gets: the exact tag, then its language,
//!   then English.
//! - `expiry`: "expire in 24 hours, on Sunday 22 November 2026 at 10:00 UTC", in each locale.
//! - `render`: the [`Renderer`] and the [`RenderedEmail`] it produces; `verification` adds the
//!   verification email to it.
//! - `message`: [`build_message`], the multipart/alternative message with a stable Message-ID.
//!
//! ```ignore
//! let renderer = Renderer::new("https://app.example.com/verify?token={token}")?;
//! let email = renderer.verification(&payload, OffsetDateTime::now_utc())?;
//! let message = build_message(&from, &payload.display_name, &payload.recipient, row_id, &email)?;
//! ```

mod expiry;
mod locale;
mod message;
mod render;
mod templates;
mod verification;

pub use locale::Locale;
pub use message::{BuildError, build_message};
pub use render::{ConfigError, RenderError, RenderedEmail, Renderer};
