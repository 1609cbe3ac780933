//! The relay loop: claim a batch, deliver each message with bounded concurrency, then complete,
//! retry, dead-letter or put back each one; drain until nothing is available, then wait for a
//! notification (or the polling interval). On shutdown: stop claiming, let in-flight sends
//! finish within the grace period, release every lease still held.
//!
//! - [`lease`]: how long a delivery may take, the lease that covers it, the database's clock.
//! - [`delivery`]: one message: make sure the lease covers the send, render, send.
//! - [`verdict`]: what became of a message, recorded in the outbox and the log.
//! - [`dev_log`]: the log line for an email written to a file (development).
//! - [`events`]: the event channel, publishing domain events to JetStream in order per user; it
//!   runs beside the email loop, so neither channel's outage delays the other.

mod delivery;
mod dev_log;
mod events;
mod lease;
mod verdict;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures_util::StreamExt;
use identity_proto::telemetry;
use lettre::message::Mailbox;
use opentelemetry::{
    KeyValue,
    trace::{SpanContext, SpanKind},
};
use secrecy::SecretString;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

pub use lease::LeaseTooShort;

use crate::{
    backoff::RetryPolicy,
    email::Renderer,
    events::Publisher,
    listener,
    mailer::Mailer,
    store::{self, Claimed},
};

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Messages claimed at once.
    pub batch_size: i64,
    /// Messages being sent at once (no more than the SMTP pool's connections).
    pub concurrency: usize,
    /// How long a claim lasts before another relay may take the message.
    pub lease: Duration,
    /// The mailer's limit on connecting, and on sending one email.
    pub smtp_timeout: Duration,
    /// Longest wait between two looks at the outbox when no notification comes.
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
    /// How long sending pauses after the SMTP server refused us (not a message).
    pub refused_pause: Duration,
    /// How long in-flight sends may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

/// The relay and what it depends on.
pub struct Relay {
    pool: store::Pool,
    /// Where to LISTEN for notifications; `None`: nowhere (the relay polls).
    listen_url: Option<SecretString>,
    mailer: Mailer,
    renderer: Renderer,
    from: Mailbox,
    /// Publishes domain events, when NATS_URL is set.
    events: Option<Arc<Publisher>>,
    config: RelayConfig,
    budget: lease::Budget,
    /// Batches being processed, by lease token, with the ids of their messages (empty while the
    /// claim is in flight): released at shutdown, by primary key.
    held: Mutex<HashMap<Uuid, Vec<Uuid>>>,
    /// Sending is paused until then (after the SMTP server refused us).
    paused_until: Until,
    /// Sending holds until then (after the SMTP server could not be reached); unlike a pause,
    /// readiness does not report it.
    unreachable_until: Until,
    /// Set once shutdown began.
    stopping: AtomicBool,
    /// Set while the event channel pauses (NATS unreachable or failing).
    events_paused: AtomicBool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("mailer", &self.mailer)
            .field("from", &self.from)
            .field("events", &self.events)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Assembles a relay; refuses a lease that cannot cover one delivery. Without a
    /// `publisher` the relay publishes no events, and leaves event rows in the outbox. Without a
    /// `listen_url` it is never woken by notifications, and looks every poll interval.
    pub fn new(
        pool: store::Pool,
        listen_url: Option<SecretString>,
        mailer: Mailer,
        renderer: Renderer,
        from: Mailbox,
        publisher: Option<Publisher>,
        config: RelayConfig,
    ) -> Result<Self, LeaseTooShort> {
        let budget = lease::Budget::new(config.lease, config.smtp_timeout)?;
        Ok(Self {
            pool,
            listen_url,
            mailer,
            renderer,
            from,
            events: publisher.map(Arc::new),
            config,
            budget,
            held: Mutex::default(),
            paused_until: Until::default(),
            unreachable_until: Until::default(),
            stopping: AtomicBool::new(false),
            events_paused: AtomicBool::new(false),
        })
    }

    /// Relays until `shutdown` completes, then stops as the module doc says.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let wake = Arc::new(Notify::new());
        let wake_events = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let listener = self.listen_url.clone().map(|url| {
            tokio::spawn(listener::run(
                url,
                vec![Arc::clone(&wake), Arc::clone(&wake_events)],
                stopped.clone(),
            ))
        });
        let mut workers = tokio::task::JoinSet::new();
        workers.spawn(Arc::clone(&self).work(wake, stopped.clone()));
        if let Some(publisher) = &self.events {
            workers.spawn(Arc::clone(&self).publish_events(
                Arc::clone(publisher),
                wake_events,
                stopped,
            ));
        }

