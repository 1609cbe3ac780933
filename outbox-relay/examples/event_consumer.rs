//! A consumer of identity's domain events, to copy: a durable JetStream pull consumer that
//! processes each event once (a redelivery is recognised by its CloudEvents id) and in order per
//! user.
//!
//! ```text
//! cargo run -p outbox-relay --example event_consumer -- --help
//! ```

use std::{
    collections::HashSet,
    fs::OpenOptions,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, anyhow};
use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use clap::Parser;
use futures_util::StreamExt;
use identity_proto::{identity::events::v1 as events, outbox::DomainEvent};
use prost::Message;

/// Reads identity's domain events (CloudEvents 1.0, binary mode: protobuf body, `ce-*` headers)
/// from the JetStream stream the outbox relay publishes to, and prints one line per event.
///
/// The consumer is durable: the server remembers which messages were acked, so a restart resumes
/// after them. An event may still arrive twice (a redelivery after a crash before the ack, a
/// republication outside JetStream's duplicate window); the ids already handled, kept in
/// --processed-file, make handling it again a no-op. Runs until Ctrl-C, or until --max messages.
#[derive(Debug, Parser)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The stream the relay publishes to.
    #[arg(long, env = "CONSUMER_STREAM", default_value = "IDENTITY_EVENTS")]
    stream: String,
    /// Name of the durable consumer: each name reads the whole stream once, at its own pace.
    #[arg(long, env = "CONSUMER_DURABLE", default_value = "example-consumer")]
    durable: String,
    /// Subject filter: `identity.>` for every event, `identity.user.logged_in.v1.>` for one type.
    #[arg(long, env = "CONSUMER_FILTER", default_value = "identity.>")]
    filter: String,
    /// File of the ids (ce-id) already processed, one a line; created when missing.
    #[arg(
        long,
        env = "CONSUMER_PROCESSED_FILE",
        default_value = "processed-events.log"
    )]
    processed_file: PathBuf,
    /// Exit (status 0) after handling this many messages (for tests and demos).
    #[arg(long, env = "CONSUMER_MAX")]
    max: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The ids already processed. A real service keeps them in its own database and inserts the
    // id in the same transaction as its own effect, so that both happen or neither does.
    let mut processed = load(&args.processed_file)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.processed_file)
        .with_context(|| format!("cannot open {}", args.processed_file.display()))?;

    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("cannot connect to {}", args.nats_url))?;
    let stream = jetstream::new(client)
        .get_stream(&args.stream)
        .await
        .map_err(|e| anyhow!("no stream {}: {e}", args.stream))?;
    // Order: the relay never publishes a user's later event before an earlier one is stored, so
    // stream order is per-user order. With max_ack_pending = 1 the server hands out the next
    // message only once the previous one is acked: one instance handles the stream strictly one
    // message at a time, in order. To go faster, keep each user's events on one worker at a
    // time: run one consumer per event type (a --filter each, e.g.
    // `identity.user.logged_in.v1.>`, where the order across types does not matter), or
    // partition by user (the last subject token is the user id; a subject transform with
    // `{{partition(n, ...)}}` can add a partition number) with one such consumer per partition.
    // Several instances of one durable consumer share its messages but, with max_ack_pending
    // above 1, not its order.
    let config = pull::Config {
        durable_name: Some(args.durable.clone()),
        filter_subject: args.filter.clone(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        // Unacked this long (a crashed or stuck consumer), a message is delivered again.
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&args.durable, config)
        .await
        .map_err(|e| anyhow!("cannot create consumer {}: {e}", args.durable))?;
    let mut messages = consumer.messages().await.map_err(|e| anyhow!("{e}"))?;

    // Ctrl-C stops the loop between two messages, never in the middle of one.
    let mut stop = tokio::spawn(tokio::signal::ctrl_c());
    let mut handled = 0;
    while args.max.is_none_or(|max| handled < max) {
        let message = tokio::select! {
            _ = &mut stop => break,
            next = messages.next() => match next {
                Some(message) => message.map_err(|e| anyhow!("receiving: {e}"))?,
                None => break,
            },
        };
        let header = |name: &str| {
            let value = message.headers.as_ref().and_then(|h| h.get(name));
            value.map_or("", |v| v.as_str()).to_owned()
        };
        let (id, kind, user) = (header("ce-id"), header("ce-type"), header("ce-subject"));
        handled += 1;
        if processed.contains(&id) {
            say(&format!("duplicate {id} skipped"));
        } else {
            let decoded = if id.is_empty() {
                Err("no ce-id header".to_owned())
            } else {
                summary(&kind, &message.payload).map_err(|e| e.to_string())
            };
            let line = match decoded {
                // Here a real service does its work (in the transaction that records the id).
                Ok(Some(summary)) => format!("processed {kind} user={user} id={id} {summary}"),
                // A type added after this consumer was written: skip it, as CloudEvents intends.
                Ok(None) => format!("skipped unknown type {kind} id={id}"),
                // Not a CloudEvent of the relay, or a body that will never decode: a real service
                // moves it to a dead-letter store. Term: the server never delivers it again.
                Err(e) => {
                    eprintln!("cannot handle {} id={id}: {e}", message.subject);
                    message
                        .ack_with(AckKind::Term)
                        .await
                        .map_err(|e| anyhow!("term: {e}"))?;
                    continue;
                }
            };
            say(&line);
            // Record the id before the ack: a crash in between means a redelivery, which is then
            // skipped as a duplicate. Acking first could lose the event instead.
            writeln!(log, "{id}").and_then(|()| log.flush())?;
            processed.insert(id);
        }
        // Double ack: waits for the server's confirmation, so the ack is known to be stored.
        message
            .double_ack()
            .await
            .map_err(|e| anyhow!("ack: {e}"))?;
    }
    Ok(())
}

/// The ids of `path`, one a line; none when the file does not exist yet.
fn load(path: &Path) -> anyhow::Result<HashSet<String>> {
    match std::fs::File::open(path) {
        Ok(file) => BufReader::new(file)
            .lines()
            .filter(|line| !matches!(line.as_deref(), Ok("")))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
    }
}

/// Decodes `data` with the generated message of `kind` and summarizes it (never more than the
/// ids and the address); `None` for a type this consumer does not know.
fn summary(kind: &str, data: &[u8]) -> Result<Option<String>, prost::DecodeError> {
    Ok(Some(match kind {
        events::UserRegistered::TYPE => {
            let e = events::UserRegistered::decode(data)?;
            format!("user_id={} email={}", e.user_id, e.email)
        }
        events::UserVerified::TYPE => {
            let e = events::UserVerified::decode(data)?;
            format!("user_id={} email={}", e.user_id, e.email)
        }
        events::UserLoggedIn::TYPE => {
            let e = events::UserLoggedIn::decode(data)?;
            format!("user_id={} session_id={}", e.user_id, e.session_id)
        }
        events::UserPasswordChanged::TYPE => {
            let e = events::UserPasswordChanged::decode(data)?;
            format!("user_id={}", e.user_id)
        }
        events::SessionRevoked::TYPE => {
            let e = events::SessionRevoked::decode(data)?;
            format!("user_id={} session_id={}", e.user_id, e.session_id)
        }
        _ => return Ok(None),
    }))
}

/// Prints `line` to stdout and flushes it, so that a reader of a pipe sees it at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
