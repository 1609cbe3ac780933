//! Queries on `users`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, is_unique_violation, lower, schema::users};
use crate::domain::UserStatus;

/// The unique index that makes an address belong to one account, whatever its letter case.
const EMAIL_UNIQUE_INDEX: &str = "users_email_lower_key";

/// A user row to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub status: &'static str,
    pub password_hash: &'a str,
    pub display_name: &'a str,
    pub locale: &'a str,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What the sign-up flows read of a user.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub status: String,
    pub display_name: String,
    pub locale: String,
    /// Wrong verification codes entered for this account, across all its emails.
    pub failed_code_attempts: i32,
}

impl User {
    /// Whether the account still waits for its address to be verified.
    pub fn is_pending(&self) -> bool {
        UserStatus::from_db(&self.status) == Some(UserStatus::PendingVerification)
    }
}

/// Why a user could not be inserted.
#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    /// Another account has this address (in any letter case).
    #[error("the email address is already registered")]
    EmailTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Inserts `user`; the unique index, not a prior look-up, decides who wins a race.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    user: &NewUser<'_>,
) -> Result<(), InsertUserError> {
    match diesel::insert_into(users::table)
        .values(user)
        .execute(conn)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e, EMAIL_UNIQUE_INDEX) => Err(InsertUserError::EmailTaken),
        Err(e) => Err(StoreError::from(e).into()),
    }
}

/// The user with this address (any letter case), locked until the transaction ends so that
/// concurrent verifications and resends of one account take turns.
pub async fn lock_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<Option<User>, StoreError> {
    Ok(users::table
        .filter(lower(users::email).eq(lower(email)))
        .select(User::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// The user with this id, locked until the transaction ends; `None` once the account is gone
/// (the janitor deletes accounts never verified).
pub async fn lock_by_id(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<User>, StoreError> {
    Ok(users::table
        .find(id)
        .select(User::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// Counts one wrong verification code against the account.
pub async fn count_wrong_code(conn: &mut AsyncPgConnection, id: Uuid) -> Result<(), StoreError> {
    diesel::update(users::table.find(id))
        .set(users::failed_code_attempts.eq(users::failed_code_attempts + 1))
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks a pending user active; returns whether it was pending.
pub async fn activate(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let updated = diesel::update(users::table)
        .filter(users::id.eq(id))
        .filter(users::status.eq(UserStatus::PendingVerification.as_str()))
        .set((
            users::status.eq(UserStatus::Active.as_str()),
            users::verified_at.eq(now),
            users::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(updated == 1)
}

/// What a user sees of their own account.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct Profile {
    pub id: Uuid,
    pub email: String,
    pub status: String,
    pub display_name: String,
    pub locale: String,
    pub created_at: OffsetDateTime,
}

/// The account with this id.
pub async fn profile(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<Profile>, StoreError> {
    Ok(users::table
        .find(id)
        .select(Profile::as_select())
        .first(conn)
        .await
        .optional()?)
}
