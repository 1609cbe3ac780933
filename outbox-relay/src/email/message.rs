//! Turns a [`RenderedEmail`] into the MIME message handed to SMTP.

use anyhow::Context as _;
use lettre::Message;
use lettre::address::{Address, AddressError};
use lettre::message::{Mailbox, MultiPart};
use uuid::Uuid;

use super::RenderedEmail;

/// Why a message could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The recipient is not a valid email address. Permanent: dead-letter the message at once.
    /// The address itself is left out of the error, since it is personal data.
    #[error("the recipient is not a valid email address")]
    InvalidRecipient(#[source] AddressError),
    /// lettre refused the message for another reason.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Builds a multipart/alternative message (UTF-8 text/plain, then text/html) from `from` to
/// `to_name <to_address>`.
///
/// Its Message-ID is `<{message_id}@{domain of from}>`, derived from the outbox message id, so
/// a message sent again after a crash carries the same Message-ID and receivers can tell it is
/// the same message.
pub fn build_message(
    from: &Mailbox,
    to_name: &str,
    to_address: &str,
    message_id: Uuid,
    email: &RenderedEmail,
) -> Result<Message, BuildError> {
    let address: Address = to_address
        .trim()
        .parse()
        .map_err(BuildError::InvalidRecipient)?;
    let to_name = to_name.trim();
    let to = Mailbox::new((!to_name.is_empty()).then(|| to_name.to_owned()), address);
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(email.subject())
        .message_id(Some(format!(
            "<{}@{}>",
            message_id.hyphenated(),
            from.email.domain()
        )))
        .multipart(MultiPart::alternative_plain_html(
            email.text().to_owned(),
            email.html().to_owned(),
        ))
        .context("building the email message")
        .map_err(BuildError::Unexpected)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::email::Renderer;
    use identity_proto::outbox::EmailVerificationV1;

    fn rendered() -> RenderedEmail {
        let renderer = Renderer::for_tests();
        let message = EmailVerificationV1 {
            recipient: "ada@example.com".into(),
            display_name: "Ada Lovelace".into(),
            locale: "fr".into(),
            token: "tok".into(),
            code: "123456".into(),
            expires_at: datetime!(2026-11-22 10:00 UTC),
        };
        renderer
            .verification(&message, datetime!(2026-11-21 10:00 UTC))
            .expect("renders")
    }

    fn from() -> Mailbox {
        "Identity <no-reply@mail.example.com>"
            .parse()
            .expect("valid mailbox")
    }

    fn build(to_address: &str, id: Uuid) -> Result<Message, BuildError> {
        build_message(&from(), "Ada Lovelace", to_address, id, &rendered())
    }

    #[test]
    fn the_message_id_is_derived_from_the_outbox_id_and_stable() {
        let id = Uuid::now_v7();
        let first = build("ada@example.com", id).expect("builds");
        let again = build("ada@example.com", id).expect("builds");
        let expected = format!("<{id}@mail.example.com>");
        assert_eq!(
            first.headers().get_raw("Message-ID"),
            Some(expected.as_str())
        );
        assert_eq!(
            again.headers().get_raw("Message-ID"),
            Some(expected.as_str())
        );
        let other = build("ada@example.com", Uuid::now_v7()).expect("builds");
        assert_ne!(
            other.headers().get_raw("Message-ID"),
            Some(expected.as_str())
        );
    }

    #[test]
    fn the_message_has_both_parts_and_the_headers() {
        let message = build("ada@example.com", Uuid::now_v7()).expect("builds");
        let formatted = String::from_utf8(message.formatted()).expect("MIME is ASCII");
        assert!(formatted.contains("Content-Type: multipart/alternative;"));
        assert!(formatted.contains("Content-Type: text/plain; charset=utf-8"));
        assert!(formatted.contains("Content-Type: text/html; charset=utf-8"));
        assert!(formatted.contains("From: Identity <no-reply@mail.example.com>"));
        assert!(
            formatted.contains("To: \"Ada Lovelace\" <ada@example.com>"),
            "{formatted}"
        );
        // The French subject is not ASCII, so it travels RFC 2047-encoded.
        assert!(formatted.contains("Subject: =?utf-8?"), "{formatted}");
        let envelope = message.envelope();
        assert_eq!(
            envelope.to(),
            ["ada@example.com".parse::<Address>().expect("valid")]
        );
    }

    #[test]
    fn an_empty_display_name_sends_to_the_bare_address() {
        let message = build_message(&from(), " ", "ada@example.com", Uuid::now_v7(), &rendered())
            .expect("builds");
        assert_eq!(message.headers().get_raw("To"), Some("ada@example.com"));
    }

    #[test]
    fn an_invalid_recipient_is_its_own_error() {
        for address in [
            "",
            "not an address",
            "ada@",
            "@example.com",
            "ada@exa mple.com",
        ] {
            let result = build(address, Uuid::now_v7());
            assert!(
                matches!(result, Err(BuildError::InvalidRecipient(_))),
                "{address:?}: {result:?}"
            );
        }
    }
}
