//! The command line: `outbox-relay serve`. Every option can also come from the environment
//! variable named in `--help`.

mod delivery;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use identity_proto::pg::{Connector, PoolMode, SessionTimeouts};
use identity_proto::secret;
use identity_proto::telemetry::{self, LogFormat};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    backoff::RetryPolicy,
    email::Renderer,
    events::EventArgs,
    health::HealthService,
    relay::{Relay, RelayConfig},
    store,
};
use delivery::DeliveryArgs;

/// Delivers the emails identity-server queues in the outbox table: claims batches under short
/// leases (any number of replicas may run), sends over SMTP with retries and backoff, moves
/// undeliverable messages to outbox_dead, and loses nothing when it crashes.
///
/// With NATS_URL it also publishes the domain events in the outbox to NATS JetStream
/// (CloudEvents, one stream, in order per user, each stored once), on a channel of its own: a
/// NATS outage never delays an email, an SMTP outage never delays an event.
///
/// Traces go to an OpenTelemetry collector over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is
/// set; the other standard OTEL_* variables apply (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER,
/// OTEL_EXPORTER_OTLP_CERTIFICATE, ...). RUST_LOG filters the log (default: info).
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log line format.
    #[arg(
        long,
        env = "RELAY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay outbox messages until SIGINT or SIGTERM.
    ///
    /// Secrets as files: each secret (DATABASE_URL, SMTP_URL, NATS_URL, NATS_TOKEN) can instead
    /// be given as NAME_FILE (e.g. DATABASE_URL_FILE, --database-url-file), the path of a file
    /// holding it, such as a mounted Secret: read once at start-up, one line ending at its end
    /// dropped. Prefer it: a variable's value stays readable in /proc/<pid>/environ and in crash
    /// dumps, and a flag's is shown by `ps` to every local user.
    Serve(Box<ServeArgs>),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// PostgreSQL URL of the identity database, e.g.
    /// postgres://user:password@host:5432/identity?sslmode=verify-full&sslrootcert=/etc/relay/db-ca.pem.
    /// sslmode as libpq: disable, prefer (default), require, verify-ca, verify-full;
    /// sslrootcert: a PEM file of CA certificates, or "system" for the public web roots;
    /// pool_mode=transaction when it leads to a transaction pooler (PgBouncer in transaction
    /// mode): the session limits are then set in each transaction and statements are not kept
    /// prepared on the server. Required, as this or DATABASE_URL_FILE.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret::parse)]
    database_url: Option<SecretString>,

    /// A file holding the PostgreSQL URL, instead of DATABASE_URL.
    #[arg(long, env = "DATABASE_URL_FILE", value_name = "FILE")]
    database_url_file: Option<PathBuf>,

    /// PostgreSQL URL to LISTEN on for outbox notifications, when DATABASE_URL leads to a
    /// transaction pooler (pool_mode=transaction), through which LISTEN cannot work: the
    /// database directly, or a session-mode pooler. Unset: the relay listens on DATABASE_URL,
    /// or, through a transaction pooler, does not listen and looks every
    /// RELAY_POLL_INTERVAL_MS.
    #[arg(long, env = "RELAY_LISTEN_DATABASE_URL", hide_env_values = true, value_parser = secret::parse)]
    listen_database_url: Option<SecretString>,

    /// A file holding RELAY_LISTEN_DATABASE_URL, instead of the variable.
    #[arg(long, env = "RELAY_LISTEN_DATABASE_URL_FILE", value_name = "FILE")]
    listen_database_url_file: Option<PathBuf>,

    /// Milliseconds any one SQL statement may run (PostgreSQL statement_timeout, set on every
    /// pooled connection, or, through a transaction pooler, in every transaction; not on the
    /// LISTEN connection).
    #[arg(long, env = "RELAY_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    db_statement_timeout_ms: u64,

    /// Milliseconds a statement may wait for a lock (PostgreSQL lock_timeout). At most the
    /// statement timeout.
    #[arg(long, env = "RELAY_DB_LOCK_TIMEOUT_MS", default_value_t = 2000)]
    db_lock_timeout_ms: u64,

    #[command(flatten)]
    delivery: DeliveryArgs,

    #[command(flatten)]
    events: EventArgs,

    /// Messages claimed at once.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 64)]
    batch_size: i64,

    /// Emails sent at once (also the SMTP connection pool size).
    #[arg(long, env = "RELAY_CONCURRENCY", default_value_t = 16)]
    concurrency: u32,

    /// Seconds a claim lasts; a crashed relay's messages are retried after this. It must cover
    /// one delivery (twice RELAY_SMTP_TIMEOUT_SECS, plus 3 s), or the relay refuses to start:
    /// before each send the relay extends the lease when less than that is left, so no other
    /// relay can claim a message while it is being sent.
    #[arg(long, env = "RELAY_LEASE_SECS", default_value_t = 30)]
    lease_secs: u64,

    /// Milliseconds between looks at the outbox when no notification arrives.
    #[arg(long, env = "RELAY_POLL_INTERVAL_MS", default_value_t = 5000)]
    poll_interval_ms: u64,

    /// Milliseconds: the ceiling of the first retry's delay (full jitter below it).
    #[arg(long, env = "RELAY_RETRY_BASE_MS", default_value_t = 1000)]
    retry_base_ms: u64,

    /// Growth of the retry ceiling per failure.
    #[arg(long, env = "RELAY_RETRY_FACTOR", default_value_t = 2.0)]
    retry_factor: f64,

    /// Seconds: the largest retry ceiling.
    #[arg(long, env = "RELAY_RETRY_CAP_SECS", default_value_t = 900)]
    retry_cap_secs: u64,

    /// Failed deliveries after which a message is dead-lettered. With the default backoff that
    /// is about a day of retrying; a verification or password-reset email whose link expired is
    /// dead-lettered rather than sent.
    #[arg(long, env = "RELAY_MAX_ATTEMPTS", default_value_t = 100)]
    max_attempts: i32,

    /// Seconds to pause sending after the SMTP server refused us rather than a message: a 5xx
    /// to the greeting, EHLO, STARTTLS, AUTH, MAIL FROM or DATA, or an untrusted certificate.
    /// No attempt is counted; sending resumes by itself when the server accepts again.
    #[arg(long, env = "RELAY_REFUSED_PAUSE_SECS", default_value_t = 60)]
    refused_pause_secs: u64,

    /// Seconds in-flight sends may take to finish at shutdown.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,

    /// Address of the gRPC health service (grpc.health.v1): "liveness" is SERVING while the
    /// process runs; "readiness" (and "") while the database answers and sending is not paused.
    /// Port 0 picks a free port; the address is logged.
    #[arg(long, env = "RELAY_HEALTH_ADDR", default_value = "127.0.0.1:50052")]
    health_addr: SocketAddr,

    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. 0.0.0.0:9465; unset: no
    /// metrics endpoint.
    #[arg(long, env = "RELAY_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

