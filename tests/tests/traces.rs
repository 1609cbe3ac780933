//! OpenTelemetry traces of the built server and relay, exported over OTLP/gRPC to a real
//! receiver (`identity_tests::otlp`), and the trace ids in their JSON logs; whose trace context
//! the server continues (a trusted proxy's) or only links (anyone else's), and how much
//! `tracestate` it keeps.

use std::time::Duration;

use identity_proto::identity::v1::{self as pb, session_service_client::SessionServiceClient};
use identity_tests::{
    otlp::{Collector, ReceivedSpan},
    relay,
    server::{PASSWORD, Server, register_request},
    smtp::{Reply, SmtpServer, Stage, text_part, token_after},
};
use tonic::{Request, transport::Channel};

mod support;

const WAIT: Duration = Duration::from_secs(60);
const ADDRESS: &str = "ada@example.com";
/// The caller's trace, as a BFF would send it.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// The test's connections (from 127.0.0.1) as a trusted proxy, a BFF, whose trace context the
/// server continues; any other caller's is only linked.
const AS_THE_BFF: (&str, &str) = ("IDENTITY_TRUSTED_PROXIES", "127.0.0.1/32");

/// Export settings for a binary sending to `collector`, in batches sent every `delay_ms`.
fn exporting_to<'a>(collector: &'a Collector, delay_ms: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", delay_ms),
    ]
}

/// A Register call of `ADDRESS` made inside the caller's trace.
async fn register_in_callers_trace(channel: &Channel) -> String {
    let mut request = Request::new(register_request(ADDRESS));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
            .parse()
            .expect("ASCII"),
    );
    pb::registration_service_client::RegistrationServiceClient::new(channel.clone())
        .register(request)
        .await
        .expect("registers")
        .into_inner()
        .user_id
}

/// The server span of the Register call, once the collector has it (within `timeout`).
async fn register_span(collector: &Collector, timeout: Duration) -> ReceivedSpan {
    collector
        .span(
            "identity-server",
            "identity.v1.RegistrationService/Register",
            timeout,
        )
        .await
}

/// A login of `ADDRESS` with its password.
async fn log_in(channel: &Channel) -> pb::LoginResponse {
    SessionServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            email: ADDRESS.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("logs in")
        .into_inner()
}

/// The link token and the 6-digit code of a verification email.
fn secrets_of(mail: &identity_tests::smtp::Received) -> (String, String) {
    let text = text_part(&mail.data);
    let token = token_after(&text, "https://app.example.com/verify?token=");
    let code = text
        .lines()
        .map(str::trim)
        .find(|line| line.len() == 6 && line.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in:\n{text}"))
        .to_owned();
    (token, code)
}

/// The chain of parents of `span` among `spans`, nearest first.
fn ancestors<'a>(span: &ReceivedSpan, spans: &'a [ReceivedSpan]) -> Vec<&'a ReceivedSpan> {
    let mut chain = Vec::new();
    let mut parent = span.parent_span_id.clone();
    while let Some(next) = spans
        .iter()
        .find(|s| s.trace_id == span.trace_id && s.span_id == parent)
    {
        chain.push(next);
        parent = next.parent_span_id.clone();
    }
    chain
}

