//! End to end: the built `identity-server` binary, run as a user would (migrate, then serve on a
//! free port), called over gRPC, gRPC-Web and the standard health and reflection protocols.

use std::time::Duration;

use identity_proto::identity::v1 as pb;
use identity_tests::{pg::TestDb, process, server::Server};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "tangerine-kettle-orbit-42";
const CODE_KEY: &str = identity_tests::server::CODE_KEY;

fn register_request(email: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        display_name: "Ada Lovelace".into(),
        locale: "en-GB".into(),
    }
}

/// Lists services over one version of the reflection protocol. The two versions' generated
/// types are distinct but shaped alike, hence a macro rather than a function.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect(concat!("reflection ", stringify!($version), " answers"))
            .into_inner();
        match responses
            .message()
            .await
            .expect("a response")
            .and_then(|r| r.message_response)
        {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection response: {other:?}"),
        }
    }};
}

#[tokio::test]
async fn the_built_server_migrates_serves_health_reflection_and_signs_a_user_up() {
    let server = Server::start(&[]).await;
    let channel = server.channel().await;

    // Health, for the whole server and per service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "identity.v1.RegistrationService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }

    // Reflection, in both protocol versions that clients speak.
    let v1 = list_services!(v1, channel.clone());
    let v1alpha = list_services!(v1alpha, channel.clone());
    for listing in [&v1, &v1alpha] {
        assert!(
            listing.contains(&"identity.v1.RegistrationService".to_owned()),
            "{listing:?}"
        );
        assert!(
            listing.contains(&"grpc.health.v1.Health".to_owned()),
            "{listing:?}"
        );
    }

    // Sign-up, then verification with the token from the queued email.
    let mut client = server.registration().await;
    let registered = client
        .register(register_request("e2e@example.com"))
        .await
        .expect("registers")
        .into_inner();
    assert_eq!(registered.status(), pb::UserStatus::PendingVerification);
    let emails = server.emails_to("e2e@example.com").await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].locale, "en-GB");
    let verified = client
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(
                emails[0].token.clone(),
            )),
        })
        .await
        .expect("verifies")
        .into_inner();
    assert_eq!(verified.user_id, registered.user_id);
    assert_eq!(verified.status(), pb::UserStatus::Active);
}

#[tokio::test]
async fn serve_refuses_to_start_while_migrations_are_pending() {
    let db = TestDb::create_empty().await;
    let keys = std::env::temp_dir().join(format!("identity-keys-{}", db.name));
    let keys = keys.display().to_string();
    let keygen = process::run(
        "identity-server",
        &["keygen"],
        &[("IDENTITY_KEYS_DIR", &keys)],
    );
    assert!(keygen.status.success(), "keygen failed: {keygen:?}");

    let output = process::run(
        "identity-server",
        &["serve"],
        &[
            ("DATABASE_URL", &db.url),
            ("IDENTITY_GRPC_ADDR", "127.0.0.1:0"),
            ("IDENTITY_CODE_HMAC_KEY", CODE_KEY),
            ("IDENTITY_KEYS_DIR", &keys),
        ],
    );

    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("migration(s) pending"), "{log}");
    assert!(log.contains("identity-server migrate"), "{log}");
}

#[tokio::test]
async fn sign_up_secrets_never_appear_in_the_server_log() {
    // Debug logging everywhere, and no resend cooldown, so every path runs at least once.
    let mut server = Server::start(&[
        ("RUST_LOG", "debug"),
        ("IDENTITY_RESEND_COOLDOWN_SECS", "0"),
    ])
    .await;
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
            })
            .await;
    }
    client
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(
                by_link[0].token.clone(),
            )),
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

/// Sends one raw HTTP/1.1 request and returns the whole response as text (lossy).
async fn http1(addr: &str, head: &str, body: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("writes head");
    stream.write_all(body).await.expect("writes body");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("reads response");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn grpc_web_calls_and_cors_preflights_are_answered_on_the_grpc_port() {
    let server =
        Server::start(&[("IDENTITY_CORS_ALLOWED_ORIGINS", "https://app.example.com")]).await;

    let preflight = http1(
        &server.addr,
        "OPTIONS /identity.v1.RegistrationService/ResendVerificationEmail HTTP/1.1\r\n\
         Host: identity\r\nOrigin: https://app.example.com\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await
    .to_ascii_lowercase();
    assert!(preflight.starts_with("http/1.1 200"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-origin: https://app.example.com"),
        "{preflight}"
    );

    let message = pb::ResendVerificationEmailRequest {
        email: "nobody@example.com".into(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    let call = http1(
        &server.addr,
        &format!(
            "POST /identity.v1.RegistrationService/ResendVerificationEmail HTTP/1.1\r\n\
             Host: identity\r\nOrigin: https://app.example.com\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            frame.len()
        ),
        &frame,
    )
    .await
    .to_ascii_lowercase();
    assert!(call.starts_with("http/1.1 200"), "{call}");
    assert!(
        call.contains("content-type: application/grpc-web+proto"),
        "{call}"
    );
    assert!(
        call.contains("access-control-allow-origin: https://app.example.com"),
        "{call}"
    );
    assert!(
        call.contains("grpc-status:0"),
        "the trailer frame reports OK: {call}"
    );

    let stranger = http1(
        &server.addr,
        "OPTIONS /identity.v1.RegistrationService/Register HTTP/1.1\r\n\
         Host: identity\r\nOrigin: https://evil.example.net\r\n\
         Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await
    .to_ascii_lowercase();
    assert!(
        !stranger.contains("access-control-allow-origin"),
        "{stranger}"
    );
}

#[test]
fn help_explains_the_commands_and_their_environment_variables() {
    let top = process::run("identity-server", &["--help"], &[]);
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("serve") && top.contains("migrate"), "{top}");

    let serve = process::run(
        "identity-server",
        &["serve", "--help"],
        &[("DATABASE_URL", "postgres://secret-pw@h/db")],
    );
    let serve = String::from_utf8_lossy(&serve.stdout);
    for documented in [
        "DATABASE_URL",
        "IDENTITY_GRPC_ADDR",
        "IDENTITY_CODE_HMAC_KEY",
        "IDENTITY_HASH_QUEUE",
        "--migrate",
    ] {
        assert!(
            serve.contains(documented),
            "{documented} missing from:\n{serve}"
        );
    }
    assert!(
        !serve.contains("secret-pw"),
        "--help must not print secret values:\n{serve}"
    );
}

#[tokio::test]
async fn session_and_reset_secrets_never_appear_in_the_server_log() {
    use identity_proto::{
        identity::v1::{
            password_reset_service_client::PasswordResetServiceClient,
            session_service_client::SessionServiceClient, user_service_client::UserServiceClient,
        },
        outbox::EmailPasswordResetV1,
    };

    let mut server = Server::start(&[("RUST_LOG", "debug")]).await;
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
    ] {
        assert!(
            !log.contains(secret),
            "a secret leaked into the log:\n{log}"
        );
    }
}
