//! One claimed message: make sure the lease covers its delivery (extending it when too little
//! is left, skipping the message when the lease was lost), then render it by the database's
//! clock and send it within the delivery limit.

use std::time::{Duration, Instant};

use opentelemetry::{
    Context,
    trace::{SpanContext, TraceContextExt},
};
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{Instrument, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::{Relay, dev_log::log_written_file, lease::DatabaseClock, verdict::Verdict};
use crate::{
    email::{BuildError, RenderedEmail, build_message},
    mailer::Sent,
    payload::Payload,
    store::{self, Claimed},
};

impl Relay {
    /// Delivers one message claimed under `token` by a claim issued at `claimed`, and records
    /// the verdict, in the message's send span ([`send_span`]).
    pub(super) async fn handle(
        &self,
        token: Uuid,
        claimed: Instant,
        message: Claimed,
        receive: &SpanContext,
        stop: &watch::Receiver<bool>,
    ) {
        let span = send_span(&message, receive);
        self.deliver_and_record(token, claimed, message, stop)
            .instrument(span)
            .await;
    }

    async fn deliver_and_record(
        &self,
        token: Uuid,
        claimed: Instant,
        message: Claimed,
        stop: &watch::Receiver<bool>,
    ) {
        let verdict = if *stop.borrow() || self.wait_left().is_some() {
            // Not started yet: leave it for later or for another relay.
            Verdict::PutBack(Duration::ZERO)
        } else {
            match self.secure_lease(token, claimed, &message).await {
                Ok(Some(clock)) => self.deliver(&message, clock).await,
                Ok(None) => {
                    tracing::warn!(message.id = %message.id, "lease lost before sending; another relay owns the message now, so this one does not send it");
                    return;
                }
                Err(e) => {
                    tracing::warn!(message.id = %message.id, error.message = %e, "cannot make sure the lease covers the send; not sending, the message returns when its lease lapses");
                    return;
                }
            }
        };
        verdict.describe(&tracing::Span::current());
        self.record(token, &message, verdict).await;
    }

    /// Makes sure the lease on `message` outlasts a delivery starting now: kept when enough of
    /// the claim's lease is left, extended otherwise. Returns the database's clock, or `None`
    /// when the lease was lost.
    async fn secure_lease(
        &self,
        token: Uuid,
        claimed: Instant,
        message: &Claimed,
    ) -> anyhow::Result<Option<DatabaseClock>> {
        if self.budget.covers(claimed) {
            return Ok(Some(DatabaseClock::new(message.claimed_at, claimed)));
        }
        let mut conn = self.pool.get().await?;
        let asked = Instant::now();
        let Some(now) = store::extend(&mut conn, message.id, token, self.budget.lease()).await?
        else {
            return Ok(None);
        };
        anyhow::ensure!(
            self.budget.covers(asked),
            "extending the lease took too long to leave time for the send"
        );
        tracing::debug!(message.id = %message.id, lease = ?self.budget.lease(), "lease extended before sending");
        Ok(Some(DatabaseClock::new(now, asked)))
    }

    /// Renders, builds and sends one message, within the delivery limit.
    async fn deliver(&self, message: &Claimed, clock: DatabaseClock) -> Verdict {
        let (payload, rendered, email) = match self.prepare(message, clock.now()) {
            Ok(prepared) => prepared,
            Err(reason) => {
                return Verdict::Dead {
                    reason,
                    tried: false,
                };
            }
        };
        let limit = self.budget.delivery();
        match tokio::time::timeout(limit, self.mailer.send(email)).await {
            Ok(Ok(sent)) => {
                if let Sent::File(path) = &sent {
                    log_written_file(path, &payload, &rendered);
                }
                Verdict::Delivered {
                    sent,
                    at: clock.now(),
                }
            }
            Ok(Err(e)) => e.into(),
            Err(_) => Verdict::Failed(format!("the delivery did not finish within {limit:?}")),
        }
    }

    /// Parses, renders (as seen at `now`) and builds one message. The error is the reason to
    /// dead-letter it: none of these steps would go better another time.
    fn prepare(
        &self,
        message: &Claimed,
        now: OffsetDateTime,
    ) -> Result<(Payload, RenderedEmail, lettre::Message), String> {
        let payload = Payload::parse(&message.kind, &message.payload).map_err(|e| e.to_string())?;
        let rendered = payload
            .render(&self.renderer, now)
            .map_err(|e| format!("cannot render the email: {e}"))?;
        let (name, address) = payload.addressee();
        let email = build_message(&self.from, name, address, message.id, &rendered).map_err(
            |e| match e {
                BuildError::InvalidRecipient(_) => "invalid recipient address".to_owned(),
                e => format!("cannot build the email: {e}"),
            },
        )?;
        Ok((payload, rendered, email))
    }
}

/// The span of one attempt at `message` (OpenTelemetry's messaging conventions: a `process`
/// span): a child of the span that queued the message, whose context the row carries, and
/// linked to the claim that took it (`receive`).
fn send_span(message: &Claimed, receive: &SpanContext) -> tracing::Span {
    let span = tracing::info_span!(
        "send email",
        otel.kind = "consumer",
        otel.status_code = field::Empty,
        messaging.system = "outbox",
        messaging.operation.type = "process",
        messaging.operation.name = "send",
        messaging.destination.name = "outbox",
        messaging.message.id = %message.id,
        outbox.kind = %message.kind,
        outbox.attempt = message.attempts + 1,
        outbox.outcome = field::Empty,
    );
    let parent = message.trace_parent();
    if parent.is_valid() {
        // Fails only without the OpenTelemetry layer, when there is no trace to continue.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    if receive.is_valid() {
        span.add_link(receive.clone());
    }
    span
}
