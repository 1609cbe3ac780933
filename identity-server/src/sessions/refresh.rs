//! RefreshSession and RevokeSession: rotating a session's refresh token, with reuse detection
//! and a grace window for retries.
//!
//! # Retries and reuse
//!
//! Every refresh retires the presented token and issues the next one. A retired token presented
//! again usually means it leaked, and the whole session is revoked. But a client that lost the
//! answer to RefreshSession retries with the token it still has, and two browser tabs sharing
//! one token refresh at the same moment; both would lose the session. So, as Auth0, Okta and
//! Supabase do, a token retired by the session's **latest** rotation, presented again less than
//! the grace window (default 20 s) after it was retired, while the session is live, is a retry:
//!
//! - Only hashes are stored, so the answer cannot be the pair the first call returned; it is a
//!   **fresh pair** for the same session (same session id, same end).
//! - The token the first call returned (the successor) is **kept**: either answer may be the
//!   one the client stored (the tab whose answer arrived last wins), so both must work. The two
//!   are siblings, current together.
//! - The next rotation, from either sibling, retires **all** current tokens of the session, so
//!   a session never has more than one line of descent: the other sibling is then "just
//!   retired" itself (a retry within the window, reuse after it).
//! - Anything else is reuse and revokes the session: a retry after the window, a token retired
//!   by an earlier rotation (an older token of the family), a token of a revoked session.
//!
//! So a thief replaying a just-used token within the window gets a pair, as the owner's retry
//! would; the first rotation by either side then retires the other's token, and when that one
//! is presented after the window the session is revoked for both. The window bounds what can
//! go unnoticed to one refresh interval of one sibling.
//!
//! Rotations are numbered per session (the session's `generation`); each token records the
//! generation it was issued in, so "retired by the latest rotation" does not depend on clocks.
//! Every refresh of a session locks the session row first, so concurrent refreshes take turns:
//! of two concurrent refreshes of one token, the first rotates and the second is a retry.

use diesel_async::AsyncConnection;
use identity_proto::identity::events::v1::{RevocationReason, SessionRevoked};
use time::{Duration, OffsetDateTime};
use tracing::field;
use uuid::Uuid;

use super::{Issued, Sessions};
use crate::{
    db::{
        self, StoreError,
        sessions::{LockedSession, TokenState},
    },
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

/// What a presented refresh token of a live session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presentation {
    /// A current token: rotate.
    Current,
    /// Retired by the latest rotation, within the grace window: a retry.
    Retry,
    /// Anything else: it leaked.
    Reuse,
}

fn presentation(
    token: TokenState,
    session_generation: i64,
    now: OffsetDateTime,
    grace: Duration,
) -> Presentation {
    // The current tokens carry the session's generation, and a rotation moves the session to
    // the next one; so the generations tell current from retired even when the token's
    // `retired_at` was read before a rotation that committed while this refresh waited for the
    // session (it then reads as not retired: that rotation retired it just now).
    if token.generation == session_generation {
        return Presentation::Current;
    }
    let retired_at = token.retired_at.unwrap_or(now);
    if token.generation == session_generation - 1 && now < retired_at + grace {
        Presentation::Retry
    } else {
        Presentation::Reuse
    }
}

/// What a refresh decided; committed whatever it says, since detecting reuse revokes the
/// session.
enum Verdict {
    Issued(Issued),
    Refused,
    /// A retired token was presented again: the session was revoked.
    Reused {
        session_id: Uuid,
        user_id: Uuid,
    },
}

impl Sessions {
    /// Trades a refresh token for a new pair. See the module documentation for retries within
    /// the grace window and for reuse, which revokes the whole session.
    #[tracing::instrument(name = "refresh_session", skip_all, fields(session_id = field::Empty))]
    pub async fn refresh(&self, presented: RefreshToken) -> Result<Issued, RefreshError> {
        let now = self.clock.now();
        let hash = presented.hash();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let verdict = conn
            .transaction(async |conn| {
                let Some(db::sessions::Presented { session, token }) =
                    db::sessions::lock_presented(conn, &hash).await?
                else {
                    return Ok::<_, RefreshError>(Verdict::Refused);
                };
                tracing::Span::current().record("session_id", field::display(session.id));
                if session.revoked_at.is_some() || session.expires_at <= now {
                    return Ok(Verdict::Refused);
                }
                let next = RefreshToken::generate();
                let grace = self.settings.refresh_reuse_grace;
                match presentation(token, session.generation, now, grace) {
                    Presentation::Current => {
                        db::sessions::rotate(conn, session.id, &next.hash(), now).await?;
                    }
                    Presentation::Retry => {
                        tracing::info!(
                            "the refresh token retired by the latest rotation was presented again within the grace window; issuing a fresh pair"
                        );
                        // A sibling of the token the first call issued, current with it.
                        db::sessions::insert_refresh_token(
                            conn,
                            session.id,
                            &next.hash(),
                            session.generation,
                            now,
                        )
                        .await?;
                    }
                    Presentation::Reuse => {
                        db::sessions::revoke(conn, session.id, "refresh_token_reuse", now).await?;
                        self.revoked(conn, &session, RevocationReason::RefreshTokenReuse, now)
                            .await?;
                        return Ok(Verdict::Reused {
                            session_id: session.id,
                            user_id: session.user_id,
                        });
                    }
                }
                Ok(Verdict::Issued(self.issue(&session, next, now)?))
            })
            .await?;
        match verdict {
            Verdict::Issued(issued) => Ok(issued),
            Verdict::Refused => Err(RefreshError::Invalid),
            Verdict::Reused {
                session_id,
                user_id,
            } => {
                tracing::warn!(
                    event = "session.revoked_for_reuse",
                    user_id = %user_id,
                    session_id = %session_id,
                    "a retired refresh token was presented again; session revoked"
                );
                metrics::counter!(crate::metrics::REFRESH_REUSE).increment(1);
                Err(RefreshError::Invalid)
            }
        }
    }

