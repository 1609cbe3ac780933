//! A real SMTP server on 127.0.0.1 for tests and benchmarks: it records what it accepts, answers
//! `RCPT TO` as a test scripts it, can require AUTH PLAIN/LOGIN over plain text, and can be
//! stopped (freeing its port) and started again on the same port to stage an outage.
//!
//! It speaks the subset of RFC 5321 a client such as lettre uses: EHLO/HELO, AUTH, MAIL, RCPT,
//! DATA, RSET, NOOP, VRFY and QUIT, one reply per command. It runs on a runtime of its own in a
//! thread of its own, so it works the same under any test runtime and keeps serving while the
//! test blocks.
//!
//! Written on tokio rather than on `mailin-embedded`, whose `serve()` never returns (so neither
//! its thread nor its port can be freed), whose AUTH needs STARTTLS and a certificate, and whose
//! fixed thread pool stalls every session beyond its size.

use std::{
    collections::HashMap,
    fmt, io,
    net::{Ipv4Addr, TcpListener as StdTcpListener},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use time::OffsetDateTime;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
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
    /// authenticate as `user` with `password` before `MAIL FROM` (530 otherwise); wrong
    /// credentials get 535.
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
                let Ok((stream, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(Session::serve(stream, Arc::clone(&shared)));
            }
        }
    }
}

/// Whether a session goes on after a reply.
enum Flow {
    Continue,
    Close,
}

/// One client's SMTP session.
struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    shared: Arc<Shared>,
    greeted: bool,
    user: Option<String>,
    envelope: Option<Envelope>,
}

/// The transaction begun by `MAIL FROM`.
struct Envelope {
    from: String,
    to: Vec<String>,
}

