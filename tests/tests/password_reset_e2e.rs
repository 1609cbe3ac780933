//! Password reset end to end: the built server and relay, PostgreSQL, and the SMTP server.

use std::time::Duration;

use identity_proto::identity::v1::{
    self as pb, password_reset_service_client::PasswordResetServiceClient,
    session_service_client::SessionServiceClient,
};
use identity_tests::{
    relay,
    server::{Server, reason},
    smtp::{SmtpServer, text_part, token_after},
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);
const NEW_PASSWORD: &str = "marmalade-lantern-quartz-9";

#[tokio::test]
async fn a_password_reset_goes_from_request_to_email_to_new_password_and_notice() {
    let smtp = SmtpServer::start();
    let server = Server::start(&[]).await;
    let _relay = relay::start(&server.db.url, &smtp.url(), &[]).await;
    let channel = server.channel().await;

    // An active user with a session.
    let mut registration = server.registration().await;
    registration
        .register(pb::RegisterRequest {
            email: "ada@example.com".into(),
            password: "tangerine-kettle-orbit-42".into(),
            display_name: "Ada Lovelace".into(),
            locale: "en".into(),
            ..Default::default()
        })
        .await
        .expect("registers");
    let verification = smtp.wait_for_message_to("ada@example.com", WAIT).await;
    let token = token_after(
        &text_part(&verification.data),
        "https://app.example.com/verify?token=",
    );
    registration
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(token)),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("verifies");
    let mut sessions = SessionServiceClient::new(channel.clone());
    let login = |password: &str| pb::LoginRequest {
        email: "ada@example.com".into(),
        password: password.into(),
    };
    let before = sessions
        .login(login("tangerine-kettle-orbit-42"))
        .await
        .expect("logs in")
        .into_inner();

    // An unknown address gets OK and no email (checked at the end, once later emails are in).
    let mut resets = PasswordResetServiceClient::new(channel);
    resets
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "nobody@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("OK for an unknown address");

    // The reset email arrives with a link; the token resets the password.
    resets
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "ada@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("OK");
    let mails = smtp.wait_for_messages(2, WAIT).await;
    let reset_mail = mails.last().expect("the reset email");
    assert!(reset_mail.is_for("ada@example.com"));
    let reset_token = token_after(
        &text_part(&reset_mail.data),
        "https://app.example.com/reset?token=",
    );
    resets
        .reset_password(pb::ResetPasswordRequest {
            token: reset_token.clone(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .expect("resets");

    // The old password fails, the new one works, the earlier session is dead.
    let old = sessions
        .login(login("tangerine-kettle-orbit-42"))
        .await
        .expect_err("old password");
    assert_eq!(
        (old.code(), reason(&old).as_str()),
        (Code::Unauthenticated, "INVALID_CREDENTIALS")
    );
    sessions
        .login(login(NEW_PASSWORD))
        .await
        .expect("new password");
    let refresh = sessions
        .refresh_session(pb::RefreshSessionRequest {
            refresh_token: before.refresh_token,
        })
        .await
        .expect_err("revoked by the reset");
    assert_eq!(reason(&refresh), "REFRESH_TOKEN_INVALID");

    // The notice arrives, without any token.
    let mails = smtp.wait_for_messages(3, WAIT).await;
    let notice = mails.last().expect("the notice");
    assert!(notice.is_for("ada@example.com"));
    let notice_text = text_part(&notice.data);
    assert!(!notice_text.contains(&reset_token), "{notice_text}");

    // The relay claims in queue order: an email to the unknown address, had one been queued
    // before the reset email, would have been sent before the notice arrived.
    assert!(smtp.messages_to("nobody@example.com").is_empty());
    assert_eq!(
        smtp.message_count(),
        3,
        "verification, reset and notice, nothing else"
    );

    // The link works once.
    let again = resets
        .reset_password(pb::ResetPasswordRequest {
            token: reset_token,
            new_password: "another-password-entirely".into(),
        })
        .await
        .expect_err("used");
    assert_eq!(
        (again.code(), reason(&again).as_str()),
        (Code::FailedPrecondition, "RESET_TOKEN_USED")
    );
}
