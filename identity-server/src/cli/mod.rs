//! The command line: `identity-server serve`, `migrate` and `keygen`. Every option can also come
//! from the environment variable named in `--help`.
//!
//! - this module: the commands and what each one does;
//! - [`serve_args`]: the options of `serve`, as clap reads them;
//! - [`settings`]: checking those options and turning them into the server's
//!   [`Settings`](crate::startup::Settings).

mod serve_args;
mod settings;

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Args, Parser, Subcommand};
use identity_proto::{
    secret::{self, SecretError},
    telemetry::{self, LogFormat},
};
use secrecy::SecretString;
use time::OffsetDateTime;

use self::serve_args::ServeArgs;
use crate::{
    abuse,
    clock::SystemClock,
    db,
    startup::{self, Application},
    tokens::KeyRing,
};

/// gRPC identity service on PostgreSQL: sign-up with email verification, sessions (PASETO
/// access tokens, rotating refresh tokens) and password reset. Emails are queued in a
/// transactional outbox that outbox-relay delivers.
///
/// Traces go to an OpenTelemetry collector over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is
/// set; the other standard OTEL_* variables apply (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER,
/// OTEL_EXPORTER_OTLP_CERTIFICATE, ...). RUST_LOG filters the log (default: info).
#[derive(Debug, Parser)]
#[command(name = "identity-server", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log line format.
    #[arg(
        long,
        env = "IDENTITY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API (with health, reflection and gRPC-Web) until SIGINT or SIGTERM.
    ///
    /// Refuses to start while migrations are pending, unless given --migrate.
    ///
    /// Secrets as files: each secret (DATABASE_URL, IDENTITY_CODE_HMAC_KEY,
    /// IDENTITY_CHALLENGE_HMAC_KEY) can instead be given as NAME_FILE (e.g. DATABASE_URL_FILE,
    /// --database-url-file), the path of a file holding it, such as a mounted Secret: read once
    /// at start-up, one line ending at its end dropped. Prefer it: a variable's value stays
    /// readable in /proc/<pid>/environ and in crash dumps, and a flag's is shown by `ps` to every
    /// local user.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations, then exit.
    ///
    /// The database URL can be given as a file instead (DATABASE_URL_FILE), as for serve. It
    /// needs a session of its own (it holds an advisory lock while it runs): the URL must reach
    /// PostgreSQL directly, not through a transaction pooler (pool_mode=transaction).
    Migrate(DatabaseArgs),
    /// Write a new Ed25519 signing key (PASERK k4.secret, mode 0600) into the keys directory.
    ///
    /// Running servers publish it (ListPublicKeys) at their next reload (SIGHUP, or within
    /// IDENTITY_KEYS_RELOAD_SECS) and sign with it once IDENTITY_KEY_ACTIVATION_DELAY_SECS have
    /// passed since it was made; older keys stay published so tokens they signed keep
    /// verifying. Retire an old key by deleting its file once its not_after has passed.
    Keygen(KeygenArgs),
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Directory of signing keys (created if missing).
    #[arg(long, env = "IDENTITY_KEYS_DIR")]
    keys_dir: PathBuf,
}

#[derive(Debug, Args)]
struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/identity?sslmode=verify-full&sslrootcert=/etc/identity/db-ca.pem.
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
}

impl DatabaseArgs {
    /// The URL, from DATABASE_URL or the file DATABASE_URL_FILE names.
    fn url(self) -> Result<SecretString, SecretError> {
        secret::require(
            "DATABASE_URL",
            self.database_url,
            self.database_url_file.as_deref(),
        )
    }
}

impl Cli {
    /// Runs the chosen command; errors are logged and turn into a failing exit code.
    pub fn run(self) -> ExitCode {
        telemetry::run(self.log_format, "identity-server", async move {
            match self.command {
                Command::Migrate(args) => migrate(&args.url()?).await,
                Command::Keygen(args) => keygen(&args.keys_dir),
                Command::Serve(args) => serve(*args).await,
            }
        })
    }
}

fn keygen(keys_dir: &std::path::Path) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let path = KeyRing::generate(keys_dir, now)?;
    // Loaded with no delay, the newest key is the one just written.
    let ring = KeyRing::load(keys_dir, time::Duration::ZERO, now)?;
    tracing::info!(
        path = %path.display(),
        key_id = ring.signing_key_id(now),
        "signing key written; running servers publish it at their next reload (SIGHUP, or within IDENTITY_KEYS_RELOAD_SECS) and sign with it once IDENTITY_KEY_ACTIVATION_DELAY_SECS have passed"
    );
    Ok(())
}

async fn migrate(database_url: &SecretString) -> anyhow::Result<()> {
    let applied = db::run_migrations(database_url).await?;
    if applied.is_empty() {
        tracing::info!("database schema is up to date");
    } else {
        tracing::info!(?applied, "migrations applied");
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let apply_migrations = args.migrate;
    let settings = args.into_settings()?;
    if apply_migrations {
        migrate(&settings.database.url).await?;
    } else {
        let pending = db::pending_migrations(&settings.database.url).await?;
        anyhow::ensure!(
            pending.is_empty(),
            "{} database migration(s) pending ({}); run `identity-server migrate` first or pass --migrate",
            pending.len(),
            pending.join(", ")
        );
    }
    tracing::info!(
        hash_workers = settings.hashing.workers,
        hash_queue = settings.hashing.queue,
        argon2.m_kib = settings.hashing.params.m_cost(),
        argon2.t = settings.hashing.params.t_cost(),
        argon2.p = settings.hashing.params.p_cost(),
        rate_limits = settings
            .abuse
            .limits
            .as_ref()
            .map_or_else(|| "off".to_owned(), abuse::Limits::describe),
        trusted_proxies = settings.abuse.identity.trusted_proxies.len(),
        trust_trace_context = ?settings.abuse.identity.trace_context,
        "starting"
    );
    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    app.run_until_stopped(startup::shutdown_signal()).await
}
