//! Domain events to NATS JetStream: the connection, the stream the relay creates or updates at
//! start-up, and the envelope each event is published in ([`envelope`]). The relay's event
//! channel (`relay::events`) claims, publishes and settles them.
//!
//! The client connects in the background and reconnects by itself, so a relay whose NATS is
//! down still starts and delivers emails; the event channel waits for the connection.

pub mod envelope;

use std::{path::PathBuf, time::Duration};

use async_nats::{
    ConnectOptions, Event,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishError},
        stream::{self, StorageType},
    },
};
use clap::{Args, ValueEnum};
use identity_proto::secret;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;

use crate::backoff::RetryPolicy;

/// Kept in a lease besides the acknowledgement timeout: claiming, and recording the outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// The settings of the event channel (all but `NATS_URL` have defaults).
#[derive(Debug, Args)]
pub struct EventArgs {
    /// NATS server(s) to publish domain events to, e.g. nats://nats:4222 or tls://nats:4222
    /// (several separated by commas). Unset: the relay publishes no events and leaves event
    /// rows in the outbox (identity-server writes them only with IDENTITY_DOMAIN_EVENTS=true).
    /// A secret: it may hold user:password@.
    #[arg(long, env = "NATS_URL", hide_env_values = true, value_parser = secret::parse)]
    pub nats_url: Option<SecretString>,

    /// A file holding the NATS URL(s), instead of NATS_URL.
    #[arg(long, env = "NATS_URL_FILE", value_name = "FILE")]
    pub nats_url_file: Option<PathBuf>,

    /// A NATS credentials file (JWT and NKey seed) to authenticate with.
    #[arg(long, env = "NATS_CREDS_FILE", value_name = "FILE")]
    pub nats_creds_file: Option<PathBuf>,

    /// A token to authenticate with (instead of a credentials file).
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, value_parser = secret::parse)]
    pub nats_token: Option<SecretString>,

    /// A file holding the token, instead of NATS_TOKEN.
    #[arg(long, env = "NATS_TOKEN_FILE", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,

    /// A PEM file of CA certificates trusted for the NATS server's certificate (TLS is then
    /// required).
    #[arg(long, env = "NATS_CA_FILE", value_name = "FILE")]
    pub nats_ca_file: Option<PathBuf>,

    /// A PEM client certificate for mutual TLS with NATS (with NATS_CLIENT_KEY).
    #[arg(
        long,
        env = "NATS_CLIENT_CERT",
        value_name = "FILE",
        requires = "nats_client_key"
    )]
    pub nats_client_cert: Option<PathBuf>,

    /// The PEM private key of NATS_CLIENT_CERT.
    #[arg(
        long,
        env = "NATS_CLIENT_KEY",
        value_name = "FILE",
        requires = "nats_client_cert"
    )]
    pub nats_client_key: Option<PathBuf>,

    /// Seconds to wait for connecting, and for JetStream to acknowledge a publish.
    #[arg(long, env = "RELAY_NATS_TIMEOUT_SECS", default_value_t = 5)]
    pub nats_timeout_secs: u64,

    /// The JetStream stream events are stored in (created, or updated to these settings, at
    /// start-up).
    #[arg(long, env = "RELAY_EVENTS_STREAM", default_value = "IDENTITY_EVENTS")]
    pub events_stream: String,

    /// The stream's subjects, separated by commas; every event's subject (its type, then the
    /// user id) must fall under one.
    #[arg(
        long,
        env = "RELAY_EVENTS_SUBJECTS",
        default_value = "identity.>",
        value_delimiter = ','
    )]
    pub events_subjects: Vec<String>,

    /// Where the stream keeps events.
    #[arg(long, env = "RELAY_EVENTS_STORAGE", value_enum, default_value = "file")]
    pub events_storage: Storage,

    /// Copies of the stream in a NATS cluster (1, 3 or 5).
    #[arg(long, env = "RELAY_EVENTS_REPLICAS", default_value_t = 1)]
    pub events_replicas: usize,

    /// Seconds the stream keeps an event (0: until other limits remove it).
    #[arg(long, env = "RELAY_EVENTS_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub events_max_age_secs: u64,

    /// Seconds JetStream remembers a message id to drop a republished duplicate. It must cover
    /// the event retry horizon (the delays before RELAY_EVENTS_MAX_ATTEMPTS), or the relay
    /// refuses to start.
    #[arg(
        long,
        env = "RELAY_EVENTS_DUPLICATE_WINDOW_SECS",
        default_value_t = 3600
    )]
    pub events_duplicate_window_secs: u64,

    /// Failed publishes of one event after which it is dead-lettered. Failures of the channel
    /// (NATS unreachable, no acknowledgement in time) pause publishing instead and count for no
    /// event. Delays grow as RELAY_RETRY_BASE_MS, RELAY_RETRY_FACTOR and RELAY_RETRY_CAP_SECS
    /// say.
    #[arg(long, env = "RELAY_EVENTS_MAX_ATTEMPTS", default_value_t = 10)]
    pub events_max_attempts: i32,

    /// The CloudEvents `source` of every event (a URI reference).
    #[arg(long, env = "RELAY_EVENTS_SOURCE", default_value = "/identity")]
    pub events_source: String,
}

/// Where the stream keeps events.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Storage {
    /// On disk: survives a restart of the NATS server.
    File,
    /// In memory: lost when the NATS server stops (tests and demos only).
    Memory,
}

