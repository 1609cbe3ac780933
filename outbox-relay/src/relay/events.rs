//! The event channel: claim each user's earliest event (`store::claim_events`), publish the
//! batch to JetStream at once, and settle each event by its acknowledgement: acknowledged
//! (a duplicate included) is deleted, a failed publish is retried with backoff and
//! dead-lettered at the attempt limit, and a failure of the channel itself (NATS unreachable,
//! no acknowledgement in time, no stream for the subject) puts the batch back without counting
//! an attempt and pauses the channel. Emails drain on their own loop meanwhile.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use async_nats::jetstream::{
    context::{PublishError, PublishErrorKind},
    publish::PublishAck,
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use identity_proto::telemetry;
use opentelemetry::{KeyValue, trace::SpanKind};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::Relay;
use crate::{
    events::{Publisher, envelope::envelope},
    store::{self, Claimed},
};

/// Kept at the end of a lease to record the outcome of a batch.
const RECORD_MARGIN: Duration = Duration::from_secs(1);
/// The longest pause of the channel after repeated failures.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// What became of one event.
enum Outcome {
    /// JetStream stored it (or already had it: `duplicate`).
    Published { duplicate: bool },
    /// This event failed: retry later, or dead-letter past the attempt limit.
    Failed(String),
    /// It can never be published: dead-letter now.
    Dead(String),
    /// The channel failed, not the event; or it was not tried. Put it back, count nothing.
    NotSent,
}

/// Why the channel pauses after a batch.
enum ChannelFault {
    /// JetStream has no stream for a subject: create it again, then go on.
    NoStream(String),
    Other(String),
}

