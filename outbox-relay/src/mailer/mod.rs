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
    /// Worth retrying later: a session lost midway, timeouts, 4xx replies.
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
    /// The SMTP server cannot be reached (the connection was refused, failed or timed out
    /// before the greeting): an outage of the server or the network, which fails every message
    /// alike. Sending pauses briefly and no attempt is counted.
    #[error("{0}")]
    Unreachable(String),
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
                let conn = pool.get().await.map_err(|e| match e {
                    PoolError::Backend(e) => e,
                    other => SendError::Transient(format!("no SMTP session: {other}")),
                })?;
                let mut in_flight = InFlight(Some(conn));
                let bytes = message.formatted();
                let sent = in_flight.send(message.envelope(), &bytes);
                match tokio::time::timeout(*timeout, sent).await {
                    Ok(Ok(())) => {
                        in_flight.finished();
                        Ok(Sent::Smtp)
                    }
                    // After a refusal or a timeout the session's state is unknown: `in_flight`
                    // closes it rather than return it to the pool.
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(SendError::Transient(
                        "the SMTP server did not answer in time".into(),
                    )),
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

/// A pooled SMTP session in the middle of a dialogue. It goes back to the pool only through
/// [`InFlight::finished`]; dropped any other way (a refusal, a timeout, or a caller that gave up
/// and dropped the send), it is closed, since the server may be anywhere in the dialogue.
struct InFlight(Option<Object<pool::Manager>>);

impl InFlight {
    async fn send(
        &mut self,
        envelope: &lettre::address::Envelope,
        email: &[u8],
    ) -> Result<(), SendError> {
        match self.0.as_mut() {
            Some(conn) => dialogue::send(conn, envelope, email).await,
            None => Err(SendError::Transient("the SMTP session is gone".into())),
        }
    }

    /// The dialogue ended cleanly: the session may serve the next email.
    fn finished(mut self) {
        drop(self.0.take());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use identity_tests::smtp::SmtpServer;

    use super::*;

    fn email(to: &str) -> Message {
        Message::builder()
            .from(
                "Identity <no-reply@identity.example.com>"
                    .parse()
                    .expect("an address"),
            )
            .to(to.parse().expect("an address"))
            .subject("hello")
            .body(String::from("hello"))
            .expect("a message")
    }

    #[tokio::test]
    async fn a_send_dropped_mid_dialogue_does_not_leave_its_session_in_the_pool() {
        let smtp = SmtpServer::start();
        // The server holds back its answer to the first message's data...
        smtp.delay_each_message(Duration::from_secs(3));
        let url = SecretString::from(smtp.url());
        let mailer = Mailer::smtp(SmtpSettings {
            url: &url,
            ca_file: None,
            connections: 1,
            timeout: Duration::from_secs(10),
            idle_limit: Duration::from_secs(60),
        })
        .expect("a mailer");

        // ...and the caller gives up while waiting for it, dropping the send.
        let first = mailer.send(email("first@example.com"));
        let gave_up = tokio::time::timeout(Duration::from_millis(500), first).await;
        assert!(gave_up.is_err(), "the first send was cut off");
        smtp.wait_for_message_to("first@example.com", Duration::from_secs(10))
            .await;

        // The next send must not run on that session, whose server is mid-reply.
        smtp.delay_each_message(Duration::ZERO);
        let second = mailer.send(email("second@example.com")).await;

        assert!(matches!(second, Ok(Sent::Smtp)), "{second:?}");
        assert_eq!(smtp.connections(), 2, "the abandoned session was closed");
        assert_eq!(smtp.messages_to("second@example.com").len(), 1);
    }
}
