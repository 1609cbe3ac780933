//! Prometheus metrics of the relay: the exporter on its own port and the names of what it
//! measures. The backlog gauges are read from the database, so every replica reports the same,
//! right, figure. Without `RELAY_METRICS_ADDR` no exporter is installed and every `metrics::`
//! call is a no-op.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Messages in the outbox (waiting, or being delivered by some relay).
pub const PENDING: &str = "outbox_pending_messages";
/// Seconds since the oldest message in the outbox was written; 0 when it is empty.
pub const OLDEST_AGE: &str = "outbox_oldest_pending_age_seconds";
/// Settled deliveries, by `kind` and `result` (`delivered`, `retry`, `dead_lettered`, `paused`).
pub const SENDS: &str = "outbox_sends_total";
/// 1 while this relay pauses delivery because the SMTP server refused it, else 0.
pub const PAUSED: &str = "outbox_relay_paused";
/// Domain events in the outbox (waiting, or being published by some relay).
pub const EVENTS_PENDING: &str = "outbox_events_pending";
/// Seconds since the oldest event in the outbox was written; 0 when there is none.
pub const EVENTS_OLDEST_AGE: &str = "outbox_events_oldest_pending_age_seconds";
/// Settled event publications, by `type` and `result` (`published`, `duplicate`, `retry`,
/// `dead_lettered`).
pub const EVENTS: &str = "outbox_events_published_total";
/// 1 while this relay's event channel pauses (NATS unreachable or failing), else 0.
pub const EVENTS_PAUSED: &str = "outbox_events_paused";
/// Seconds from claiming a message to the SMTP server accepting it, by `kind`.
pub const CLAIM_TO_SEND: &str = "outbox_claim_to_send_seconds";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus exporter, serving `GET /metrics` on `addr`. Must run inside the
/// Tokio runtime.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(CLAIM_TO_SEND.to_owned()), LATENCY_BUCKETS)?
        .install()?;
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        PENDING,
        "Messages in the outbox, waiting or being delivered."
    );
    describe_gauge!(
        OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest message in the outbox."
    );
    describe_counter!(SENDS, "Settled deliveries, by kind and result.");
    describe_gauge!(EVENTS_PENDING, "Domain events in the outbox.");
    describe_gauge!(
        EVENTS_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest domain event in the outbox."
    );
    describe_counter!(EVENTS, "Settled event publications, by type and result.");
    describe_gauge!(EVENTS_PAUSED, "1 while this relay's event channel pauses.");
    describe_gauge!(
        PAUSED,
        "1 while this relay pauses delivery after a refusal."
    );
    describe_histogram!(
        CLAIM_TO_SEND,
        Unit::Seconds,
        "From claim to SMTP acceptance."
    );
    tracing::info!(metrics.addr = %addr, "metrics listening");
    Ok(())
}
