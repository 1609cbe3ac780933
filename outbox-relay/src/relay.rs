//! The relay loop: claim a batch, deliver each message with bounded concurrency, then complete,
//! retry, dead-letter or put back each one; drain until nothing is available, then wait for a
//! notification (or the polling interval). On shutdown: stop claiming, let in-flight sends
//! finish within the grace period, release every lease still held.

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lettre::message::Mailbox;
use secrecy::SecretString;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::{
    backoff::RetryPolicy,
    email::{BuildError, RenderedEmail, Renderer, build_message},
    listener,
    mailer::{Mailer, SendError, Sent},
    payload::Payload,
    store::{self, Claimed},
};

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Messages claimed at once.
    pub batch_size: i64,
    /// Messages being sent at once.
    pub concurrency: usize,
    /// How long a claim lasts before another relay may take the message.
    pub lease: Duration,
    /// Longest wait between two looks at the outbox when no notification comes.
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
    /// How long sending pauses after the SMTP server refused us (not a message).
    pub refused_pause: Duration,
    /// How long in-flight sends may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

/// What became of one message.
enum Verdict {
    Delivered(Sent),
    /// Retry later (counts an attempt) or, past the attempt limit, dead-letter.
    Failed(String),
    /// Dead-letter now; `tried` says whether a delivery was attempted.
    Dead {
        reason: String,
        tried: bool,
    },
    /// The server refused us, not the message: pause, put the message back, count nothing.
    Paused(String),
    /// Not attempted (shutting down or paused): make it available again after the delay.
    PutBack(Duration),
}

/// The relay and what it depends on.
pub struct Relay {
    pool: store::Pool,
    database_url: SecretString,
    mailer: Mailer,
    renderer: Renderer,
    from: Mailbox,
    config: RelayConfig,
    /// Lease tokens of batches being processed, released at shutdown.
    held: Mutex<HashSet<Uuid>>,
    /// Sending is paused until then (after the server refused us).
    paused_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("mailer", &self.mailer)
            .field("from", &self.from)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Assembles a relay.
    pub fn new(
        pool: store::Pool,
        database_url: SecretString,
        mailer: Mailer,
        renderer: Renderer,
        from: Mailbox,
        config: RelayConfig,
    ) -> Self {
        Self {
            pool,
            database_url,
            mailer,
            renderer,
            from,
            config,
            held: Mutex::default(),
            paused_until: Mutex::default(),
        }
    }

