//! The contracts of the identity service.
//!
//! - [`identity::v1`]: the gRPC API generated from `proto/identity/v1/*.proto` (tonic servers and
//!   clients, prost messages), and [`FILE_DESCRIPTOR_SET`] for server reflection.
//! - [`outbox`]: the messages `identity-server` writes to the outbox table and `outbox-relay`
//!   delivers. Both processes compile this one definition, so they cannot drift apart.
//! - [`pg`] (feature `postgres`): how both binaries connect to PostgreSQL (TLS after libpq's
//!   `sslmode`, session timeouts, the pool). Shared the same way, and behind a feature so API
//!   clients do not pull a database driver.

pub mod outbox;
#[cfg(feature = "postgres")]
pub mod pg;
mod redact;

/// Generated code, laid out by protobuf package.
pub mod identity {
    /// Version 1 of the identity API.
    pub mod v1 {
        #![allow(missing_docs, missing_debug_implementations, clippy::all)]
        tonic::include_proto!("identity.v1");
    }
}

/// The encoded `FileDescriptorSet` of every file in the API, imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/identity_descriptor.bin"));
