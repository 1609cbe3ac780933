//! identity-server: sign-up over gRPC, with a transactional outbox.
//!
//! - [`domain`]: parsed values (email, password, names, verification secrets); no I/O.
//! - [`registration`]: the sign-up use cases (register, verify, resend) and their errors.
//! - [`sessions`]: login, refresh and revoke.
//! - [`password_reset`]: reset links and setting a new password.
//! - [`hashing`]: Argon2id on a bounded pool of worker threads.
//! - [`db`]: the connection pool, migrations and queries.
//! - [`tokens`]: the PASETO signing keys and access tokens.
//! - [`grpc`]: tonic services and the one error-to-status mapping.
//! - [`startup`]: builds and runs the server; [`cli`] reads the command line; [`telemetry`]
//!   sets up logging; [`clock`] makes time a parameter.

pub mod cli;
pub mod clock;
pub mod db;
pub mod domain;
pub mod grpc;
pub mod hashing;
pub mod password_reset;
pub mod registration;
pub mod sessions;
pub mod startup;
pub mod telemetry;
pub mod tokens;
