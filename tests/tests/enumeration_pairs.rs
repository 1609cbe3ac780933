//! Pairs of calls that must not tell a registered address from a new one (issue 16, point 1):
//! what a stranger sees when they Register an address and then Login with the password they
//! chose, through the built server on a real PostgreSQL.

use identity_proto::identity::v1::{
    self as pb, registration_service_client::RegistrationServiceClient,
    session_service_client::SessionServiceClient,
};
use identity_tests::server::{PASSWORD, Server, reason};
use tonic::{Code, transport::Channel};

const STRANGER_PASSWORD: &str = "quartz-lantern-marmalade-8";
const OTHER_PASSWORD: &str = "velvet-harbour-cinnamon-31";

/// Many calls from one client: the rate limits (and the adaptive challenge under them) would
/// refuse some; this test is about what the answers reveal.
const ENV: &[(&str, &str)] = &[("IDENTITY_RATE_LIMITING", "false")];

fn register_request(email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        password: password.into(),
        display_name: "Stranger".into(),
        locale: "en".into(),
        ..Default::default()
    }
}

/// What a Login answers, as a caller can compare it: the code and the ErrorInfo reason.
async fn login(channel: &Channel, email: &str, password: &str) -> (Code, String) {
    match SessionServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
    {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), reason(&status)),
    }
}

/// A server with one active account, owner@example.com (password [`PASSWORD`]).
async fn server_with_an_owner() -> Server {
    let server = Server::start(ENV).await;
    let mut client = server.registration().await;
    client
        .register(register_request("owner@example.com", PASSWORD))
        .await
        .expect("the owner registers");
    let token = server.emails_to("owner@example.com").await[0].token.clone();
    client
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(token)),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("the owner verifies");
    server
}

#[tokio::test]
async fn register_then_login_with_the_same_password_answers_alike_for_a_registered_and_a_new_address()
 {
    let server = server_with_an_owner().await;
    let channel = server.channel().await;
    let mut client = RegistrationServiceClient::new(channel.clone());

    for email in ["owner@example.com", "fresh@example.com"] {
        client
            .register(register_request(email, STRANGER_PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("Register of {email}: {e:?}"));
    }
    let registered = login(&channel, "owner@example.com", STRANGER_PASSWORD).await;
    let new = login(&channel, "fresh@example.com", STRANGER_PASSWORD).await;

    assert_eq!(
        registered, new,
        "Login after Register answers the registered address like the new one"
    );
    // What the proto documents: a caller who registered and has not verified yet is told so
    // when the password is right.
    assert_eq!(
        new,
        (Code::FailedPrecondition, "EMAIL_NOT_VERIFIED".to_owned())
    );
    // The owner's own password still opens the account.
    assert_eq!(
        login(&channel, "owner@example.com", PASSWORD).await,
        (Code::Ok, String::new())
    );
}

#[tokio::test]
async fn register_then_login_with_another_password_or_after_several_registers_answers_alike() {
    let server = server_with_an_owner().await;
    let channel = server.channel().await;
    let mut client = RegistrationServiceClient::new(channel.clone());

    // Several Registers of each address, each with its own password, more than the email
    // budget allows (3 an hour): the answers must still match, for every password used.
    let passwords = [
        STRANGER_PASSWORD,
        OTHER_PASSWORD,
        "saffron-glacier-teapot-77",
        "mossy-compass-lighthouse-5",
    ];
    for password in passwords {
        for email in ["owner@example.com", "fresh@example.com"] {
            client
                .register(register_request(email, password))
                .await
                .unwrap_or_else(|e| panic!("Register of {email}: {e:?}"));
        }
    }
    for password in passwords.iter().chain(&["never-registered-pass-99"]) {
        let registered = login(&channel, "owner@example.com", password).await;
        let new = login(&channel, "fresh@example.com", password).await;
        assert_eq!(
            registered, new,
            "Login with {password:?} after the Registers"
        );
    }
}