/// How often the backlog gauges are read from the database.
const METRICS_SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

impl Cli {
    /// Runs the chosen command; errors are logged and turn into a failing exit code.
    pub fn run(self) -> ExitCode {
        telemetry::run(self.log_format, "outbox-relay", async move {
            match self.command {
                Command::Serve(args) => serve(*args).await,
            }
        })
    }
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    let database_url = secret::require(
        "DATABASE_URL",
        args.database_url.take(),
        args.database_url_file.as_deref(),
    )?;
    let listen_database_url = secret::resolve(
        "RELAY_LISTEN_DATABASE_URL",
        args.listen_database_url.take(),
        args.listen_database_url_file.as_deref(),
    )?;
    anyhow::ensure!(args.batch_size > 0, "the batch size must be positive");
    anyhow::ensure!(args.concurrency > 0, "the concurrency must be positive");
    anyhow::ensure!(args.max_attempts > 0, "the attempt limit must be positive");
    let concurrency = usize::try_from(args.concurrency)?;
    let (mailer, from, links) = args.delivery.build(concurrency)?;
    let renderer = Renderer::new(links)?;
    let session = SessionTimeouts {
        statement: Duration::from_millis(args.db_statement_timeout_ms),
        lock: Duration::from_millis(args.db_lock_timeout_ms),
    };
    session.validate().map_err(|e| {
        anyhow::anyhow!("RELAY_DB_STATEMENT_TIMEOUT_MS / RELAY_DB_LOCK_TIMEOUT_MS: {e}")
    })?;
    let pool = store::pool(
        &database_url,
        concurrency + 2,
        Duration::from_secs(5),
        session,
    )?;
    let config = RelayConfig {
        batch_size: args.batch_size,
        concurrency,
        lease: Duration::from_secs(args.lease_secs.max(1)),
        smtp_timeout: args.delivery.smtp_timeout(),
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
        retry: RetryPolicy {
            base: Duration::from_millis(args.retry_base_ms),
            factor: args.retry_factor.max(1.0),
            cap: Duration::from_secs(args.retry_cap_secs),
            max_attempts: args.max_attempts,
        },
        refused_pause: Duration::from_secs(args.refused_pause_secs),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
    };
    let publisher = args.events.publisher(&config.retry, config.lease).await?;
    let listen_url = listen_url(
        database_url.clone(),
        listen_database_url,
        config.poll_interval,
    )?;
    let relay = Arc::new(Relay::new(
        pool,
        listen_url,
        mailer,
        renderer,
        from.clone(),
        publisher,
        config.clone(),
    )?);
    let health = HealthService::bind(args.health_addr).await?;
    // Listening before the relay says it started, so a scrape from then on is answered.
    let metrics_addr = args.metrics_addr;
    if let Some(addr) = metrics_addr {
        crate::metrics::install(addr)?;
    }
    tracing::info!(
        batch_size = config.batch_size,
        concurrency = config.concurrency,
        lease = ?config.lease,
        from = %from,
        events = relay.publishes_events(),
        "outbox-relay started"
    );
    let health = health.spawn(Arc::clone(&relay));
    let samples = metrics_addr
        .map(|_| tokio::spawn(Arc::clone(&relay).sample_metrics(METRICS_SAMPLE_INTERVAL)));
    let stopped = relay.run(shutdown_signal()).await;
    health.abort();
    if let Some(samples) = samples {
        samples.abort();
    }
    stopped
}

/// Where the relay LISTENs: `listen` if given, else `database` unless that is a transaction
/// pooler (LISTEN there would hold a server session the pooler hands to others, and hear
/// nothing); then nowhere, and the relay polls.
fn listen_url(
    database: SecretString,
    listen: Option<SecretString>,
    poll_interval: Duration,
) -> anyhow::Result<Option<SecretString>> {
    let pooled = |url: &SecretString| -> anyhow::Result<bool> {
        Ok(Connector::new(url.expose_secret())?.pool_mode() == PoolMode::Transaction)
    };
    if let Some(listen) = listen {
        anyhow::ensure!(
            !pooled(&listen)?,
            "RELAY_LISTEN_DATABASE_URL has pool_mode=transaction, through which LISTEN cannot \
             work: give the database's own address (or a session-mode pooler's)"
        );
        return Ok(Some(listen));
    }
    if pooled(&database)? {
        tracing::info!(
            poll_interval = ?poll_interval,
            "DATABASE_URL leads to a transaction pooler, through which LISTEN cannot work: \
             looking at the outbox every poll interval; set RELAY_LISTEN_DATABASE_URL to the \
             database's own address to be woken at once"
        );
        return Ok(None);
    }
    Ok(Some(database))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
