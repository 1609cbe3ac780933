//! Queries on `users`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, is_unique_violation, lower, schema::users};
use crate::domain::UserStatus;

/// The partial unique index that gives an address to at most one ACTIVE account, whatever its
/// letter case; pending registrations of the address may be many.
const ACTIVE_EMAIL_UNIQUE_INDEX: &str = "users_active_email_lower_key";

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
    pub created_at: OffsetDateTime,
    /// Wrong verification codes entered for this account, across all its emails.
    pub failed_code_attempts: i32,
}

impl User {
    /// Whether the account still waits for its address to be verified.
    pub fn is_pending(&self) -> bool {
        UserStatus::from_db(&self.status) == Some(UserStatus::PendingVerification)
    }

    /// Whether the account is active (its address verified).
    pub fn is_active(&self) -> bool {
        UserStatus::from_db(&self.status) == Some(UserStatus::Active)
    }
}

/// The rows of one address (any letter case): at most one active account, or any number of
/// pending registrations.
#[derive(Debug)]
pub struct AddressRows(Vec<User>);

impl AddressRows {
    /// The active account, if there is one.
    pub fn active(&self) -> Option<&User> {
        self.0.iter().find(|u| u.is_active())
    }

    /// The newest pending registration: the one a resend goes to.
    pub fn newest_pending(&self) -> Option<&User> {
        self.0
            .iter()
            .filter(|u| u.is_pending())
            .max_by_key(|u| (u.created_at, u.id))
    }

    /// The row with this id.
    pub fn get(&self, id: Uuid) -> Option<&User> {
        self.0.iter().find(|u| u.id == id)
    }

    /// Every row, by id.
    pub fn all(&self) -> &[User] {
        &self.0
    }

    /// The ids of every row, by id.
    pub fn ids(&self) -> Vec<Uuid> {
        self.0.iter().map(|u| u.id).collect()
    }
}

/// Inserts `user`. A pending row never conflicts: an address may have many.
pub async fn insert(conn: &mut AsyncPgConnection, user: &NewUser<'_>) -> Result<(), StoreError> {
    diesel::insert_into(users::table)
        .values(user)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes the oldest pending registrations of the address that have no verification secret
/// beyond the newest `keep` of them (their secrets go with them: there are none); returns how
/// many went. Rows with a secret are left alone: a link or code that reached the mailbox keeps
/// working, and the email budget bounds how many there are.
pub async fn trim_pending(
    conn: &mut AsyncPgConnection,
    email: &str,
    keep: i64,
) -> Result<usize, StoreError> {
    Ok(identity_proto::pg::statement(
        "DELETE FROM users WHERE id IN (
            SELECT u.id FROM users u
             WHERE lower(u.email) = lower($1) AND u.status = 'pending_verification'
               AND NOT EXISTS (SELECT FROM verification_secrets s WHERE s.user_id = u.id)
             ORDER BY u.created_at DESC, u.id DESC
            OFFSET $2)",
    )
    .bind::<diesel::sql_types::Text, _>(email)
    .bind::<diesel::sql_types::BigInt, _>(keep)
    .execute(conn)
    .await?)
}

/// Every row of the address (any letter case), locked until the transaction ends, in id order
/// so that two transactions locking rows of one address never wait on each other in a cycle.
/// Callers hold the address's lock (`db::email_budget::lock_address`) first.
pub async fn lock_address_rows(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<AddressRows, StoreError> {
    Ok(AddressRows(
        users::table
            .filter(lower(users::email).eq(lower(email)))
            .order(users::id.asc())
            .select(User::as_select())
            .for_update()
            .load(conn)
            .await?,
    ))
}

/// The address of the user with this id, unlocked; `None` once the account is gone.
pub async fn email_of(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(users::table
        .find(id)
        .select(users::email)
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

/// Counts one wrong verification code against each of the accounts `ids` (every row of an
/// address, so that the cap holds for the address, not per registration).
pub async fn count_wrong_code(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    diesel::update(users::table.filter(users::id.eq_any(ids)))
        .set(users::failed_code_attempts.eq(users::failed_code_attempts + 1))
        .execute(conn)
        .await?;
    Ok(())
}

/// What [`activate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The pending user is now active.
    Activated,
    /// The user was not pending (already active, or gone).
    NotPending,
    /// Another account of the address became active first: the partial unique index refused
    /// this one. The statement failed, so the transaction is aborted: roll it back.
    AddressTaken,
}

/// Marks a pending user active, with the password hash its verifier chose.
pub async fn activate(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    password_hash: &str,
    now: OffsetDateTime,
) -> Result<Activation, StoreError> {
    let updated = diesel::update(users::table)
        .filter(users::id.eq(id))
        .filter(users::status.eq(UserStatus::PendingVerification.as_str()))
        .set((
            users::status.eq(UserStatus::Active.as_str()),
            users::password_hash.eq(password_hash),
            users::verified_at.eq(now),
            users::updated_at.eq(now),
        ))
        .execute(conn)
        .await;
    match updated {
        Ok(1) => Ok(Activation::Activated),
        Ok(_) => Ok(Activation::NotPending),
        Err(e) if is_unique_violation(&e, ACTIVE_EMAIL_UNIQUE_INDEX) => {
            Ok(Activation::AddressTaken)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the pending registrations of the address other than `keep` (their secrets go with
/// them, by the foreign key's cascade); returns how many.
pub async fn delete_other_pending(
    conn: &mut AsyncPgConnection,
    email: &str,
    keep: Uuid,
) -> Result<usize, StoreError> {
    Ok(diesel::delete(
        users::table
            .filter(lower(users::email).eq(lower(email)))
            .filter(users::status.eq(UserStatus::PendingVerification.as_str()))
            .filter(users::id.ne(keep)),
    )
    .execute(conn)
    .await?)
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