#[tokio::test]
async fn one_trace_spans_register_the_commit_the_relay_claim_and_the_accepted_email() {
    let collector = Collector::start().await;
    let smtp = SmtpServer::start();
    // The first attempt is refused with a reply that echoes the address, as real servers do.
    smtp.script_for(
        Stage::RcptTo,
        ADDRESS,
        Reply::TransientTimes {
            code: 451,
            times: 1,
        },
    );
    let mut env = exporting_to(&collector, "100");
    env.push(AS_THE_BFF);
    let server = Server::start(&env).await;
    let _relay = relay::start(
        &server.db.url,
        &smtp.url(),
        &exporting_to(&collector, "100"),
    )
    .await;
    let channel = server.channel().await;

    register_in_callers_trace(&channel).await;
    let mail = smtp.wait_for_message_to(ADDRESS, WAIT).await;
    let (token, code) = secrets_of(&mail);
    pb::registration_service_client::RegistrationServiceClient::new(channel.clone())
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(token.clone())),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("verifies");
    let session = log_in(&channel).await;

    let register = register_span(&collector, WAIT).await;
    let delivered = identity_tests::wait::until("the delivered email's span", WAIT, async || {
        collector.spans().into_iter().find(|span| {
            span.service == "outbox-relay"
                && span.name == "send email"
                && span.attribute("outbox.outcome") == Some("delivered")
        })
    })
    .await;
    // The login's span arrives in a later batch than the sign-up's, perhaps.
    collector
        .span("identity-server", "identity.v1.SessionService/Login", WAIT)
        .await;
    let spans = collector.spans();

    // The server continued the trusted caller's trace.
    assert_eq!(register.kind, SERVER);
    assert_eq!(register.trace_id, CALLER_TRACE);
    assert_eq!(register.parent_span_id, CALLER_SPAN);
    assert_eq!(register.attribute("rpc.system"), Some("grpc"));
    assert_eq!(
        register.attribute("rpc.service"),
        Some("identity.v1.RegistrationService")
    );
    assert_eq!(register.attribute("rpc.method"), Some("Register"));
    assert_eq!(register.attribute("rpc.grpc.status_code"), Some("0"));

    // The outbox insert is the message's producer span, inside the Register call.
    let produced = spans
        .iter()
        .find(|span| span.name == "send outbox" && span.trace_id == CALLER_TRACE)
        .expect("the producer span of the verification email");
    assert_eq!(produced.kind, PRODUCER);
    assert!(
        ancestors(produced, &spans)
            .iter()
            .any(|span| span.span_id == register.span_id),
        "the producer span descends from the Register span: {produced:#?}"
    );
    assert_eq!(produced.attribute("messaging.operation.type"), Some("send"));
    assert_eq!(produced.attribute("db.system.name"), Some("postgresql"));
    assert_eq!(
        produced.attribute("outbox.kind"),
        Some("email.verification.v1")
    );

    // The relay's send is a child of it, in the same trace, and links to its claim.
    assert_eq!(delivered.trace_id, CALLER_TRACE);
    assert_eq!(delivered.parent_span_id, produced.span_id);
    assert_eq!(delivered.kind, CONSUMER);
    assert_eq!(
        delivered.attribute("messaging.operation.type"),
        Some("process")
    );
    assert_eq!(
        delivered.attribute("messaging.message.id"),
        produced.attribute("messaging.message.id")
    );
    let claim = spans
        .iter()
        .find(|span| {
            span.name == "receive outbox"
                && delivered
                    .links
                    .contains(&(span.trace_id.clone(), span.span_id.clone()))
        })
        .expect("the send links to the claim that took the message");
    assert_eq!(claim.service, "outbox-relay");
    assert_eq!(claim.kind, CLIENT);
    assert_eq!(claim.attribute("messaging.operation.type"), Some("receive"));
    assert!(
        claim
            .links
            .contains(&(CALLER_TRACE.to_owned(), produced.span_id.clone())),
        "the claim links to the messages it took: {claim:#?}"
    );

    // The refused first attempt has its own span, marked as an error, in the same trace.
    let failed = spans
        .iter()
        .find(|span| {
            span.name == "send email" && span.attribute("outbox.outcome") == Some("failed")
        })
        .expect("the span of the refused attempt");
    assert_eq!(failed.parent_span_id, produced.span_id);
    assert_eq!(failed.status, 2, "an error status");

    // Nothing anywhere in any span holds the address, the password, the token, the code or
    // the tokens the login issued.
    let secrets = [
        ADDRESS,
        PASSWORD,
        token.as_str(),
        code.as_str(),
        session.access_token.as_str(),
        session.refresh_token.as_str(),
    ];
    for span in &spans {
        for value in &span.all_values {
            for secret in secrets {
                assert!(
                    !value.to_lowercase().contains(&secret.to_lowercase()),
                    "span {:?} of {} holds {secret:?} in {value:?}",
                    span.name,
                    span.service
                );
            }
        }
    }
}

