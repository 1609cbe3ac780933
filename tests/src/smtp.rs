//! A real SMTP server on 127.0.0.1 for tests and benchmarks: it records what it accepts, answers
//! `RCPT TO` as a test scripts it, can require AUTH PLAIN/LOGIN over plain text, and can be
//! stopped (freeing its port) and started again on the same port to stage an outage.
//!
//! The SMTP protocol is the `mailin` crate's (command parser, state machine, replies, AUTH):
//! this module only moves lines between sockets and a `mailin::Session`, and its
//! `Handler` applies the test's script and records what is accepted. That is what
//! `mailin-embedded` does too; it is not used because its `serve()` never returns (so its port
//! cannot be freed for an outage test) and its fixed thread pool stalls sessions beyond its
//! size. The server runs on a runtime and a thread of its own, so it keeps serving while a
//! test blocks.

use std::{
    collections::HashMap,
    fmt, io,
    net::{IpAddr, Ipv4Addr, TcpListener as StdTcpListener},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder, response};
use time::OffsetDateTime;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};

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

/// How the server answers `RCPT TO` for a recipient. Each `RCPT TO` naming the recipient is one
/// attempt; attempts are counted per recipient across connections and restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reply {
    /// 250: the recipient is accepted.
    #[default]
    Accept,
    /// `code` (4xx) for the first `times` attempts, then accept.
    TransientTimes {
        /// A 4xx reply code, such as 451. 421 also closes the connection, as RFC 5321 says.
        code: u16,
        /// How many attempts are refused before the first is accepted.
        times: usize,
    },
    /// This 4xx code for every attempt.
    Transient(u16),
    /// This 5xx code (such as 550) for every attempt.
    Permanent(u16),
}

impl Reply {
    /// Panics when the code does not belong to the kind of reply, so a typo fails loudly.
    fn check(self) {
        let (code, range) = match self {
            Self::Accept => return,
            Self::TransientTimes { code, .. } | Self::Transient(code) => (code, 400..500),
            Self::Permanent(code) => (code, 500..600),
        };
        assert!(
            range.contains(&code),
            "{self:?}: the reply code must be in {range:?}"
        );
    }

    /// The refusing code for the `attempt`-th attempt (from 1), or `None` to accept.
    fn code_for(self, attempt: usize) -> Option<u16> {
        match self {
            Self::Accept => None,
            Self::TransientTimes { code, times } => (attempt <= times).then_some(code),
            Self::Transient(code) | Self::Permanent(code) => Some(code),
        }
    }
}

