//! Rate limits through the built binaries on real PostgreSQL: per client IP (distinct loopback
//! source addresses are distinct clients), behind a trusted proxy and against a spoofing one,
//! per address across many IPs, and across two replicas sharing one database.

use std::net::IpAddr;

use identity_proto::identity::v1::{
    self as pb, registration_service_client::RegistrationServiceClient,
};
use identity_tests::server::{Server, register_request};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

/// A server with the test's `limits` and the challenge off: under the default adaptive policy a
/// client nearing its limit is first asked for a proof of work (challenge_e2e.rs tests that);
/// these tests are about the limits themselves.
async fn start(limits: &[(&'static str, &'static str)]) -> Server {
    Server::start(&with_challenge_off(limits)).await
}

fn with_challenge_off<'a>(limits: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = limits.to_vec();
    env.push(("IDENTITY_CHALLENGE_POLICY", "off"));
    env
}

fn ip(raw: &str) -> IpAddr {
    raw.parse().expect("test address")
}

async fn registration_from(server: &Server, source: &str) -> RegistrationServiceClient<Channel> {
    RegistrationServiceClient::new(server.channel_from(ip(source)).await)
}

/// Registers `email` through `client`, with `x-forwarded-for: forwarded` if given.
async fn register(
    client: &mut RegistrationServiceClient<Channel>,
    email: &str,
    forwarded: Option<&str>,
) -> Result<(), Status> {
    let mut request = Request::new(register_request(email));
    if let Some(value) = forwarded {
        request
            .metadata_mut()
            .insert("x-forwarded-for", value.parse().expect("ASCII"));
    }
    client.register(request).await.map(drop)
}

/// Asserts `status` is a rate-limit refusal of `scope`, with a positive retry delay at most
/// `longest`.
fn assert_rate_limited(status: &Status, scope: &str, longest: std::time::Duration) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "RATE_LIMITED");
    assert_eq!(info.domain, "identity.v1");
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some(scope));
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(
        !delay.is_zero() && delay <= longest,
        "retry delay {delay:?} should be in (0, {longest:?}]"
    );
}

#[tokio::test]
async fn a_register_flood_from_one_ip_is_cut_off_at_the_limit_while_another_ip_still_signs_up() {
    // Burst 3, then one per 20 minutes.
    let server = start(&[("IDENTITY_RATE_LIMITS", "register.ip=3/1h")]).await;
    let mut flooder = registration_from(&server, "127.0.0.2").await;

    let mut answers = Vec::new();
    for i in 0..8 {
        answers.push(register(&mut flooder, &format!("bot{i}@example.com"), None).await);
    }

    assert!(answers[..3].iter().all(Result::is_ok), "{answers:?}");
    for refused in &answers[3..] {
        let status = refused.as_ref().expect_err("past the limit");
        assert_rate_limited(status, "ip", std::time::Duration::from_secs(20 * 60));
    }
    assert!(
        server.emails_to("bot3@example.com").await.is_empty(),
        "a refused call writes nothing"
    );
    let mut neighbour = registration_from(&server, "127.0.0.3").await;
    register(&mut neighbour, "human@example.com", None)
        .await
        .expect("another IP still signs up");
}

#[tokio::test]
async fn a_trusted_proxy_s_forwarded_address_is_the_client() {
    let server = start(&[
        ("IDENTITY_RATE_LIMITS", "register.ip=2/1h"),
        ("IDENTITY_TRUSTED_PROXIES", "127.0.0.2/32"),
    ])
    .await;
    let mut proxy = registration_from(&server, "127.0.0.2").await;

    let first = [
        register(&mut proxy, "a1@example.com", Some("203.0.113.1")).await,
        register(
            &mut proxy,
            "a2@example.com",
            Some("198.51.100.9, 203.0.113.1"),
        )
        .await,
        register(&mut proxy, "a3@example.com", Some("203.0.113.1")).await,
    ];
    let second = register(&mut proxy, "b1@example.com", Some("203.0.113.2")).await;

    assert!(first[0].is_ok() && first[1].is_ok(), "{first:?}");
    assert_rate_limited(
        first[2]
            .as_ref()
            .expect_err("203.0.113.1 is past its limit"),
        "ip",
        std::time::Duration::from_secs(30 * 60),
    );
    second.expect("another forwarded client has a limit of its own");
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let server = start(&[
        ("IDENTITY_RATE_LIMITS", "register.ip=2/1h"),
        ("IDENTITY_TRUSTED_PROXIES", "127.0.0.2/32"),
    ])
    .await;
    let mut spoofer = registration_from(&server, "127.0.0.3").await;

    let mut answers = Vec::new();
    for i in 0..5 {
        let fake = format!("198.51.100.{i}");
        answers.push(register(&mut spoofer, &format!("s{i}@example.com"), Some(&fake)).await);
    }

    assert!(answers[..2].iter().all(Result::is_ok), "{answers:?}");
    for refused in &answers[2..] {
        assert_rate_limited(
            refused
                .as_ref()
                .expect_err("rotating x-forwarded-for does not escape the limit"),
            "ip",
            std::time::Duration::from_secs(30 * 60),
        );
    }
}

