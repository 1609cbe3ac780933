//! outbox-relay: drains the identity outbox to the email provider, and domain events to NATS
//! JetStream.
//!
//! - [`relay`]: the loop: claim, make sure the lease covers each send, deliver with bounded
//!   concurrency, settle; shutdown.
//! - [`store`]: lease-guarded queries on `outbox` and `outbox_dead`, timed by the database's clock.
//! - [`health`]: gRPC health: liveness, and readiness (the database answers, sending not paused).
//! - [`payload`]: the kinds of message delivered: parsing a payload, its recipient, rendering it.
//! - [`listener`]: LISTEN for new messages, reconnecting with backoff.
//! - [`mailer`]: SMTP (lettre, pooled) or `.eml` files, and how failures are classified.
//! - [`events`]: the NATS connection, the JetStream stream and the CloudEvents envelope.
//! - [`email`]: templates, rendering and the MIME message of each kind of email.
//! - [`metrics`]: the Prometheus exporter and the metric names.
//! - [`backoff`]: retry delays (exponential, full jitter).
//! - [`cli`]: the command line (logs and traces are set up by `identity_proto::telemetry`).

pub mod backoff;
pub mod cli;
pub mod email;
pub mod events;
pub mod health;
pub mod listener;
pub mod mailer;
pub mod metrics;
pub mod payload;
pub mod relay;
pub mod store;
