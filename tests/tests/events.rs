//! Domain events end to end: the built server (with `IDENTITY_DOMAIN_EVENTS=true`) and relay
//! (with `NATS_URL`), PostgreSQL, the SMTP server, and a real nats-server with JetStream.

mod support;

use std::{collections::HashMap, time::Duration};

use identity_proto::{
    identity::{
        events::v1::{
            self as events, RevocationReason, SessionRevoked, UserLoggedIn, UserPasswordChanged,
            UserRegistered, UserVerified,
        },
        v1::{
            self as pb, password_reset_service_client::PasswordResetServiceClient,
            session_service_client::SessionServiceClient,
        },
    },
    outbox::{DomainEvent, EventPayload},
};
use identity_tests::{
    http::{sample, scrape},
    nats::{NatsServer, NatsTls, Received, STREAM},
    otlp::Collector,
    outbox,
    pg::free_port,
    relay,
    server::{PASSWORD, Server, register_request},
    smtp::{SmtpServer, text_part, token_after},
};

const WAIT: Duration = Duration::from_secs(60);
const NEW_PASSWORD: &str = "marmalade-lantern-quartz-9";
const VERIFY_LINK: &str = "https://app.example.com/verify?token=";
const RESET_LINK: &str = "https://app.example.com/reset?token=";

/// The server, writing events; `extra` adds settings.
async fn server_with(extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("IDENTITY_DOMAIN_EVENTS", "true")];
    env.extend_from_slice(extra);
    Server::start(&env).await
}

/// The server, writing events.
async fn server() -> Server {
    server_with(&[]).await
}

/// The relay, sending to `smtp` and publishing to `nats`, with `extra` settings.
async fn relay_to(
    server: &Server,
    smtp: &SmtpServer,
    nats: &NatsServer,
    extra: &[(&str, &str)],
) -> identity_tests::process::Process {
    let url = nats.url();
    let mut env = vec![("NATS_URL", url.as_str())];
    env.extend_from_slice(extra);
    relay::start(&server.db.url, &smtp.url(), &env).await
}

fn decode<E: DomainEvent + Default>(message: &Received) -> E {
    assert_eq!(message.header("ce-type"), E::TYPE, "{message:?}");
    E::decode(message.data.as_slice()).expect("decodes with the generated type")
}

