//! A pool of open SMTP sessions (deadpool), checked before reuse so that a session the server
//! has closed meanwhile (servers close idle sessions, often with a 421) never costs a message
//! an attempt: as lettre's own pool does, a session idle for more than a moment is probed with
//! NOOP, and one idle for longer than the idle limit is closed instead of reused.

use std::time::Duration;

use deadpool::managed::{self, Metrics, QueueMode, RecycleError, RecycleResult};
use lettre::transport::smtp::client::AsyncSmtpConnection;

use super::{SendError, connect::Connector};

/// Sessions unused for longer than this are probed with NOOP before reuse. Under load a
/// session is reused within milliseconds and skips the probe; a server closes an idle session
/// after seconds at the very least.
const PROBE_AFTER: Duration = Duration::from_secs(1);

/// Opens sessions and checks them before reuse.
#[derive(Debug)]
pub struct Manager {
    connector: Connector,
    /// Sessions unused for longer are closed rather than reused.
    idle_limit: Duration,
}

impl managed::Manager for Manager {
    type Type = AsyncSmtpConnection;
    type Error = SendError;

    async fn create(&self) -> Result<AsyncSmtpConnection, SendError> {
        self.connector.connect().await
    }

    async fn recycle(
        &self,
        conn: &mut AsyncSmtpConnection,
        metrics: &Metrics,
    ) -> RecycleResult<SendError> {
        if conn.has_broken() {
            return Err(RecycleError::message("the session is broken"));
        }
        // Since the session was last handed out (about when its last send began).
        let idle = metrics.last_used();
        if idle > self.idle_limit {
            return Err(RecycleError::message("the session was idle too long"));
        }
        if idle > PROBE_AFTER && !conn.test_connected().await {
            tracing::debug!(
                idle_ms = idle.as_millis(),
                "the SMTP server closed an idle session; opening a new one"
            );
            return Err(RecycleError::message("the server closed the session"));
        }
        Ok(())
    }
}

/// A pool of SMTP sessions.
pub type Pool = managed::Pool<Manager>;

/// A pool of at most `size` sessions opened by `connector`; a session unused for longer than
/// `idle_limit` is replaced rather than reused.
pub fn pool(connector: Connector, size: usize, idle_limit: Duration) -> anyhow::Result<Pool> {
    let timeout = connector.timeout;
    Ok(Pool::builder(Manager {
        connector,
        idle_limit,
    })
    .max_size(size)
    // The most recently used session first: under light load one warm session serves, and
    // the others age out instead of each needing a probe.
    .queue_mode(QueueMode::Lifo)
    .wait_timeout(Some(timeout))
    .create_timeout(Some(timeout))
    // A probe that gets no answer in time drops the session; a new one is opened.
    .recycle_timeout(Some(timeout))
    .runtime(deadpool::Runtime::Tokio1)
    .build()?)
}
