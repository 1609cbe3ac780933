//! The command line: `identity-server serve` and `identity-server migrate`. Every option can
//! also come from the environment variable named in `--help`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use argon2::Params;
use clap::{Args, Parser, Subcommand};
use http::HeaderValue;
use identity_proto::pg::SessionTimeouts;
use secrecy::SecretString;
use time::OffsetDateTime;

use crate::{
    clock::SystemClock,
    db,
    domain::CodeKey,
    hashing::HashingConfig,
    janitor, password_reset, registration, sessions,
    startup::{self, Application, Settings},
    telemetry::{self, LogFormat},
    tokens::{KeyDirectory, KeyRing, Rotation, TokenSettings},
};

/// gRPC identity service: sign-up (Register, VerifyEmail, ResendVerificationEmail) on
/// PostgreSQL, with verification emails queued in a transactional outbox that outbox-relay
/// delivers.
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
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations, then exit.
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
    /// sslrootcert: a PEM file of CA certificates, or "system" for the public web roots.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    database_url: SecretString,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    database: DatabaseArgs,

    /// Address to listen on for gRPC, gRPC-Web and health checks (port 0 picks a free port).
    #[arg(long, env = "IDENTITY_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,

    /// Apply pending migrations before serving.
    #[arg(long)]
    migrate: bool,

    /// Secret key for the MACs of verification codes: at least 32 bytes, e.g. from
    /// `openssl rand -hex 32`. Keep it stable: changing it invalidates outstanding codes.
    #[arg(long, env = "IDENTITY_CODE_HMAC_KEY", hide_env_values = true, value_parser = parse_secret)]
    code_hmac_key: SecretString,

    /// Most database connections open at once.
    #[arg(long, env = "IDENTITY_DB_POOL_SIZE", default_value_t = 16)]
    db_pool_size: usize,

    /// Milliseconds to wait for a database connection before answering UNAVAILABLE.
    #[arg(long, env = "IDENTITY_DB_TIMEOUT_MS", default_value_t = 1000)]
    db_timeout_ms: u64,

    /// Milliseconds any one SQL statement may run (PostgreSQL statement_timeout, set on every
    /// pooled connection); a call that hits it answers UNAVAILABLE and changes nothing.
    #[arg(long, env = "IDENTITY_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    db_statement_timeout_ms: u64,

    /// Milliseconds a statement may wait for a lock (PostgreSQL lock_timeout), so no call
    /// hangs behind a stuck lock: it answers UNAVAILABLE and changes nothing. At most the
    /// statement timeout.
    #[arg(long, env = "IDENTITY_DB_LOCK_TIMEOUT_MS", default_value_t = 2000)]
    db_lock_timeout_ms: u64,

    /// Password hashes computed at once (default: one per CPU core).
    #[arg(long, env = "IDENTITY_HASH_WORKERS")]
    hash_workers: Option<usize>,

    /// Password hashes allowed to wait for a worker; beyond that, calls fail fast with
    /// RESOURCE_EXHAUSTED and a retry delay.
    #[arg(long, env = "IDENTITY_HASH_QUEUE", default_value_t = 32)]
    hash_queue: usize,

    /// Argon2id memory cost in KiB.
    #[arg(long, env = "IDENTITY_ARGON2_M_KIB", default_value_t = Params::DEFAULT_M_COST)]
    argon2_m_kib: u32,

    /// Argon2id iterations.
    #[arg(long, env = "IDENTITY_ARGON2_T", default_value_t = Params::DEFAULT_T_COST)]
    argon2_t: u32,

    /// Argon2id parallelism.
    #[arg(long, env = "IDENTITY_ARGON2_P", default_value_t = Params::DEFAULT_P_COST)]
    argon2_p: u32,

    /// Seconds a verification link and code stay valid.
    #[arg(long, env = "IDENTITY_VERIFICATION_TTL_SECS", default_value_t = 24 * 60 * 60)]
    verification_ttl_secs: i64,

    /// Least seconds between two verification emails to one account.
    #[arg(long, env = "IDENTITY_RESEND_COOLDOWN_SECS", default_value_t = 60)]
    resend_cooldown_secs: i64,

    /// Directory of PASERK k4.secret signing keys (see `identity-server keygen`); in production
    /// a mounted Kubernetes Secret.
    #[arg(long, env = "IDENTITY_KEYS_DIR")]
    keys_dir: PathBuf,

    /// `iss` of access tokens.
    #[arg(long, env = "IDENTITY_TOKEN_ISSUER", default_value = "identity")]
    token_issuer: String,

    /// `aud` of access tokens.
    #[arg(
        long,
        env = "IDENTITY_TOKEN_AUDIENCE",
        default_value = "identity-clients"
    )]
    token_audience: String,

    /// Seconds an access token lives.
    #[arg(long, env = "IDENTITY_ACCESS_TOKEN_TTL_SECS", default_value_t = 15 * 60)]
    access_token_ttl_secs: i64,

    /// Seconds between checks of the keys directory for added or removed keys (SIGHUP checks at
    /// once).
    #[arg(long, env = "IDENTITY_KEYS_RELOAD_SECS", default_value_t = 60)]
    keys_reload_secs: u64,

    /// Seconds after a key was made (the time in its file name) before it signs; until then it
    /// is only published, so every replica and every verifier knows it before meeting a token
    /// it signed. At least IDENTITY_KEYS_RELOAD_SECS. A sole key signs at once.
    #[arg(long, env = "IDENTITY_KEY_ACTIVATION_DELAY_SECS", default_value_t = 60 * 60)]
    key_activation_delay_secs: u64,

    /// Seconds after a refresh token was rotated during which presenting it again is taken for
    /// a retry (a lost answer, two tabs) and gets a fresh pair for the same session, instead of
    /// revoking the session as reuse. 0 turns this off; at most 300.
    #[arg(long, env = "IDENTITY_REFRESH_REUSE_GRACE_SECS", default_value_t = 20)]
    refresh_reuse_grace_secs: u64,

    /// Seconds a session (its refresh tokens) lives, however often it is refreshed.
    #[arg(long, env = "IDENTITY_REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 60 * 60)]
    refresh_token_ttl_secs: i64,

    /// Seconds a password-reset link works.
    #[arg(long, env = "IDENTITY_RESET_TOKEN_TTL_SECS", default_value_t = 60 * 60)]
    reset_token_ttl_secs: i64,

    /// Least seconds between two password-reset emails to one account.
    #[arg(long, env = "IDENTITY_RESET_COOLDOWN_SECS", default_value_t = 60)]
    reset_cooldown_secs: i64,

    /// Browser origins allowed to call over gRPC-Web (comma-separated), e.g.
    /// https://app.example.com. Empty: no cross-origin calls.
    #[arg(long, env = "IDENTITY_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    cors_allowed_origins: Vec<HeaderValue>,

    /// Wrong verification codes an account may enter across all its emails; past it, codes
    /// are refused (TOO_MANY_ATTEMPTS) and only the link verifies.
    #[arg(
        long,
        env = "IDENTITY_MAX_WRONG_CODES_PER_ACCOUNT",
        default_value_t = 15
    )]
    max_wrong_codes_per_account: i32,

    /// Seconds between two janitor sweeps, which delete expired rows and never-verified
    /// accounts. Every replica runs one; they share the work.
    #[arg(long, env = "IDENTITY_JANITOR_INTERVAL_SECS", default_value_t = 5 * 60)]
    janitor_interval_secs: u64,

    /// Most rows one janitor statement deletes.
    #[arg(long, env = "IDENTITY_JANITOR_BATCH_SIZE", default_value_t = 1000)]
    janitor_batch_size: i64,

    /// Seconds a pending account may wait for verification; then, once none of its links
    /// works, the janitor deletes it and the address is free again.
    #[arg(long, env = "IDENTITY_UNVERIFIED_ACCOUNT_TTL_SECS", default_value_t = 7 * 24 * 60 * 60)]
    unverified_account_ttl_secs: i64,

    /// Seconds used or expired verification links, codes and reset links are kept (their
    /// users are told "expired" or "already used" meanwhile, then "invalid").
    #[arg(long, env = "IDENTITY_SPENT_SECRET_RETENTION_SECS", default_value_t = 7 * 24 * 60 * 60)]
    spent_secret_retention_secs: i64,

    /// Seconds a login-throttle record is kept after its last failure and its block end.
    #[arg(long, env = "IDENTITY_LOGIN_THROTTLE_RETENTION_SECS", default_value_t = 24 * 60 * 60)]
    login_throttle_retention_secs: i64,

    /// Seconds dead letters (outbox_dead) are kept.
    #[arg(long, env = "IDENTITY_DEAD_LETTER_RETENTION_SECS", default_value_t = 30 * 24 * 60 * 60)]
    dead_letter_retention_secs: i64,

    /// Milliseconds between two readiness checks of the database (health service `readiness`).
    #[arg(long, env = "IDENTITY_READINESS_INTERVAL_MS", default_value_t = 5000)]
    readiness_interval_ms: u64,

    /// Seconds the server keeps serving after SIGTERM while reporting NOT_SERVING, so load
    /// balancers stop routing to it before it stops accepting connections.
    #[arg(long, env = "IDENTITY_SHUTDOWN_DRAIN_DELAY_SECS", default_value_t = 5)]
    shutdown_drain_delay_secs: u64,

    /// Seconds in-flight calls then have to finish before their connections are closed.
    #[arg(long, env = "IDENTITY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
}

