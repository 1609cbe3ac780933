//! A real SMTP server on 127.0.0.1 for tests and benchmarks: it records what it accepts, answers
//! each stage of the dialogue (greeting, EHLO, `MAIL FROM`, `RCPT TO`, `DATA`, the end of the
//! data) as a test scripts it, can require AUTH PLAIN/LOGIN, can speak implicit TLS with a
//! certificate the test hands it, can close idle sessions with 421 as real servers do, and can
//! be stopped (freeing its port) and started again on the same port to stage an outage.
//!
//! The SMTP protocol is the `mailin` crate's (command parser, state machine, replies, AUTH):
//! `session` only moves lines between sockets and a `mailin::Session`, and its `Handler`
//! applies the test's `script` and records what is accepted. That is what `mailin-embedded`
//! does too; it is not used because its `serve()` never returns (so its port cannot be freed
//! for an outage test) and its fixed thread pool stalls sessions beyond its size. The server
//! runs on a runtime and a thread of its own, so it keeps serving while a test blocks.

mod script;
mod session;

use std::{
    net::{Ipv4Addr, TcpListener as StdTcpListener},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use script::{Credentials, Script};
pub use script::{Reply, Stage};

/// The name the server gives itself in its greeting and EHLO reply.
const NAME: &str = "identity-tests.smtp";

/// One message the server accepted (replied 250 to the end of its DATA).
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope sender from `MAIL FROM`, as sent; empty for the null sender `<>`.
    pub from: String,
    /// The envelope recipients whose `RCPT TO` was accepted, as sent, in order.
    pub to: Vec<String>,
    /// The DATA as sent (headers and transfer-encoded body, CRLF line ends), with dot-stuffing
    /// undone and without the closing `.` line. Empty on a server from [`SmtpServer::start_sink`].
    pub data: String,
    /// The user the session authenticated as, if it did.
    pub authenticated_as: Option<String>,
    /// When the server accepted it, on the monotonic clock (for in-process latencies).
    pub accepted_at: Instant,
    /// When the server accepted it, on the wall clock (to compare with database timestamps).
    pub accepted_at_utc: OffsetDateTime,
}

impl Received {
    /// Whether `recipient` (compared without regard to ASCII case) is among the recipients.
    pub fn is_for(&self, recipient: &str) -> bool {
        self.to.iter().any(|to| to.eq_ignore_ascii_case(recipient))
    }
}

/// A certificate chain and its private key, in PEM, for a server speaking implicit TLS. The
/// tests make one with the `rcgen` crate, signed by a CA of their own that they hand the client.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The server's certificate, then any intermediates.
    pub cert_chain_pem: String,
    /// The certificate's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity")
    }
}