#[tokio::test]
async fn spans_still_buffered_are_exported_when_the_server_stops() {
    let collector = Collector::start().await;
    // Batches would go out every 10 minutes: only the flush at shutdown sends this one.
    let mut env = exporting_to(&collector, "600000");
    env.push(("IDENTITY_SHUTDOWN_DRAIN_DELAY_SECS", "0"));
    env.push(AS_THE_BFF);
    let mut server = Server::start(&env).await;
    register_in_callers_trace(&server.channel().await).await;
    assert!(
        collector.spans().is_empty(),
        "nothing exported before the scheduled batch or the shutdown"
    );

    assert!(
        server.process.terminate(WAIT).await,
        "{}",
        server.process.output()
    );
    let register = register_span(&collector, Duration::from_secs(1)).await;
    assert_eq!(register.trace_id, CALLER_TRACE);
}

#[tokio::test]
async fn spans_reach_a_collector_over_tls_that_trusts_the_given_ca() {
    let ca = support::TestCa::new();
    let collector = Collector::start_tls(&ca.identity).await;
    let ca_file = ca.ca_file().display().to_string();
    let mut env = exporting_to(&collector, "100");
    env.push(("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_file));
    env.push(AS_THE_BFF);
    let server = Server::start(&env).await;
    register_in_callers_trace(&server.channel().await).await;
    let register = register_span(&collector, WAIT).await;
    assert_eq!(register.trace_id, CALLER_TRACE);
}

#[tokio::test]
async fn an_unreadable_ca_file_for_the_collector_stops_the_start_naming_the_variable() {
    let db = identity_tests::pg::TestDb::create_empty().await;
    let keys = identity_tests::server::keygen_for(&db);
    let keys = keys.display().to_string();
    let mut server = identity_tests::process::Process::spawn(
        "identity-server",
        &["serve", "--migrate"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("IDENTITY_GRPC_ADDR", "127.0.0.1:0"),
            ("IDENTITY_CODE_HMAC_KEY", identity_tests::server::CODE_KEY),
            ("IDENTITY_KEYS_DIR", keys.as_str()),
            ("IDENTITY_CHALLENGE_POLICY", "off"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317"),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "/nonexistent/collector-ca.pem",
            ),
        ],
    );
    let status = server.wait_for_exit(WAIT).await;
    assert!(!status.success());
    let output = server.output();
    assert!(
        output
            .contains("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/collector-ca.pem"),
        "{output}"
    );
}

/// The JSON objects a process logged; every line must be one.
fn json_lines(output: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[tokio::test]
async fn json_log_lines_carry_trace_ids_and_each_business_event_once() {
    let smtp = SmtpServer::start();
    // No collector: the ids are there for the logs alone.
    let json = [
        ("IDENTITY_LOG_FORMAT", "json"),
        ("RELAY_LOG_FORMAT", "json"),
    ];
    let server = Server::start(&[json[0], AS_THE_BFF]).await;
    let relay = relay::start(&server.db.url, &smtp.url(), &json).await;
    let channel = server.channel().await;

    let registered = register_in_callers_trace(&channel).await;
    let (_, code) = secrets_of(&smtp.wait_for_message_to(ADDRESS, WAIT).await);
    let mut registration =
        pb::registration_service_client::RegistrationServiceClient::new(channel.clone());
    let user_id = registration
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::EmailCode(pb::EmailCode {
                email: ADDRESS.into(),
                code,
            })),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("verifies")
        .into_inner()
        .user_id;
    assert_eq!(user_id, registered);
    let mut sessions = SessionServiceClient::new(channel.clone());
    let first = log_in(&channel).await;
    let refresh = |token: &str| pb::RefreshSessionRequest {
        refresh_token: token.to_owned(),
    };
    // Two rotations, then the first token again: reuse, which revokes the session.
    let second = sessions
        .refresh_session(refresh(&first.refresh_token))
        .await
        .expect("rotates")
        .into_inner();
    sessions
        .refresh_session(refresh(&second.refresh_token))
        .await
        .expect("rotates again");
    sessions
        .refresh_session(refresh(&first.refresh_token))
        .await
        .expect_err("reuse is refused");
    let mut resets =
        pb::password_reset_service_client::PasswordResetServiceClient::new(channel.clone());
    resets
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: ADDRESS.into(),
            ..Default::default()
        })
        .await
        .expect("OK");
    let mails = smtp.wait_for_messages(2, WAIT).await;
    let reset_token = token_after(
        &text_part(&mails.last().expect("the reset email").data),
        "https://app.example.com/reset?token=",
    );
    resets
        .reset_password(pb::ResetPasswordRequest {
            token: reset_token,
            new_password: "marmalade-lantern-quartz-9".into(),
        })
        .await
        .expect("resets");
    smtp.wait_for_messages(3, WAIT).await;

    let lines = json_lines(&server.process.output());
    for event in [
        "user.registered",
        "user.verified",
        "user.logged_in",
        "session.revoked_for_reuse",
        "user.password_changed",
    ] {
        let found: Vec<_> = lines.iter().filter(|line| line["event"] == event).collect();
        assert_eq!(found.len(), 1, "{event} logged once: {found:#?}");
        let line = found[0];
        assert_eq!(line["user_id"], user_id.as_str(), "{line}");
        assert!(
            !line.to_string().to_lowercase().contains(ADDRESS),
            "{event} names the address: {line}"
        );
        assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");
        assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
    }
    let registered_line = lines
        .iter()
        .find(|line| line["event"] == "user.registered")
        .expect("logged");
    assert_eq!(registered_line["trace_id"], CALLER_TRACE);

    // The relay logged the accepted verification email in the same trace.
    let relay_lines = json_lines(&relay.output());
    let accepted = relay_lines
        .iter()
        .find(|line| line["message"] == relay::DELIVERED && line["kind"] == "email.verification.v1")
        .expect("the relay logged the accepted email");
    assert_eq!(accepted["trace_id"], CALLER_TRACE, "{accepted}");
}

