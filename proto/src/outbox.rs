//! The outbox contract: table semantics live in `migrations/`, message kinds and payloads here.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The PostgreSQL channel writers `NOTIFY` in the transaction that inserts outbox rows, and the
/// relay `LISTEN`s on.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// `outbox.aggregate_type` of messages about a user.
pub const AGGREGATE_USER: &str = "user";

/// Payload of kind [`EmailVerificationV1::KIND`]: a verification email to send.
///
/// It carries the plaintext link token and code, which exist nowhere else: the database keeps
/// only their hashes. The relay deletes the row once the email is accepted and strips these
/// fields if it dead-letters the message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailVerificationV1 {
    /// The address to send to.
    pub recipient: String,
    /// How to greet the user.
    pub display_name: String,
    /// BCP 47 tag that selects the templates (English is the fallback).
    pub locale: String,
    /// The link token (base64url, 43 characters), to put in the verification link.
    pub token: String,
    /// The 6-digit code.
    pub code: String,
    /// When the token and the code stop working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl EmailVerificationV1 {
    /// `outbox.kind` of this message.
    pub const KIND: &'static str = "email.verification.v1";
}

impl std::fmt::Debug for EmailVerificationV1 {
    // The token and the code are secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailVerificationV1")
            .field("locale", &self.locale)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Payload of kind [`EmailPasswordResetV1::KIND`]: a password-reset email to send. Carries the
/// plaintext reset token (the database keeps its hash); secrets are handled as for
/// [`EmailVerificationV1`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailPasswordResetV1 {
    /// The address to send to.
    pub recipient: String,
    /// How to greet the user.
    pub display_name: String,
    /// BCP 47 tag that selects the templates.
    pub locale: String,
    /// The reset token (base64url, 43 characters), to put in the reset link.
    pub token: String,
    /// When the token stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl EmailPasswordResetV1 {
    /// `outbox.kind` of this message.
    pub const KIND: &'static str = "email.password_reset.v1";
}

impl std::fmt::Debug for EmailPasswordResetV1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailPasswordResetV1")
            .field("locale", &self.locale)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Payload of kind [`EmailPasswordChangedV1::KIND`]: the notice that a password was changed
/// (by a reset), so that a user who did not do it knows at once. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailPasswordChangedV1 {
    /// The address to send to.
    pub recipient: String,
    /// How to greet the user.
    pub display_name: String,
    /// BCP 47 tag that selects the templates.
    pub locale: String,
    /// When the password was changed.
    #[serde(with = "time::serde::rfc3339")]
    pub changed_at: OffsetDateTime,
}

impl EmailPasswordChangedV1 {
    /// `outbox.kind` of this message.
    pub const KIND: &'static str = "email.password_changed.v1";
}

/// Payload of kind [`EmailAccountExistsV1::KIND`]: the notice to the owner of an active account
/// that someone tried to sign up with their address (Register answers such a call as for a new
/// address, so only the owner learns of it). At most one an hour per address. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailAccountExistsV1 {
    /// The address to send to.
    pub recipient: String,
    /// How to greet the user (the account's name, not the one the sign-up gave).
    pub display_name: String,
    /// BCP 47 tag that selects the templates (the account's).
    pub locale: String,
    /// When the sign-up was attempted.
    #[serde(with = "time::serde::rfc3339")]
    pub attempted_at: OffsetDateTime,
}

impl EmailAccountExistsV1 {
    /// `outbox.kind` of this message.
    pub const KIND: &'static str = "email.account_exists.v1";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_payload_round_trips_through_json_and_debug_hides_secrets() {
        let message = EmailVerificationV1 {
            recipient: "ada@example.com".into(),
            display_name: "Ada".into(),
            locale: "en".into(),
            token: "tok-secret".into(),
            code: "123456".into(),
            expires_at: time::macros::datetime!(2026-11-22 10:00 UTC),
        };
        let json = serde_json::to_value(&message).expect("serializes");
        assert_eq!(json["expires_at"], "2026-11-22T10:00:00Z");
        let back: EmailVerificationV1 = serde_json::from_value(json).expect("parses");
        assert_eq!(back, message);