/// Longest key activation delay accepted (30 days); longer is almost certainly a mistake.
const MAX_ACTIVATION_DELAY_SECS: u64 = 30 * 24 * 60 * 60;
/// Longest refresh reuse grace window accepted: a longer one lets a replayed token go unnoticed
/// for longer.
const MAX_REFRESH_REUSE_GRACE_SECS: u64 = 300;

fn parse_secret(raw: &str) -> Result<SecretString, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(raw))
}

impl ServeArgs {
    fn into_settings(self) -> anyhow::Result<Settings> {
        use secrecy::ExposeSecret;

        let code_key = CodeKey::new(self.code_hmac_key.expose_secret().as_bytes().to_vec())
            .map_err(|e| anyhow::anyhow!("IDENTITY_CODE_HMAC_KEY {e}"))?;
        let params = Params::new(self.argon2_m_kib, self.argon2_t, self.argon2_p, None)
            .map_err(|e| anyhow::anyhow!("invalid Argon2 parameters: {e}"))?;
        let workers = self.hash_workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        anyhow::ensure!(
            self.verification_ttl_secs > 0,
            "the verification TTL must be positive"
        );
        anyhow::ensure!(
            self.resend_cooldown_secs >= 0,
            "the resend cooldown cannot be negative"
        );
        anyhow::ensure!(
            self.access_token_ttl_secs > 0,
            "the access token lifetime must be positive"
        );
        anyhow::ensure!(
            self.refresh_token_ttl_secs > 0,
            "the refresh token lifetime must be positive"
        );
        anyhow::ensure!(
            self.reset_token_ttl_secs > 0,
            "the reset link lifetime must be positive"
        );
        anyhow::ensure!(
            self.reset_cooldown_secs >= 0,
            "the reset cooldown cannot be negative"
        );
        anyhow::ensure!(
            self.max_wrong_codes_per_account > 0,
            "IDENTITY_MAX_WRONG_CODES_PER_ACCOUNT must be positive"
        );
        anyhow::ensure!(
            self.janitor_interval_secs > 0,
            "IDENTITY_JANITOR_INTERVAL_SECS must be positive"
        );
        anyhow::ensure!(
            (1..=100_000).contains(&self.janitor_batch_size),
            "IDENTITY_JANITOR_BATCH_SIZE must be between 1 and 100000"
        );
        anyhow::ensure!(
            self.unverified_account_ttl_secs >= self.verification_ttl_secs,
            "IDENTITY_UNVERIFIED_ACCOUNT_TTL_SECS ({}) must be at least \
             IDENTITY_VERIFICATION_TTL_SECS ({}): an account must outlive its first link",
            self.unverified_account_ttl_secs,
            self.verification_ttl_secs
        );
        anyhow::ensure!(
            self.spent_secret_retention_secs >= 0
                && self.login_throttle_retention_secs >= 0
                && self.dead_letter_retention_secs >= 0,
            "retention periods cannot be negative"
        );
        anyhow::ensure!(
            self.readiness_interval_ms > 0,
            "IDENTITY_READINESS_INTERVAL_MS must be positive"
        );
        anyhow::ensure!(
            self.keys_reload_secs > 0,
            "the keys reload interval must be positive"
        );
        anyhow::ensure!(
            (self.keys_reload_secs..=MAX_ACTIVATION_DELAY_SECS)
                .contains(&self.key_activation_delay_secs),
            "the key activation delay ({}s) must be at least the keys reload interval ({}s), so \
             that every replica has loaded a key before any signs with it, and at most {}s",
            self.key_activation_delay_secs,
            self.keys_reload_secs,
            MAX_ACTIVATION_DELAY_SECS
        );
        anyhow::ensure!(
            self.refresh_reuse_grace_secs <= MAX_REFRESH_REUSE_GRACE_SECS,
            "the refresh reuse grace window must be at most {MAX_REFRESH_REUSE_GRACE_SECS}s"
        );
        let session = SessionTimeouts {
            statement: Duration::from_millis(self.db_statement_timeout_ms),
            lock: Duration::from_millis(self.db_lock_timeout_ms),
        };
        session.validate().map_err(|e| {
            anyhow::anyhow!("IDENTITY_DB_STATEMENT_TIMEOUT_MS / IDENTITY_DB_LOCK_TIMEOUT_MS: {e}")
        })?;
        let rotation = Rotation {
            activation_delay: time::Duration::seconds(self.key_activation_delay_secs.cast_signed()),
            reload_interval: Duration::from_secs(self.keys_reload_secs),
        };
        let keys = KeyDirectory::open(&self.keys_dir, rotation, OffsetDateTime::now_utc())?;
        Ok(Settings {
            grpc_addr: self.grpc_addr,
            database: db::PoolConfig {
                url: self.database.database_url,
                max_size: self.db_pool_size,
                timeout: Duration::from_millis(self.db_timeout_ms),
                session,
            },
            hashing: HashingConfig {
                params,
                workers,
                queue: self.hash_queue,
            },
            code_key,
            registration: registration::Settings {
                verification_ttl: time::Duration::seconds(self.verification_ttl_secs),
                resend_cooldown: time::Duration::seconds(self.resend_cooldown_secs),
                max_wrong_codes_per_account: self.max_wrong_codes_per_account,
                ..registration::Settings::default()
            },
            keys: Arc::new(keys),
            sessions: sessions::Settings {
                tokens: TokenSettings {
                    issuer: self.token_issuer,
                    audience: self.token_audience,
                    access_ttl: time::Duration::seconds(self.access_token_ttl_secs),
                },
                refresh_ttl: time::Duration::seconds(self.refresh_token_ttl_secs),
                refresh_reuse_grace: time::Duration::seconds(
                    self.refresh_reuse_grace_secs.cast_signed(),
                ),
                ..sessions::Settings::default()
            },
            password_reset: password_reset::Settings {
                token_ttl: time::Duration::seconds(self.reset_token_ttl_secs),
                cooldown: time::Duration::seconds(self.reset_cooldown_secs),
            },
            cors_allowed_origins: self.cors_allowed_origins,
            janitor: janitor::Settings {
                interval: Duration::from_secs(self.janitor_interval_secs),
                batch_size: self.janitor_batch_size,
                spent_secret_retention: time::Duration::seconds(self.spent_secret_retention_secs),
                login_throttle_retention: time::Duration::seconds(
                    self.login_throttle_retention_secs,
                ),
                dead_letter_retention: time::Duration::seconds(self.dead_letter_retention_secs),
                unverified_account_ttl: time::Duration::seconds(self.unverified_account_ttl_secs),
            },
            readiness_interval: Duration::from_millis(self.readiness_interval_ms),
            shutdown: startup::Shutdown {
                drain_delay: Duration::from_secs(self.shutdown_drain_delay_secs),
                grace: Duration::from_secs(self.shutdown_grace_secs),
            },
        })
    }
}

impl Cli {
    /// Runs the chosen command; errors are logged and turn into a failing exit code.
    pub fn run(self) -> ExitCode {
        telemetry::init(self.log_format);
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error.message = %e, "cannot start the async runtime");
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(async {
            match self.command {
                Command::Migrate(args) => migrate(&args.database_url).await,
                Command::Keygen(args) => keygen(&args.keys_dir),
                Command::Serve(args) => serve(*args).await,
            }
        });
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "identity-server failed");
                ExitCode::FAILURE
            }
        }
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
        "starting"
    );
    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    app.run_until_stopped(startup::shutdown_signal()).await
}
