//! The outbox table, seen from the relay: claim a batch under a lease, extend a message's lease
//! before its send ([`lease`]), then complete, retry, dead-letter or put back each message
//! ([`outcome`]). Every change after the claim is guarded by the lease token, so a relay whose
//! lease lapsed (and whose messages another relay may have claimed) changes nothing.
//!
//! Every time written to the table comes from the database's clock (`now()`, with the delays
//! bound as parameters), never from the relay host's: relays on hosts whose clocks disagree
//! still agree on when a lease lapses and when a retry is due.

mod events;
mod lease;
mod outcome;
pub mod schema;

use std::time::Duration;

use diesel::{QueryResult, QueryableByName, sql_types::Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

pub use events::claim_events;
pub use lease::{claim, extend, release};
pub use outcome::{complete, complete_many, dead_letter, put_back, retry_later};
use schema::outbox;

/// The connection pool.
pub type Pool = identity_proto::pg::Pool;

/// A pool of up to `max_size` connections that waits at most `timeout` for one, connecting as
/// `url` says (TLS after libpq's `sslmode`, see `identity_proto::pg`) with `session` limits on
/// every statement. A malformed URL or unreadable CA file fails here, at start-up.
pub fn pool(
    url: &secrecy::SecretString,
    max_size: usize,
    timeout: Duration,
    session: identity_proto::pg::SessionTimeouts,
) -> anyhow::Result<Pool> {
    use secrecy::ExposeSecret;
    let connector =
        identity_proto::pg::Connector::new(url.expose_secret())?.with_session_timeouts(session);
    Ok(identity_proto::pg::pool(connector, max_size, timeout)?)
}

/// A message this relay holds a lease on.
#[derive(QueryableByName)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
pub struct Claimed {
    pub id: Uuid,
    /// Whom the message is about (a user id).
    pub aggregate_id: String,
    pub kind: String,
    /// May hold secrets: never log it.
    pub payload: serde_json::Value,
    /// Failed deliveries so far.
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    /// The W3C trace context of the transaction that queued the message.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// The database's time when the message was claimed.
    #[diesel(sql_type = Timestamptz)]
    pub claimed_at: OffsetDateTime,
}

impl Claimed {
    /// The span context of the transaction that queued the message, which its delivery
    /// continues; invalid when the row carries none.
    pub fn trace_parent(&self) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::TraceContextExt;
        match &self.traceparent {
            Some(traceparent) => identity_proto::telemetry::TraceContext::parent(
                traceparent,
                self.tracestate.as_deref(),
            )
            .span()
            .span_context()
            .clone(),
            None => opentelemetry::trace::SpanContext::empty_context(),
        }
    }
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// One channel's backlog as the database sees it: how many messages, counted up to
/// [`BACKLOG_COUNT_CAP`], and the age in seconds of the oldest (0 when empty).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_age_secs: f64,
}

/// The most messages [`backlogs`] counts per channel: past it the gauge stays at the cap, and
/// the oldest message's age (which the alerts watch) still tells how stuck the channel is.
pub const BACKLOG_COUNT_CAP: i64 = 10_000;

/// A channel of the outbox: each drains on its own, through its own claim index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Emails, to the SMTP server.
    Email,
    /// Domain events, to NATS JetStream.
    Event,
}

impl Channel {
    /// The value of the outbox's generated `channel` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Event => "event",
        }
    }
}

/// Reads the backlog of both channels in one statement, from `outbox_channel_created_at_idx`:
/// each channel's oldest message is the first entry of its range, and the count stops at
/// [`BACKLOG_COUNT_CAP`], so the cost stays flat however large the outbox grows.
const BACKLOGS: &str = "SELECT c.channel,
        (SELECT count(*) FROM (SELECT 1 FROM outbox o WHERE o.channel = c.channel
                                ORDER BY o.created_at LIMIT $1) AS capped)
            AS pending,
        COALESCE(EXTRACT(EPOCH FROM now() - (SELECT min(o.created_at) FROM outbox o
                                              WHERE o.channel = c.channel)), 0)::float8
            AS oldest_age_secs
   FROM (VALUES ('email'), ('event')) AS c (channel)";

#[derive(QueryableByName)]
struct BacklogRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    channel: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pending: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    oldest_age_secs: f64,
}

/// The backlog of the email channel and of the event channel.
pub async fn backlogs(conn: &mut AsyncPgConnection) -> QueryResult<(Backlog, Backlog)> {
    let rows: Vec<BacklogRow> = diesel::sql_query(BACKLOGS)
        .bind::<diesel::sql_types::BigInt, _>(BACKLOG_COUNT_CAP)
        .load(conn)
        .await?;
    let of = |channel: Channel| {
        rows.iter()
            .find(|row| row.channel == channel.as_str())
            .map_or_else(Backlog::default, |row| Backlog {
                pending: row.pending,
                oldest_age_secs: row.oldest_age_secs,
            })
    };
    Ok((of(Channel::Email), of(Channel::Event)))
}

/// Whether the database answers a trivial query (for health checks).
pub async fn ping(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT 1").execute(conn).await.map(drop)
}