/// A `tracestate` of 32 members, about 15 KB (what the W3C parsing lets through): two small
/// members, then 30 of 511 characters each.
fn oversized_tracestate() -> String {
    let mut members = vec![
        "congo=t61rcWkgMzE".to_owned(),
        "rojo=00f067aa0ba902b7".to_owned(),
    ];
    members.extend((0..30).map(|i| format!("{}{i:02}={}", "k".repeat(252), "v".repeat(256))));
    members.join(",")
}

/// Registers `email` inside the caller's trace `traceparent`, with `tracestate`.
async fn register_with_trace(channel: &Channel, email: &str, traceparent: &str, tracestate: &str) {
    let mut request = Request::new(register_request(email));
    let metadata = request.metadata_mut();
    metadata.insert("traceparent", traceparent.parse().expect("ASCII"));
    metadata.insert("tracestate", tracestate.parse().expect("ASCII"));
    pb::registration_service_client::RegistrationServiceClient::new(channel.clone())
        .register(request)
        .await
        .expect("registers");
}

/// The `traceparent` and `tracestate` of the outbox row of `email`'s verification email.
async fn stored_trace_of(server: &Server, email: &str) -> (Option<String>, Option<String>) {
    use diesel::{
        QueryableByName,
        sql_types::{Nullable, Text},
    };
    use diesel_async::RunQueryDsl;

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Nullable<Text>)]
        traceparent: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        tracestate: Option<String>,
    }
    let row: Row = diesel::sql_query(
        "SELECT traceparent, tracestate FROM outbox
         WHERE kind = 'email.verification.v1' AND payload ->> 'recipient' = $1",
    )
    .bind::<Text, _>(email)
    .get_result(&mut server.db.connect().await)
    .await
    .expect("the verification email is queued");
    (row.traceparent, row.tracestate)
}

/// The Register span linked to the caller's span `caller_span`, once the collector has it.
async fn register_span_linked_to(collector: &Collector, caller_span: &str) -> ReceivedSpan {
    identity_tests::wait::until("the Register span linked to the caller", WAIT, async || {
        collector.spans().into_iter().find(|span| {
            span.name == "identity.v1.RegistrationService/Register"
                && span.links.iter().any(|(_, span_id)| span_id == caller_span)
        })
    })
    .await
}

