//! `Debug` for the request messages that carry secrets: passwords, link tokens and codes are
//! never printed, whoever logs a request.

use std::fmt;

use crate::identity::v1::{EmailCode, RegisterRequest, VerifyEmailRequest, verify_email_request};

const REDACTED: &str = "<redacted>";

impl fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .field("display_name", &self.display_name)
            .field("locale", &self.locale)
            .finish()
    }
}

impl fmt::Debug for VerifyEmailRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyEmailRequest")
            .field("proof", &self.proof)
            .finish()
    }
}

impl fmt::Debug for verify_email_request::Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.debug_tuple("Token").field(&REDACTED).finish(),
            Self::EmailCode(pair) => f.debug_tuple("EmailCode").field(pair).finish(),
        }
    }
}

impl fmt::Debug for EmailCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailCode")
            .field("email", &self.email)
            .field("code", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_of_requests_hides_secrets() {
        let register = RegisterRequest {
            email: "ada@example.com".into(),
            password: "hunter2-hunter2".into(),
            display_name: "Ada".into(),
            locale: "en".into(),
        };
        let by_token = VerifyEmailRequest {
            proof: Some(verify_email_request::Proof::Token("tok-secret".into())),
        };
        let by_code = VerifyEmailRequest {
            proof: Some(verify_email_request::Proof::EmailCode(EmailCode {
                email: "ada@example.com".into(),
                code: "123456".into(),
            })),
        };
        let printed = format!("{register:?} {by_token:?} {by_code:?}");
        assert!(printed.contains("ada@example.com"));
        for secret in ["hunter2", "tok-secret", "123456"] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
    }
}