#[tokio::test]
async fn a_users_life_is_published_as_cloudevents_in_order_with_no_secret_in_them() {
    let smtp = SmtpServer::start();
    let nats = NatsServer::start().await;
    let collector = Collector::start().await;
    let server = server_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let _relay = relay_to(&server, &smtp, &nats, &[]).await;
    let channel = server.channel().await;
    let email = "ada@example.com";

    // Register: the event arrives with every CloudEvents attribute, on the user's subject.
    let mut registration = server.registration().await;
    let user_id = registration
        .register(register_request(email))
        .await
        .expect("registers")
        .into_inner()
        .user_id;
    let published = nats.read_all(STREAM, 1, WAIT).await;
    let registered = &published[0];
    assert_eq!(
        registered.subject,
        format!("{}.{user_id}", UserRegistered::TYPE)
    );
    let id = registered.header("ce-id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{registered:?}");
    assert_eq!(registered.header("Nats-Msg-Id"), id);
    assert_eq!(registered.header("ce-specversion"), "1.0");
    assert_eq!(registered.header("ce-source"), "/identity");
    assert_eq!(registered.header("ce-subject"), user_id);
    assert_eq!(registered.header("content-type"), "application/protobuf");
    assert_eq!(
        registered.header("ce-dataschema"),
        "identity.events.v1.UserRegistered"
    );
    let time = time::OffsetDateTime::parse(
        registered.header("ce-time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("ce-time is RFC 3339");
    assert!((time::OffsetDateTime::now_utc() - time).abs() < time::Duration::minutes(5));
    // ce-traceparent continues the trace of the transaction that wrote the event.
    let queued = identity_tests::wait::until("the span that queued the event", WAIT, async || {
        collector.spans().into_iter().find(|span| {
            span.name == "send outbox" && span.attribute("messaging.message.id") == Some(id)
        })
    })
    .await;
    assert_eq!(
        registered.header("ce-traceparent"),
        format!("00-{}-{}-01", queued.trace_id, queued.span_id)
    );
    let event: UserRegistered = decode(registered);
    assert_eq!(
        (event.user_id.as_str(), event.email.as_str()),
        (user_id.as_str(), email)
    );

    // Verify, log in, refresh, reset the password: each change publishes its event.
    let mail = smtp.wait_for_message_to(email, WAIT).await;
    let verify_token = token_after(&text_part(&mail.data), VERIFY_LINK);
    registration
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(verify_token.clone())),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("verifies");
    let mut sessions = SessionServiceClient::new(channel.clone());
    let session = sessions
        .login(pb::LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
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
    let mut resets = PasswordResetServiceClient::new(channel);
    resets
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: email.into(),
            ..Default::default()
        })
        .await
        .expect("asks for a reset");
    let mails = smtp.wait_for_messages(2, WAIT).await;
    let reset_token = token_after(&text_part(&mails[1].data), RESET_LINK);
    resets
        .reset_password(pb::ResetPasswordRequest {
            token: reset_token.clone(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .expect("resets");

    let published = nats.read_all(STREAM, 5, WAIT).await;
    let types: Vec<&str> = published.iter().map(|m| m.header("ce-type")).collect();
    assert_eq!(
        types,
        [
            UserRegistered::TYPE,
            UserVerified::TYPE,
            UserLoggedIn::TYPE,
            UserPasswordChanged::TYPE,
            SessionRevoked::TYPE,
        ]
    );
    let verified: UserVerified = decode(&published[1]);
    assert_eq!(verified.email, email);
    assert_eq!(verified.proof(), events::VerificationProof::Link);
    let logged_in: UserLoggedIn = decode(&published[2]);
    let revoked: SessionRevoked = decode(&published[4]);
    assert_eq!(revoked.session_id, logged_in.session_id);
    assert_eq!(revoked.reason(), RevocationReason::PasswordReset);
    for message in &published {
        assert_eq!(message.header("ce-subject"), user_id, "{message:?}");
        assert!(message.subject.ends_with(&user_id), "{message:?}");
    }

    // No password, token or code in any event, headers included.
    let code = email_code(&mail.data);
    let secrets = [
        PASSWORD,
        NEW_PASSWORD,
        &verify_token,
        &code,
        &reset_token,
        &session.access_token,
        &session.refresh_token,
        &refreshed.access_token,
        &refreshed.refresh_token,
    ];
    for message in &published {
        let mut text = String::from_utf8_lossy(&message.data).into_owned();
        text.extend(message.headers.values().map(String::as_str));
        for secret in secrets {
            assert!(!secret.is_empty());
            assert!(
                !text.contains(secret),
                "{} carries a secret",
                message.header("ce-type")
            );
        }
    }
}

/// The verification code in an email's text.
fn email_code(mail: &str) -> String {
    let text = text_part(mail);
    let code: String = text
        .split_whitespace()
        .find(|word| word.len() == 6 && word.bytes().all(|b| b.is_ascii_digit()))
        .expect("a six-digit code in the email")
        .to_owned();
    code
}

#[tokio::test]
async fn a_register_whose_transaction_rolls_back_publishes_nothing() {
    let smtp = SmtpServer::start();
    let nats = NatsServer::start().await;
    let server = server().await;
    // The commit of one address's registration fails, after its event row was written.
    let mut conn = server.db.connect().await;
    outbox::execute(
        &mut conn,
        "CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$;
         CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON users
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
           WHEN (NEW.email = 'rolled-back@example.com') EXECUTE FUNCTION refuse_commit()",
    )
    .await;
    let _relay = relay_to(&server, &smtp, &nats, &[]).await;

    let mut registration = server.registration().await;
    registration
        .register(register_request("rolled-back@example.com"))
        .await
        .expect_err("the commit fails");
    let user_id = registration
        .register(register_request("kept@example.com"))
        .await
        .expect("registers")
        .into_inner()
        .user_id;

    // The later registration's event is published; the rolled-back one's never existed.
    let published = nats.read_all(STREAM, 1, WAIT).await;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].header("ce-subject"), user_id);
    smtp.wait_for_message_to("kept@example.com", WAIT).await;
    // Once the relay deleted what it delivered (the SMTP acceptance comes first), nothing of
    // the rolled-back registration is left to send either.
    outbox::drained(&mut conn, WAIT).await;
    assert!(smtp.messages_to("rolled-back@example.com").is_empty());
    assert_eq!(nats.stream_len(STREAM).await, 1);
}

#[tokio::test]
async fn with_nats_down_emails_flow_at_once_and_every_event_follows_in_order_when_it_returns() {
    const USERS: usize = 50;
    let smtp = SmtpServer::start();
    let mut nats = NatsServer::start().await;
    // Fifty sign-ups from one address: no challenge, no limit.
    let server = server_with(&[
        ("IDENTITY_CHALLENGE_POLICY", "off"),
        ("IDENTITY_RATE_LIMITING", "false"),
    ])
    .await;
    let relay = relay_to(&server, &smtp, &nats, &[]).await;
    let channel = server.channel().await;
    nats.kill();

    // Fifty users register, verify by their emails' links, and log in, with NATS down.
    let mut users = HashMap::new();
    for n in 0..USERS {
        let email = format!("user{n}@example.com");
        let user_id = server.register_and_verify(&smtp, &email).await;
        SessionServiceClient::new(channel.clone())
            .login(pb::LoginRequest {
                email: email.clone(),
                password: PASSWORD.into(),
            })
            .await
            .expect("logs in");
        users.insert(user_id, email);
    }
    assert_eq!(smtp.message_count(), USERS, "every email went out");
    let mut conn = server.db.connect().await;
    assert_eq!(
        outbox::count(
            &mut conn,
            "SELECT count(*) AS n FROM outbox WHERE channel = 'event'"
        )
        .await,
        3 * USERS as i64,
        "the events wait in the outbox"
    );

    // NATS returns: every event arrives, each user's in the order they happened.
    nats.resume().await;
    let published = nats.read_all(STREAM, 3 * USERS as u64, WAIT).await;
    assert_eq!(published.len(), 3 * USERS);
    let mut by_user: HashMap<&str, Vec<&str>> = HashMap::new();
    for message in &published {
        by_user
            .entry(message.header("ce-subject"))
            .or_default()
            .push(message.header("ce-type"));
    }
    assert_eq!(by_user.len(), USERS);
    for (user, types) in by_user {
        assert!(users.contains_key(user), "{user}");
        assert_eq!(
            types,
            [UserRegistered::TYPE, UserVerified::TYPE, UserLoggedIn::TYPE],
            "{user}"
        );
    }
    outbox::drained(&mut conn, WAIT).await;
    assert!(
        relay.output().contains("cannot publish events")
            || relay.output().contains("disconnected from NATS")
            || relay.output().contains("NATS is not connected"),
        "the relay noticed the outage:\n{}",
        relay.output()
    );
}

#[tokio::test]
async fn a_relay_killed_again_and_again_while_publishing_loses_and_duplicates_no_event() {
    const USERS: usize = 40;
    const PER_USER: usize = 25;
    const TOTAL: usize = USERS * PER_USER;
    const KILLS: usize = 6;
    let smtp = SmtpServer::start();
    let nats = NatsServer::start().await;
    let server = server().await;
    let mut conn = server.db.connect().await;

    // 1,000 events of 40 users, interleaved; each user's are numbered (the session id's last
    // digits) so their order can be checked.
    let users: Vec<uuid::Uuid> = (0..USERS).map(|_| uuid::Uuid::now_v7()).collect();
    for n in 0..PER_USER {
        for user in &users {
            let event = UserLoggedIn {
                user_id: user.to_string(),
                session_id: format!("00000000-0000-0000-0000-{n:012}"),
                logged_in_at: None,
            };
            let payload = serde_json::to_value(EventPayload::of(&event)).expect("json");
            outbox::execute_with(
                &mut conn,
                "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
                 VALUES (gen_random_uuid(), 'user', $1, $2, $3::jsonb)",
                &[&user.to_string(), UserLoggedIn::TYPE, &payload.to_string()],
            )
            .await;
        }
    }

    // Kill -9 the relay whenever it has published another slice, then start a new one.
    let settings = [
        ("RELAY_BATCH_SIZE", "2"),
        ("RELAY_SMTP_TIMEOUT_SECS", "1"),
        ("RELAY_LEASE_SECS", "5"),
        ("RELAY_NATS_TIMEOUT_SECS", "2"),
    ];
    let mut kills = 0;
    let mut republished = 0;
    while kills < KILLS {
        let mut relay = relay_to(&server, &smtp, &nats, &settings).await;
        let target = (kills as u64 + 1) * (TOTAL as u64 / (KILLS as u64 + 2));
        identity_tests::wait::until("the relay to publish another slice", WAIT, async || {
            (nats.stream_len(STREAM).await >= target).then_some(())
        })
        .await;
        relay.kill();
        republished += relay.count_lines("duplicate=true");
        kills += 1;
    }
    let stored_at_last_kill = nats.stream_len(STREAM).await;
    assert!(
        stored_at_last_kill < TOTAL as u64,
        "the last kill came before the end"
    );
    let relay = relay_to(&server, &smtp, &nats, &settings).await;
    outbox::drained(&mut conn, WAIT).await;
    republished += relay.count_lines("duplicate=true");

    // Every event exactly once, each user's in order.
    let published = nats.read_all(STREAM, TOTAL as u64, WAIT).await;
    assert_eq!(published.len(), TOTAL, "no event stored twice");
    let ids: std::collections::HashSet<&str> =
        published.iter().map(|m| m.header("ce-id")).collect();
    assert_eq!(ids.len(), TOTAL);
    let mut next: HashMap<String, usize> = HashMap::new();
    for message in &published {
        let event: UserLoggedIn = decode(message);
        let n: usize = event.session_id[24..].parse().expect("a number");
        let expected = next.entry(event.user_id).or_default();
        assert_eq!(n, *expected, "in order per user");
        *expected += 1;
    }
    assert_eq!(
        outbox::count(&mut conn, "SELECT count(*) AS n FROM outbox_dead").await,
        0
    );
    println!(
        "{TOTAL} events of {USERS} users, relay killed {kills} times (the last with \
         {stored_at_last_kill} stored): {} stored once each, in order per user; \
         {republished} republished after a crash and dropped by JetStream as duplicates",
        published.len()
    );
}

#[tokio::test]
async fn with_smtp_down_events_are_published_at_once_and_the_email_waits() {
    let mut smtp = SmtpServer::start();
    let nats = NatsServer::start().await;
    let server = server().await;
    let _relay = relay_to(&server, &smtp, &nats, &[]).await;
    smtp.stop();

    let user_id = server
        .registration()
        .await
        .register(register_request("ada@example.com"))
        .await
        .expect("registers")
        .into_inner()
        .user_id;
    let published = nats.read_all(STREAM, 1, WAIT).await;
    assert_eq!(published[0].header("ce-subject"), user_id);
    let mut conn = server.db.connect().await;
    assert_eq!(
        outbox::count(
            &mut conn,
            "SELECT count(*) AS n FROM outbox WHERE channel = 'email'"
        )
        .await,
        1,
        "the email waits for the SMTP server"
    );

    smtp.restart();
    smtp.wait_for_message_to("ada@example.com", WAIT).await;
    outbox::drained(&mut conn, WAIT).await;
}

/// Runs the relay with `settings` besides a database and NATS (unreachable: the checks come
/// first), expecting it to refuse to start; returns its log.
async fn refused_start(settings: &[(&str, &str)]) -> String {
    let server = server().await;
    let mut env = relay::configured_env(&server.db.url);
    env.push(("NATS_URL", "nats://127.0.0.1:1"));
    env.extend_from_slice(settings);
    let output = relay::run_until_exit(&env, WAIT)
        .await
        .expect("the relay exits by itself");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[tokio::test]
async fn a_duplicate_window_shorter_than_the_retry_horizon_is_refused_at_start_up() {
    let log = refused_start(&[("RELAY_EVENTS_DUPLICATE_WINDOW_SECS", "60")]).await;
    for named in [
        "RELAY_EVENTS_DUPLICATE_WINDOW_SECS=60",
        "RELAY_EVENTS_MAX_ATTEMPTS=10",
        "511 s",
    ] {
        assert!(log.contains(named), "{named} missing from:\n{log}");
    }
}

#[tokio::test]
async fn an_acknowledgement_timeout_that_does_not_fit_in_the_lease_is_refused_at_start_up() {
    let log = refused_start(&[("RELAY_NATS_TIMEOUT_SECS", "40")]).await;
    for named in [
        "RELAY_NATS_TIMEOUT_SECS=40",
        "RELAY_LEASE_SECS=30",
        "at least 42 s",
    ] {
        assert!(log.contains(named), "{named} missing from:\n{log}");
    }
}

#[tokio::test]
async fn the_relay_reports_waiting_events_and_its_pause_then_what_it_published() {
    let smtp = SmtpServer::start();
    let mut nats = NatsServer::start().await;
    let server = server().await;
    let metrics = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let _relay = relay_to(
        &server,
        &smtp,
        &nats,
        &[("RELAY_METRICS_ADDR", metrics.as_str())],
    )
    .await;
    nats.kill();
    server.register("ada@example.com").await;

    identity_tests::wait::until("a waiting event and a paused channel", WAIT, async || {
        let exposition = scrape(&metrics).await;
        (sample(&exposition, "outbox_events_pending") == Some(1.0)
            && sample(&exposition, "outbox_events_paused") == Some(1.0))
        .then_some(())
    })
    .await;

    nats.resume().await;
    let published = format!(
        "outbox_events_published_total{{type=\"{}\",result=\"published\"}}",
        UserRegistered::TYPE
    );
    identity_tests::wait::until(
        "the event published and the channel running",
        WAIT,
        async || {
            let exposition = scrape(&metrics).await;
            (sample(&exposition, &published) == Some(1.0)
                && sample(&exposition, "outbox_events_pending") == Some(0.0)
                && sample(&exposition, "outbox_events_oldest_pending_age_seconds") == Some(0.0)
                && sample(&exposition, "outbox_events_paused") == Some(0.0))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn events_reach_a_nats_server_that_requires_tls_and_a_client_certificate() {
    let ca = support::TestCa::new();
    let dir = std::env::temp_dir().join(format!(
        "identity-nats-tls-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("writes a PEM file");
        path
    };
    let (server_cert, server_key) = ca.issue(&["127.0.0.1"]);
    let (client_cert, client_key) = ca.issue(&["outbox-relay"]);
    let tls = NatsTls {
        ca: write("ca.crt", &ca.ca_pem()),
        cert: write("server.crt", &server_cert),
        key: write("server.key", &server_key),
        client_cert: write("client.crt", &client_cert),
        client_key: write("client.key", &client_key),
    };
    let nats = NatsServer::start_tls(tls.clone()).await;
    assert!(nats.url().starts_with("tls://"));
    let smtp = SmtpServer::start();
    let server = server().await;
    let (ca_file, cert_file, key_file) = (
        tls.ca.display().to_string(),
        tls.client_cert.display().to_string(),
        tls.client_key.display().to_string(),
    );
    let _relay = relay_to(
        &server,
        &smtp,
        &nats,
        &[
            ("NATS_CA_FILE", ca_file.as_str()),
            ("NATS_CLIENT_CERT", cert_file.as_str()),
            ("NATS_CLIENT_KEY", key_file.as_str()),
        ],
    )
    .await;

    server.register("ada@example.com").await;
    let published = nats.read_all(STREAM, 1, WAIT).await;
    assert_eq!(published[0].header("ce-type"), UserRegistered::TYPE);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_event_that_can_never_be_published_is_dead_lettered_and_the_users_next_one_follows() {
    let smtp = SmtpServer::start();
    let nats = NatsServer::start().await;
    let server = server().await;
    let mut conn = server.db.connect().await;
    // A user's first event row holds no event (a poison row), the second a real one.
    let user = uuid::Uuid::now_v7().to_string();
    let event = UserLoggedIn {
        user_id: user.clone(),
        session_id: uuid::Uuid::now_v7().to_string(),
        logged_in_at: None,
    };
    let good = serde_json::to_value(EventPayload::of(&event))
        .expect("json")
        .to_string();
    for payload in [r#"{"recipient": "ada@example.com"}"#, good.as_str()] {
        outbox::execute_with(
            &mut conn,
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
             VALUES (gen_random_uuid(), 'user', $1, $2, $3::jsonb)",
            &[&user, UserLoggedIn::TYPE, payload],
        )
        .await;
    }
    let _relay = relay_to(&server, &smtp, &nats, &[]).await;

    let published = nats.read_all(STREAM, 1, WAIT).await;
    assert_eq!(decode::<UserLoggedIn>(&published[0]), event);
    outbox::drained(&mut conn, WAIT).await;
    let dead = outbox::dead_letters(&mut conn).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].kind, UserLoggedIn::TYPE);
    assert!(
        dead[0].reason.contains("not an event"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].attempts, 0, "never tried: no attempt counted");
    assert_eq!(nats.stream_len(STREAM).await, 1);
}
