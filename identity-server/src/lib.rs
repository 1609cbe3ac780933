//! identity-server: sign-up over gRPC, with a transactional outbox.
//!
//! - [`abuse`]: abuse controls at the door: the client IP (behind trusted proxies too) and the
//!   rate limits per IP and per address, decided against shared state before any use case.
//! - [`domain`]: parsed values (email, password, names, verification secrets); no I/O.
//! - [`registration`]: the sign-up use cases (register, verify, resend) and their errors.
//! - [`sessions`]: login, refresh and revoke.
//! - [`password_reset`]: reset links and setting a new password.
//! - [`challenge`]: the ALTCHA-compatible proof-of-work challenge that guards the calls that
//!   send email, and when it is required.
//! - [`hashing`]: Argon2id on a bounded pool of worker threads.
//! - [`metrics`]: the Prometheus exporter and the metric names; [`observe`]: the layer that
//!   gives every gRPC call its span (continuing the caller's trace) and its duration metric.
//! - [`janitor`]: deletes expired rows and never-verified accounts on an interval.
//! - [`db`]: the connection pool, migrations, queries and retried transactions.
//! - [`tokens`]: the PASETO signing keys and access tokens.
//! - [`grpc`]: tonic services and the one error-to-status mapping.
//! - [`startup`]: builds and runs the server; [`tls`]: TLS and mutual TLS on the gRPC port,
//!   with certificates reloaded when they change; [`health`]: liveness and readiness; [`cli`] reads
//!   the command line (logs and traces are set up by `identity_proto::telemetry`); [`clock`]
//!   makes time a parameter.

pub mod abuse;
pub mod challenge;
pub mod cli;
pub mod clock;
pub mod db;
pub mod domain;
pub mod grpc;
pub mod hashing;
pub mod health;
pub mod janitor;
pub mod metrics;
pub mod observe;
pub mod password_reset;
pub mod registration;
pub mod sessions;
pub mod startup;
pub mod tls;
pub mod tokens;
