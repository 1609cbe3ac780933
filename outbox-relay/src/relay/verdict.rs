//! What became of one message, and how that is recorded: in the outbox (under the lease, so a
//! relay that lost its lease changes nothing) and in the log.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::Relay;
use crate::{
    mailer::{SendError, Sent},
    store::{self, Claimed},
};

/// How long sending holds after the SMTP server could not be reached: one round of connection
/// attempts a second during an outage, none of them counted against a message.
pub(super) const UNREACHABLE_HOLD: Duration = Duration::from_secs(1);

/// What became of one message.
pub(super) enum Verdict {
    /// Accepted; `at` is the database's time then.
    Delivered { sent: Sent, at: OffsetDateTime },
    /// Retry later (counts an attempt) or, past the attempt limit, dead-letter.
    Failed(String),
    /// Dead-letter now; `tried` says whether a delivery was attempted.
    Dead { reason: String, tried: bool },
    /// The SMTP server refused us, not the message: pause, put the message back, count nothing.
    Paused(String),
    /// The SMTP server cannot be reached: hold sending a moment, put the message back, count
    /// nothing.
    Unreachable(String),
    /// Not attempted (shutting down or paused): make it available again after the delay.
    PutBack(Duration),
}

impl Verdict {
    /// Puts the outcome on the message's send span: `outbox.outcome`, and an error status when
    /// the message was not delivered this time because of a failure.
    pub(super) fn describe(&self, span: &tracing::Span) {
        let outcome = match self {
            Self::Delivered { .. } => "delivered",
            Self::Failed(_) => "failed",
            Self::Dead { .. } => "dead_lettered",
            Self::Paused(_) => "refused",
            Self::Unreachable(_) => "unreachable",
            Self::PutBack(_) => "put_back",
        };
        span.record("outbox.outcome", outcome);
        if matches!(
            self,
            Self::Failed(_) | Self::Dead { .. } | Self::Paused(_) | Self::Unreachable(_)
        ) {
            span.record("otel.status_code", "error");
        }
    }
}

impl From<SendError> for Verdict {
    fn from(error: SendError) -> Self {
        match error {
            SendError::Transient(e) => Self::Failed(e),
            SendError::Permanent(e) => Self::Dead {
                reason: e,
                tried: true,
            },
            SendError::ChannelRefused(e) => Self::Paused(e),
            SendError::Unreachable(e) => Self::Unreachable(e),
        }
    }
}

impl Relay {
    /// Records the verdict on `message`. A lost lease or a failed update is logged, not fatal:
    /// the message comes back when its lease lapses.
    pub(super) async fn record(&self, token: Uuid, message: &Claimed, verdict: Verdict) {
        match self.settle(token, message, verdict).await {
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
            Verdict::Delivered { sent, at } => {
                let waited = at - message.created_at;
                let kind = message.kind.clone();
                metrics::counter!(crate::metrics::SENDS, "kind" => kind.clone(), "result" => "delivered")
                    .increment(1);
                let claim_to_send = (at - message.claimed_at).as_seconds_f64().max(0.0);
                metrics::histogram!(crate::metrics::CLAIM_TO_SEND, "kind" => kind)
                    .record(claim_to_send);
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
                    count_send(message, "dead_lettered");
                    store::dead_letter(conn, id, token, 1, &reason).await?
                } else {
                    let delay = self.config.retry.delay(failures, rand::random::<f64>());
                    tracing::info!(message.id = %id, attempts = failures, retry_in = ?delay, error.message = %error, "email delivery failed; will retry");
                    count_send(message, "retry");
                    store::retry_later(conn, id, token, delay, &error).await?
                }
            }
            Verdict::Dead { reason, tried } => {
                tracing::warn!(message.id = %id, kind = %message.kind, %reason, "email dead-lettered");
                count_send(message, "dead_lettered");
                store::dead_letter(conn, id, token, i32::from(tried), &reason).await?
            }
            Verdict::Paused(error) => {
                let pause = self.config.refused_pause;
                tracing::error!(error.message = %error, pause = ?pause, "the SMTP server refused us, not the message; pausing delivery (check SMTP_URL, EMAIL_FROM and the provider account)");
                self.pause_for(pause);
                count_send(message, "paused");
                // The pause is this relay's, not the message's: a relay with the right
                // configuration (another replica, or this one restarted) may send it now.
                store::put_back(conn, id, token, Duration::ZERO).await?
            }
            Verdict::Unreachable(error) => {
                tracing::warn!(error.message = %error, hold = ?UNREACHABLE_HOLD, "the SMTP server cannot be reached; holding delivery, no attempt counted");
                self.hold_sending_for(UNREACHABLE_HOLD);
                count_send(message, "unreachable");
                store::put_back(conn, id, token, Duration::ZERO).await?
            }
            Verdict::PutBack(delay) => store::put_back(conn, id, token, delay).await?,
        };
        Ok(recorded)
    }
}

/// Counts one settled delivery of `message` with `result`.
fn count_send(message: &Claimed, result: &'static str) {
    metrics::counter!(crate::metrics::SENDS, "kind" => message.kind.clone(), "result" => result)
        .increment(1);
}