/// Publishes events to JetStream.
pub struct Publisher {
    jetstream: jetstream::Context,
    stream: stream::Config,
    source: String,
    retry: RetryPolicy,
    connected: watch::Receiver<bool>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.stream.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl EventArgs {
    /// The publisher, when `NATS_URL` (or `NATS_URL_FILE`) is set; `retry` paces the retries of
    /// the emails, whose delays events share, and `lease` is how long a claim lasts. Settings
    /// that cannot work are refused here, at start-up; the connection itself is made in the
    /// background.
    pub async fn publisher(
        &mut self,
        retry: &RetryPolicy,
        lease: Duration,
    ) -> anyhow::Result<Option<Publisher>> {
        let url = secret::resolve(
            "NATS_URL",
            self.nats_url.take(),
            self.nats_url_file.as_deref(),
        )?;
        let token = secret::resolve(
            "NATS_TOKEN",
            self.nats_token.take(),
            self.nats_token_file.as_deref(),
        )?;
        let Some(url) = url else {
            return Ok(None);
        };
        let timeout = Duration::from_secs(self.nats_timeout_secs.max(1));
        anyhow::ensure!(
            timeout + LEASE_MARGIN <= lease,
            "RELAY_NATS_TIMEOUT_SECS={} does not fit in RELAY_LEASE_SECS={}: a batch must be \
             acknowledged, and settled, within its lease; the lease must be at least {} s",
            timeout.as_secs(),
            lease.as_secs(),
            (timeout + LEASE_MARGIN).as_secs(),
        );
        anyhow::ensure!(
            self.events_max_attempts > 0,
            "RELAY_EVENTS_MAX_ATTEMPTS must be positive"
        );
        anyhow::ensure!(
            !self.events_subjects.is_empty(),
            "RELAY_EVENTS_SUBJECTS must name at least one subject"
        );
        let retry = RetryPolicy {
            max_attempts: self.events_max_attempts,
            ..retry.clone()
        };
        let window = Duration::from_secs(self.events_duplicate_window_secs);
        let horizon = retry.horizon();
        anyhow::ensure!(
            window >= horizon,
            "RELAY_EVENTS_DUPLICATE_WINDOW_SECS={} is shorter than the event retry horizon of {} s \
             (RELAY_EVENTS_MAX_ATTEMPTS={} with the retry delays): an event retried after the \
             window could be stored twice; raise the window or lower the attempts",
            window.as_secs(),
            horizon.as_secs(),
            self.events_max_attempts,
        );
        let (connected_tx, connected) = watch::channel(false);
        let mut options = ConnectOptions::new()
            .name("outbox-relay")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .event_callback(move |event| {
                let connected_tx = connected_tx.clone();
                async move { on_event(&event, &connected_tx) }
            });
        if let Some(file) = &self.nats_creds_file {
            options = options
                .credentials_file(file)
                .await
                .map_err(|e| anyhow::anyhow!("NATS_CREDS_FILE {}: {e}", file.display()))?;
        }
        if let Some(token) = token {
            options = options.token(token.expose_secret().to_owned());
        }
        if let Some(ca) = &self.nats_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_client_cert, &self.nats_client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options
            .connect(url.expose_secret())
            .await
            .map_err(|e| anyhow::anyhow!("NATS_URL: {e}"))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client);
        Ok(Some(Publisher {
            jetstream,
            stream: stream::Config {
                name: self.events_stream.clone(),
                description: Some("Domain events of identity-server".to_owned()),
                subjects: self.events_subjects.clone(),
                storage: match self.events_storage {
                    Storage::File => StorageType::File,
                    Storage::Memory => StorageType::Memory,
                },
                num_replicas: self.events_replicas.max(1),
                max_age: Duration::from_secs(self.events_max_age_secs),
                duplicate_window: window,
                ..Default::default()
            },
            source: self.events_source.clone(),
            retry,
            connected,
        }))
    }
}

/// Logs the client's connection events and keeps `connected` up to date.
fn on_event(event: &Event, connected: &watch::Sender<bool>) {
    match event {
        Event::Connected => {
            tracing::info!("connected to NATS");
            connected.send_replace(true);
        }
        Event::Disconnected => {
            tracing::warn!("disconnected from NATS; reconnecting (events wait, emails do not)");
            connected.send_replace(false);
        }
        Event::Closed => {
            connected.send_replace(false);
        }
        other => tracing::warn!(nats.event = %other, "NATS client event"),
    }
}

impl Publisher {
    /// Creates the stream, or updates it to the configured settings.
    pub async fn ensure_stream(&self) -> anyhow::Result<()> {
        let info = self
            .jetstream
            .create_or_update_stream(self.stream.clone())
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot create or update stream {}: {e}", self.stream.name)
            })?;
        tracing::info!(
            stream = %info.config.name,
            subjects = ?info.config.subjects,
            messages = info.state.messages,
            duplicate_window = ?info.config.duplicate_window,
            "JetStream stream ready"
        );
        Ok(())
    }

    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the client is connected.
    pub async fn connected(&self) {
        let mut connected = self.connected.clone();
        // Fails only once the client is gone, which outlives the relay.
        let _ = connected.wait_for(|up| *up).await;
    }

    /// Publishes `envelope`; the returned future resolves to JetStream's acknowledgement.
    pub async fn publish(
        &self,
        envelope: envelope::Envelope,
    ) -> Result<PublishAckFuture, PublishError> {
        let (subject, publication) = envelope.publication();
        self.jetstream.send_publish(subject, publication).await
    }

    /// The CloudEvents `source` of every event.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How failed publishes of one event are retried.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The stream's name, for logs.
    pub fn stream_name(&self) -> &str {
        &self.stream.name
    }
}