#[tokio::test]
async fn an_untrusted_caller_s_trace_is_linked_not_continued_and_cannot_switch_sampling() {
    let collector = Collector::start().await;
    // No trusted proxy: the test's connection is any caller on the public edge.
    let server = Server::start(&exporting_to(&collector, "100")).await;
    let channel = server.channel().await;
    let (sampled_span, unsampled_span) = ("1111111111111111", "2222222222222222");

    register_with_trace(
        &channel,
        "sampled@example.com",
        &format!("00-{CALLER_TRACE}-{sampled_span}-01"),
        &oversized_tracestate(),
    )
    .await;
    register_with_trace(
        &channel,
        "unsampled@example.com",
        &format!("00-{CALLER_TRACE}-{unsampled_span}-00"),
        "congo=t61rcWkgMzE",
    )
    .await;

    // Each call starts a trace of the server's own, sampled by the server's decision (the
    // default: every trace), and links to the caller's span.
    for (caller_span, email) in [
        (sampled_span, "sampled@example.com"),
        (unsampled_span, "unsampled@example.com"),
    ] {
        let register = register_span_linked_to(&collector, caller_span).await;
        assert_ne!(register.trace_id, CALLER_TRACE, "{register:#?}");
        assert_eq!(register.parent_span_id, "", "a root span: {register:#?}");
        assert!(
            register
                .links
                .contains(&(CALLER_TRACE.to_owned(), caller_span.to_owned())),
            "{register:#?}"
        );
        // The outbox row carries the server's trace, and none of the caller's state.
        let (traceparent, tracestate) = stored_trace_of(&server, email).await;
        let traceparent = traceparent.expect("a traceparent");
        assert!(
            traceparent.starts_with(&format!("00-{}-", register.trace_id)),
            "{traceparent}"
        );
        assert_eq!(tracestate, None);
    }
}

#[tokio::test]
async fn a_trusted_proxy_s_trace_is_continued_with_its_tracestate_capped() {
    let collector = Collector::start().await;
    let mut env = exporting_to(&collector, "100");
    env.push(AS_THE_BFF);
    let server = Server::start(&env).await;

    register_with_trace(
        &server.channel().await,
        ADDRESS,
        &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
        &oversized_tracestate(),
    )
    .await;

    let register = register_span(&collector, WAIT).await;
    assert_eq!(register.trace_id, CALLER_TRACE);
    assert_eq!(register.parent_span_id, CALLER_SPAN);
    let (traceparent, tracestate) = stored_trace_of(&server, ADDRESS).await;
    assert!(
        traceparent.is_some_and(|t| t.starts_with(&format!("00-{CALLER_TRACE}-"))),
        "the stored context continues the caller's trace"
    );
    // At most 512 characters, cut at members: the ones over 128 characters go first.
    assert_eq!(
        tracestate.as_deref(),
        Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    );
}

#[tokio::test]
async fn a_trusted_proxy_s_trace_is_continued_over_tls_too() {
    let collector = Collector::start().await;
    let ca = support::TestCa::new();
    let dir = std::env::temp_dir().join(format!("identity-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert).expect("writes the certificate");
    std::fs::write(&key_file, key).expect("writes the key");
    let (cert_file, key_file) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let mut env = exporting_to(&collector, "100");
    env.extend([
        AS_THE_BFF,
        ("IDENTITY_TLS_CERT_FILE", cert_file.as_str()),
        ("IDENTITY_TLS_KEY_FILE", key_file.as_str()),
    ]);
    let server = Server::start(&env).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.ca_pem()))
        .domain_name("127.0.0.1");
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .expect("a URL")
        .tls_config(tls)
        .expect("a TLS config")
        .connect()
        .await
        .expect("a TLS connection");

    register_in_callers_trace(&channel).await;

    // The peer is read from the TLS connection as from a plaintext one.
    let register = register_span(&collector, WAIT).await;
    assert_eq!(register.trace_id, CALLER_TRACE);
    assert_eq!(register.parent_span_id, CALLER_SPAN);
    let _ = std::fs::remove_dir_all(&dir);
}
