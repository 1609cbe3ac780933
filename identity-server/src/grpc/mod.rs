//! The gRPC edge: tonic services that parse requests into domain types, call the use cases,
//! and turn their errors into statuses (all in [`error`]).

pub mod error;
mod registration;

pub use registration::RegistrationApi;
