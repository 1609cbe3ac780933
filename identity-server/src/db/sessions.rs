//! Queries on `sessions`, `refresh_tokens` and `login_throttle`.

use diesel::{
    prelude::*,
    sql_types::{Integer, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    StoreError, lower,
    schema::{login_throttle, refresh_tokens, sessions, users},
};
use crate::domain::TokenHash;

/// What Login reads of a user.
#[derive(Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct Credentials {
    pub id: Uuid,
    pub status: String,
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The user with this address (any letter case), for Login.
pub async fn credentials(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<Option<Credentials>, StoreError> {
    Ok(users::table
        .filter(lower(users::email).eq(lower(email)))
        .select(Credentials::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Replaces an outdated password hash, unless it changed meanwhile.
pub async fn upgrade_password_hash(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    old: &str,
    new: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::update(users::table)
        .filter(users::id.eq(user_id))
        .filter(users::password_hash.eq(old))
        .set((users::password_hash.eq(new), users::updated_at.eq(now)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Until when logins for this address are refused, if they are.
pub async fn blocked_until(
    conn: &mut AsyncPgConnection,
    email_key: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(login_throttle::table
        .find(email_key)
        .select(login_throttle::blocked_until)
        .first(conn)
        .await
        .optional()?)
}

#[derive(QueryableByName)]
struct Failures {
    #[diesel(sql_type = Integer)]
    failures: i32,
}

/// Counts a failed login for this address and returns the consecutive failures so far.
pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    email_key: &str,
    now: OffsetDateTime,
) -> Result<i32, StoreError> {
    let row: Failures = diesel::sql_query(
        "INSERT INTO login_throttle (email_key, failures, last_failed_at, blocked_until)
         VALUES ($1, 1, $2, $2)
         ON CONFLICT (email_key) DO UPDATE
            SET failures = login_throttle.failures + 1, last_failed_at = $2
         RETURNING failures",
    )
    .bind::<Text, _>(email_key)
    .bind::<Timestamptz, _>(now)
    .get_result(conn)
    .await?;
    Ok(row.failures)
}

/// Refuses logins for this address until `until`.
pub async fn block(
    conn: &mut AsyncPgConnection,
    email_key: &str,
    until: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::update(login_throttle::table.find(email_key))
        .set(login_throttle::blocked_until.eq(until))
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets the failures of this address (after a successful login).
pub async fn clear_failures(
    conn: &mut AsyncPgConnection,
    email_key: &str,
) -> Result<(), StoreError> {
    diesel::delete(login_throttle::table.find(email_key))
        .execute(conn)
        .await?;
    Ok(())
}

/// A session row to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Inserts a session.
pub async fn insert_session(
    conn: &mut AsyncPgConnection,
    session: &NewSession,
) -> Result<(), StoreError> {
    diesel::insert_into(sessions::table)
        .values(session)
        .execute(conn)
        .await?;
    Ok(())
}

/// Gives `session_id` a new current refresh token.
pub async fn insert_refresh_token(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    hash: &TokenHash,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::token_hash.eq(&hash.0[..]),
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::created_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A refresh token and the session it belongs to.
#[derive(Debug, Queryable)]
pub struct Presented {
    pub retired_at: Option<OffsetDateTime>,
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// The refresh token with this hash and its session, both rows locked until the transaction
/// ends, so that concurrent refreshes of one token take turns.
pub async fn lock_presented(
    conn: &mut AsyncPgConnection,
    hash: &TokenHash,
) -> Result<Option<Presented>, StoreError> {
    Ok(refresh_tokens::table
        .inner_join(sessions::table)
        .filter(refresh_tokens::token_hash.eq(&hash.0[..]))
        .select((
            refresh_tokens::retired_at,
            sessions::id,
            sessions::user_id,
            sessions::expires_at,
            sessions::revoked_at,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Retires a refresh token (it was just exchanged).
pub async fn retire_refresh_token(
    conn: &mut AsyncPgConnection,
    hash: &TokenHash,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::update(refresh_tokens::table.find(&hash.0[..]))
        .set(refresh_tokens::retired_at.eq(now))
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends a session; does nothing if it already ended.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    reason: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::update(sessions::table)
        .filter(sessions::id.eq(session_id))
        .filter(sessions::revoked_at.is_null())
        .set((
            sessions::revoked_at.eq(now),
            sessions::revoked_reason.eq(reason),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
