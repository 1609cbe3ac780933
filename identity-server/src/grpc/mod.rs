//! The gRPC edge: tonic services that parse requests into domain types, call the use cases,
//! and turn their errors into statuses (all in [`error`]).

mod challenge;
pub mod error;
mod keys;
mod password_reset;
mod registration;
mod sessions;
mod users;

pub use challenge::ChallengeApi;
pub use keys::KeyApi;
pub use password_reset::PasswordResetApi;
pub use registration::RegistrationApi;
pub use sessions::SessionApi;
pub use users::{BearerAuth, UserApi};
