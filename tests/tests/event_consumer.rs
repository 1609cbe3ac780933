//! The example consumer (`outbox-relay/examples/event_consumer.rs`), built, against a real
//! nats-server with JetStream: events published as the relay publishes them are processed once
//! each, in order per user; a durable consumer resumes after what it acked; an id seen before is
//! skipped, whether it came back under another message id or through a new consumer.

use std::{path::PathBuf, time::Duration};

use async_nats::{HeaderMap, jetstream};
use identity_proto::{
    identity::events::v1::{
        RevocationReason, SessionRevoked, UserLoggedIn, UserPasswordChanged, UserRegistered,
        UserVerified, VerificationProof,
    },
    outbox::DomainEvent,
};
use identity_tests::{
    nats::{NatsServer, STREAM},
    process::{Process, field},
    wait,
};
use prost::Message;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// The built example (`target/<profile>/examples/event_consumer`), next to the test's own
/// `target/<profile>/deps/`.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the process knows its own path");
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps/ lives in the profile directory");
    }
    let path = dir.join("examples").join("event_consumer");
    assert!(
        path.exists(),
        "{} is missing: run cargo build --examples first (scripts/test does)",
        path.display()
    );
    path
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One published message: its `ce-id`, `ce-type` and user.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    kind: &'static str,
    user: String,
}

/// Publishes `data` as the relay does (CloudEvents binary mode), with `ce-id` `id` and
/// `Nats-Msg-Id` `msg_id`, and waits for JetStream's acknowledgement.
async fn publish_raw(
    js: &jetstream::Context,
    id: &str,
    msg_id: &str,
    kind: &'static str,
    user: &str,
    data: Vec<u8>,
) -> Sent {
    let schema = format!(
        "identity.events.v1.{}",
        match kind {
            UserRegistered::TYPE => "UserRegistered",
            UserVerified::TYPE => "UserVerified",
            UserLoggedIn::TYPE => "UserLoggedIn",
            UserPasswordChanged::TYPE => "UserPasswordChanged",
            _ => "SessionRevoked",
        }
    );
    let time = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("formats the time");
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id);
    headers.insert("ce-source", "/identity");
    headers.insert("ce-type", kind);
    headers.insert("ce-subject", user);
    headers.insert("ce-time", time.as_str());
    headers.insert("content-type", "application/protobuf");
    headers.insert("ce-dataschema", schema.as_str());
    js.publish_with_headers(format!("{kind}.{user}"), headers, data.into())
        .await
        .expect("publishes")
        .await
        .expect("JetStream stores the message");
    Sent {
        id: id.to_owned(),
        kind,
        user: user.to_owned(),
    }
}

/// Publishes `event` about `user` with a new id.
async fn publish<E: DomainEvent>(js: &jetstream::Context, user: &str, event: &E) -> Sent {
    let id = Uuid::now_v7().to_string();
    publish_raw(js, &id, &id, E::TYPE, user, event.encode_to_vec()).await
}

/// Runs the example to its exit with `--max max`, and returns its output once all `max` lines
/// of handled messages are read.
async fn consume(nats: &NatsServer, durable: &str, processed: &TempFile, max: usize) -> String {
    let url = nats.url();
    let file = processed.0.display().to_string();
    let max_arg = max.to_string();
    let mut consumer = Process::spawn_program(
        example_binary(),
        &[
            "--nats-url",
            &url,
            "--durable",
            durable,
            "--processed-file",
            &file,
            "--max",
            &max_arg,
        ],
        &[],
    );
    let status = consumer.wait_for_exit(WAIT).await;
    // The output is read by threads: wait until they have it all.
    let output = wait::until("the consumer's output", WAIT, async || {
        let output = consumer.output();
        let handled = output.lines().filter(|l| handled(l)).count();
        (handled >= max).then_some(output)
    })
    .await;
    assert!(
        status.success(),
        "the consumer failed ({status}):\n{output}"
    );
    output
}

/// Whether `line` is the consumer's report of a message it handled.
fn handled(line: &str) -> bool {
    line.starts_with("processed ") || line.starts_with("duplicate ")
}

/// The lines of `output` that report a processed event.
fn processed_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.starts_with("processed "))
        .collect()
}

/// Asserts that `line` reports `sent`, processed, and that the decoded event names its user.
fn assert_processed(line: &str, sent: &Sent) {
    let expected = format!("processed {} user={} id={} ", sent.kind, sent.user, sent.id);
    assert!(line.starts_with(&expected), "{line:?} is not {sent:?}");
    assert_eq!(field(line, "user_id"), Some(sent.user.as_str()), "{line}");
}

