//! `Debug` for the request messages that carry secrets: passwords, link tokens and codes are
//! never printed, whoever logs a request.

use std::fmt;

use crate::identity::v1::{
    EmailCode, LoginRequest, LoginResponse, RefreshSessionRequest, RefreshSessionResponse,
    RegisterRequest, ResetPasswordRequest, RevokeSessionRequest, VerifyEmailRequest,
    verify_email_request,
};

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

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .finish()
    }
}

/// The two session responses have the same fields; both hide their tokens.
macro_rules! redacted_session_response {
    ($message:ident) => {
        impl fmt::Debug for $message {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($message))
                    .field("user_id", &self.user_id)
                    .field("access_token", &REDACTED)
                    .field("access_token_expires_at", &self.access_token_expires_at)
                    .field("refresh_token", &REDACTED)
                    .field("refresh_token_expires_at", &self.refresh_token_expires_at)
                    .finish()
            }
        }
    };
}

redacted_session_response!(LoginResponse);
redacted_session_response!(RefreshSessionResponse);

/// Requests that carry nothing but a refresh token.
macro_rules! redacted_refresh_request {
    ($message:ident) => {
        impl fmt::Debug for $message {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($message))
                    .field("refresh_token", &REDACTED)
                    .finish()
            }
        }
    };
}

redacted_refresh_request!(RefreshSessionRequest);
redacted_refresh_request!(RevokeSessionRequest);

impl fmt::Debug for ResetPasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResetPasswordRequest")
            .field("token", &REDACTED)
            .field("new_password", &REDACTED)
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
        let login = LoginRequest {
            email: "ada@example.com".into(),
            password: "login-secret".into(),
        };
        let session = LoginResponse {
            user_id: "u1".into(),
            access_token: "v4.public.access-secret".into(),
            refresh_token: "refresh-secret".into(),
            ..LoginResponse::default()
        };
        let refresh = RefreshSessionRequest {
            refresh_token: "refresh-secret".into(),
        };
        let printed =
            format!("{register:?} {by_token:?} {by_code:?} {login:?} {session:?} {refresh:?}");
        assert!(printed.contains("ada@example.com") && printed.contains("u1"));
        for secret in [
            "hunter2",
            "tok-secret",
            "123456",
            "login-secret",
            "access-secret",
            "refresh-secret",
        ] {
            assert!(!printed.contains(secret), "{secret} leaked: {printed}");
        }
    }
}
