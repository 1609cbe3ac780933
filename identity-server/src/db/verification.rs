//! Queries on `verification_secrets`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, schema::verification_secrets as secrets};
use crate::domain::TokenHash;

/// A verification secret to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = secrets, check_for_backend(diesel::pg::Pg))]
pub struct NewSecret<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub token_hash: &'a [u8],
    pub code_mac: &'a [u8],
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A stored verification secret.
#[derive(Queryable, Selectable)]
#[diesel(table_name = secrets, check_for_backend(diesel::pg::Pg))]
pub struct Secret {
    pub id: Uuid,
    pub user_id: Uuid,
    pub code_mac: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub failed_code_attempts: i32,
    pub consumed_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .field("failed_code_attempts", &self.failed_code_attempts)
            .field("consumed_at", &self.consumed_at)
            .finish_non_exhaustive()
    }
}

/// Inserts a secret.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    secret: &NewSecret<'_>,
) -> Result<(), StoreError> {
    diesel::insert_into(secrets::table)
        .values(secret)
        .execute(conn)
        .await?;
    Ok(())
}

/// The secret with this id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> Result<Option<Secret>, StoreError> {
    Ok(secrets::table
        .find(id)
        .select(Secret::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The secret whose link token hashes to `hash`.
pub async fn find_by_token(
    conn: &mut AsyncPgConnection,
    hash: &TokenHash,
) -> Result<Option<Secret>, StoreError> {
    Ok(secrets::table
        .filter(secrets::token_hash.eq(&hash.0[..]))
        .select(Secret::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Every secret of the users `user_ids` (the rows of one address), newest first.
pub async fn of_users(
    conn: &mut AsyncPgConnection,
    user_ids: &[Uuid],
) -> Result<Vec<Secret>, StoreError> {
    Ok(secrets::table
        .filter(secrets::user_id.eq_any(user_ids))
        .order(secrets::created_at.desc())
        .select(Secret::as_select())
        .load(conn)
        .await?)
}

/// When the latest verification email to any of the users `user_ids` (the rows of one
/// address) was queued.
pub async fn latest_issued_at(
    conn: &mut AsyncPgConnection,
    user_ids: &[Uuid],
) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(secrets::table
        .filter(secrets::user_id.eq_any(user_ids))
        .select(diesel::dsl::max(secrets::created_at))
        .first(conn)
        .await?)
}

/// Consumes every unconsumed secret of the user: one proof used ends them all.
pub async fn consume_all(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::update(secrets::table)
        .filter(secrets::user_id.eq(user_id))
        .filter(secrets::consumed_at.is_null())
        .set(secrets::consumed_at.eq(now))
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts one wrong code against each of `ids`.
pub async fn record_wrong_code(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    diesel::update(secrets::table)
        .filter(secrets::id.eq_any(ids))
        .set(secrets::failed_code_attempts.eq(secrets::failed_code_attempts + 1))
        .execute(conn)
        .await?;
    Ok(())
}
