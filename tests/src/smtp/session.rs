//! One SMTP session: lines go to a `mailin::Session` (the protocol's parser and state machine)
//! and its replies go back, with the test's script applied by [`ScriptedHandler`]; optionally
//! over implicit TLS, and closed with 421 after an idle timeout.

use std::{
    io,
    net::{IpAddr, TcpListener as StdTcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    time::Instant,
};

use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder, response};
use time::OffsetDateTime;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tokio_rustls::TlsAcceptor;

use super::{NAME, Received, Shared, lock, script::Stage};

/// Accepts connections until told to stop, each served by a task of its own.
pub(super) async fn accept(
    listener: StdTcpListener,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener)
        .expect("SMTP server: cannot hand its listener to tokio (is it non-blocking?)");
    loop {
        tokio::select! {
            // A send or a dropped sender: either way, stop.
            _ = &mut stop => return,
            accepted = listener.accept() => {
                // Failures such as running out of file descriptors concern one connection only.
                let Ok((stream, peer)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(stream, peer.ip(), Arc::clone(&shared), tls.clone()));
            }
        }
    }
}

/// Sets up one connection (TCP options, the TLS handshake) and serves it.
async fn connection(
    stream: TcpStream,
    peer: IpAddr,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
) {
    // Replies are single small writes; do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve(stream, peer, shared, false).await,
        Some(acceptor) => {
            // A failed handshake (an untrusting client, say) ends the connection, nothing more.
            if let Ok(stream) = acceptor.accept(stream).await {
                serve(stream, peer, shared, true).await;
            }
        }
    }
}

