//! Test support shared by the workspace's tests, plus the end-to-end tests (`tests/`) and the
//! load generator (`src/bin/loadgen.rs`).
//!
//! - [`altcha`]: solves (and, knowing the key, forges) ALTCHA challenges as a client would.
//! - [`http`]: a minimal HTTP GET, for metrics endpoints and Prometheus' API.
//! - [`load`]: latency tallies and the Argon2 bound, for the load generators.
//! - [`nats`]: a real nats-server with JetStream, which a test may kill and start again, and
//!   the messages of a stream read back in order.
//! - [`nginx`]: a real nginx load-balancing gRPC (`grpc_pass`, HTTP/2) across replicas, with
//!   an access log naming the upstream(s) of each call.
//! - [`otlp`]: a real OTLP/gRPC trace receiver that keeps the spans the binaries export.
//! - [`outbox`]: fills the outbox directly, for relay tests and benchmarks.
//! - [`pg`]: a fresh PostgreSQL database per test, cloned from a migrated template, and
//!   throwaway clusters a test may stop and start (or serve TLS only, or configure).
//! - [`pgbouncer`]: a real PgBouncer in transaction pooling mode in front of a server.
//! - [`prometheus`]: a real Prometheus server scraping the binaries, queried over its API.
//! - [`process`]: runs the built binaries as a user would and captures their logs.
//! - [`reflection`]: lists the services a server announces over gRPC reflection.
//! - [`relay`]: `outbox-relay` started for tests.
//! - [`server`]: `identity-server` migrated and serving on a free port.
//! - [`statements`]: the SQL statements a call makes the server run, counted by PostgreSQL
//!   (`pg_stat_statements` on a throwaway cluster), to compare paths that must look alike.
//! - [`smtp`]: a real SMTP server over TCP (or implicit TLS) that records what it accepts,
//!   answers each stage of the dialogue as a test scripts it (451 twice, then accept; 550 to
//!   `MAIL FROM`; 554 after the data), can require AUTH, closes idle sessions with 421 when told
//!   to, and can be stopped and restarted.
//! - [`wait`]: waits for a condition with a deadline, never a bare sleep.

pub mod altcha;
pub mod http;
pub mod load;
pub mod nats;
pub mod nginx;
pub mod otlp;
pub mod outbox;
pub mod pg;
pub mod pgbouncer;
pub mod process;
pub mod prometheus;
pub mod reflection;
pub mod relay;
pub mod server;
pub mod smtp;
pub mod statements;
pub mod wait;
