//! No secret in the server's log: every flow that handles one (sign-up, verification, login,
//! refresh, bearer tokens, password reset) runs against the built binary, once with the
//! production logging (JSON lines at `info`) and once with everything at `debug`, and the
//! captured output is searched for each password, token, code, signing key, the code HMAC key
//! and the database password.

use std::time::Duration;

use identity_proto::identity::v1 as pb;
use identity_tests::{
    pg::TestDb,
    process,
    server::{PASSWORD, Server, register_request},
};

const CODE_KEY: &str = identity_tests::server::CODE_KEY;
const CHALLENGE_KEY: &str = identity_tests::server::CHALLENGE_KEY;

/// What production runs with.
const PRODUCTION: &[(&str, &str)] = &[("IDENTITY_LOG_FORMAT", "json"), ("RUST_LOG", "info")];
/// Everything, in the readable format.
const DEBUG: &[(&str, &str)] = &[("IDENTITY_LOG_FORMAT", "text"), ("RUST_LOG", "debug")];

/// A fresh empty database whose URL carries a password, and that password. The test clusters
/// trust local connections, so a password added to the URL is sent and ignored: enough to see
/// whether the server ever prints it. A URL that already has one keeps it.
async fn database_with_password() -> (TestDb, String) {
    let mut db = TestDb::create_empty().await;
    let (scheme, rest) = db.url.split_once("://").expect("a URL");
    let (userinfo, host) = rest.split_once('@').expect("a user in DATABASE_URL");
    let password = match userinfo.split_once(':') {
        Some((_, password)) => password.to_owned(),
        None => {
            let password = "db-pass-7f3c9e2a41".to_owned();
            db.url = format!("{scheme}://{userinfo}:{password}@{host}");
            password
        }
    };
    (db, password)
}

#[tokio::test]
async fn sign_up_secrets_stay_out_of_the_production_log() {
    sign_up_leaves_no_secret_in_the_log(PRODUCTION).await;
}

#[tokio::test]
async fn sign_up_secrets_stay_out_of_the_debug_log() {
    sign_up_leaves_no_secret_in_the_log(DEBUG).await;
}

#[tokio::test]
async fn session_and_reset_secrets_stay_out_of_the_production_log() {
    sessions_and_resets_leave_no_secret_in_the_log(PRODUCTION).await;
}

#[tokio::test]
async fn session_and_reset_secrets_stay_out_of_the_debug_log() {
    sessions_and_resets_leave_no_secret_in_the_log(DEBUG).await;
}

#[test]
fn a_database_that_cannot_be_reached_is_reported_without_its_password() {
    let port = identity_tests::pg::free_port()
        .expect("a free port")
        .to_string();
    let url = format!("postgres://identity:db-pass-0a1b2c3d@127.0.0.1:{port}/identity");
    let output = process::run("identity-server", &["migrate"], &[("DATABASE_URL", &url)]);
    assert!(
        !output.status.success(),
        "migrate cannot succeed: {output:?}"
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains("identity-server failed"), "{printed}");
    assert!(!printed.contains("db-pass-0a1b2c3d"), "{printed}");
}