#[tokio::test]
async fn the_example_consumer_processes_each_event_once_in_order_per_user() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    js.create_stream(jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec!["identity.>".to_owned()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("creates the stream");
    let processed = TempFile(std::env::temp_dir().join(format!(
        "identity-event-consumer-{}.log",
        Uuid::new_v4().simple()
    )));
    let (a, b) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    let registered = |user: &str, email: &str| UserRegistered {
        user_id: user.to_owned(),
        email: email.to_owned(),
        display_name: "Someone".to_owned(),
        locale: "en".to_owned(),
        registered_at: None,
    };
    let logged_in = |user: &str| UserLoggedIn {
        user_id: user.to_owned(),
        session_id: Uuid::now_v7().to_string(),
        logged_in_at: None,
    };

    // Two users' events, interleaved, and one that comes back under another Nats-Msg-Id (so
    // JetStream's duplicate window does not drop it).
    let a_registered = publish(&js, &a, &registered(&a, "ada@example.com")).await;
    let b_registered = publish(&js, &b, &registered(&b, "bob@example.com")).await;
    let verified = UserVerified {
        user_id: a.clone(),
        email: "ada@example.com".to_owned(),
        proof: VerificationProof::Link.into(),
        verified_at: None,
    };
    let a_verified = publish(&js, &a, &verified).await;
    let again = registered(&a, "ada@example.com").encode_to_vec();
    let msg_id = Uuid::now_v7().to_string();
    publish_raw(
        &js,
        &a_registered.id,
        &msg_id,
        UserRegistered::TYPE,
        &a,
        again,
    )
    .await;
    let b_logged_in = publish(&js, &b, &logged_in(&b)).await;
    let a_logged_in = publish(&js, &a, &logged_in(&a)).await;

    // 1. Six messages: five events processed, in stream order, and the duplicate skipped.
    let output = consume(&nats, "example-consumer", &processed, 6).await;
    println!("first run:\n{output}");
    let lines = processed_lines(&output);
    let in_order = [
        &a_registered,
        &b_registered,
        &a_verified,
        &b_logged_in,
        &a_logged_in,
    ];
    assert_eq!(lines.len(), in_order.len(), "{output}");
    for (line, sent) in lines.iter().zip(in_order) {
        assert_processed(line, sent);
    }
    for (user, kinds) in [
        (
            &a,
            vec![UserRegistered::TYPE, UserVerified::TYPE, UserLoggedIn::TYPE],
        ),
        (&b, vec![UserRegistered::TYPE, UserLoggedIn::TYPE]),
    ] {
        let of_user: Vec<&str> = lines
            .iter()
            .filter(|l| field(l, "user") == Some(user.as_str()))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert_eq!(of_user, kinds, "{output}");
    }
    assert!(lines[0].contains("email=ada@example.com"), "{output}");
    assert!(lines[3].contains("session_id="), "{output}");
    let duplicates: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("duplicate "))
        .collect();
    assert_eq!(
        duplicates,
        [format!("duplicate {} skipped", a_registered.id)],
        "{output}"
    );

    // 2. The same durable consumer resumes after what it acked: only the new event.
    let changed = UserPasswordChanged {
        user_id: a.clone(),
        changed_at: None,
    };
    let a_changed = publish(&js, &a, &changed).await;
    let output = consume(&nats, "example-consumer", &processed, 1).await;
    let lines = processed_lines(&output);
    assert_eq!(lines.len(), 1, "{output}");
    assert_processed(lines[0], &a_changed);
    assert!(!output.contains("duplicate"), "{output}");

    // 3. A new consumer reads the stream from the start (as a redelivery would bring messages
    //    back): with the same processed ids, every earlier message is a duplicate.
    let revoked = SessionRevoked {
        user_id: b.clone(),
        session_id: Uuid::now_v7().to_string(),
        reason: RevocationReason::Logout.into(),
        revoked_at: None,
    };
    let b_revoked = publish(&js, &b, &revoked).await;
    let output = consume(&nats, "another-consumer", &processed, 8).await;
    let lines = processed_lines(&output);
    assert_eq!(lines.len(), 1, "{output}");
    assert_processed(lines[0], &b_revoked);
    let earlier = [
        &a_registered,
        &b_registered,
        &a_verified,
        &a_registered,
        &b_logged_in,
        &a_logged_in,
        &a_changed,
    ];
    let duplicates: Vec<String> = output
        .lines()
        .filter(|l| l.starts_with("duplicate "))
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = earlier
        .iter()
        .map(|sent| format!("duplicate {} skipped", sent.id))
        .collect();
    assert_eq!(duplicates, expected, "{output}");
    let ids = std::fs::read_to_string(&processed.0).expect("reads the processed ids");
    assert_eq!(ids.lines().count(), 7, "each id recorded once:\n{ids}");
}
