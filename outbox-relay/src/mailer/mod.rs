//! Where emails go: an SMTP server over pooled sessions, or, when asked for explicitly in
//! development, a folder of `.eml` files. Failures are sorted by what the relay should do about
//! them ([`SendError`]).
//!
//! - `target`: `SMTP_URL` parsed; credentials only over TLS.
//! - `connect`: opening a session (TCP_NODELAY, TLS with optional private CAs, EHLO, AUTH).
//! - `pool`: pooled sessions, probed before reuse when they were idle.
//! - `dialogue`: MAIL, RCPT, DATA driven stage by stage, and what a failure at each means.

mod connect;
mod dialogue;
mod pool;
mod target;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use deadpool::managed::{Object, PoolError};
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

/// A configured way to send.
pub enum Mailer {
    /// An SMTP server; sessions are pooled and reused.
    Smtp { pool: pool::Pool, timeout: Duration },
    /// Development only: one `.eml` file per email in `dir`.
    Files {
        transport: AsyncFileTransport<Tokio1Executor>,
        dir: PathBuf,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The pool holds the SMTP credentials: print nothing of it.
            Self::Smtp { .. } => f.write_str("Mailer::Smtp"),
            Self::Files { dir, .. } => f.debug_struct("Mailer::Files").field("dir", dir).finish(),
        }
    }
}

/// How to reach the SMTP server, from the relay's settings.
#[derive(Debug)]
pub struct SmtpSettings<'a> {
    /// `SMTP_URL` in lettre's form.
    pub url: &'a SecretString,
    /// PEM CA certificates trusted besides the public web PKI roots.
    pub ca_file: Option<&'a Path>,
    /// Sessions at most, which is also how many emails are sent at once.
    pub connections: usize,
    /// Bounds opening a session, and sending one email.
    pub timeout: Duration,
    /// A pooled session unused for longer is closed rather than reused.
    pub idle_limit: Duration,
}

/// Where an accepted email went.
#[derive(Debug)]
pub enum Sent {
    /// The SMTP server accepted it.
    Smtp,
    /// It was written to this file.
    File(PathBuf),
}

/// Why an email was not accepted, sorted by what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying later: connection failures, timeouts, 4xx replies.
    #[error("transient: {0}")]
    Transient(String),
    /// This message will never be accepted: a 5xx to `RCPT TO` or to its data. It is
    /// dead-lettered.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The server refused *us*, not the message: a 5xx to the greeting, EHLO, STARTTLS, AUTH,
    /// `MAIL FROM` or the `DATA` command, or a TLS certificate it presents that we do not
    /// trust. The fault is in our configuration, sender or reputation, and would fail every
    /// message alike: sending pauses and no attempt is counted. The text names the stage.
    #[error("{0}")]
    ChannelRefused(String),
}

impl Mailer {
    /// An SMTP mailer as `settings` say. Fails at start-up on a bad URL (credentials without
    /// TLS among them) or an unusable CA file; never echoes the URL.
    pub fn smtp(settings: SmtpSettings<'_>) -> anyhow::Result<Self> {
        let target = target::Target::parse(settings.url.expose_secret())
            .map_err(|e| anyhow::anyhow!("SMTP_URL: {e}"))?;
        let connector = connect::Connector::new(target, settings.ca_file, settings.timeout)?;
        Ok(Self::Smtp {
            pool: pool::pool(connector, settings.connections, settings.idle_limit)?,
            timeout: settings.timeout,
        })
    }

    /// A mailer that writes each email to `dir` (created if missing).
    pub fn files(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        Ok(Self::Files {
            transport: AsyncFileTransport::new(&dir),
            dir,
        })
    }

    /// Sends one email.
    pub async fn send(&self, message: Message) -> Result<Sent, SendError> {
        match self {
            Self::Smtp { pool, timeout } => {
                let mut conn = pool.get().await.map_err(|e| match e {
                    PoolError::Backend(e) => e,
                    other => SendError::Transient(format!("no SMTP session: {other}")),
                })?;
                let bytes = message.formatted();
                let sent = dialogue::send(&mut conn, message.envelope(), &bytes);
                match tokio::time::timeout(*timeout, sent).await {
                    Ok(Ok(())) => Ok(Sent::Smtp),
                    // After a refusal or a timeout the session's state is unknown: close it
                    // rather than return it to the pool.
                    Ok(Err(e)) => {
                        drop(Object::take(conn));
                        Err(e)
                    }
                    Err(_) => {
                        drop(Object::take(conn));
                        Err(SendError::Transient(
                            "the SMTP server did not answer in time".into(),
                        ))
                    }
                }
            }
            Self::Files { transport, dir } => {
                let id = transport
                    .send(message)
                    .await
                    .map_err(|e| SendError::Transient(format!("writing the email file: {e}")))?;
                Ok(Sent::File(dir.join(format!("{id}.eml"))))
            }
        }
    }
}