        let debug = format!("{message:?}");
        assert!(!debug.contains("tok-secret") && !debug.contains("123456"));
    }
}

/// A domain event, as the outbox carries it to NATS JetStream: the row's `kind` is the event's
/// CloudEvents type (such as `identity.user.registered.v1`), its aggregate id the user the event
/// is about, and its payload the protobuf message of [`crate::identity::events::v1`], encoded.
/// The relay publishes those bytes as they are.
pub trait DomainEvent: prost::Message {
    /// The event's type, and the outbox row's `kind`.
    const TYPE: &'static str;
    /// The protobuf message's full name (CloudEvents' `dataschema`).
    const MESSAGE: &'static str;
}

/// The payload column of a domain event row: the encoded protobuf message, in standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPayload {
    /// The message's protobuf encoding, base64 (standard alphabet, padded).
    pub data: String,
}

impl EventPayload {
    /// The payload of `event`.
    pub fn of(event: &impl DomainEvent) -> Self {
        use base64::Engine;
        Self {
            data: base64::engine::general_purpose::STANDARD.encode(event.encode_to_vec()),
        }
    }

    /// The protobuf bytes to publish; an error when `data` is not base64.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.data)
    }
}

/// Whether an outbox `kind` is a domain event's type (the `event` channel) rather than an email.
pub fn is_event(kind: &str) -> bool {
    kind.starts_with("identity.")
}

/// Each event's message and type, in one list: the [`DomainEvent`] impls and [`message_of`].
macro_rules! domain_events {
    ($($message:ident => $type:literal,)*) => {
        mod event_types {
            use super::DomainEvent;
            use crate::identity::events::v1::{$($message),*};
            $(
                impl DomainEvent for $message {
                    const TYPE: &'static str = $type;
                    const MESSAGE: &'static str =
                        concat!("identity.events.v1.", stringify!($message));
                }
            )*
        }

        /// The protobuf message's full name of the event type `kind`, if it is one.
        pub fn message_of(kind: &str) -> Option<&'static str> {
            match kind {
                $($type => Some(concat!("identity.events.v1.", stringify!($message))),)*
                _ => None,
            }
        }
    };
}

domain_events! {
    UserRegistered => "identity.user.registered.v1",
    UserVerified => "identity.user.verified.v1",
    UserLoggedIn => "identity.user.logged_in.v1",
    UserPasswordChanged => "identity.user.password_changed.v1",
    SessionRevoked => "identity.session.revoked.v1",
}

#[cfg(test)]
mod event_tests {
    use super::*;
    use crate::identity::events::v1::UserLoggedIn;

    #[test]
    fn an_event_payload_round_trips_its_protobuf_bytes() {
        let event = UserLoggedIn {
            user_id: "u".into(),
            session_id: "s".into(),
            logged_in_at: None,
        };
        let payload = EventPayload::of(&event);
        let bytes = payload.bytes().expect("base64");
        assert_eq!(
            <UserLoggedIn as prost::Message>::decode(bytes.as_slice()).expect("decodes"),
            event
        );
        assert!(is_event(UserLoggedIn::TYPE));
        assert!(!is_event(EmailVerificationV1::KIND));
    }

    #[test]
    fn each_event_type_names_its_protobuf_message() {
        use crate::identity::events::v1::SessionRevoked;
        assert_eq!(UserLoggedIn::MESSAGE, "identity.events.v1.UserLoggedIn");
        assert_eq!(
            message_of(SessionRevoked::TYPE),
            Some("identity.events.v1.SessionRevoked")
        );
        assert_eq!(message_of(EmailVerificationV1::KIND), None);
    }
}
