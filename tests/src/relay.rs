//! `outbox-relay serve` as a user runs it, tuned for tests: quick retries, short leases, the
//! health service on a free port; and what the relay tests read back from it.

use std::{collections::HashMap, time::Duration};

use crate::{
    process::{self, Process},
    smtp::SmtpServer,
};

/// What the relay logs for each email the SMTP server accepted from it.
pub const DELIVERED: &str = "email accepted by the SMTP server";

/// Starts the built relay on `db_url` sending to `smtp_url` (empty: write `.eml` files), with
/// quick retries, a short lease (which a short SMTP timeout lets it have) and its health service
/// on a free port; `extra` overrides any setting, and an empty value unsets it.
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
        ("RELAY_SMTP_TIMEOUT_SECS", "4"),
        ("RELAY_LEASE_SECS", "12"),
        ("RELAY_HEALTH_ADDR", "127.0.0.1:0"),
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