impl Session {
    /// Serves one connection until QUIT, a closing reply, or the client going away.
    async fn serve(stream: TcpStream, shared: Arc<Shared>) {
        // Replies are single small writes; do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let mut session = Self {
            reader: BufReader::new(reader),
            writer,
            shared,
            greeted: false,
            user: None,
            envelope: None,
        };
        // An I/O error means the client is gone; there is no one left to tell.
        let _ = session.run().await;
    }

    async fn run(&mut self) -> io::Result<()> {
        self.reply(&format!("220 {NAME} ESMTP ready")).await?;
        while let Some(line) = self.read_line().await? {
            let (verb, argument) = line.split_once(' ').unwrap_or((&line, ""));
            let argument = argument.trim();
            let flow = match verb.to_ascii_uppercase().as_str() {
                "EHLO" => self.ehlo(argument).await?,
                "HELO" => {
                    self.reset_and_greet();
                    self.reply(&format!("250 {NAME}")).await?
                }
                "AUTH" => self.auth(argument).await?,
                "MAIL" => self.mail(argument).await?,
                "RCPT" => self.rcpt(argument).await?,
                "DATA" => self.data().await?,
                "RSET" => {
                    self.envelope = None;
                    self.reply("250 2.0.0 OK").await?
                }
                "NOOP" => self.reply("250 2.0.0 OK").await?,
                "VRFY" => self.reply("252 2.5.0 Cannot verify").await?,
                "QUIT" => {
                    self.reply("221 2.0.0 Bye").await?;
                    Flow::Close
                }
                _ => self.reply("500 5.5.2 Command not recognized").await?,
            };
            if let Flow::Close = flow {
                break;
            }
        }
        Ok(())
    }

    fn reset_and_greet(&mut self) {
        self.greeted = true;
        self.envelope = None;
    }

    async fn ehlo(&mut self, client: &str) -> io::Result<Flow> {
        self.reset_and_greet();
        let auth = lock(&self.shared.script).auth.is_some() && self.user.is_none();
        let mut lines = vec![format!("{NAME} greets {client}"), "8BITMIME".to_owned()];
        lines.push("SMTPUTF8".to_owned());
        if auth {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        let last = lines.len() - 1;
        let reply: String = lines
            .iter()
            .enumerate()
            .map(|(i, line)| format!("250{}{line}\r\n", if i == last { ' ' } else { '-' }))
            .collect();
        self.write(reply.as_bytes()).await?;
        Ok(Flow::Continue)
    }

    async fn auth(&mut self, argument: &str) -> io::Result<Flow> {
        let Some(expected) = lock(&self.shared.script)
            .auth
            .as_ref()
            .map(|c| (c.user.clone(), c.password.clone()))
        else {
            return self.reply("503 5.5.1 AUTH not offered").await;
        };
        if self.user.is_some() {
            return self.reply("503 5.5.1 Already authenticated").await;
        }
        let (mechanism, initial) = argument.split_once(' ').unwrap_or((argument, ""));
        let given = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let Some(response) = self.challenge("", initial).await? else {
                    return self.reply("501 5.7.0 AUTH cancelled").await;
                };
                // authorization-id NUL authentication-id NUL password
                response.and_then(|plain| {
                    let mut parts = plain.split('\0');
                    let (_authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
                    Some((user.to_owned(), password.to_owned()))
                })
            }
            "LOGIN" => {
                // The challenges are base64 for "Username:" and "Password:".
                let Some(user) = self.challenge("VXNlcm5hbWU6", initial).await? else {
                    return self.reply("501 5.7.0 AUTH cancelled").await;
                };
                let Some(password) = self.challenge("UGFzc3dvcmQ6", "").await? else {
                    return self.reply("501 5.7.0 AUTH cancelled").await;
                };
                user.zip(password)
            }
            _ => {
                return self
                    .reply("504 5.5.4 Unrecognized authentication type")
                    .await;
            }
        };
        let Some((user, password)) = given else {
            return self
                .reply("501 5.5.2 Cannot decode the AUTH response")
                .await;
        };
        if (user.as_str(), password.as_str()) == (expected.0.as_str(), expected.1.as_str()) {
            self.user = Some(user);
            self.reply("235 2.7.0 Authentication successful").await
        } else {
            lock(&self.shared.script).auth_failures += 1;
            self.reply("535 5.7.8 Authentication credentials invalid")
                .await
        }
    }

    /// The client's base64 answer to a 334 `challenge`, decoded to text: `initial` when the
    /// command carried it, else the next line. `None` when the client cancels with `*` or hangs
    /// up; `Some(None)` when the answer is not base64 of UTF-8.
    async fn challenge(
        &mut self,
        challenge: &str,
        initial: &str,
    ) -> io::Result<Option<Option<String>>> {
        let answer = if initial.is_empty() {
            self.reply(&format!("334 {challenge}")).await?;
            match self.read_line().await? {
                Some(line) => line,
                None => return Ok(None),
            }
        } else {
            initial.to_owned()
        };
        if answer.trim() == "*" {
            return Ok(None);
        }
        Ok(Some(
            decode_base64(answer.trim()).and_then(|bytes| String::from_utf8(bytes).ok()),
        ))
    }

    async fn mail(&mut self, argument: &str) -> io::Result<Flow> {
        if !self.greeted {
            return self.reply("503 5.5.1 Send EHLO first").await;
        }
        if self.user.is_none() && lock(&self.shared.script).auth.is_some() {
            return self.reply("530 5.7.0 Authentication required").await;
        }
        if self.envelope.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command").await;
        }
        let Some(from) = path_after(argument, "FROM:") else {
            return self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        self.envelope = Some(Envelope {
            from,
            to: Vec::new(),
        });
        self.reply("250 2.1.0 OK").await
    }

    async fn rcpt(&mut self, argument: &str) -> io::Result<Flow> {
        if self.envelope.is_none() {
            return self.reply("503 5.5.1 Need MAIL before RCPT").await;
        }
        let Some(to) = path_after(argument, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        let refusal = {
            let mut script = lock(&self.shared.script);
            let key = to.to_ascii_lowercase();
            let attempt = script.attempts.entry(key.clone()).or_insert(0);
            *attempt += 1;
            let attempt = *attempt;
            let reply = script
                .replies
                .get(&key)
                .copied()
                .unwrap_or(script.default_reply);
            reply.code_for(attempt)
        };
        match refusal {
            None => {
                if let Some(envelope) = self.envelope.as_mut() {
                    envelope.to.push(to);
                }
                self.reply("250 2.1.5 OK").await
            }
            Some(code) => {
                let text = format!("{code} {}.0.0 Scripted reply for <{to}>", code / 100);
                self.reply(&text).await?;
                // 421 means the server is closing the transmission channel.
                Ok(if code == 421 {
                    Flow::Close
                } else {
                    Flow::Continue
                })
            }
        }
    }

    async fn data(&mut self) -> io::Result<Flow> {
        let Some(envelope) = self.envelope.take_if(|e| !e.to.is_empty()) else {
            return match self.envelope {
                None => self.reply("503 5.5.1 Need MAIL before DATA").await,
                Some(_) => self.reply("554 5.5.1 No valid recipients").await,
            };
        };
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let mut data = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                return Ok(Flow::Close);
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            if self.shared.keep_data {
                let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
                data.extend_from_slice(unstuffed);
            }
        }
        let number = {
            let mut received = lock(&self.shared.received);
            received.push(Received {
                from: envelope.from,
                to: envelope.to,
                data: String::from_utf8_lossy(&data).into_owned(),
                authenticated_as: self.user.clone(),
                accepted_at: Instant::now(),
                accepted_at_utc: OffsetDateTime::now_utc(),
            });
            self.shared.count.send_replace(received.len());
            received.len()
        };
        // Recorded before the 250 goes out: a client that saw 250 finds its message recorded.
        self.reply(&format!("250 2.0.0 OK: queued as {number}"))
            .await
    }

    /// The next line without its line end (lossily decoded); `None` when the client hung up.
    async fn read_line(&mut self) -> io::Result<Option<String>> {
        let mut line = Vec::new();
        if self.reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Ok(Some(String::from_utf8_lossy(line).into_owned()))
    }

    async fn reply(&mut self, line: &str) -> io::Result<Flow> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        Ok(Flow::Continue)
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await
    }
}

