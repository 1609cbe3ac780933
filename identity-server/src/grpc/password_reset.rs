use std::sync::Arc;

use identity_proto::identity::v1::{
    self as pb, password_reset_service_server::PasswordResetService,
};
use tonic::{Request, Response, Status};

use super::error::FieldViolations;
use crate::{
    abuse::{Action, Door},
    challenge::Challenges,
    domain::{EmailAddress, Invalid, VerificationToken},
    password_reset::PasswordReset,
};

/// `identity.v1.PasswordResetService` over [`PasswordReset`].
#[derive(Debug, Clone)]
pub struct PasswordResetApi {
    reset: Arc<PasswordReset>,
    door: Arc<Door>,
    challenges: Arc<Challenges>,
}

impl PasswordResetApi {
    /// Serves `reset`, admitting calls through `door`; RequestPasswordReset then passes
    /// `challenges`.
    pub fn new(reset: Arc<PasswordReset>, door: Arc<Door>, challenges: Arc<Challenges>) -> Self {
        Self {
            reset,
            door,
            challenges,
        }
    }
}

#[tonic::async_trait]
impl PasswordResetService for PasswordResetApi {
    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let mut violations = FieldViolations::default();
        let Some(email) = violations.check("email", EmailAddress::parse(&request.get_ref().email))
        else {
            return Err(violations.into());
        };
        let client = self.door.client_of(&request);
        let admission = self
            .door
            .admit(client, Action::RequestPasswordReset, Some(&email))
            .await?;
        (self.challenges)
            .check(&request.get_ref().altcha, admission.ip_usage().into())
            .await?;
        self.reset.request(email).await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let client = self.door.client_of(&request);
        let request = request.into_inner();
        let mut violations = FieldViolations::default();
        let token = violations.check("token", VerificationToken::parse(&request.token));
        if request.new_password.is_empty() {
            violations.add("new_password", Invalid("is required"));
        }
        let Some(token) = token.filter(|_| violations.is_empty()) else {
            return Err(violations.into());
        };
        self.door.admit(client, Action::ResetPassword, None).await?;
        self.reset.reset(token, &request.new_password).await?;
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }
}
