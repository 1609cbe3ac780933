//! Development only (RELAY_DEV_MAIL_DIR): the log line that shows where an email file is, and the
//! link (and code) in it, so that a developer can follow it. With SMTP, tokens and codes are
//! never logged.

use std::path::Path;

use crate::{email::RenderedEmail, payload::Payload};

/// Logs where the email to `payload`'s recipient was written, and its link and code.
pub(super) fn log_written_file(path: &Path, payload: &Payload, rendered: &RenderedEmail) {
    let link = rendered.link().unwrap_or_default();
    match payload {
        Payload::Verification(p) => {
            tracing::info!(path = %path.display(), %link, code = %p.code, "verification email for {}", p.recipient);
        }
        Payload::PasswordReset(p) => {
            tracing::info!(path = %path.display(), %link, "password reset email for {}", p.recipient);
        }
        Payload::PasswordChanged(p) => {
            tracing::info!(path = %path.display(), "password changed notice for {}", p.recipient);
        }
        Payload::AccountExists(p) => {
            tracing::info!(path = %path.display(), "account exists notice for {}", p.recipient);
        }
    }
}
