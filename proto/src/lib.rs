//! The contracts of the identity service.
//!
//! - [`identity::v1`]: the gRPC API generated from `proto/identity/v1/*.proto` (tonic servers and
//!   clients, prost messages), and [`FILE_DESCRIPTOR_SET`] for server reflection.
//! - [`identity::events::v1`]: the domain events' payloads (`proto/identity/events/v1/`).
//! - [`outbox`]: the messages `identity-server` writes to the outbox table and `outbox-relay`
//!   delivers. Both processes compile this one definition, so they cannot drift apart.
//! - [`pg`] (feature `postgres`): how both binaries connect to PostgreSQL (TLS after libpq's
//!   `sslmode`, session timeouts, the pool). Shared the same way, and behind a feature so API
//!   clients do not pull a database driver.
//! - [`secret`] (feature `secrets`): secret settings given directly or as a file (`NAME_FILE`),
//!   read once at start-up; both binaries' command lines use it.
//! - [`telemetry`] (feature `telemetry`): both binaries' logs and OpenTelemetry traces, and the
//!   W3C trace context an outbox row carries from the writer to the relay.
//!
//! `Debug` of a generated message never prints a string or bytes field (passwords, tokens,
//! codes, but also addresses and names) unless the field is on build.rs's short allow-list of
//! harmless ones (`user_id`, `key_id`, `public_key`, `locale`): a field added later is redacted
//! until someone decides otherwise. The tests are in `redact.rs`.

pub mod outbox;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(test)]
mod redact;
#[cfg(feature = "secrets")]
pub mod secret;
#[cfg(feature = "telemetry")]
pub mod telemetry;

/// Generated code, laid out by protobuf package.
pub mod identity {
    /// Version 1 of the identity API.
    pub mod v1 {
        #![allow(missing_docs, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("identity.v1");
        // Redacting Debug for every message with text or bytes fields (see build.rs).
        include!(concat!(env!("OUT_DIR"), "/identity.v1.debug.rs"));
    }

    /// The domain events, published to NATS JetStream as CloudEvents whose data is one of
    /// these messages (see [`crate::outbox::DomainEvent`]).
    pub mod events {
        /// Version 1 of the events.
        pub mod v1 {
            #![allow(missing_docs, missing_debug_implementations, clippy::all)]
            tonic::include_proto!("identity.events.v1");
            include!(concat!(env!("OUT_DIR"), "/identity.events.v1.debug.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of every file in the API, imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/identity_descriptor.bin"));

/// `at` as a protobuf `Timestamp`.
pub fn timestamp(at: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}
