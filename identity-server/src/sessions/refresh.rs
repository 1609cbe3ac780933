use diesel_async::AsyncConnection;
use tracing::field;

use super::{Issued, Sessions};
use crate::{
    db::{self, StoreError},
    domain::RefreshToken,
};

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Unknown, expired, revoked, or reused (which also revoked the session).
    #[error("invalid refresh token")]
    Invalid,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<diesel::result::Error> for RefreshError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Store(error.into())
    }
}

/// What a refresh decided; committed whatever it says, since detecting reuse revokes the
/// session.
enum Verdict {
    Rotated(Issued),
    Refused,
}

impl Sessions {
    /// Trades a refresh token for a new pair; the presented token is retired. Presenting a
    /// retired token again means it leaked: the whole session is revoked.
    #[tracing::instrument(name = "refresh_session", skip_all, fields(session_id = field::Empty))]
    pub async fn refresh(&self, presented: RefreshToken) -> Result<Issued, RefreshError> {
        let now = self.clock.now();
        let hash = presented.hash();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let verdict = conn
            .transaction(async |conn| {
                let Some(found) = db::sessions::lock_presented(conn, &hash).await? else {
                    return Ok::<_, RefreshError>(Verdict::Refused);
                };
                tracing::Span::current().record("session_id", field::display(found.session_id));
                if found.revoked_at.is_some() || found.expires_at <= now {
                    return Ok(Verdict::Refused);
                }
                if found.retired_at.is_some() {
                    tracing::warn!(
                        "a retired refresh token was presented again; revoking the session"
                    );
                    db::sessions::revoke(conn, found.session_id, "refresh_token_reuse", now)
                        .await?;
                    return Ok(Verdict::Refused);
                }
                db::sessions::retire_refresh_token(conn, &hash, now).await?;
                let refresh_token = Self::new_refresh_token(conn, found.session_id, now).await?;
                let (access_token, access_expires_at) =
                    self.access_token(found.user_id, found.session_id, now)?;
                Ok(Verdict::Rotated(Issued {
                    user_id: found.user_id,
                    access_token,
                    access_expires_at,
                    refresh_token,
                    refresh_expires_at: found.expires_at,
                }))
            })
            .await?;
        match verdict {
            Verdict::Rotated(issued) => Ok(issued),
            Verdict::Refused => Err(RefreshError::Invalid),
        }
    }

    /// Ends the session `presented` belongs to. Idempotent: an unknown or already revoked token
    /// is not an error.
    #[tracing::instrument(name = "revoke_session", skip_all)]
    pub async fn revoke(&self, presented: RefreshToken) -> Result<(), RefreshError> {
        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        conn.transaction(async |conn| {
            if let Some(found) = db::sessions::lock_presented(conn, &presented.hash()).await? {
                db::sessions::revoke(conn, found.session_id, "logout", now).await?;
                tracing::info!(session_id = %found.session_id, "session revoked");
            }
            Ok::<_, RefreshError>(())
        })
        .await
    }
}
