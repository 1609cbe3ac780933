//! Where emails go: an SMTP server over pooled connections ([`smtp`]), or, for development, a
//! folder of `.eml` files. Failures are sorted by what the relay should do about them.

mod smtp;

use std::{path::PathBuf, time::Duration};

use deadpool::managed::{Object, PoolError};
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

/// A configured way to send.
pub enum Mailer {
    /// An SMTP server; connections are pooled and reused.
    Smtp { pool: smtp::Pool, timeout: Duration },
    /// One `.eml` file per email in `dir`.
    Files {
        transport: AsyncFileTransport<Tokio1Executor>,
        dir: PathBuf,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The transport holds the SMTP credentials: print nothing of it.
            Self::Smtp { .. } => f.write_str("Mailer::Smtp"),
            Self::Files { dir, .. } => f.debug_struct("Mailer::Files").field("dir", dir).finish(),
        }
    }
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
    /// Worth retrying later: connection and TLS failures, timeouts, 4xx replies.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed: 5xx replies. The message is dead-lettered.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The server rejected our credentials (535 and kin): the fault is ours, not the message's,
    /// so sending pauses and no attempt is counted.
    #[error("authentication failed: {0}")]
    Authentication(String),
}

impl Mailer {
    /// An SMTP mailer for `url` in lettre's form (`smtps://user:pass@host`,
    /// `smtp://host:port?tls=required`, or `smtp://host:port` for plain text), with up to
    /// `connections` pooled connections.
    pub fn smtp(url: &SecretString, connections: usize, timeout: Duration) -> anyhow::Result<Self> {
        let target = smtp::Target::parse(url.expose_secret(), timeout)
            .map_err(|e| anyhow::anyhow!("SMTP_URL: {e}"))?;
        Ok(Self::Smtp {
            pool: smtp::pool(target, connections)?,
            timeout,
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
                    PoolError::Backend(e) => classify_connect(e),
                    other => SendError::Transient(format!("no SMTP connection: {other}")),
                })?;
                let bytes = message.formatted();
                match tokio::time::timeout(*timeout, conn.send(message.envelope(), &bytes)).await {
                    Ok(Ok(_)) => Ok(Sent::Smtp),
                    // After a refusal or a timeout the session's state is unknown: close it
                    // rather than return it to the pool.
                    Ok(Err(e)) => {
                        drop(Object::take(conn));
                        Err(classify(e))
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

/// SMTP reply codes that mean our credentials were refused.
const AUTHENTICATION_CODES: [u16; 3] = [530, 534, 535];

fn classify_connect(error: smtp::ConnectError) -> SendError {
    match error {
        smtp::ConnectError::Smtp(e) => classify(e),
        other => SendError::Transient(other.to_string()),
    }
}

fn classify(error: lettre::transport::smtp::Error) -> SendError {
    let code = error.status().map(u16::from);
    let text = error.to_string();
    match code {
        Some(code) if AUTHENTICATION_CODES.contains(&code) => SendError::Authentication(text),
        Some(code) if (500..600).contains(&code) => SendError::Permanent(text),
        Some(_) => SendError::Transient(text),
        // No reply code: the connection, TLS or a timeout failed; try again later. A client
        // error (we built something the protocol cannot carry) will not get better.
        None if error.is_client() => SendError::Permanent(text),
        None => SendError::Transient(text),
    }
}