#[tokio::test]
async fn two_replicas_on_one_database_never_admit_more_than_the_limit_together() {
    const LIMIT: usize = 5;
    let limits = [("IDENTITY_RATE_LIMITS", "resend_verification_email.ip=5/1h")];
    let first = start(&limits).await;
    let second = first.replica(&with_challenge_off(&limits)).await;
    let clients = [
        RegistrationServiceClient::new(first.channel_from(ip("127.0.0.2")).await),
        RegistrationServiceClient::new(second.channel_from(ip("127.0.0.2")).await),
    ];

    // Concurrent calls from one IP, alternated across both replicas.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..24 {
        let mut client = clients[i % 2].clone();
        calls.spawn(async move {
            client
                .resend_verification_email(pb::ResendVerificationEmailRequest {
                    email: format!("r{i}@example.com"),
                    ..Default::default()
                })
                .await
        });
    }
    let answers = calls.join_all().await;

    let accepted = answers.iter().filter(|a| a.is_ok()).count();
    for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
        // One emission interval (12 min), plus the moments between concurrent calls' clocks.
        assert_rate_limited(refused, "ip", std::time::Duration::from_secs(12 * 60 + 1));
    }
    println!(
        "two replicas: {accepted} of {} calls accepted (limit {LIMIT})",
        answers.len()
    );
    assert!(
        accepted <= LIMIT,
        "together the replicas never admit more than the limit"
    );
    // Concurrent calls read their clocks in a different order than they take the row lock, so
    // one whose `now` is a little earlier may see the bucket full a call early (as GCRA would).
    assert!(
        accepted >= LIMIT - 1,
        "the limit is not much stricter than it says"
    );
}

#[tokio::test]
async fn guessing_verification_codes_for_one_address_from_many_ips_is_cut_off() {
    let server = start(&[("IDENTITY_RATE_LIMITS", "verify_email.address=3/1h")]).await;
    server.register("victim@example.com").await;
    let email = server
        .emails_to("victim@example.com")
        .await
        .pop()
        .expect("a verification email");
    let wrong = if email.code == "000000" {
        "000001"
    } else {
        "000000"
    };

    let mut answers = Vec::new();
    for source in 2..8 {
        let mut guesser = registration_from(&server, &format!("127.0.0.{source}")).await;
        answers.push(
            guesser
                .verify_email(pb::VerifyEmailRequest {
                    proof: Some(pb::verify_email_request::Proof::EmailCode(pb::EmailCode {
                        email: "VICTIM@example.com".into(),
                        code: wrong.into(),
                    })),
                    password: identity_tests::server::PASSWORD.into(),
                })
                .await,
        );
    }

    for guess in &answers[..3] {
        let status = guess.as_ref().expect_err("a wrong code");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    for guess in &answers[3..] {
        assert_rate_limited(
            guess.as_ref().expect_err("past the address's limit"),
            "address",
            std::time::Duration::from_secs(20 * 60),
        );
    }
    // The link names no address: the owner still verifies.
    let mut owner = registration_from(&server, "127.0.0.9").await;
    owner
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(email.token)),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("the link still works");
}

/// A gRPC-Web ResendVerificationEmail over HTTP/1.1 from a socket bound to `source`; returns
/// the raw response, lower-cased and without spaces (the status comes as a header or in the
/// trailer frame).
async fn grpc_web_resend_from(addr: &str, source: &str, email: &str) -> String {
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let message = pb::ResendVerificationEmailRequest {
        email: email.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind((ip(source), 0).into())
        .expect("binds to a loopback address");
    let mut stream = socket
        .connect(addr.parse().expect("socket address"))
        .await
        .expect("connects");
    let head = format!(
        "POST /identity.v1.RegistrationService/ResendVerificationEmail HTTP/1.1\r\n\
         Host: identity\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        frame.len()
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    stream.write_all(&frame).await.expect("writes");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("reads");
    String::from_utf8_lossy(&response)
        .to_ascii_lowercase()
        .replace(' ', "")
}

#[tokio::test]
async fn grpc_web_calls_are_limited_per_peer_too() {
    let server = start(&[("IDENTITY_RATE_LIMITS", "resend_verification_email.ip=1/1h")]).await;

    let first = grpc_web_resend_from(&server.addr, "127.0.0.2", "w1@example.com").await;
    let second = grpc_web_resend_from(&server.addr, "127.0.0.2", "w2@example.com").await;
    let other = grpc_web_resend_from(&server.addr, "127.0.0.3", "w3@example.com").await;

    assert!(first.contains("grpc-status:0"), "{first}");
    // RESOURCE_EXHAUSTED is 8.
    assert!(second.contains("grpc-status:8"), "{second}");
    assert!(other.contains("grpc-status:0"), "another peer: {other}");
}
