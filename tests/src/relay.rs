//! `outbox-relay serve` as a user runs it, tuned for tests: quick retries, short leases, the
//! health service on a free port; and what the relay tests read back from it. A test says how
//! the relay delivers: [`start`] sends to an SMTP server, [`start_writing_files`] writes `.eml`
//! files (the development mode), and [`run_until_exit`] is for a relay expected to refuse its
//! configuration.

use std::{collections::HashMap, path::Path, process::Output, time::Duration};

use crate::{
    process::{self, Process},
    smtp::SmtpServer,
};

/// What the relay logs for each email the SMTP server accepted from it.
pub const DELIVERED: &str = "email accepted by the SMTP server";

/// What a relay needs to get as far as its database (SMTP to a closed port, a sender, https
/// links), for tests of its start-up and its database connection.
pub fn configured_env(database_url: &str) -> Vec<(&str, &str)> {
    vec![
        ("DATABASE_URL", database_url),
        ("SMTP_URL", "smtp://127.0.0.1:1"),
        ("EMAIL_FROM", "Identity <no-reply@identity.example.com>"),
        (
            "VERIFY_URL_TEMPLATE",
            "https://app.example.com/verify?token={token}",
        ),
        (
            "RESET_URL_TEMPLATE",
            "https://app.example.com/reset?token={token}",
        ),
    ]
}

/// Starts the built relay on `db_url` sending to `smtp_url`, with quick retries, a short lease
/// (which a short SMTP timeout lets it have) and its health service on a free port; `extra`
/// overrides any setting, and an empty value unsets it.
pub async fn start(db_url: &str, smtp_url: &str, extra: &[(&str, &str)]) -> Process {
    assert!(
        !smtp_url.is_empty(),
        "an SMTP URL; use start_writing_files for the development mode"
    );
    spawn(db_url, &[("SMTP_URL", smtp_url)], extra).await
}

/// Starts the built relay on `db_url` in its development mode, writing each email to `dir`
/// (`RELAY_DEV_MAIL_DIR`), with the same test settings as [`start`].
pub async fn start_writing_files(db_url: &str, dir: &Path, extra: &[(&str, &str)]) -> Process {
    let dir = dir.to_str().expect("a UTF-8 mail directory");
    spawn(db_url, &[("RELAY_DEV_MAIL_DIR", dir)], extra).await
}

/// Starts the relay next to the running benchmark (the release build under `scripts/bench`) on
/// `db_url` sending to `smtp_url`, with its own defaults (batch, concurrency, lease) but a free
/// health port, so several run side by side; `extra` adds settings.
pub async fn start_for_bench(db_url: &str, smtp_url: &str, extra: &[(&str, &str)]) -> Process {
    let mut env = configured_env(db_url);
    env.retain(|(key, _)| *key != "SMTP_URL");
    env.extend([
        ("SMTP_URL", smtp_url),
        ("RELAY_HEALTH_ADDR", "127.0.0.1:0"),
        ("RUST_LOG", "info"),
    ]);
    env.extend_from_slice(extra);
    let mut relay = Process::spawn("outbox-relay", &["serve"], &env);
    relay
        .wait_for_line("outbox-relay started", Duration::from_secs(30))
        .await;
    relay
}

/// Runs the built relay with only `env` (plus `RUST_LOG`) set and waits for it to exit by
/// itself; `None` if it was still running after `timeout` (it is killed then).
pub async fn run_until_exit(env: &[(&str, &str)], timeout: Duration) -> Option<Output> {
    process::run_until_exit("outbox-relay", &["serve"], env, timeout).await
}

async fn spawn(db_url: &str, delivery: &[(&str, &str)], extra: &[(&str, &str)]) -> Process {
    let mut env = vec![
        ("DATABASE_URL", db_url),
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
        ("RELAY_SMTP_TIMEOUT_SECS", "4"),
        ("RELAY_LEASE_SECS", "12"),
        ("RELAY_HEALTH_ADDR", "127.0.0.1:0"),
        ("RUST_LOG", "info,outbox_relay=debug"),
    ];
    env.extend_from_slice(delivery);
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

/// The address of a started relay's health service, from its log.
pub fn health_addr(relay: &Process) -> String {
    let output = relay.output();
    let line = output
        .lines()
        .find(|line| line.contains("health service listening"))
        .unwrap_or_else(|| panic!("the relay logged no health address:\n{output}"));
    process::field(line, "health.addr")
        .unwrap_or_else(|| panic!("no health.addr in {line:?}"))
        .to_owned()
}

/// The ids of the messages a relay says it delivered, in its log's order.
pub fn delivered_ids(relay: &Process) -> Vec<String> {
    relay
        .output()
        .lines()
        .filter(|line| line.contains(DELIVERED))
        .map(|line| {
            process::field(line, "message.id")
                .unwrap_or_else(|| panic!("no message.id in {line:?}"))
                .to_owned()
        })
        .collect()
}

/// How many times each recipient (lower-cased) got an email, as the SMTP server saw it.
pub fn deliveries(smtp: &SmtpServer) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for mail in smtp.messages() {
        for to in mail.to {
            *seen.entry(to.to_ascii_lowercase()).or_default() += 1;
        }
    }
    seen
}