    /// Queues the event that `session` was revoked for `reason`.
    async fn revoked(
        &self,
        conn: &mut diesel_async::AsyncPgConnection,
        session: &LockedSession,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let revoked = SessionRevoked {
            user_id: session.user_id.to_string(),
            session_id: session.id.to_string(),
            reason: reason.into(),
            revoked_at: Some(identity_proto::timestamp(now)),
        };
        self.settings
            .events
            .record(conn, session.user_id, &revoked)
            .await
    }

    /// The pair a refresh answers: `refresh_token`, stored for `session`, and a new access
    /// token.
    fn issue(
        &self,
        session: &LockedSession,
        refresh_token: RefreshToken,
        now: OffsetDateTime,
    ) -> Result<Issued, RefreshError> {
        let (access_token, access_expires_at) =
            self.access_token(session.user_id, session.id, now)?;
        Ok(Issued {
            user_id: session.user_id,
            access_token,
            access_expires_at,
            refresh_token,
            refresh_expires_at: session.expires_at,
        })
    }

    /// Ends the session `presented` belongs to. Idempotent: an unknown or already revoked token
    /// is not an error.
    #[tracing::instrument(name = "revoke_session", skip_all)]
    pub async fn revoke(&self, presented: RefreshToken) -> Result<(), RefreshError> {
        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        conn.transaction(async |conn| {
            if let Some(session) = db::sessions::lock_session_of(conn, &presented.hash()).await? {
                db::sessions::revoke(conn, session.id, "logout", now).await?;
                self.revoked(conn, &session, RevocationReason::Logout, now)
                    .await?;
                tracing::info!(session_id = %session.id, "session revoked");
            }
            Ok::<_, RefreshError>(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-11-30 12:00 UTC);
    const GRACE: Duration = Duration::seconds(20);

    fn token(generation: i64, retired_ago: Option<Duration>) -> TokenState {
        TokenState {
            generation,
            retired_at: retired_ago.map(|ago| NOW - ago),
        }
    }

    #[test]
    fn a_token_not_retired_is_current() {
        assert_eq!(
            presentation(token(4, None), 4, NOW, GRACE),
            Presentation::Current
        );
    }

    #[test]
    fn a_token_retired_by_the_latest_rotation_is_a_retry_only_within_the_window() {
        let just = Some(GRACE - Duration::seconds(1));
        assert_eq!(
            presentation(token(3, just), 4, NOW, GRACE),
            Presentation::Retry
        );
        assert_eq!(
            presentation(token(3, Some(GRACE)), 4, NOW, GRACE),
            Presentation::Reuse
        );
    }

    #[test]
    fn a_token_retired_by_an_earlier_rotation_is_reuse_even_within_the_window() {
        let just = Some(Duration::seconds(1));
        assert_eq!(
            presentation(token(2, just), 4, NOW, GRACE),
            Presentation::Reuse
        );
    }

    #[test]
    fn with_no_window_every_retired_token_is_reuse() {
        assert_eq!(
            presentation(token(3, Some(Duration::ZERO)), 4, NOW, Duration::ZERO),
            Presentation::Reuse
        );
        assert_eq!(
            presentation(token(3, None), 4, NOW, Duration::ZERO),
            Presentation::Reuse
        );
    }

    #[test]
    fn a_token_read_before_a_rotation_that_committed_meanwhile_is_a_retry() {
        // Read as not retired, but the session moved on: that rotation retired it just now.
        assert_eq!(
            presentation(token(3, None), 4, NOW, GRACE),
            Presentation::Retry
        );
        assert_eq!(
            presentation(token(2, None), 4, NOW, GRACE),
            Presentation::Reuse
        );
    }
}