/// A running (or stopped) SMTP server. Dropping it stops it.
#[derive(Debug)]
pub struct SmtpServer {
    port: u16,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl SmtpServer {
    /// Starts a server on a free port of 127.0.0.1 that keeps every message whole.
    pub fn start() -> Self {
        Self::launch(0, true)
    }

    /// Starts a server on `port` of 127.0.0.1, for a test that handed the port out (to a relay,
    /// say) before the server was up. Panics if the port is taken.
    pub fn start_on(port: u16) -> Self {
        Self::launch(port, true)
    }

    /// Starts a server on a free port that records every message without its DATA (`data` is
    /// empty), for benchmarks that send many messages and time their acceptance.
    pub fn start_sink() -> Self {
        Self::launch(0, false)
    }

    fn launch(port: u16, keep_data: bool) -> Self {
        let (count, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            keep_data,
            script: Mutex::default(),
            received: Mutex::default(),
            count,
            connections: AtomicUsize::new(0),
        });
        let mut server = Self {
            port,
            shared,
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
        let thread = thread::Builder::new()
            .name(format!("smtp-server-{}", self.port))
            .spawn(move || {
                runtime.block_on(accept(listener, shared, stopped));
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

    /// The URL for lettre's `AsyncSmtpTransport::from_url`: `smtp://127.0.0.1:PORT`, plain text
    /// (lettre's `smtp` scheme without a `tls` parameter never uses TLS).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// [`Self::url`] with credentials, percent-encoded as lettre expects:
    /// `smtp://user:password@127.0.0.1:PORT`.
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!(
            "smtp://{}:{}@127.0.0.1:{}",
            percent_encode(user),
            percent_encode(password),
            self.port
        )
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

    /// Scripts the reply to `RCPT TO` for `recipient` (compared without regard to ASCII case),
    /// replacing any earlier script for it. Takes effect for the next attempt, even mid-test.
    pub fn reply_to(&self, recipient: &str, reply: Reply) {
        reply.check();
        lock(&self.shared.script)
            .replies
            .insert(recipient.to_ascii_lowercase(), reply);
    }

    /// Scripts the reply for every recipient without a script of its own (initially
    /// [`Reply::Accept`]).
    pub fn reply_to_everyone(&self, reply: Reply) {
        reply.check();
        lock(&self.shared.script).default_reply = reply;
    }

    /// How many times a client gave `RCPT TO` for `recipient` (without regard to ASCII case),
    /// whatever the reply.
    pub fn attempts(&self, recipient: &str) -> usize {
        lock(&self.shared.script)
            .attempts
            .get(&recipient.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// From now on, new sessions are offered AUTH PLAIN and LOGIN (over plain text) and must
    /// authenticate as `user` with `password` before `MAIL FROM` (mailin answers 503 otherwise); wrong
    /// credentials get 535.
    pub fn require_auth(&self, user: &str, password: &str) {
        lock(&self.shared.script).auth = Some(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }

    /// From the next message on, waits `delay` before answering the end of each message's DATA
    /// (the message is recorded when its DATA ends, then the 250 follows): a slow provider.
    /// Sessions wait independently of one another.
    pub fn delay_each_message(&self, delay: Duration) {
        lock(&self.shared.script).data_end_delay = delay;
    }

    /// How many AUTH exchanges ended in 535.
    pub fn auth_failures(&self) -> usize {
        lock(&self.shared.script).auth_failures
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
}

/// The test's instructions to the server, and the attempts they are counted against.
#[derive(Debug, Default)]
struct Script {
    /// Keyed by lower-cased address.
    replies: HashMap<String, Reply>,
    default_reply: Reply,
    /// `RCPT TO` attempts, keyed by lower-cased address.
    attempts: HashMap<String, usize>,
    auth: Option<Credentials>,
    auth_failures: usize,
    /// How long the reply to the end of DATA is held back.
    data_end_delay: Duration,
}

/// The one user the server accepts when AUTH is required.
struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// A poisoned lock only means a test panicked mid-update; the data is still worth reading.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts connections until told to stop, each served by a task of its own.
async fn accept(listener: StdTcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
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
                tokio::spawn(serve(stream, peer.ip(), Arc::clone(&shared)));
            }
        }
    }
}

/// Serves one connection: lines go to a `mailin` session (the SMTP parser and state machine),
/// and its replies go back, until it says to close or the client goes away.
async fn serve(stream: TcpStream, peer: IpAddr, shared: Arc<Shared>) {
    // Replies are single small writes; do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let auth_required = lock(&shared.script).auth.is_some();
    let mut builder = SessionBuilder::new(NAME);
    if auth_required {
        builder
            .enable_auth(AuthMechanism::Plain)
            .enable_auth(AuthMechanism::Login)
            .insecure_enable_plaintext_auth();
    }
    let data_ended = Arc::new(AtomicBool::new(false));
    let delays = Arc::clone(&shared);
    let mut session = builder.build(
        peer,
        ScriptedHandler {
            shared,
            data_ended: Arc::clone(&data_ended),
            user: None,
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
        },
    );
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    // An I/O error means the client is gone; there is no one left to tell.
    let _ = async {
        writer.write_all(&session.greeting().buffer()?).await?;
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).await? == 0 {
                return Ok::<_, io::Error>(());
            }
            let response = session.process(&line);
            match response.action {
                Action::NoReply => {}
                Action::Reply => {
                    if data_ended.swap(false, Ordering::Relaxed) {
                        let delay = lock(&delays.script).data_end_delay;
                        tokio::time::sleep(delay).await;
                    }
                    writer.write_all(&response.buffer()?).await?;
                }
                // TLS is never offered, so an upgrade cannot be asked for; close either way.
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
    /// Set when a message's DATA ends, so that its reply can be delayed.
    data_ended: Arc<AtomicBool>,
    user: Option<String>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
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
}

impl Handler for ScriptedHandler {
    fn rcpt(&mut self, to: &str) -> Response {
        let mut script = lock(&self.shared.script);
        let key = to.to_ascii_lowercase();
        let attempt = {
            let attempts = script.attempts.entry(key.clone()).or_default();
            *attempts += 1;
            *attempts
        };
        let reply = script
            .replies
            .get(&key)
            .copied()
            .unwrap_or(script.default_reply);
        match reply.code_for(attempt) {
            Some(code) => Response::custom(code, format!("scripted refusal for {to}")),
            None => response::OK,
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.shared.keep_data {
            self.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
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
        self.data_ended.store(true, Ordering::Relaxed);
        response::OK
    }

    fn auth_plain(&mut self, _authorization_id: &str, user: &str, password: &str) -> Response {
        self.authenticate(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.authenticate(user, password)
    }
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

#[cfg(test)]
mod tests {
    use super::{Reply, percent_encode};

    #[test]
    fn credentials_are_percent_encoded() {
        assert_eq!(percent_encode("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn transient_times_refuses_then_accepts() {
        let reply = Reply::TransientTimes {
            code: 451,
            times: 2,
        };
        let codes: Vec<_> = (1..=4).map(|attempt| reply.code_for(attempt)).collect();
        assert_eq!(codes, [Some(451), Some(451), None, None]);
    }

    #[test]
    #[should_panic(expected = "must be in 500..600")]
    fn a_permanent_reply_with_a_transient_code_is_refused() {
        Reply::Permanent(451).check();
    }
}