/// The address in `FROM:<a@b> PARAMS` or `TO:<a@b>` after `keyword` (ASCII case ignored);
/// brackets are optional, `<>` gives an empty address.
fn path_after(argument: &str, keyword: &str) -> Option<String> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument.get(keyword.len()..)?.trim_start();
    let path = match rest.strip_prefix('<') {
        Some(bracketed) => bracketed.split_once('>')?.0,
        None => rest.split_whitespace().next()?,
    };
    Some(path.to_owned())
}

/// Decodes standard base64 (padding optional); `None` on any other character.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let (mut bits, mut count) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push(((bits >> count) & 0xff) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(bytes)
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
    use super::{Reply, decode_base64, path_after, percent_encode};

    #[test]
    fn paths_are_read_with_or_without_brackets_and_parameters() {
        assert_eq!(
            path_after("FROM:<a@b.c>", "FROM:").as_deref(),
            Some("a@b.c")
        );
        assert_eq!(
            path_after("from: <a@b.c> BODY=8BITMIME", "FROM:").as_deref(),
            Some("a@b.c")
        );
        assert_eq!(path_after("TO:a@b.c", "TO:").as_deref(), Some("a@b.c"));
        assert_eq!(path_after("FROM:<>", "FROM:").as_deref(), Some(""));
        assert_eq!(path_after("TO:<a@b.c>", "FROM:"), None);
        assert_eq!(path_after("FROM:<a@b.c", "FROM:"), None);
        assert_eq!(path_after("", "TO:"), None);
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(
            decode_base64("VXNlcm5hbWU6").as_deref(),
            Some(&b"Username:"[..])
        );
        assert_eq!(
            decode_base64("AHVzZXIAcGFzcw==").as_deref(),
            Some(&b"\0user\0pass"[..])
        );
        assert_eq!(
            decode_base64("AHVzZXIAcGFzcw").as_deref(),
            Some(&b"\0user\0pass"[..])
        );
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("not base64!"), None);
    }

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