/// A running (or stopped) SMTP server. Dropping it stops it.
pub struct SmtpServer {
    port: u16,
    shared: Arc<Shared>,
    /// Implicit TLS (`smtps`) with this acceptor; plain text without.
    tls: Option<TlsAcceptor>,
    running: Option<Running>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl SmtpServer {
    /// Starts a server on a free port of 127.0.0.1 that keeps every message whole.
    pub fn start() -> Self {
        Self::launch(0, true, None)
    }

    /// Starts a server on `port` of 127.0.0.1, for a test that handed the port out (to a relay,
    /// say) before the server was up. Panics if the port is taken.
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, true, None)
    }

    /// Starts a server on a free port that records every message without its DATA (`data` is
    /// empty), for benchmarks that send many messages and time their acceptance.
    pub fn start_sink() -> Self {
        Self::launch(0, false, None)
    }

    /// Starts a server on a free port that speaks implicit TLS (`smtps`, TLS from the first
    /// byte) with `identity`; a client must trust the CA that signed it.
    pub fn start_tls(identity: &TlsIdentity) -> Self {
        Self::launch(0, true, Some(acceptor(identity)))
    }

    fn launch(port: u16, keep_data: bool, tls: Option<TlsAcceptor>) -> Self {
        let (count, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            keep_data,
            script: Mutex::default(),
            received: Mutex::default(),
            count,
            connections: AtomicUsize::new(0),
            idle_closures: AtomicUsize::new(0),
        });
        let mut server = Self {
            port,
            shared,
            tls,
            running: None,
        };
        server.listen();
        server
    }

    /// Binds `self.port` (0 picks one and remembers it) and serves on a thread of its own.
    fn listen(&mut self) {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, self.port))
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .unwrap_or_else(|e| {
                panic!("SMTP server: cannot listen on 127.0.0.1:{}: {e}", self.port)
            });
        self.port = listener
            .local_addr()
            .expect("SMTP server: a bound listener has a local address")
            .port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("smtp-server")
            .enable_all()
            .build()
            .expect("SMTP server: cannot build its tokio runtime");
        let (stop, stopped) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        let tls = self.tls.clone();
        let thread = thread::Builder::new()
            .name(format!("smtp-server-{}", self.port))
            .spawn(move || {
                runtime.block_on(session::accept(listener, shared, tls, stopped));
                // Dropping the runtime here cancels every session and closes its socket.
                drop(runtime);
            })
            .expect("SMTP server: cannot spawn its thread");
        self.running = Some(Running { stop, thread });
    }

    /// The port the server listens on (and listens on again after [`Self::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL as `SMTP_URL` takes it: `smtp://127.0.0.1:PORT` (plain text), or
    /// `smtps://127.0.0.1:PORT` for a server from [`Self::start_tls`].
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.port)
    }

    /// [`Self::url`] with credentials, percent-encoded as lettre expects:
    /// `smtps://user:password@127.0.0.1:PORT`.
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!(
            "{}://{}:{}@127.0.0.1:{}",
            self.scheme(),
            percent_encode(user),
            percent_encode(password),
            self.port
        )
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "smtps" } else { "smtp" }
    }

    /// Whether the server is listening (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops listening, closes every open session (clients see the connection drop) and waits
    /// until the port is free. What was recorded and scripted stays. Does nothing if stopped.
    pub fn stop(&mut self) {
        let Some(Running { stop, thread }) = self.running.take() else {
            return;
        };
        // The server may already be gone (it only ends on this signal, so only by panicking).
        let _ = stop.send(());
        if thread.join().is_err() && !thread::panicking() {
            panic!("SMTP server on port {} panicked", self.port);
        }
    }

    /// Listens again on the same port with the same records and script, stopping first if
    /// running. Panics if something else took the port meanwhile.
    pub fn restart(&mut self) {
        self.stop();
        self.listen();
    }

    /// Scripts the reply at `stage` for everyone (for `RCPT TO` and the end of the data: every
    /// recipient without a script of its own), replacing any earlier script. Takes effect for
    /// the next attempt, even mid-test and in open sessions.
    pub fn script(&self, stage: Stage, reply: Reply) {
        lock(&self.shared.script).set(stage, None, reply);
    }

    /// Scripts the reply at `stage` (`RCPT TO` or the end of the data) for `recipient`
    /// (compared without regard to ASCII case). Panics for stages that name no recipient.
    pub fn script_for(&self, stage: Stage, recipient: &str, reply: Reply) {
        lock(&self.shared.script).set(stage, Some(recipient), reply);
    }

    /// Scripts the reply to `RCPT TO` for `recipient`: `script_for(Stage::RcptTo, ..)`.
    pub fn reply_to(&self, recipient: &str, reply: Reply) {
        self.script_for(Stage::RcptTo, recipient, reply);
    }

    /// Scripts the reply to `RCPT TO` for every recipient without a script of its own:
    /// `script(Stage::RcptTo, ..)`.
    pub fn reply_to_everyone(&self, reply: Reply) {
        self.script(Stage::RcptTo, reply);
    }

    /// How many times a client gave `RCPT TO` for `recipient` (without regard to ASCII case),
    /// whatever the reply.
    pub fn attempts(&self, recipient: &str) -> usize {
        lock(&self.shared.script).attempts(Stage::RcptTo, Some(recipient))
    }

    /// How many times the dialogue reached `stage` (a session was greeted, a client gave EHLO,
    /// `MAIL FROM`...), whatever the reply, across connections and restarts.
    pub fn attempts_at(&self, stage: Stage) -> usize {
        lock(&self.shared.script).attempts(stage, None)
    }

    /// From now on, new sessions are offered AUTH PLAIN and LOGIN (over plain text too, so a
    /// raw test client can try it) and must authenticate as `user` with `password` before
    /// `MAIL FROM` (mailin answers 503 otherwise); wrong credentials get 535.
    pub fn require_auth(&self, user: &str, password: &str) {
        lock(&self.shared.script).auth = Some(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }

    /// How many AUTH exchanges ended in 535.
    pub fn auth_failures(&self) -> usize {
        lock(&self.shared.script).auth_failures
    }

    /// From the next message on, waits `delay` before answering the end of each message's data
    /// (the message is recorded when its data ends, then the 250 follows): a slow provider.
    /// Sessions wait independently of one another.
    pub fn delay_each_message(&self, delay: Duration) {
        lock(&self.shared.script).data_end_delay = delay;
    }

    /// From now on, a session whose client says nothing for `idle` is closed with
    /// `421 4.4.2` (as real servers do after a few minutes), in open sessions too.
    pub fn close_idle_sessions_after(&self, idle: Duration) {
        lock(&self.shared.script).idle_timeout = Some(idle);
    }

    /// How many sessions the server closed because they were idle too long.
    pub fn idle_closures(&self) -> usize {
        self.shared.idle_closures.load(Ordering::Relaxed)
    }

    /// How many connections the server accepted, across restarts.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// How many messages were accepted so far (cheaper than [`Self::messages`]).
    pub fn message_count(&self) -> usize {
        lock(&self.shared.received).len()
    }

    /// Every accepted message so far, in the order they were accepted.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// The accepted messages with `recipient` among their recipients, in order.
    pub fn messages_to(&self, recipient: &str) -> Vec<Received> {
        let received = lock(&self.shared.received);
        received
            .iter()
            .filter(|m| m.is_for(recipient))
            .cloned()
            .collect()
    }

    /// Waits until at least `n` messages were accepted and returns them all; panics after
    /// `timeout` (measured on tokio's clock) with what did arrive.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let what = format!("{n} messages");
        self.wait(&what, timeout, |received| {
            (received.len() >= n).then(|| received.to_vec())
        })
        .await
    }

    /// Waits for the first accepted message to `recipient` and returns it; panics after
    /// `timeout` (measured on tokio's clock) with what did arrive.
    pub async fn wait_for_message_to(&self, recipient: &str, timeout: Duration) -> Received {
        let what = format!("a message to {recipient}");
        self.wait(&what, timeout, |received| {
            received.iter().find(|m| m.is_for(recipient)).cloned()
        })
        .await
    }

    /// Re-checks `check` each time a message is accepted, until it gives a value or time is up.
    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Received]) -> Option<T>,
    ) -> T {
        let mut accepted = self.shared.count.subscribe();
        let found = tokio::time::timeout(timeout, async {
            loop {
                // Mark the count seen before checking, so an arrival after the check wakes us.
                accepted.borrow_and_update();
                if let Some(value) = check(&lock(&self.shared.received)) {
                    return value;
                }
                // The sender lives in `self.shared`, so it cannot close while we wait.
                let _ = accepted.changed().await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            let received = lock(&self.shared.received);
            let recipients: Vec<_> = received.iter().take(20).map(|m| &m.to).collect();
            panic!(
                "SMTP server: timed out after {timeout:?} waiting for {what}; it accepted {} \
                 (recipients of the first 20: {recipients:?}); running: {}",
                received.len(),
                self.is_running()
            )
        })
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The handle on a listening server's thread.
#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

/// What the test and the sessions share.
#[derive(Debug)]
struct Shared {
    keep_data: bool,
    script: Mutex<Script>,
    received: Mutex<Vec<Received>>,
    /// How many messages were accepted; waiters watch it.
    count: watch::Sender<usize>,
    connections: AtomicUsize,
    /// Sessions the server closed (with 421) because they were idle too long.
    idle_closures: AtomicUsize,
}

/// A poisoned lock only means a test panicked mid-update; the data is still worth reading.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A TLS acceptor for `identity`, on the ring provider the workspace uses.
fn acceptor(identity: &TlsIdentity) -> TlsAcceptor {
    let chain = CertificateDer::pem_slice_iter(identity.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("SMTP server: the certificate chain is PEM");
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .expect("SMTP server: the private key is PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("SMTP server: ring supports the default TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("SMTP server: the certificate matches its key");
    TlsAcceptor::from(Arc::new(config))
}

/// Percent-encodes all but RFC 3986's unreserved characters, for the userinfo of a URL.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The decoded text/plain part of a received message (`Received::data`).
pub fn text_part(data: &str) -> String {
    let parsed = mailparse::parse_mail(data.as_bytes()).expect("a MIME message");
    parsed
        .subparts
        .iter()
        .find(|part| part.ctype.mimetype == "text/plain")
        .expect("a text part")
        .get_body()
        .expect("decodable")
}

/// The 43-character token right after `prefix` (a link's base URL) in `text`.
pub fn token_after(text: &str, prefix: &str) -> String {
    text.split(prefix)
        .nth(1)
        .and_then(|rest| rest.get(..43))
        .unwrap_or_else(|| panic!("no {prefix} link in:\n{text}"))
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn credentials_are_percent_encoded() {
        assert_eq!(percent_encode("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
