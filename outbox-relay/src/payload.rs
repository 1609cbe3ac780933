//! The kinds of message the relay delivers: a claimed row's payload parsed by its kind, who it
//! goes to, and how it is rendered. Adding a kind means a variant here, a method on
//! [`Renderer`] and a template set; the matches below do not compile until each is handled.

use identity_proto::outbox::{
    EmailAccountExistsV1, EmailPasswordChangedV1, EmailPasswordResetV1, EmailVerificationV1,
};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::email::{RenderError, RenderedEmail, Renderer};

/// A payload, parsed. Their `Debug` hides tokens and codes.
#[derive(Debug)]
pub enum Payload {
    /// [`EmailVerificationV1::KIND`]: the link and code that verify an address.
    Verification(EmailVerificationV1),
    /// [`EmailPasswordResetV1::KIND`]: the link to choose a new password.
    PasswordReset(EmailPasswordResetV1),
    /// [`EmailPasswordChangedV1::KIND`]: the notice that the password was changed.
    PasswordChanged(EmailPasswordChangedV1),
    /// [`EmailAccountExistsV1::KIND`]: the notice that someone tried to sign up with the
    /// address of an active account.
    AccountExists(EmailAccountExistsV1),
}

/// Why a payload cannot be delivered, ever: the message is dead-lettered with this reason.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The kind is known but its payload does not parse. Only serde's category is kept: its
    /// message may quote the payload, which holds secrets.
    #[error("malformed {kind} payload ({category:?} error)")]
    Malformed {
        /// The message's kind.
        kind: &'static str,
        /// What serde found wrong: syntax, data (a missing or mistyped field), EOF or I/O.
        category: serde_json::error::Category,
    },
    /// No kind of that name.
    #[error("unknown message kind {0:?}")]
    UnknownKind(String),
}

impl Payload {
    /// Parses the `payload` of a message of `kind`.
    pub fn parse(kind: &str, payload: &serde_json::Value) -> Result<Self, ParseError> {
        Ok(match kind {
            EmailVerificationV1::KIND => {
                Self::Verification(parse(EmailVerificationV1::KIND, payload)?)
            }
            EmailPasswordResetV1::KIND => {
                Self::PasswordReset(parse(EmailPasswordResetV1::KIND, payload)?)
            }
            EmailPasswordChangedV1::KIND => {
                Self::PasswordChanged(parse(EmailPasswordChangedV1::KIND, payload)?)
            }
            EmailAccountExistsV1::KIND => {
                Self::AccountExists(parse(EmailAccountExistsV1::KIND, payload)?)
            }
            other => return Err(ParseError::UnknownKind(other.to_owned())),
        })
    }

    /// The recipient: display name and address.
    pub fn addressee(&self) -> (&str, &str) {
        let (name, address) = match self {
            Self::Verification(p) => (&p.display_name, &p.recipient),
            Self::PasswordReset(p) => (&p.display_name, &p.recipient),
            Self::PasswordChanged(p) => (&p.display_name, &p.recipient),
            Self::AccountExists(p) => (&p.display_name, &p.recipient),
        };
        (name, address)
    }

    /// Renders the email; a link that expired by `now` is an error.
    pub fn render(
        &self,
        renderer: &Renderer,
        now: OffsetDateTime,
    ) -> Result<RenderedEmail, RenderError> {
        match self {
            Self::Verification(p) => renderer.verification(p, now),
            Self::PasswordReset(p) => renderer.password_reset(p, now),
            Self::PasswordChanged(p) => renderer.password_changed(p),
            Self::AccountExists(p) => renderer.account_exists(p),
        }
    }
}

fn parse<T: DeserializeOwned>(
    kind: &'static str,
    payload: &serde_json::Value,
) -> Result<T, ParseError> {
    T::deserialize(payload).map_err(|e| ParseError::Malformed {
        kind,
        category: e.classify(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_kind_parses_into_its_own_payload() {
        let reset = json!({
            "recipient": "ada@example.com", "display_name": "Ada", "locale": "en",
            "token": "t", "expires_at": "2030-01-01T00:00:00Z",
        });
        let changed = json!({
            "recipient": "ada@example.com", "display_name": "Ada", "locale": "fr",
            "changed_at": "2030-01-01T00:00:00Z",
        });
        assert!(matches!(
            Payload::parse("email.password_reset.v1", &reset),
            Ok(Payload::PasswordReset(_))
        ));
        let parsed = Payload::parse("email.password_changed.v1", &changed).expect("parses");
        assert!(matches!(parsed, Payload::PasswordChanged(_)));
        assert_eq!(parsed.addressee(), ("Ada", "ada@example.com"));
        // A reset payload is not a notice: the kind decides, and unknown fields are refused.
        assert!(Payload::parse("email.password_changed.v1", &reset).is_err());
    }

    #[test]
    fn an_account_exists_notice_parses_into_its_own_payload() {
        let notice = json!({
            "recipient": "ada@example.com", "display_name": "Ada", "locale": "en",
            "attempted_at": "2030-01-01T00:00:00Z",
        });
        let parsed = Payload::parse("email.account_exists.v1", &notice).expect("parses");
        assert!(matches!(parsed, Payload::AccountExists(_)));
        assert_eq!(parsed.addressee(), ("Ada", "ada@example.com"));
        assert!(Payload::parse("email.password_changed.v1", &notice).is_err());
    }

    #[test]
    fn a_malformed_payload_is_reported_without_its_content() {
        let payload = json!({ "recipient": "ada@example.com", "token": "secret-token-123" });
        let error = Payload::parse("email.password_reset.v1", &payload).expect_err("malformed");
        let reason = error.to_string();
        assert_eq!(
            reason,
            "malformed email.password_reset.v1 payload (Data error)"
        );
        assert!(!format!("{error:?}").contains("secret-token-123"));
    }

    #[test]
    fn an_unknown_kind_is_named() {
        let error = Payload::parse("sms.v1", &json!({})).expect_err("unknown");
        assert_eq!(error.to_string(), "unknown message kind \"sms.v1\"");
    }
}