    /// Relays until `shutdown` completes, then stops as the module doc says.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let listener = tokio::spawn(listener::run(
            self.database_url.clone(),
            Arc::clone(&wake),
            stopped.clone(),
        ));
        let mut worker = tokio::spawn(Arc::clone(&self).work(wake, stopped));

        tokio::select! {
            () = shutdown => tracing::info!("shutting down: no more claims; finishing in-flight sends"),
            finished = &mut worker => {
                finished?;
                anyhow::bail!("the relay loop ended on its own");
            }
        }
        let _ = stop.send(true);
        if tokio::time::timeout(self.config.shutdown_grace, &mut worker)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.config.shutdown_grace, "in-flight sends outlived the grace period; abandoning them");
            worker.abort();
        }
        listener.abort();
        self.release_held().await;
        tracing::info!("outbox-relay stopped");
        Ok(())
    }

    async fn work(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Some(left) = self.pause_left() {
                tokio::select! {
                    () = tokio::time::sleep(left) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let token = Uuid::new_v4();
            match self.claim(token).await {
                Ok(batch) if batch.is_empty() => {
                    self.held_mut().remove(&token);
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = stop.changed() => {}
                    }
                }
                Ok(batch) => {
                    tracing::debug!(messages = batch.len(), "claimed a batch");
                    futures_util::stream::iter(batch)
                        .for_each_concurrent(self.config.concurrency, |message| {
                            self.handle(token, message, &stop)
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

    async fn claim(&self, token: Uuid) -> anyhow::Result<Vec<Claimed>> {
        let mut conn = self.pool.get().await?;
        // Recorded before the claim, so a shutdown racing it still releases what it took.
        self.held_mut().insert(token);
        Ok(store::claim(&mut conn, token, self.config.lease, self.config.batch_size).await?)
    }

    /// Delivers one message and records the verdict. A lost lease or a failed update is logged,
    /// not fatal: the message comes back when its lease lapses.
    async fn handle(&self, token: Uuid, message: Claimed, stop: &watch::Receiver<bool>) {
        let verdict = if *stop.borrow() || self.pause_left().is_some() {
            // Not started yet: leave it for later or for another relay.
            Verdict::PutBack(Duration::ZERO)
        } else {
            self.deliver(&message).await
        };
        match self.settle(token, &message, verdict).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(message.id = %message.id, "lease lost before the outcome was recorded; another relay owns the message now")
            }
            Err(e) => {
                tracing::warn!(message.id = %message.id, error.message = %e, "cannot record the outcome; the message returns when its lease lapses")
            }
        }
    }

    /// Logs the verdict and applies it to the outbox; false when the lease was lost.
    async fn settle(
        &self,
        token: Uuid,
        message: &Claimed,
        verdict: Verdict,
    ) -> anyhow::Result<bool> {
        let mut conn = self.pool.get().await?;
        let conn = &mut *conn;
        let id = message.id;
        let recorded = match verdict {
            Verdict::Delivered(sent) => {
                let waited = OffsetDateTime::now_utc() - message.created_at;
                match &sent {
                    Sent::Smtp => {
                        tracing::info!(message.id = %id, kind = %message.kind, failed_attempts = message.attempts, waited_ms = waited.whole_milliseconds(), "email accepted by the SMTP server")
                    }
                    Sent::File(path) => {
                        tracing::info!(message.id = %id, kind = %message.kind, path = %path.display(), "email written to a file (development mode)")
                    }
                }
                store::complete(conn, id, token).await?
            }
            Verdict::Failed(error) => {
                let failures = message.attempts + 1;
                if self.config.retry.exhausted(failures) {
                    let reason = format!("gave up after {failures} attempts; last error: {error}");
                    tracing::warn!(message.id = %id, %reason, "email dead-lettered");
                    store::dead_letter(conn, id, token, 1, &reason).await?
                } else {
                    let delay = self.config.retry.delay(failures, rand::random::<f64>());
                    tracing::info!(message.id = %id, attempts = failures, retry_in = ?delay, error.message = %error, "email delivery failed; will retry");
                    store::retry_later(conn, id, token, delay, &error).await?
                }
            }
            Verdict::Dead { reason, tried } => {
                tracing::warn!(message.id = %id, kind = %message.kind, %reason, "email dead-lettered");
                store::dead_letter(conn, id, token, i32::from(tried), &reason).await?
            }
            Verdict::Paused(error) => {
                let pause = self.config.refused_pause;
                tracing::error!(error.message = %error, pause = ?pause, "the SMTP server refused us, not the message; pausing delivery (check SMTP_URL, EMAIL_FROM and the provider account)");
                *self
                    .paused_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + pause);
                // The pause is this relay's, not the message's: a relay with the right
                // configuration (another replica, or this one restarted) may send it now.
                store::put_back(conn, id, token, Duration::ZERO).await?
            }
            Verdict::PutBack(delay) => store::put_back(conn, id, token, delay).await?,
        };
        Ok(recorded)
    }

    /// Renders, builds and sends one message.
    async fn deliver(&self, message: &Claimed) -> Verdict {
        let (payload, rendered, email) = match self.prepare(message, OffsetDateTime::now_utc()) {
            Ok(prepared) => prepared,
            Err(reason) => {
                return Verdict::Dead {
                    reason,
                    tried: false,
                };
            }
        };
        match self.mailer.send(email).await {
            Ok(sent) => {
                if let Sent::File(path) = &sent {
                    log_written_file(path, &payload, &rendered);
                }
                Verdict::Delivered(sent)
            }
            Err(SendError::Transient(e)) => Verdict::Failed(e),
            Err(SendError::Permanent(e)) => Verdict::Dead {
                reason: e,
                tried: true,
            },
            Err(SendError::ChannelRefused(e)) => Verdict::Paused(e),
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

    fn pause_left(&self) -> Option<Duration> {
        let until = (*self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner))?;
        until.checked_duration_since(Instant::now())
    }

    fn held_mut(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn release_held(&self) {
        let tokens: Vec<Uuid> = self.held_mut().drain().collect();
        if tokens.is_empty() {
            return;
        }
        match self.pool.get().await {
            Ok(mut conn) => match store::release(&mut conn, &tokens).await {
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

/// Development only (RELAY_DEV_MAIL_DIR): shows where the email is and the link (and code) in it, so
/// that a developer can follow it. With SMTP, tokens and codes are never logged.
fn log_written_file(path: &Path, payload: &Payload, rendered: &RenderedEmail) {
    let link = rendered.link().unwrap_or_default();
    match payload {
        Payload::Verification(p) => {
            tracing::info!(path = %path.display(), %link, code = %p.code, "verification email for {}", p.recipient);
        }
        Payload::PasswordReset(p) => {
            tracing::info!(path = %path.display(), %link, "password reset email for {}", p.recipient);
        }
        Payload::PasswordChanged(p) => {
            tracing::info!(path = %path.display(), "password changed notice for {}", p.recipient);
        }
    }
}
