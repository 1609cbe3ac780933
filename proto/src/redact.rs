//! Tests of the generated, redacting `Debug` (build/debug_impls.rs): whoever logs a message with
//! `{:?}` sees no password, token, code, address or name.

use crate::identity::v1::{
    EmailCode, GetCurrentUserResponse, ListPublicKeysResponse, LoginRequest, LoginResponse,
    PublicKey, RefreshSessionRequest, RegisterRequest, RegisterResponse, ResetPasswordRequest,
    RevokeSessionRequest, User, UserStatus, VerifyEmailRequest, verify_email_request,
};

const SECRETS: [&str; 9] = [
    "hunter2",
    "tok-secret",
    "654321",
    "login-secret",
    "access-secret",
    "refresh-secret",
    "ada@example.com",
    "Ada Lovelace",
    "altcha-payload-secret",
];

fn assert_hidden(printed: &str) {
    for secret in SECRETS {
        assert!(!printed.contains(secret), "{secret} leaked: {printed}");
    }
}

#[test]
fn debug_output_of_requests_and_responses_hides_every_secret_and_address() {
    let register = RegisterRequest {
        email: "ada@example.com".into(),
        password: "hunter2-hunter2".into(),
        display_name: "Ada Lovelace".into(),
        locale: "en".into(),
        altcha: "altcha-payload-secret".into(),
    };
    let by_token = VerifyEmailRequest {
        proof: Some(verify_email_request::Proof::Token("tok-secret".into())),
        password: "hunter2-hunter2".into(),
    };
    let by_code = VerifyEmailRequest {
        proof: Some(verify_email_request::Proof::EmailCode(EmailCode {
            email: "ada@example.com".into(),
            code: "654321".into(),
        })),
        password: "hunter2-hunter2".into(),
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
    let revoke = RevokeSessionRequest {
        refresh_token: "refresh-secret".into(),
    };
    let reset = ResetPasswordRequest {
        token: "tok-secret".into(),
        new_password: "hunter2-hunter2".into(),
    };
    let me = GetCurrentUserResponse {
        user: Some(User {
            user_id: "u1".into(),
            email: "ada@example.com".into(),
            display_name: "Ada Lovelace".into(),
            locale: "en".into(),
            ..User::default()
        }),
    };
    let printed = format!(
        "{register:?} {by_token:?} {by_code:?} {login:?} {session:?} {refresh:?} {revoke:?} \
         {reset:?} {me:?}"
    );
    assert_hidden(&printed);
    assert!(printed.contains("<redacted>"), "{printed}");
}

#[test]
fn allowed_fields_enums_and_empty_fields_stay_readable() {
    let user = User {
        user_id: "u1".into(),
        status: UserStatus::Active.into(),
        locale: "fr".into(),
        ..User::default()
    };
    let printed = format!("{user:?}");
    assert!(printed.contains("\"u1\""), "{printed}");
    assert!(printed.contains("USER_STATUS_ACTIVE"), "{printed}");
    assert!(printed.contains("\"fr\""), "{printed}");
    assert!(printed.contains("email: \"<empty>\""), "{printed}");

    let keys = ListPublicKeysResponse {
        keys: vec![PublicKey {
            key_id: "k4.pid.abc".into(),
            public_key: "k4.public.def".into(),
            ..PublicKey::default()
        }],
    };
    let printed = format!("{keys:?}");
    assert!(printed.contains("k4.pid.abc") && printed.contains("k4.public.def"));

    // A message without text fields keeps prost's derived Debug.
    let registered = RegisterResponse {
        user_id: "u2".into(),
        status: UserStatus::PendingVerification.into(),
    };
    assert!(format!("{registered:?}").contains("PendingVerification"));
}

#[test]
fn debug_output_of_events_hides_the_address_and_the_name_but_shows_the_ids() {
    use crate::identity::events::v1::{UserLoggedIn, UserRegistered};
    let registered = format!(
        "{:?}",
        UserRegistered {
            user_id: "0194d0c4-user".into(),
            email: "ada@example.com".into(),
            display_name: "Ada Lovelace".into(),
            locale: "en".into(),
            registered_at: None,
        }
    );
    assert_hidden(&registered);
    assert!(registered.contains("0194d0c4-user"), "{registered}");
    let logged_in = format!(
        "{:?}",
        UserLoggedIn {
            user_id: "0194d0c4-user".into(),
            session_id: "0194d0c4-session".into(),
            logged_in_at: None,
        }
    );
    assert!(logged_in.contains("0194d0c4-session"), "{logged_in}");
}