/// Signs users up through every path (a refused password, register, resend, a wrong code, the
/// right code, the link) and asserts that no secret reached the log written with `logging`.
async fn sign_up_leaves_no_secret_in_the_log(logging: &[(&str, &str)]) {
    // No resend cooldown, so every path runs at least once.
    let mut env = logging.to_vec();
    env.push(("IDENTITY_RESEND_COOLDOWN_SECS", "0"));
    let (db, db_password) = database_with_password().await;
    let mut server = Server::start_on(db, &env).await;
    let mut client = server.registration().await;
    let rejected_password = "Zq9#Kw-";
    let mut weak = register_request("weak@example.com");
    weak.password = rejected_password.into();
    client.register(weak).await.expect_err("too short");

    client
        .register(register_request("code@example.com"))
        .await
        .expect("registers");
    client
        .register(register_request("link@example.com"))
        .await
        .expect("registers");
    client
        .resend_verification_email(pb::ResendVerificationEmailRequest {
            email: "code@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("resends");
    let by_code = server.emails_to("code@example.com").await;
    let by_link = server.emails_to("link@example.com").await;
    assert_eq!((by_code.len(), by_link.len()), (2, 1));
    let wrong_code = format!(
        "{:06}",
        (by_code[1].code.parse::<u32>().expect("digits") + 1) % 1_000_000
    );
    for (email, code) in [
        ("code@example.com", &wrong_code),
        ("code@example.com", &by_code[1].code),
    ] {
        let _ = client
            .verify_email(pb::VerifyEmailRequest {
                proof: Some(pb::verify_email_request::Proof::EmailCode(pb::EmailCode {
                    email: email.into(),
                    code: code.clone(),
                })),
                password: identity_tests::server::PASSWORD.into(),
            })
            .await;
    }
    client
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(
                by_link[0].token.clone(),
            )),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("verifies");
    assert!(
        server.process.terminate(Duration::from_secs(30)).await,
        "the server exits cleanly on SIGTERM, even with a client still connected"
    );

    let log = server.process.output();
    assert!(
        log.contains("user registered"),
        "the log was captured:\n{log}"
    );
    // Timestamps hold six-digit fractions that could equal a code by chance: leave them out.
    let words: Vec<&str> = log
        .split(|c: char| c.is_whitespace() || c == '"')
        .filter(|w| {
            time::OffsetDateTime::parse(w, &time::format_description::well_known::Rfc3339).is_err()
        })
        .collect();
    let searchable = words.join(" ");
    let mut secrets = vec![
        PASSWORD.to_owned(),
        rejected_password.to_owned(),
        wrong_code,
        CODE_KEY.to_owned(),
        CHALLENGE_KEY.to_owned(),
        db_password,
    ];
    for email in by_code.iter().chain(&by_link) {
        secrets.push(email.token.clone());
        secrets.push(email.code.clone());
    }
    for secret in &secrets {
        assert!(
            !searchable.contains(secret.as_str()),
            "a secret leaked into the log:\n{log}"
        );
    }
}

/// Logs in (a wrong password, the right one), refreshes, calls GetCurrentUser and resets the
/// password, and asserts that no secret reached the log written with `logging`.
async fn sessions_and_resets_leave_no_secret_in_the_log(logging: &[(&str, &str)]) {
    use identity_proto::{
        identity::v1::{
            password_reset_service_client::PasswordResetServiceClient,
            session_service_client::SessionServiceClient, user_service_client::UserServiceClient,
        },
        outbox::EmailPasswordResetV1,
    };

    let (db, db_password) = database_with_password().await;
    let mut server = Server::start_on(db, logging).await;
    let channel = server.channel().await;
    let mut registration = server.registration().await;
    registration
        .register(register_request("ada@example.com"))
        .await
        .expect("registers");
    let token = server.emails_to("ada@example.com").await[0].token.clone();
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
    sessions
        .login(login("wrong-password-xyz"))
        .await
        .expect_err("refused");
    let session = sessions
        .login(login(PASSWORD))
        .await
        .expect("logs in")
        .into_inner();
    let refreshed = sessions
        .refresh_session(pb::RefreshSessionRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .expect("refreshes")
        .into_inner();
    let mut me = tonic::Request::new(pb::GetCurrentUserRequest {});
    me.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", refreshed.access_token)
            .parse()
            .expect("ASCII"),
    );
    UserServiceClient::new(channel.clone())
        .get_current_user(me)
        .await
        .expect("authenticated");

    let mut resets = PasswordResetServiceClient::new(channel);
    resets
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "ada@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("OK");
    let reset_token = {
        use diesel::{QueryableByName, sql_types::Jsonb};
        use diesel_async::RunQueryDsl;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Jsonb)]
            payload: serde_json::Value,
        }
        let row: Row = diesel::sql_query("SELECT payload FROM outbox WHERE kind = $1")
            .bind::<diesel::sql_types::Text, _>(EmailPasswordResetV1::KIND)
            .get_result(&mut server.db.connect().await)
            .await
            .expect("a reset email");
        row.payload["token"].as_str().expect("a token").to_owned()
    };
    let new_password = "marmalade-lantern-quartz-9";
    resets
        .reset_password(pb::ResetPasswordRequest {
            token: reset_token.clone(),
            new_password: new_password.into(),
        })
        .await
        .expect("resets");
    assert!(server.process.terminate(Duration::from_secs(30)).await);

    let log = server.process.output();
    assert!(
        log.contains("session started") && log.contains("password reset"),
        "{log}"
    );
    let key_file = std::fs::read_dir(&server.keys_dir)
        .expect("the keys directory")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".k4.secret"))
        .expect("a key file");
    let secret_key = std::fs::read_to_string(key_file.path()).expect("readable");
    for secret in [
        PASSWORD,
        "wrong-password-xyz",
        new_password,
        session.access_token.as_str(),
        session.refresh_token.as_str(),
        refreshed.access_token.as_str(),
        refreshed.refresh_token.as_str(),
        reset_token.as_str(),
        secret_key.trim(),
        CODE_KEY,
        CHALLENGE_KEY,
        db_password.as_str(),
    ] {
        assert!(
            !log.contains(secret),
            "a secret leaked into the log:\n{log}"
        );
    }
}