        tokio::select! {
            () = shutdown => tracing::info!("shutting down: no more claims; finishing in-flight sends"),
            finished = workers.join_next() => {
                if let Some(finished) = finished {
                    finished?;
                }
                anyhow::bail!("a relay loop ended on its own");
            }
        }
        self.stopping.store(true, Ordering::Relaxed);
        let _ = stop.send(true);
        let finish = async { while workers.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_grace, finish)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.config.shutdown_grace, "in-flight sends outlived the grace period; abandoning them");
            workers.abort_all();
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        self.release_held().await;
        tracing::info!("outbox-relay stopped");
        Ok(())
    }

    /// Whether sending is paused (the SMTP server refused us, not a message).
    pub fn is_paused(&self) -> bool {
        self.pause_left().is_some()
    }

    /// Samples the backlog gauges from the database and this relay's pause state every
    /// `every`, forever; a failed read leaves the gauges as they were (readiness reports it).
    pub async fn sample_metrics(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            metrics::gauge!(crate::metrics::PAUSED).set(if self.is_paused() { 1.0 } else { 0.0 });
            metrics::gauge!(crate::metrics::EVENTS_PAUSED).set(if self.events_paused() {
                1.0
            } else {
                0.0
            });
            let Ok(mut conn) = self.pool.get().await else {
                continue;
            };
            if let Ok((emails, events)) = store::backlogs(&mut conn).await {
                metrics::gauge!(crate::metrics::PENDING).set(emails.pending as f64);
                metrics::gauge!(crate::metrics::OLDEST_AGE).set(emails.oldest_age_secs);
                metrics::gauge!(crate::metrics::EVENTS_PENDING).set(events.pending as f64);
                metrics::gauge!(crate::metrics::EVENTS_OLDEST_AGE).set(events.oldest_age_secs);
            }
        }
    }

    /// Whether the relay publishes domain events (NATS_URL is set).
    pub fn publishes_events(&self) -> bool {
        self.events.is_some()
    }

    /// Whether shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Whether the database answers a trivial query within `timeout`.
    pub async fn database_answers(&self, timeout: Duration) -> bool {
        let ping = async {
            let mut conn = self.pool.get().await.ok()?;
            store::ping(&mut conn).await.ok()
        };
        matches!(tokio::time::timeout(timeout, ping).await, Ok(Some(())))
    }

    async fn work(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Some(left) = self.wait_left() {
                tokio::select! {
                    () = tokio::time::sleep(left) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let token = Uuid::new_v4();
            let polled = SystemTime::now();
            match self.claim(token).await {
                Ok((batch, _)) if batch.is_empty() => {
                    self.held_mut().remove(&token);
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = stop.changed() => {}
                    }
                }
                Ok((batch, claimed)) => {
                    tracing::debug!(messages = batch.len(), "claimed a batch");
                    let receive = receive_span(polled, &batch);
                    futures_util::stream::iter(batch)
                        .for_each_concurrent(self.config.concurrency, |message| {
                            self.handle(token, claimed, message, &receive, &stop)
                        })
                        .await;
                    self.held_mut().remove(&token);
                }
                Err(e) => {
                    self.held_mut().remove(&token);
                    tracing::warn!(error.message = %e, "cannot claim outbox messages; retrying shortly");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// Claims a batch under `token`; also returns when the claim was sent, which is when the
    /// lease started at the earliest.
    async fn claim(&self, token: Uuid) -> anyhow::Result<(Vec<Claimed>, Instant)> {
        let mut conn = self.pool.get().await?;
        self.held_mut().insert(token, Vec::new());
        let sent = Instant::now();
        let batch = store::claim(
            &mut conn,
            token,
            self.budget.lease(),
            self.config.batch_size,
        )
        .await?;
        self.hold(token, &batch);
        Ok((batch, sent))
    }

    fn pause_for(&self, pause: Duration) {
        self.paused_until.set(pause);
    }

    fn pause_left(&self) -> Option<Duration> {
        self.paused_until.left()
    }

    fn hold_sending_for(&self, hold: Duration) {
        self.unreachable_until.set(hold);
    }

    /// How long sending still waits: for a pause or for a hold, whichever ends later.
    fn wait_left(&self) -> Option<Duration> {
        self.pause_left().max(self.unreachable_until.left())
    }

    fn held_mut(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Uuid>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the messages of the batch claimed under `token`, for [`Self::release_held`].
    fn hold(&self, token: Uuid, batch: &[Claimed]) {
        self.held_mut()
            .insert(token, batch.iter().map(|message| message.id).collect());
    }

    /// Releases the messages of the batches still being processed, by primary key. A batch
    /// whose claim had not returned yet keeps its lease until it lapses.
    async fn release_held(&self) {
        let held: Vec<(Uuid, Vec<Uuid>)> = self.held_mut().drain().collect();
        let tokens: Vec<Uuid> = held.iter().map(|(token, _)| *token).collect();
        let ids: Vec<Uuid> = held.into_iter().flat_map(|(_, ids)| ids).collect();
        if ids.is_empty() {
            return;
        }
        match self.pool.get().await {
            Ok(mut conn) => match store::release(&mut conn, &ids, &tokens).await {
                Ok(released) => tracing::info!(released, "released unfinished leases"),
                Err(e) => {
                    tracing::warn!(error.message = %e, "cannot release leases; they lapse on their own")
                }
            },
            Err(e) => {
                tracing::warn!(error.message = %e, "cannot release leases; they lapse on their own")
            }
        }
    }
}

/// Records the claim that found `batch` as the batch's receive span (OpenTelemetry messaging
/// conventions), linked to the trace of each message in it, and returns its context, which
/// each message's send span links to. A claim that finds nothing leaves no span: an idle relay
/// polls all day.
fn receive_span(polled: SystemTime, batch: &[Claimed]) -> SpanContext {
    telemetry::record_finished(
        "receive outbox",
        SpanKind::Client,
        polled,
        vec![
            KeyValue::new("messaging.system", "outbox"),
            KeyValue::new("messaging.operation.type", "receive"),
            KeyValue::new("messaging.operation.name", "claim"),
            KeyValue::new("messaging.destination.name", "outbox"),
            KeyValue::new("messaging.batch.message_count", batch.len() as i64),
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.collection.name", "outbox"),
            KeyValue::new("db.operation.name", "UPDATE"),
        ],
        batch.iter().map(|message| message.trace_parent()),
    )
}

/// A moment something lasts until, which any task may set and read.
#[derive(Debug, Default)]
struct Until(Mutex<Option<Instant>>);

impl Until {
    /// Lasts `span` from now.
    fn set(&self, span: Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + span);
    }

    /// What is left of it, if anything.
    fn left(&self) -> Option<Duration> {
        let until = (*self.0.lock().unwrap_or_else(PoisonError::into_inner))?;
        until.checked_duration_since(Instant::now())
    }
}