impl Relay {
    /// Publishes events until `stop` turns true.
    pub(super) async fn publish_events(
        self: Arc<Self>,
        publisher: Arc<Publisher>,
        wake: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut stream_ready = false;
        let mut faults = 0u32;
        while !*stop.borrow() {
            if !publisher.is_connected() {
                self.set_events_paused(true);
                // Quietly for a moment (at start the first connection is under way), then say
                // so: a client that never connected (NATS down since start) reports only
                // connection errors.
                let connected_or_stopping = tokio::select! {
                    waited = tokio::time::timeout(Duration::from_secs(1), publisher.connected()) => waited.is_ok(),
                    _ = stop.changed() => true,
                };
                if !connected_or_stopping {
                    tracing::warn!("NATS is not connected; events wait for it (emails do not)");
                    tokio::select! {
                        () = publisher.connected() => {}
                        _ = stop.changed() => {}
                    }
                }
                continue;
            }
            if !stream_ready {
                match publisher.ensure_stream().await {
                    Ok(()) => stream_ready = true,
                    Err(e) => {
                        faults += 1;
                        tracing::warn!(error.message = %e, "events wait for their stream");
                        self.pause_events(faults, &mut stop).await;
                        continue;
                    }
                }
            }
            let token = Uuid::new_v4();
            self.held_mut().insert(token, Vec::new());
            let sent = Instant::now();
            let claimed = match self.pool.get().await {
                Ok(mut conn) => store::claim_events(
                    &mut conn,
                    token,
                    self.budget.lease(),
                    self.config.batch_size,
                )
                .await
                .map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            match claimed {
                Ok(batch) if batch.is_empty() => {
                    self.held_mut().remove(&token);
                    self.set_events_paused(false);
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = stop.changed() => {}
                    }
                }
                Ok(batch) => {
                    self.hold(token, &batch);
                    let fault = self.publish_batch(&publisher, token, sent, batch).await;
                    self.held_mut().remove(&token);
                    match fault {
                        None => {
                            faults = 0;
                            self.set_events_paused(false);
                        }
                        Some(fault) => {
                            faults += 1;
                            let reason = match fault {
                                ChannelFault::NoStream(reason) => {
                                    stream_ready = false;
                                    reason
                                }
                                ChannelFault::Other(reason) => reason,
                            };
                            tracing::warn!(error.message = %reason, stream = publisher.stream_name(), "cannot publish events; pausing the event channel (emails are not affected)");
                            self.pause_events(faults, &mut stop).await;
                        }
                    }
                }
                Err(e) => {
                    self.held_mut().remove(&token);
                    tracing::warn!(error.message = %e, "cannot claim events; retrying shortly");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// Publishes `batch` (claimed under `token` by a claim sent at `sent`) and settles every
    /// event; returns the channel's fault when there was one.
    async fn publish_batch(
        &self,
        publisher: &Publisher,
        token: Uuid,
        sent: Instant,
        batch: Vec<Claimed>,
    ) -> Option<ChannelFault> {
        let started = SystemTime::now();
        let deadline = (sent + self.budget.lease())
            .checked_sub(RECORD_MARGIN)
            .unwrap_or(sent);
        let mut outcomes: Vec<Outcome> = batch.iter().map(|_| Outcome::NotSent).collect();
        let mut fault = None;
        let publish_all = async {
            let mut acks = FuturesUnordered::new();
            for (i, event) in batch.iter().enumerate() {
                let envelope = match envelope(event, publisher.source()) {
                    Ok(envelope) => envelope,
                    Err(reason) => {
                        outcomes[i] = Outcome::Dead(reason);
                        continue;
                    }
                };
                match publisher.publish(envelope).await {
                    Ok(ack) => acks.push(async move { (i, ack.await) }),
                    Err(e) => match judge(&e) {
                        Ok(outcome) => outcomes[i] = outcome,
                        Err(channel) => {
                            fault = Some(channel);
                            break;
                        }
                    },
                }
            }
            while let Some((i, acked)) = acks.next().await {
                match acked.map_err(|e| judge(&e)) {
                    Ok(PublishAck { duplicate, .. }) => {
                        outcomes[i] = Outcome::Published { duplicate };
                    }
                    Err(Ok(outcome)) => outcomes[i] = outcome,
                    Err(Err(channel)) => fault = Some(channel),
                }
            }
        };
        if tokio::time::timeout_at(deadline.into(), publish_all)
            .await
            .is_err()
        {
            fault = Some(ChannelFault::Other(
                "JetStream did not acknowledge every event before the lease ran out".to_owned(),
            ));
        }
        publish_span(started, &batch, &outcomes);
        self.settle_events(publisher, token, &batch, outcomes).await;
        fault
    }

    /// Records what became of each event of a batch: the published ones deleted in one
    /// statement, failures retried or dead-lettered, the rest released.
    async fn settle_events(
        &self,
        publisher: &Publisher,
        token: Uuid,
        batch: &[Claimed],
        outcomes: Vec<Outcome>,
    ) {
        let settled = async {
            let mut conn = self.pool.get().await?;
            let mut published = Vec::new();
            let mut not_sent = Vec::new();
            for (event, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Outcome::Published { duplicate } => {
                        published.push(event.id);
                        let result = if duplicate { "duplicate" } else { "published" };
                        count(event, result);
                        tracing::debug!(message.id = %event.id, kind = %event.kind, duplicate, "event published");
                    }
                    Outcome::Failed(error) => {
                        let failures = event.attempts + 1;
                        if publisher.retry().exhausted(failures) {
                            let reason =
                                format!("gave up after {failures} attempts; last error: {error}");
                            tracing::warn!(message.id = %event.id, kind = %event.kind, %reason, "event dead-lettered");
                            count(event, "dead_lettered");
                            store::dead_letter(&mut conn, event.id, token, 1, &reason).await?;
                        } else {
                            let delay = publisher.retry().delay(failures, rand::random::<f64>());
                            tracing::info!(message.id = %event.id, kind = %event.kind, attempts = failures, retry_in = ?delay, error.message = %error, "event publish failed; will retry");
                            count(event, "retry");
                            store::retry_later(&mut conn, event.id, token, delay, &error).await?;
                        }
                    }
                    Outcome::Dead(reason) => {
                        tracing::warn!(message.id = %event.id, kind = %event.kind, %reason, "event dead-lettered");
                        count(event, "dead_lettered");
                        store::dead_letter(&mut conn, event.id, token, 0, &reason).await?;
                    }
                    Outcome::NotSent => not_sent.push(event.id),
                }
            }
            store::complete_many(&mut conn, &published, token).await?;
            // What was not sent is available again at once.
            store::release(&mut conn, &not_sent, &[token]).await?;
            anyhow::Ok(())
        };
        if let Err(e) = settled.await {
            tracing::warn!(error.message = %e, "cannot record what became of published events; they return when their lease lapses (JetStream drops the duplicates)");
        }
    }

    /// Pauses the event channel after its `faults`-th consecutive fault: 250 ms, doubling, at
    /// most [`MAX_PAUSE`]; cut short by shutdown.
    async fn pause_events(&self, faults: u32, stop: &mut watch::Receiver<bool>) {
        self.set_events_paused(true);
        let pause = Duration::from_millis(250)
            .saturating_mul(1 << faults.saturating_sub(1).min(5))
            .min(MAX_PAUSE);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }

    fn set_events_paused(&self, paused: bool) {
        self.events_paused.store(paused, Ordering::Relaxed);
    }

    /// Whether the event channel is paused (NATS unreachable or failing).
    pub fn events_paused(&self) -> bool {
        self.events_paused.load(Ordering::Relaxed)
    }
}

/// Whether a publish error is the event's own (`Ok`, with its outcome) or the channel's.
fn judge(error: &PublishError) -> Result<Outcome, ChannelFault> {
    match error.kind() {
        PublishErrorKind::StreamNotFound => Err(ChannelFault::NoStream(format!(
            "{error} (no stream takes the subject: check RELAY_EVENTS_SUBJECTS)"
        ))),
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => Err(ChannelFault::Other(error.to_string())),
        PublishErrorKind::MaxPayloadExceeded => Ok(Outcome::Dead(error.to_string())),
        _ => Ok(Outcome::Failed(error.to_string())),
    }
}

/// Counts one settled event with `result`.
fn count(event: &Claimed, result: &'static str) {
    metrics::counter!(crate::metrics::EVENTS, "type" => event.kind.clone(), "result" => result)
        .increment(1);
}

/// Records the publication of a batch as one producer span (OpenTelemetry messaging
/// conventions), linked to the trace of each event in it.
fn publish_span(started: SystemTime, batch: &[Claimed], outcomes: &[Outcome]) {
    let published = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Published { .. }))
        .count();
    telemetry::record_finished(
        "publish events",
        SpanKind::Producer,
        started,
        vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.operation.type", "publish"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.batch.message_count", batch.len() as i64),
            KeyValue::new("outbox.published", published as i64),
        ],
        batch.iter().map(Claimed::trace_parent),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(kind: PublishErrorKind) -> &'static str {
        match judge(&PublishError::new(kind)) {
            Ok(Outcome::Failed(_)) => "retry",
            Ok(Outcome::Dead(_)) => "dead",
            Ok(_) => "other outcome",
            Err(ChannelFault::NoStream(_)) => "channel: no stream",
            Err(ChannelFault::Other(_)) => "channel",
        }
    }

    #[test]
    fn failures_of_the_channel_count_for_no_event_and_an_oversized_one_is_dead_at_once() {
        // No answer, a lost connection, a full acknowledgement window: the channel's fault.
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxAckPending,
        ] {
            assert_eq!(judged(kind), "channel");
        }
        assert_eq!(
            judged(PublishErrorKind::StreamNotFound),
            "channel: no stream"
        );
        // JetStream refused this message: retried, then dead-lettered at the attempt limit.
        assert_eq!(judged(PublishErrorKind::Other), "retry");
        // Never fits: no retry would help.
        assert_eq!(judged(PublishErrorKind::MaxPayloadExceeded), "dead");
    }
}
