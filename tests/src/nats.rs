//! A real `nats-server` with JetStream (Debian's package, which `scripts/test` installs when
//! missing) on a free port, storing in a temporary folder; it can be killed and started again on
//! the same port and store, as an outage would. And what the tests read back from a stream:
//! every message, in stream order, with its headers.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;

use crate::{pg::free_port, process::Process, wait};

/// The stream the relay creates by default.
pub const STREAM: &str = "IDENTITY_EVENTS";

/// A running nats-server; killed, and its store removed, when dropped.
#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    dir: PathBuf,
    process: Option<Process>,
    tls: Option<NatsTls>,
    /// The token clients must present, when the server requires one.
    token: Option<String>,
}

/// TLS for a [`NatsServer`]: its certificate and key, and the CA that signed both it and the
/// client certificate the server then requires (mutual TLS); PEM files the test wrote.
#[derive(Debug, Clone)]
pub struct NatsTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate and key from the same CA, for the test's own connections.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl NatsServer {
    /// Starts nats-server with JetStream on a free port, and returns once it accepts clients.
    pub async fn start() -> Self {
        Self::start_with(None, None).await
    }

    /// Starts nats-server requiring TLS and a client certificate from `tls.ca`.
    pub async fn start_tls(tls: NatsTls) -> Self {
        Self::start_with(Some(tls), None).await
    }

    /// Starts nats-server requiring clients to authenticate with `token`.
    pub async fn start_with_token(token: &str) -> Self {
        Self::start_with(None, Some(token.to_owned())).await
    }

    async fn start_with(tls: Option<NatsTls>, token: Option<String>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("identity-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut server = Self {
            port: free_port().expect("a free port"),
            dir,
            process: None,
            tls,
            token,
        };
        server.resume().await;
        server
    }

    /// The URL clients connect to (`tls://` when the server requires TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, as a crash); its store stays for [`Self::resume`].
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port and store; returns once it is ready.
    pub async fn resume(&mut self) {
        assert!(self.process.is_none(), "the server is running");
        let port = self.port.to_string();
        let store = self.dir.display().to_string();
        let mut args: Vec<String> = ["-js", "-sd", &store, "-a", "127.0.0.1", "-p", &port]
            .map(str::to_owned)
            .to_vec();
        if let Some(tls) = &self.tls {
            for (flag, file) in [
                ("--tlscert", &tls.cert),
                ("--tlskey", &tls.key),
                ("--tlscacert", &tls.ca),
            ] {
                args.extend([flag.to_owned(), file.display().to_string()]);
            }
            args.push("--tlsverify".to_owned());
        }
        if let Some(token) = &self.token {
            args.extend(["--auth".to_owned(), token.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = Process::spawn_program(program(), &args, &[]);
        process
            .wait_for_line("Server is ready", Duration::from_secs(30))
            .await;
        self.process = Some(process);
    }

    /// A JetStream context on a fresh connection (with the client certificate under TLS, the
    /// token when one is required).
    pub async fn jetstream(&self) -> jetstream::Context {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(tls) = &self.tls {
            options = options
                .add_root_certificates(tls.ca.clone())
                .add_client_certificate(tls.client_cert.clone(), tls.client_key.clone())
                .require_tls(true);
        }
        let client = options
            .connect(self.url())
            .await
            .expect("connects to nats-server");
        jetstream::new(client)
    }

    /// How many messages `stream` holds (0 while it does not exist).
    pub async fn stream_len(&self, stream: &str) -> u64 {
        let js = self.jetstream().await;
        match js.get_stream(stream).await {
            Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
            Err(_) => 0,
        }
    }

    /// Waits until `stream` holds `count` messages, then reads them all in stream order.
    pub async fn read_all(&self, stream: &str, count: u64, timeout: Duration) -> Vec<Received> {
        wait::until(
            &format!("{count} messages in stream {stream}"),
            timeout,
            async || (self.stream_len(stream).await >= count).then_some(()),
        )
        .await;
        let js = self.jetstream().await;
        let consumer = js
            .get_stream(stream)
            .await
            .expect("the stream exists")
            .create_consumer(pull::Config {
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("an ephemeral consumer");
        let mut messages = consumer
            .fetch()
            .max_messages(usize::try_from(count).expect("a count"))
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .expect("fetches");
        let mut received = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.expect("a message");
            let info = message.info().expect("a JetStream message");
            let headers = message
                .headers
                .as_ref()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|(name, values)| {
                            let value = values.first().map(|v| v.as_str().to_owned());
                            (name.to_string(), value.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            received.push(Received {
                subject: message.subject.to_string(),
                headers,
                data: message.payload.to_vec(),
                stream_sequence: info.stream_sequence,
            });
        }
        received
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One message of a stream.
#[derive(Debug, Clone)]
pub struct Received {
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub data: Vec<u8>,
    pub stream_sequence: u64,
}

impl Received {
    /// The value of header `name`, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// `nats-server` from the PATH, or Debian's place for it (`/usr/sbin`, not on every PATH).
fn program() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("nats-server")
    }
}