/// Serves one session until mailin says to close, the client goes away, or it idles too long.
async fn serve<S>(stream: S, peer: IpAddr, shared: Arc<Shared>, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let auth_required = lock(&shared.script).auth.is_some();
    let mut builder = SessionBuilder::new(NAME);
    if auth_required {
        builder
            .enable_auth(AuthMechanism::Plain)
            .enable_auth(AuthMechanism::Login);
        if !tls {
            builder.insecure_enable_plaintext_auth();
        }
    }
    let data_end_refusal = Arc::new(AtomicU16::new(0));
    let message_accepted = Arc::new(AtomicBool::new(false));
    let mut session = builder.build(
        peer,
        ScriptedHandler {
            shared: Arc::clone(&shared),
            user: None,
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
            data_end_refusal: Arc::clone(&data_end_refusal),
            message_accepted: Arc::clone(&message_accepted),
        },
    );
    if tls {
        // Implicit TLS: the session is encrypted from the first byte, so AUTH may be offered.
        session.tls_active();
    }
    let greeting = lock(&shared.script).attempt(Stage::Greeting, &[]);
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    // An I/O error means the client is gone; there is no one left to tell.
    let _ = async {
        let refused = match greeting {
            None => {
                writer.write_all(&session.greeting().buffer()?).await?;
                false
            }
            Some(code) => {
                let text = format!("{code} {NAME} scripted refusal of the session\r\n");
                writer.write_all(text.as_bytes()).await?;
                if code == 421 {
                    return Ok(());
                }
                true
            }
        };
        let mut line = Vec::new();
        loop {
            line.clear();
            let idle = lock(&shared.script).idle_timeout;
            let read = reader.read_until(b'\n', &mut line);
            let n = match idle {
                None => read.await?,
                Some(idle) => match tokio::time::timeout(idle, read).await {
                    Ok(n) => n?,
                    Err(_) => {
                        let text = format!("421 4.4.2 {NAME} idle too long, closing\r\n");
                        writer.write_all(text.as_bytes()).await?;
                        shared.idle_closures.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                },
            };
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            if refused {
                // After a refusing greeting only QUIT is served (RFC 5321, 3.1).
                if line.trim_ascii().eq_ignore_ascii_case(b"QUIT") {
                    writer.write_all(&response::GOODBYE.buffer()?).await?;
                    return Ok(());
                }
                writer
                    .write_all(b"503 Bad sequence of commands\r\n")
                    .await?;
                continue;
            }
            let response = session.process(&line);
            let refusal = data_end_refusal.swap(0, Ordering::Relaxed);
            if refusal != 0 {
                let text = format!("{refusal} scripted refusal at {:?}\r\n", Stage::DataEnd);
                writer.write_all(text.as_bytes()).await?;
                continue;
            }
            match response.action {
                Action::NoReply => {}
                Action::Reply => {
                    if message_accepted.swap(false, Ordering::Relaxed) {
                        // A slow provider: the message is recorded, its 250 comes later.
                        let delay = lock(&shared.script).data_end_delay;
                        tokio::time::sleep(delay).await;
                    }
                    writer.write_all(&response.buffer()?).await?;
                }
                // STARTTLS is never offered, so an upgrade cannot be asked for; close either way.
                Action::Close | Action::UpgradeTls => {
                    writer.write_all(&response.buffer()?).await?;
                    return Ok(());
                }
            }
        }
    }
    .await;
}

/// Decides what mailin's session answers, as the test scripted, and records what it accepts.
struct ScriptedHandler {
    shared: Arc<Shared>,
    user: Option<String>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
    /// Set by a scripted refusal of the end of the data, which the session loop sends instead
    /// of mailin's reply: mailin stays in its DATA state after an error reply there (it would
    /// take the next command for message text), so it is told OK and the client told no.
    data_end_refusal: Arc<AtomicU16>,
    /// Set when a message's data is accepted, so that the session loop can hold back its reply
    /// (`SmtpServer::delay_each_message`).
    message_accepted: Arc<AtomicBool>,
}

impl ScriptedHandler {
    fn authenticate(&mut self, user: &str, password: &str) -> Response {
        let mut script = lock(&self.shared.script);
        let valid = script
            .auth
            .as_ref()
            .is_some_and(|c| c.user == user && c.password == password);
        if valid {
            self.user = Some(user.to_owned());
            response::AUTH_OK
        } else {
            script.auth_failures += 1;
            response::INVALID_CREDENTIALS
        }
    }

    /// Counts an attempt at `stage` and answers as scripted, or with `accept`.
    fn scripted(&self, stage: Stage, recipients: &[&str], accept: Response) -> Response {
        match lock(&self.shared.script).attempt(stage, recipients) {
            // Real servers echo the recipient they refuse; the relay must not repeat it.
            Some(code) if recipients.is_empty() => {
                Response::custom(code, format!("scripted refusal at {stage:?}"))
            }
            Some(code) => Response::custom(
                code,
                format!(
                    "scripted refusal at {stage:?} of <{}>",
                    recipients.join(">, <")
                ),
            ),
            None => accept,
        }
    }
}

impl Handler for ScriptedHandler {
    fn helo(&mut self, _ip: IpAddr, _domain: &str) -> Response {
        self.scripted(Stage::Ehlo, &[], response::OK)
    }

    fn mail(&mut self, _ip: IpAddr, _domain: &str, _from: &str) -> Response {
        self.scripted(Stage::MailFrom, &[], response::OK)
    }

    fn rcpt(&mut self, to: &str) -> Response {
        self.scripted(Stage::RcptTo, &[to], response::OK)
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        self.scripted(Stage::Data, &[], response::OK)
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.shared.keep_data {
            self.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let to: Vec<&str> = self.to.iter().map(String::as_str).collect();
        let refusal = lock(&self.shared.script).attempt(Stage::DataEnd, &to);
        if let Some(code) = refusal {
            self.data_end_refusal.store(code, Ordering::Relaxed);
            return response::OK;
        }
        let mut received = lock(&self.shared.received);
        received.push(Received {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
            authenticated_as: self.user.clone(),
            accepted_at: Instant::now(),
            accepted_at_utc: OffsetDateTime::now_utc(),
        });
        // Recorded before the 250 goes out: a client that saw 250 finds its message recorded.
        self.shared.count.send_replace(received.len());
        self.message_accepted.store(true, Ordering::Relaxed);
        response::OK
    }

    fn auth_plain(&mut self, _authorization_id: &str, user: &str, password: &str) -> Response {
        self.authenticate(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.authenticate(user, password)
    }
}
