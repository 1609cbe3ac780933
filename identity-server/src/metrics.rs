//! Prometheus metrics: the exporter on its own port, the RPC duration layer, and the names of
//! everything the server measures (so a dashboard or an alert has one place to look).
//!
//! Without `IDENTITY_METRICS_ADDR` no exporter is installed and every `metrics::` call is a
//! no-op.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

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

/// Records [`RPC_DURATION`] for every gRPC (and gRPC-Web) call, when `enabled` (an exporter is
/// installed); otherwise calls pass straight through.
#[derive(Debug, Clone, Copy)]
pub struct RpcMetricsLayer {
    pub enabled: bool,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            enabled: self.enabled,
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    enabled: bool,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !self.enabled {
            return Box::pin(self.inner.call(request));
        }
        let (service, method) = rpc_of(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let Ok(response) = &response {
                let code = status_code(response);
                let (service, method) = if is_served(response, &code) {
                    (service, method)
                } else {
                    (UNKNOWN.to_owned(), UNKNOWN.to_owned())
                };
                let labels = [
                    ("rpc_system", "grpc".to_owned()),
                    ("rpc_service", service),
                    ("rpc_method", method),
                    ("rpc_grpc_status_code", code),
                ];
                metrics::histogram!(RPC_DURATION, &labels).record(started.elapsed());
            }
            response
        })
    }
}

/// The service and method label of calls to paths the server does not serve.
const UNKNOWN: &str = "unknown";

/// Whether the call reached one of our RPCs: not UNIMPLEMENTED (12, what the router answers for
/// any other path), and an HTTP 200. Other calls are labelled [`UNKNOWN`], so a client sending
/// made-up paths cannot create new series without bound.
fn is_served<R>(response: &http::Response<R>, code: &str) -> bool {
    response.status() == http::StatusCode::OK && code != "12"
}

/// Service and method of a gRPC path `/package.Service/Method`.
fn rpc_of(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    (service.to_owned(), method.to_owned())
}

/// The call's gRPC status code. tonic answers an error as a trailers-only response, with
/// `grpc-status` among the headers; a unary success carries `grpc-status: 0` in its trailers,
/// after the headers this layer sees, so a 200 without the header is OK. Any other HTTP
/// status is UNKNOWN (2).
fn status_code<R>(response: &http::Response<R>) -> String {
    match response.headers().get("grpc-status") {
        Some(code) => code.to_str().unwrap_or("2").to_owned(),
        None if response.status() == http::StatusCode::OK => "0".to_owned(),
        None => "2".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_service_and_the_method() {
        assert_eq!(
            rpc_of("/identity.v1.RegistrationService/Register"),
            (
                "identity.v1.RegistrationService".to_owned(),
                "Register".to_owned()
            )
        );
        assert_eq!(rpc_of("/"), (String::new(), String::new()));
    }

    #[test]
    fn the_status_comes_from_the_header_or_a_plain_200() {
        let with = |code: &str| {
            http::Response::builder()
                .header("grpc-status", code)
                .body(())
                .expect("a response")
        };
        assert_eq!(status_code(&with("3")), "3");
        assert_eq!(status_code(&http::Response::new(())), "0");
        let not_found = http::Response::builder()
            .status(http::StatusCode::NOT_FOUND)
            .body(())
            .expect("a response");
        assert_eq!(status_code(&not_found), "2");
    }

    #[test]
    fn calls_to_paths_we_do_not_serve_share_one_label() {
        let unimplemented = http::Response::builder()
            .header("grpc-status", "12")
            .body(())
            .expect("a response");
        assert!(!is_served(&unimplemented, &status_code(&unimplemented)));
        let not_found = http::Response::builder()
            .status(http::StatusCode::NOT_FOUND)
            .body(())
            .expect("a response");
        assert!(!is_served(&not_found, &status_code(&not_found)));
        let refused = http::Response::builder()
            .header("grpc-status", "3")
            .body(())
            .expect("a response");
        assert!(is_served(&refused, &status_code(&refused)));
    }
}
