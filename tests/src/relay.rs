//! `outbox-relay serve` as a user runs it, tuned for tests: quick retries, short leases.

use std::time::Duration;

use crate::process::Process;

/// Starts the built relay on `db_url` sending to `smtp_url` (empty: write `.eml` files), with
/// quick retries and short leases; `extra` overrides any setting, and an empty value unsets it.
pub async fn start(db_url: &str, smtp_url: &str, extra: &[(&str, &str)]) -> Process {
    let mut env = vec![
        ("DATABASE_URL", db_url),
        ("SMTP_URL", smtp_url),
        ("EMAIL_FROM", "Identity <no-reply@identity.example.com>"),
        (
            "VERIFY_URL_TEMPLATE",
            "https://app.example.com/verify?token={token}",
        ),
        (
            "RESET_URL_TEMPLATE",
            "https://app.example.com/reset?token={token}",
        ),
        ("RELAY_POLL_INTERVAL_MS", "500"),
        ("RELAY_RETRY_BASE_MS", "50"),
        ("RELAY_RETRY_CAP_SECS", "1"),
        ("RELAY_LEASE_SECS", "2"),
        ("RUST_LOG", "info,outbox_relay=debug"),
    ];
    for (key, value) in extra {
        env.retain(|(k, _)| k != key);
        env.push((key, value));
    }
    env.retain(|(_, value)| !value.is_empty());
    let mut relay = Process::spawn("outbox-relay", &["serve"], &env);
    relay
        .wait_for_line("outbox-relay started", Duration::from_secs(60))
        .await;
    relay
}
