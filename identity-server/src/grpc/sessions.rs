use std::sync::Arc;

use identity_proto::identity::v1::{self as pb, session_service_server::SessionService};
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::error::FieldViolations;
use crate::{
    abuse::{Action, Door},
    domain::{EmailAddress, Invalid, RefreshToken},
    sessions::{Issued, Sessions},
};

/// `identity.v1.SessionService` over [`Sessions`].
#[derive(Debug, Clone)]
pub struct SessionApi {
    sessions: Arc<Sessions>,
    door: Arc<Door>,
}

impl SessionApi {
    /// Serves `sessions`, admitting calls through `door`.
    pub fn new(sessions: Arc<Sessions>, door: Arc<Door>) -> Self {
        Self { sessions, door }
    }
}

/// Longest password a login considers (the policy allows 256 characters of up to 4 bytes).
const MAX_PASSWORD_BYTES: usize = 1024;

pub(super) use identity_proto::timestamp;

fn refresh_token(raw: &str) -> Result<RefreshToken, Status> {
    let mut violations = FieldViolations::default();
    violations
        .check("refresh_token", RefreshToken::parse(raw))
        .ok_or_else(|| violations.into())
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = self.door.client_of(&request);
        let request = request.into_inner();
        let mut violations = FieldViolations::default();
        let email = violations.check("email", EmailAddress::parse(&request.email));
        // The password is not held to the policy here: that would tell which rule it breaks.
        if request.password.is_empty() {
            violations.add("password", Invalid("is required"));
        } else if request.password.len() > MAX_PASSWORD_BYTES {
            violations.add("password", Invalid("is too long"));
        }
        let Some(email) = email.filter(|_| violations.is_empty()) else {
            return Err(violations.into());
        };
        self.door.admit(client, Action::Login, Some(&email)).await?;
        let issued = self
            .sessions
            .login(email, SecretString::from(request.password))
            .await?;
        let Issued {
            user_id,
            access_token,
            access_expires_at,
            refresh_token,
            refresh_expires_at,
        } = issued;
        Ok(Response::new(pb::LoginResponse {
            user_id: user_id.to_string(),
            access_token,
            access_token_expires_at: Some(timestamp(access_expires_at)),
            refresh_token: refresh_token.expose().to_owned(),
            refresh_token_expires_at: Some(timestamp(refresh_expires_at)),
        }))
    }

    async fn refresh_session(
        &self,
        request: Request<pb::RefreshSessionRequest>,
    ) -> Result<Response<pb::RefreshSessionResponse>, Status> {
        let presented = refresh_token(&request.get_ref().refresh_token)?;
        let client = self.door.client_of(&request);
        self.door
            .admit(client, Action::RefreshSession, None)
            .await?;
        let issued = self.sessions.refresh(presented).await?;
        Ok(Response::new(pb::RefreshSessionResponse {
            user_id: issued.user_id.to_string(),
            access_token: issued.access_token,
            access_token_expires_at: Some(timestamp(issued.access_expires_at)),
            refresh_token: issued.refresh_token.expose().to_owned(),
            refresh_token_expires_at: Some(timestamp(issued.refresh_expires_at)),
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let presented = refresh_token(&request.get_ref().refresh_token)?;
        self.sessions.revoke(presented).await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }
}
