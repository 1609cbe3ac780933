//! End to end: the built `identity-server` binary, run as a user would (migrate, then serve on a
//! free port), called over gRPC, gRPC-Web and the standard health and reflection protocols.

use identity_proto::identity::v1 as pb;
use identity_tests::{
    http::scrape,
    pg::{TestDb, free_port},
    process,
    server::{Server, keygen_for, register_request},
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CODE_KEY: &str = identity_tests::server::CODE_KEY;

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
    let v1 = identity_tests::list_services!(v1, channel.clone());
    let v1alpha = identity_tests::list_services!(v1alpha, channel.clone());
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
            password: identity_tests::server::PASSWORD.into(),
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
    let keys = keygen_for(&db).display().to_string();

    let output = process::run(
        "identity-server",
        &["serve"],
        &[
            ("DATABASE_URL", &db.url),
            ("IDENTITY_GRPC_ADDR", "127.0.0.1:0"),
            ("IDENTITY_CODE_HMAC_KEY", CODE_KEY),
            (
                "IDENTITY_CHALLENGE_HMAC_KEY",
                identity_tests::server::CHALLENGE_KEY,
            ),
            ("IDENTITY_KEYS_DIR", &keys),
        ],
    );

    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("migration(s) pending"), "{log}");
    assert!(log.contains("identity-server migrate"), "{log}");
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
        ..Default::default()
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

/// The series of the RPC duration histogram the server exposes (one `_count` line each).
fn rpc_series(exposition: &str) -> Vec<&str> {
    exposition
        .lines()
        .filter(|line| line.starts_with("rpc_server_call_duration_seconds_count{"))
        .map(|line| line.rsplit_once(' ').map_or(line, |(series, _)| series))
        .collect()
}

#[tokio::test]
async fn options_requests_to_made_up_paths_add_no_metric_series() {
    let metrics_addr = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let server = Server::start(&[
        ("IDENTITY_METRICS_ADDR", metrics_addr.as_str()),
        ("IDENTITY_CORS_ALLOWED_ORIGINS", "https://app.example.com"),
    ])
    .await;
    // A real preflight first, so its label (if any) is already there.
    let preflight = |path: String| {
        format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: identity\r\nOrigin: https://app.example.com\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        )
    };
    http1(
        &server.addr,
        &preflight("/identity.v1.RegistrationService/Register".into()),
        b"",
    )
    .await;
    let before = scrape(&metrics_addr).await;

    for i in 0..1000 {
        let answer = http1(
            &server.addr,
            &preflight(format!("/made.up{i}.Service/Method{i}")),
            b"",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    let after = scrape(&metrics_addr).await;
    let (before, after) = (rpc_series(&before), rpc_series(&after));
    let added: Vec<&&str> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(
        added.len() <= 1,
        "1,000 OPTIONS to made-up paths added {} series, e.g. {:?}",
        added.len(),
        &added[..added.len().min(3)]
    );
    assert!(
        added.iter().all(|s| !s.contains("made.up")),
        "a made-up path became a label: {added:?}"
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
        "IDENTITY_CHALLENGE_POLICY",
        "IDENTITY_CHALLENGE_HMAC_KEY",
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
