//! Prometheus metrics: the exporter on its own port and the names of everything the server
//! measures (so a dashboard or an alert has one place to look). [`crate::observe`] records
//! [`RPC_DURATION`].
//!
//! Without `IDENTITY_METRICS_ADDR` no exporter is installed and every `metrics::` call is a
//! no-op.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// RPC server duration in seconds, by `rpc_system`, `rpc_service`, `rpc_method` and
/// `rpc_grpc_status_code` (OpenTelemetry's `rpc.server.call.duration`).
pub const RPC_DURATION: &str = "rpc_server_call_duration_seconds";
/// Pending registrations created (each queued a verification email).
pub const REGISTRATIONS: &str = "identity_registrations_total";
/// Accounts activated, by `proof` (`link` or `code`).
pub const VERIFICATIONS: &str = "identity_verifications_total";
/// Login attempts, by `outcome` (`success`, `invalid_credentials`, `throttled`).
pub const LOGINS: &str = "identity_logins_total";
/// Sessions revoked because a retired refresh token was presented again.
pub const REFRESH_REUSE: &str = "identity_refresh_token_reuse_total";
/// Calls refused at the door, by `reason` (`rate_limited`, `challenge_required`,
/// `challenge_invalid`) and `action`.
pub const REFUSALS: &str = "identity_refusals_total";
/// Database connections checked out of the pool.
pub const DB_POOL_IN_USE: &str = "identity_db_pool_connections_in_use";
/// Callers waiting for a database connection.
pub const DB_POOL_WAITING: &str = "identity_db_pool_waiting";
/// Calls that gave up waiting for a database connection (answered UNAVAILABLE).
pub const DB_POOL_TIMEOUTS: &str = "identity_db_pool_timeouts_total";
/// Password hashes waiting for a worker.
pub const HASH_QUEUE_DEPTH: &str = "identity_password_hash_queue_depth";
/// Seconds a password hash waited for a worker.
pub const HASH_WAIT: &str = "identity_password_hash_wait_seconds";
/// Seconds one Argon2 hash or check took, by `task` (`hash` or `verify`).
pub const HASH_DURATION: &str = "identity_password_hash_duration_seconds";
/// Hashes refused because every worker was busy and the queue full (OVERLOADED).
pub const HASH_OVERLOADED: &str = "identity_password_hash_overloaded_total";

/// Buckets for RPC durations: from a cached read to a saturated sign-up.
const RPC_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for hashing: one Argon2 hash takes tens of milliseconds; waits grow with the queue.
const HASH_BUCKETS: &[f64] = &[0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Installs the Prometheus exporter, serving `GET /metrics` on `addr`, and describes the
/// metrics. Must run inside the Tokio runtime (the listener is a task of it).
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(RPC_DURATION.to_owned()), RPC_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Prefix("identity_password_hash".to_owned()),
            HASH_BUCKETS,
        )?
        .install()?;
    describe();
    tracing::info!(metrics.addr = %addr, "metrics listening");
    Ok(())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "Duration of gRPC calls served."
    );
    describe_counter!(REGISTRATIONS, "Pending registrations created.");
    describe_counter!(VERIFICATIONS, "Accounts activated, by proof.");
    describe_counter!(LOGINS, "Login attempts, by outcome.");
    describe_counter!(REFRESH_REUSE, "Sessions revoked for refresh token reuse.");
    describe_counter!(REFUSALS, "Calls refused at the door, by reason and action.");
    describe_gauge!(
        DB_POOL_IN_USE,
        "Database connections checked out of the pool."
    );
    describe_gauge!(
        DB_POOL_WAITING,
        "Callers waiting for a database connection."
    );
    describe_counter!(
        DB_POOL_TIMEOUTS,
        "Waits for a database connection that timed out."
    );
    describe_gauge!(HASH_QUEUE_DEPTH, "Password hashes waiting for a worker.");
    describe_histogram!(HASH_WAIT, Unit::Seconds, "Wait for a hashing worker.");
    describe_histogram!(
        HASH_DURATION,
        Unit::Seconds,
        "Duration of one Argon2 hash or check."
    );
    describe_counter!(HASH_OVERLOADED, "Hashes refused with OVERLOADED.");
}

/// How often the pool gauges are sampled.
const POOL_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Samples the pool's gauges ([`DB_POOL_IN_USE`], [`DB_POOL_WAITING`]) every second, forever.
pub async fn sample_pool(pool: crate::db::Pool) {
    let mut ticks = tokio::time::interval(POOL_SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let status = pool.status();
        let in_use = status.size.saturating_sub(status.available);
        metrics::gauge!(DB_POOL_IN_USE).set(in_use as f64);
        metrics::gauge!(DB_POOL_WAITING).set(status.waiting as f64);
    }
}
