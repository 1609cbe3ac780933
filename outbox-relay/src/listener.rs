//! Wakes the relay when writers `NOTIFY` the outbox channel. The listening connection is its
//! own; when it drops, it is opened again with backoff, and the relay is woken at once after
//! each (re)connection, since notifications sent meanwhile were lost.

use std::{sync::Arc, time::Duration};

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use identity_proto::{outbox::NOTIFY_CHANNEL, pg::Connector};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Notify, watch};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Listens until `stop` turns true, calling `notify_one()` on each of `wakes` (one per channel
/// of the relay) for every notification.
pub async fn run(
    database_url: SecretString,
    wakes: Vec<Arc<Notify>>,
    mut stop: watch::Receiver<bool>,
) {
    let wake = || wakes.iter().for_each(|w| w.notify_one());
    let mut retry = FIRST_RETRY;
    while !*stop.borrow() {
        match connect(&database_url).await {
            Ok(mut conn) => {
                tracing::debug!(
                    channel = NOTIFY_CHANNEL,
                    "listening for outbox notifications"
                );
                retry = FIRST_RETRY;
                wake();
                let mut notifications = std::pin::pin!(conn.notifications_stream());
                loop {
                    tokio::select! {
                        next = notifications.next() => match next {
                            Some(Ok(_)) => wake(),
                            Some(Err(e)) => {
                                tracing::warn!(error.message = %e, "outbox listener failed; reconnecting");
                                break;
                            }
                            None => {
                                tracing::warn!("outbox listener connection closed; reconnecting");
                                break;
                            }
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error.message = %e, retry_in = ?retry, "cannot open the outbox listener")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = stop.changed() => return,
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Opens the listening connection: TLS as the URL says, like the pool, but without the pool's
/// statement and lock timeouts, since this connection idles by design. The URL is parsed (and
/// the CA file read) at each (re)connection, so a renewed CA file is picked up.
async fn connect(database_url: &SecretString) -> anyhow::Result<AsyncPgConnection> {
    let mut conn = Connector::new(database_url.expose_secret())?
        .connect()
        .await?;
    diesel::sql_query(format!("LISTEN {NOTIFY_CHANNEL}"))
        .execute(&mut conn)
        .await?;
    Ok(conn)
}
