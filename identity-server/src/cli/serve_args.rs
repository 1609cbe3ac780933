//! The options of `identity-server serve`; each can also come from its environment variable.

use std::{net::SocketAddr, path::PathBuf};

use argon2::Params;
use clap::Args;
use http::HeaderValue;
use secrecy::SecretString;

use identity_proto::secret;

use super::DatabaseArgs;
use crate::abuse::{ForwardedHeader, TraceContextTrust, client::Cidr};
use crate::challenge::{Policy, Settings as ChallengeSettings};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    pub(super) database: DatabaseArgs,

    /// Address to listen on for gRPC, gRPC-Web and health checks (port 0 picks a free port).
    #[arg(long, env = "IDENTITY_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub(super) grpc_addr: SocketAddr,

    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. 0.0.0.0:9464; unset: no
    /// metrics endpoint.
    #[arg(long, env = "IDENTITY_METRICS_ADDR")]
    pub(super) metrics_addr: Option<SocketAddr>,

    /// PEM certificate chain (the server's certificate first) for TLS on the gRPC port, with
    /// IDENTITY_TLS_KEY_FILE; unset: plaintext. Read again every IDENTITY_TLS_RELOAD_SECS, so
    /// a renewed certificate is served without a restart.
    #[arg(
        long,
        env = "IDENTITY_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "tls_key_file"
    )]
    pub(super) tls_cert_file: Option<PathBuf>,

    /// PEM private key of IDENTITY_TLS_CERT_FILE.
    #[arg(
        long,
        env = "IDENTITY_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub(super) tls_key_file: Option<PathBuf>,

    /// PEM CA certificates that clients' certificates must chain to: mutual TLS, every
    /// client must present a certificate (needs IDENTITY_TLS_CERT_FILE).
    #[arg(
        long,
        env = "IDENTITY_TLS_CLIENT_CA_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub(super) tls_client_ca_file: Option<PathBuf>,

    /// Seconds between two reads of the TLS files.
    #[arg(long, env = "IDENTITY_TLS_RELOAD_SECS", default_value_t = 30)]
    pub(super) tls_reload_secs: u64,

    /// A plaintext address serving only the health service (grpc.health.v1), for probes that
    /// cannot speak TLS (Kubernetes' gRPC probes), e.g. 0.0.0.0:50052; unset: none.
    #[arg(long, env = "IDENTITY_HEALTH_ADDR")]
    pub(super) health_addr: Option<SocketAddr>,

    /// Seconds after which a client connection is asked to close (HTTP/2 GOAWAY; calls in
    /// flight finish first), so that long-lived connections spread over new replicas; 0: never.
    #[arg(long, env = "IDENTITY_MAX_CONNECTION_AGE_SECS", default_value_t = 300)]
    pub(super) max_connection_age_secs: u64,

    /// Apply pending migrations before serving.
    #[arg(long)]
    pub(super) migrate: bool,

    /// Secret key for the MACs of verification codes: at least 32 bytes, e.g. from
    /// `openssl rand -hex 32`. Keep it stable: changing it invalidates outstanding codes.
    /// Required, as this or IDENTITY_CODE_HMAC_KEY_FILE.
    #[arg(long, env = "IDENTITY_CODE_HMAC_KEY", hide_env_values = true, value_parser = secret::parse)]
    pub(super) code_hmac_key: Option<SecretString>,

    /// A file holding the code MAC key, instead of IDENTITY_CODE_HMAC_KEY.
    #[arg(long, env = "IDENTITY_CODE_HMAC_KEY_FILE", value_name = "FILE")]
    pub(super) code_hmac_key_file: Option<PathBuf>,

    /// When Register, ResendVerificationEmail and RequestPasswordReset require a solved
    /// proof-of-work challenge (ALTCHA): off, always, or adaptive (once the client IP has used
    /// IDENTITY_CHALLENGE_SOFT_THRESHOLD_PERCENT of its rate-limit burst).
    #[arg(
        long,
        env = "IDENTITY_CHALLENGE_POLICY",
        value_enum,
        default_value = "adaptive"
    )]
    pub(super) challenge_policy: Policy,

    /// Secret key that signs challenges: at least 32 bytes, the same on every replica, e.g.
    /// from `openssl rand -hex 32`. Required unless IDENTITY_CHALLENGE_POLICY is off.
    /// Changing it invalidates the challenges in flight (they live minutes).
    #[arg(long, env = "IDENTITY_CHALLENGE_HMAC_KEY", hide_env_values = true, value_parser = secret::parse)]
    pub(super) challenge_hmac_key: Option<SecretString>,

    /// A file holding the challenge key, instead of IDENTITY_CHALLENGE_HMAC_KEY.
    #[arg(long, env = "IDENTITY_CHALLENGE_HMAC_KEY_FILE", value_name = "FILE")]
    pub(super) challenge_hmac_key_file: Option<PathBuf>,

    /// Challenge difficulty: the secret number is drawn from 0..=this, so a solver needs half
    /// this many SHA-256 hashes on average. From 1000 to 10000000.
    #[arg(long, env = "IDENTITY_CHALLENGE_MAX_NUMBER", default_value_t = ChallengeSettings::DEFAULT_MAX_NUMBER)]
    pub(super) challenge_max_number: u32,

    /// Seconds a challenge can be solved and its solution submitted (60 to 86400).
    #[arg(long, env = "IDENTITY_CHALLENGE_TTL_SECS", default_value_t = ChallengeSettings::DEFAULT_TTL.whole_seconds())]
    pub(super) challenge_ttl_secs: i64,

    /// For the adaptive policy: percent of its rate-limit burst a client IP uses before
    /// challenges are required (1 to 99; the hard limit is 100).
    #[arg(
        long,
        env = "IDENTITY_CHALLENGE_SOFT_THRESHOLD_PERCENT",
        default_value_t = ChallengeSettings::DEFAULT_SOFT_THRESHOLD_PERCENT
    )]
    pub(super) challenge_soft_threshold_percent: u8,

    /// Most database connections open at once.
    #[arg(long, env = "IDENTITY_DB_POOL_SIZE", default_value_t = 16)]
    pub(super) db_pool_size: usize,

    /// Milliseconds to wait for a database connection before answering UNAVAILABLE.
    #[arg(long, env = "IDENTITY_DB_TIMEOUT_MS", default_value_t = 1000)]
    pub(super) db_timeout_ms: u64,

    /// Milliseconds any one SQL statement may run (PostgreSQL statement_timeout, set on every
    /// pooled connection); a call that hits it answers UNAVAILABLE and changes nothing.
    #[arg(long, env = "IDENTITY_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    pub(super) db_statement_timeout_ms: u64,

    /// Milliseconds a statement may wait for a lock (PostgreSQL lock_timeout), so no call
    /// hangs behind a stuck lock: it answers UNAVAILABLE and changes nothing. At most the
    /// statement timeout.
    #[arg(long, env = "IDENTITY_DB_LOCK_TIMEOUT_MS", default_value_t = 2000)]
    pub(super) db_lock_timeout_ms: u64,

    /// Password hashes computed at once (default: one per CPU core).
    #[arg(long, env = "IDENTITY_HASH_WORKERS")]
    pub(super) hash_workers: Option<usize>,

    /// Password hashes allowed to wait for a worker; beyond that, calls fail fast with
    /// RESOURCE_EXHAUSTED and a retry delay.
    #[arg(long, env = "IDENTITY_HASH_QUEUE", default_value_t = 32)]
    pub(super) hash_queue: usize,

    /// Argon2id memory cost in KiB.
    #[arg(long, env = "IDENTITY_ARGON2_M_KIB", default_value_t = Params::DEFAULT_M_COST)]
    pub(super) argon2_m_kib: u32,

    /// Argon2id iterations.
    #[arg(long, env = "IDENTITY_ARGON2_T", default_value_t = Params::DEFAULT_T_COST)]
    pub(super) argon2_t: u32,

    /// Argon2id parallelism.
    #[arg(long, env = "IDENTITY_ARGON2_P", default_value_t = Params::DEFAULT_P_COST)]
    pub(super) argon2_p: u32,

    /// Seconds a verification link and code stay valid.
    #[arg(long, env = "IDENTITY_VERIFICATION_TTL_SECS", default_value_t = 24 * 60 * 60)]
    pub(super) verification_ttl_secs: i64,

    /// Least seconds between two verification emails to one account.
    #[arg(long, env = "IDENTITY_RESEND_COOLDOWN_SECS", default_value_t = 60)]
    pub(super) resend_cooldown_secs: i64,

    /// Directory of PASERK k4.secret signing keys (see `identity-server keygen`); in production
    /// a mounted Kubernetes Secret.
    #[arg(long, env = "IDENTITY_KEYS_DIR")]
    pub(super) keys_dir: PathBuf,

    /// `iss` of access tokens.
    #[arg(long, env = "IDENTITY_TOKEN_ISSUER", default_value = "identity")]
    pub(super) token_issuer: String,

    /// `aud` of access tokens.
    #[arg(
        long,
        env = "IDENTITY_TOKEN_AUDIENCE",
        default_value = "identity-clients"
    )]
    pub(super) token_audience: String,

    /// Seconds an access token lives.
    #[arg(long, env = "IDENTITY_ACCESS_TOKEN_TTL_SECS", default_value_t = 15 * 60)]
    pub(super) access_token_ttl_secs: i64,

    /// Seconds between checks of the keys directory for added or removed keys (SIGHUP checks at
    /// once).
    #[arg(long, env = "IDENTITY_KEYS_RELOAD_SECS", default_value_t = 60)]
    pub(super) keys_reload_secs: u64,

    /// Seconds after a key was made (the time in its file name) before it signs; until then it
    /// is only published, so every replica and every verifier knows it before meeting a token
    /// it signed. At least IDENTITY_KEYS_RELOAD_SECS. A sole key signs at once.
    #[arg(long, env = "IDENTITY_KEY_ACTIVATION_DELAY_SECS", default_value_t = 60 * 60)]
    pub(super) key_activation_delay_secs: u64,

    /// Seconds after a refresh token was rotated during which presenting it again is taken for
    /// a retry (a lost answer, two tabs) and gets a fresh pair for the same session, instead of
    /// revoking the session as reuse. 0 turns this off; at most 300.
    #[arg(long, env = "IDENTITY_REFRESH_REUSE_GRACE_SECS", default_value_t = 20)]
    pub(super) refresh_reuse_grace_secs: u64,

    /// Seconds a session (its refresh tokens) lives, however often it is refreshed.
    #[arg(long, env = "IDENTITY_REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 60 * 60)]
    pub(super) refresh_token_ttl_secs: i64,

    /// Seconds a password-reset link works.
    #[arg(long, env = "IDENTITY_RESET_TOKEN_TTL_SECS", default_value_t = 60 * 60)]
    pub(super) reset_token_ttl_secs: i64,

    /// Least seconds between two password-reset emails to one account.
    #[arg(long, env = "IDENTITY_RESET_COOLDOWN_SECS", default_value_t = 60)]
    pub(super) reset_cooldown_secs: i64,

    /// Browser origins allowed to call over gRPC-Web (comma-separated), e.g.
    /// https://app.example.com. Empty: no cross-origin calls.
    #[arg(long, env = "IDENTITY_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(super) cors_allowed_origins: Vec<HeaderValue>,

    /// Wrong verification codes an account may enter across all its emails; past it, codes
    /// are refused (TOO_MANY_ATTEMPTS) and only the link verifies.
    #[arg(
        long,
        env = "IDENTITY_MAX_WRONG_CODES_PER_ACCOUNT",
        default_value_t = 15
    )]
    pub(super) max_wrong_codes_per_account: i32,

    /// Register answers an address that has an active account exactly as a new one (OK, a
    /// fresh id, the same time) and emails the owner a notice at most once an hour. `false`
    /// (for trusted internal callers only) answers ALREADY_EXISTS instead, and
    /// RESOURCE_EXHAUSTED when the address's email budget is spent.
    #[arg(
        long,
        env = "IDENTITY_REGISTER_ENUMERATION_SAFE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(super) register_enumeration_safe: bool,

    /// Queue domain events (identity.user.registered.v1, ...) in the outbox, in the transaction
    /// of each change, for outbox-relay to publish to NATS JetStream. Turn it on only where a
    /// relay runs with NATS_URL: nothing else takes them out of the outbox.
    #[arg(
        long,
        env = "IDENTITY_DOMAIN_EVENTS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(super) domain_events: bool,

    /// Emails one address may be sent in any hour, whatever mix of Register,
    /// ResendVerificationEmail and RequestPasswordReset asks for them; past it the calls answer
    /// as usual and queue nothing.
    #[arg(long, env = "IDENTITY_EMAIL_BUDGET_PER_HOUR", default_value_t = 3)]
    pub(super) email_budget_per_hour: usize,

    /// Emails one address may be sent in any day (24 hours); at least the hourly budget.
    #[arg(long, env = "IDENTITY_EMAIL_BUDGET_PER_DAY", default_value_t = 10)]
    pub(super) email_budget_per_day: usize,

    /// Seconds between two janitor sweeps, which delete expired rows and never-verified
    /// accounts. Every replica runs one; they share the work.
    #[arg(long, env = "IDENTITY_JANITOR_INTERVAL_SECS", default_value_t = 5 * 60)]
    pub(super) janitor_interval_secs: u64,

    /// Most rows one janitor statement deletes.
    #[arg(long, env = "IDENTITY_JANITOR_BATCH_SIZE", default_value_t = 1000)]
    pub(super) janitor_batch_size: i64,

    /// Seconds a pending account may wait for verification; then, once none of its links
    /// works, the janitor deletes it and the address is free again.
    #[arg(long, env = "IDENTITY_UNVERIFIED_ACCOUNT_TTL_SECS", default_value_t = 7 * 24 * 60 * 60)]
    pub(super) unverified_account_ttl_secs: i64,

    /// Seconds used or expired verification links, codes and reset links are kept (their
    /// users are told "expired" or "already used" meanwhile, then "invalid").
    #[arg(long, env = "IDENTITY_SPENT_SECRET_RETENTION_SECS", default_value_t = 7 * 24 * 60 * 60)]
    pub(super) spent_secret_retention_secs: i64,

    /// Seconds a login-throttle record is kept after its last failure and its block end.
    #[arg(long, env = "IDENTITY_LOGIN_THROTTLE_RETENTION_SECS", default_value_t = 24 * 60 * 60)]
    pub(super) login_throttle_retention_secs: i64,

    /// Seconds dead letters (outbox_dead) are kept.
    #[arg(long, env = "IDENTITY_DEAD_LETTER_RETENTION_SECS", default_value_t = 30 * 24 * 60 * 60)]
    pub(super) dead_letter_retention_secs: i64,

    /// Rate limits on or off. Off only for benchmarks and deployments whose every caller is
    /// trusted: nothing then limits sign-ups, logins or emails per client.
    #[arg(long, env = "IDENTITY_RATE_LIMITING", default_value_t = true, action = clap::ArgAction::Set)]
    pub(super) rate_limiting: bool,

    /// Overrides of the default rate limits (see the README's table), comma-separated:
    /// `action.scope=N/PERIOD+BURST` or `action.scope=off`, e.g.
    /// `register.ip=20/1h+5,login.address=off`; `action=...` sets both scopes.
    #[arg(long, env = "IDENTITY_RATE_LIMITS", default_value = "")]
    pub(super) rate_limits: String,

    /// Networks of the proxies (BFF, ingress) whose forwarded client address is believed,
    /// comma-separated CIDRs, e.g. 10.0.0.0/8,fd00::/8. Empty: the socket peer is the client.
    #[arg(long, env = "IDENTITY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub(super) trusted_proxies: Vec<Cidr>,

    /// The header trusted proxies append the client's address to.
    #[arg(
        long,
        env = "IDENTITY_CLIENT_IP_HEADER",
        value_enum,
        default_value = "x-forwarded-for"
    )]
    pub(super) client_ip_header: ForwardedHeader,

    /// Whose W3C trace context (`traceparent`, `tracestate` metadata) a call continues: callers
    /// whose socket peer is in IDENTITY_TRUSTED_PROXIES, all, or none. Any other caller's call
    /// starts a trace of its own (the server's sampling decision) with a link to the caller's.
    #[arg(
        long,
        env = "IDENTITY_TRUST_TRACE_CONTEXT",
        value_enum,
        default_value = "trusted-proxies"
    )]
    pub(super) trust_trace_context: TraceContextTrust,

    /// Milliseconds between two readiness checks of the database (health service `readiness`).
    #[arg(long, env = "IDENTITY_READINESS_INTERVAL_MS", default_value_t = 5000)]
    pub(super) readiness_interval_ms: u64,

    /// Seconds the server keeps serving after SIGTERM while reporting NOT_SERVING, so load
    /// balancers stop routing to it before it stops accepting connections.
    #[arg(long, env = "IDENTITY_SHUTDOWN_DRAIN_DELAY_SECS", default_value_t = 5)]
    pub(super) shutdown_drain_delay_secs: u64,

    /// Seconds in-flight calls then have to finish before their connections are closed.
    #[arg(long, env = "IDENTITY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub(super) shutdown_grace_secs: u64,
}

/// Longest key activation delay accepted (30 days); longer is almost certainly a mistake.
pub(super) const MAX_ACTIVATION_DELAY_SECS: u64 = 30 * 24 * 60 * 60;
/// Longest refresh reuse grace window accepted: a longer one lets a replayed token go unnoticed
/// for longer.
pub(super) const MAX_REFRESH_REUSE_GRACE_SECS: u64 = 300;
