use std::sync::Arc;

use identity_proto::identity::v1::{self as pb, user_service_server::UserService};
use tonic::{Request, Response, Status, service::Interceptor};

use super::{error, sessions::timestamp};
use crate::{
    clock::Clock,
    db::{self, StoreError},
    domain::UserStatus,
    tokens::{KeyDirectory, VerifiedAccess},
};

/// Checks `authorization: Bearer <access token>` (signature by a known key, expiry, issuer,
/// audience) and hands the verified claims to the service; anything else is UNAUTHENTICATED.
/// Verification is offline: a revoked session's token stays valid until it expires.
#[derive(Debug, Clone)]
pub struct BearerAuth {
    keys: Arc<KeyDirectory>,
    clock: Arc<dyn Clock>,
    issuer: String,
    audience: String,
}

impl BearerAuth {
    /// Accepts tokens signed by a key of the ring in use for `issuer` and `audience`.
    pub fn new(
        keys: Arc<KeyDirectory>,
        clock: Arc<dyn Clock>,
        issuer: String,
        audience: String,
    ) -> Self {
        Self {
            keys,
            clock,
            issuer,
            audience,
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                error::unauthenticated(
                    "ACCESS_TOKEN_MISSING",
                    "send authorization: Bearer <access token>",
                )
            })?;
        let verified = self
            .keys
            .ring()
            .verify(token.trim(), &self.issuer, &self.audience, self.clock.now())
            .map_err(|e| {
                tracing::info!(reason = %e, "access token refused");
                error::unauthenticated(
                    "ACCESS_TOKEN_INVALID",
                    "the access token is invalid or expired",
                )
            })?;
        request.extensions_mut().insert(verified);
        Ok(request)
    }
}

/// `identity.v1.UserService`, behind [`BearerAuth`].
#[derive(Clone)]
pub struct UserApi {
    pool: db::Pool,
}

impl std::fmt::Debug for UserApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserApi")
    }
}

impl UserApi {
    /// Serves users from `pool`.
    pub fn new(pool: db::Pool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        let access = request
            .extensions()
            .get::<VerifiedAccess>()
            .ok_or_else(|| {
                error::unauthenticated("ACCESS_TOKEN_MISSING", "no verified access token")
            })?;
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let Some(user) = db::users::profile(&mut conn, access.subject).await? else {
            return Err(error::unauthenticated(
                "ACCESS_TOKEN_INVALID",
                "the user no longer exists",
            ));
        };
        let status = match UserStatus::from_db(&user.status) {
            Some(UserStatus::Active) => pb::UserStatus::Active,
            Some(UserStatus::PendingVerification) => pb::UserStatus::PendingVerification,
            None => pb::UserStatus::Unspecified,
        };
        Ok(Response::new(pb::GetCurrentUserResponse {
            user: Some(pb::User {
                user_id: user.id.to_string(),
                email: user.email,
                display_name: user.display_name,
                locale: user.locale,
                status: status.into(),
                created_at: Some(timestamp(user.created_at)),
            }),
        }))
    }
}
