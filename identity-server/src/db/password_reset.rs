//! Queries on `password_reset_tokens`, and on sessions when a reset signs a user out.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    StoreError,
    schema::{password_reset_tokens as tokens, sessions, users},
};
use crate::domain::TokenHash;

/// When the user's latest reset email was queued.
pub async fn latest_issued_at(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(tokens::table
        .filter(tokens::user_id.eq(user_id))
        .select(diesel::dsl::max(tokens::created_at))
        .first(conn)
        .await?)
}

/// Stores a new reset token's hash.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    hash: &TokenHash,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::insert_into(tokens::table)
        .values((
            tokens::id.eq(Uuid::now_v7()),
            tokens::user_id.eq(user_id),
            tokens::token_hash.eq(&hash.0[..]),
            tokens::created_at.eq(now),
            tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A reset token and whom it is for.
#[derive(Debug, Queryable)]
pub struct Presented {
    pub user_id: Uuid,
    pub expires_at: OffsetDateTime,
    pub consumed_at: Option<OffsetDateTime>,
    pub email: String,
    pub display_name: String,
    pub locale: String,
}

/// The reset token with this hash and its user. Locks nothing: a reset locks the user row
/// first and reads the token again under that lock (see `PasswordReset::reset`).
pub async fn find(
    conn: &mut AsyncPgConnection,
    hash: &TokenHash,
) -> Result<Option<Presented>, StoreError> {
    Ok(tokens::table
        .inner_join(users::table)
        .filter(tokens::token_hash.eq(&hash.0[..]))
        .select((
            tokens::user_id,
            tokens::expires_at,
            tokens::consumed_at,
            users::email,
            users::display_name,
            users::locale,
        ))
        .first(conn)
        .await
        .optional()?)
}

/// Sets the new password hash and consumes every outstanding reset token of the user.
pub async fn set_password(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    password_hash: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::update(users::table.find(user_id))
        .set((
            users::password_hash.eq(password_hash),
            users::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    diesel::update(tokens::table)
        .filter(tokens::user_id.eq(user_id))
        .filter(tokens::consumed_at.is_null())
        .set(tokens::consumed_at.eq(now))
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends every live session of the user (at most [`crate::sessions::MAX_LIVE_SESSIONS`]: Login
/// keeps it so); returns their ids.
pub async fn revoke_sessions(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(diesel::update(sessions::table)
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(now))
        .set((
            sessions::revoked_at.eq(now),
            sessions::revoked_reason.eq("password_reset"),
        ))
        .returning(sessions::id)
        .get_results(conn)
        .await?)
}
