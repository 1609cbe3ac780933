//! `serve`'s options checked and turned into the server's [`Settings`]: every limit is
//! validated here, with an error naming the setting, before anything starts.

use std::{sync::Arc, time::Duration};

use argon2::Params;
use identity_proto::{pg::SessionTimeouts, secret};
use time::OffsetDateTime;

use super::serve_args::{MAX_ACTIVATION_DELAY_SECS, MAX_REFRESH_REUSE_GRACE_SECS, ServeArgs};
use crate::{
    abuse::{self, ClientIdentity, Limits, TrustedProxies},
    challenge::{self, ChallengeKey, Policy},
    db,
    domain::{CodeKey, EmailBudget},
    hashing::HashingConfig,
    janitor, password_reset, registration, sessions,
    startup::{self, Settings},
    tls::TlsSettings,
    tokens::{KeyDirectory, Rotation, TokenSettings},
};

impl ServeArgs {
    /// The server settings these options describe; an error names the setting that is wrong.
    pub(super) fn into_settings(mut self) -> anyhow::Result<Settings> {
        use secrecy::ExposeSecret;

        let code_hmac_key = secret::require(
            "IDENTITY_CODE_HMAC_KEY",
            self.code_hmac_key.take(),
            self.code_hmac_key_file.as_deref(),
        )?;
        let code_key = CodeKey::new(code_hmac_key.expose_secret().as_bytes().to_vec())
            .map_err(|e| anyhow::anyhow!("IDENTITY_CODE_HMAC_KEY {e}"))?;
        let challenge = self.challenge_settings()?;
        let database_url = self.database.url()?;
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
        let events = crate::db::outbox::Events {
            enabled: self.domain_events,
        };
        let email_budget = EmailBudget::new(self.email_budget_per_hour, self.email_budget_per_day)
            .map_err(|e| {
                anyhow::anyhow!(
                    "IDENTITY_EMAIL_BUDGET_PER_HOUR ({}) / IDENTITY_EMAIL_BUDGET_PER_DAY ({}): {e}",
                    self.email_budget_per_hour,
                    self.email_budget_per_day
                )
            })?;
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
        let limits = Limits::with_overrides(&self.rate_limits)
            .map_err(|e| anyhow::anyhow!("IDENTITY_RATE_LIMITS: {e}"))?;
        let keys = KeyDirectory::open(&self.keys_dir, rotation, OffsetDateTime::now_utc())?;
        Ok(Settings {
            grpc_addr: self.grpc_addr,
            metrics_addr: self.metrics_addr,
            database: db::PoolConfig {
                url: database_url,
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
                enumeration_safe: self.register_enumeration_safe,
                email_budget,
                events,
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
                events,
                ..sessions::Settings::default()
            },
            password_reset: password_reset::Settings {
                token_ttl: time::Duration::seconds(self.reset_token_ttl_secs),
                cooldown: time::Duration::seconds(self.reset_cooldown_secs),
                email_budget,
                events,
            },
            challenge,
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
            abuse: abuse::Settings {
                limits: self.rate_limiting.then_some(limits),
                identity: ClientIdentity {
                    trusted_proxies: TrustedProxies::new(self.trusted_proxies),
                    header: self.client_ip_header,
                    trace_context: self.trust_trace_context,
                },
            },
            readiness_interval: Duration::from_millis(self.readiness_interval_ms),
            shutdown: startup::Shutdown {
                drain_delay: Duration::from_secs(self.shutdown_drain_delay_secs),
                grace: Duration::from_secs(self.shutdown_grace_secs),
            },
            transport: startup::Transport {
                tls: match (self.tls_cert_file, self.tls_key_file) {
                    (Some(cert), Some(key)) => Some(TlsSettings {
                        cert,
                        key,
                        client_ca: self.tls_client_ca_file,
                        reload_interval: Duration::from_secs(self.tls_reload_secs.max(1)),
                    }),
                    _ => None,
                },
                health_addr: self.health_addr,
                max_connection_age: (self.max_connection_age_secs > 0)
                    .then(|| Duration::from_secs(self.max_connection_age_secs)),
            },
        })
    }
}

impl ServeArgs {
    /// The `IDENTITY_CHALLENGE_*` options, checked.
    fn challenge_settings(&mut self) -> anyhow::Result<challenge::Settings> {
        use secrecy::ExposeSecret;

        let key = secret::resolve(
            "IDENTITY_CHALLENGE_HMAC_KEY",
            self.challenge_hmac_key.take(),
            self.challenge_hmac_key_file.as_deref(),
        )?;
        let key = match (key, self.challenge_policy) {
            (Some(key), _) => Some(
                ChallengeKey::new(key.expose_secret().as_bytes().to_vec())
                    .map_err(|e| anyhow::anyhow!("IDENTITY_CHALLENGE_HMAC_KEY {e}"))?,
            ),
            (None, Policy::Off) => None,
            (None, policy) => anyhow::bail!(
                "IDENTITY_CHALLENGE_HMAC_KEY is required with IDENTITY_CHALLENGE_POLICY={} \
                 (set a key of at least 32 bytes, the same on every replica, in it or in a file \
                 named by IDENTITY_CHALLENGE_HMAC_KEY_FILE; or set the policy to off)",
                policy_name(policy)
            ),
        };
        anyhow::ensure!(
            (1_000..=10_000_000).contains(&self.challenge_max_number),
            "IDENTITY_CHALLENGE_MAX_NUMBER must be between 1000 and 10000000"
        );
        anyhow::ensure!(
            (60..=86_400).contains(&self.challenge_ttl_secs),
            "IDENTITY_CHALLENGE_TTL_SECS must be between 60 and 86400"
        );
        anyhow::ensure!(
            (1..=99).contains(&self.challenge_soft_threshold_percent),
            "IDENTITY_CHALLENGE_SOFT_THRESHOLD_PERCENT must be between 1 and 99"
        );
        Ok(challenge::Settings {
            policy: self.challenge_policy,
            key,
            max_number: self.challenge_max_number,
            ttl: time::Duration::seconds(self.challenge_ttl_secs),
            soft_threshold_percent: self.challenge_soft_threshold_percent,
        })
    }
}

/// The policy as it is written on the command line.
fn policy_name(policy: Policy) -> String {
    use clap::ValueEnum;
    policy.to_possible_value().map_or_else(
        || format!("{policy:?}"),
        |value| value.get_name().to_owned(),
    )
}
