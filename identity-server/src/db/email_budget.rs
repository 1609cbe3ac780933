//! The email budget's ledger (`email_sends`) and the lock that serializes everything done to
//! one address.
//!
//! Every use case that reads or changes the rows of an address (its pending registrations, its
//! active account, its budget) first takes [`lock_address`], a transaction-scoped advisory lock,
//! and only then row locks. Since it is always the first lock such a transaction takes, two of
//! them cannot deadlock, and the budget's count and the insert that spends it cannot interleave
//! with another call's.

use diesel::{
    prelude::*,
    sql_types::{Integer, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, schema::email_sends};
use crate::domain::{EmailBudget, Spend};

/// The first half of the two-part advisory lock key of addresses ("addr"), so that these locks
/// cannot meet the other advisory locks of the database, which use one 64-bit key (a separate
/// key space in PostgreSQL) or other namespaces.
const ADDRESS_LOCK_NAMESPACE: i32 = 0x6164_6472;

/// Takes the lock of `address_key` (an address in lower case) until the transaction ends.
/// Two addresses may share a lock (the key is a 32-bit hash): they then take turns, which is
/// harmless.
pub async fn lock_address(
    conn: &mut AsyncPgConnection,
    address_key: &str,
) -> Result<(), StoreError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind::<Integer, _>(ADDRESS_LOCK_NAMESPACE)
        .bind::<Text, _>(address_key)
        .execute(conn)
        .await?;
    Ok(())
}

/// A send to record.
#[derive(Debug, Insertable)]
#[diesel(table_name = email_sends, check_for_backend(diesel::pg::Pg))]
struct NewSend<'a> {
    id: Uuid,
    address_key: &'a str,
    kind: &'a str,
    sent_at: OffsetDateTime,
}

/// Spends one email of `kind` to `address_key` at `now` if `budget` allows it, and says what it
/// decided. The caller holds [`lock_address`] and queues the email in the same transaction, so
/// the spend commits or rolls back with it.
pub async fn try_spend(
    conn: &mut AsyncPgConnection,
    address_key: &str,
    kind: &str,
    budget: EmailBudget,
    now: OffsetDateTime,
) -> Result<Spend, StoreError> {
    let sent: Vec<OffsetDateTime> = email_sends::table
        .filter(email_sends::address_key.eq(address_key))
        .filter(email_sends::sent_at.gt(now - EmailBudget::WINDOW))
        .select(email_sends::sent_at)
        .load(conn)
        .await?;
    let spend = budget.decide(&sent, now);
    if spend == Spend::Allowed {
        record_send(conn, address_key, kind, now).await?;
    }
    Ok(spend)
}

/// Records an email of `kind` to `address_key` at `now` in the ledger, unconditionally; use
/// [`try_spend`] to respect the budget.
pub async fn record_send(
    conn: &mut AsyncPgConnection,
    address_key: &str,
    kind: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::insert_into(email_sends::table)
        .values(&NewSend {
            id: Uuid::now_v7(),
            address_key,
            kind,
            sent_at: now,
        })
        .execute(conn)
        .await?;
    Ok(())
}

/// When an email of `kind` last went to `address_key`, within the last day (the ledger keeps no
/// more).
pub async fn last_sent(
    conn: &mut AsyncPgConnection,
    address_key: &str,
    kind: &str,
) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(email_sends::table
        .filter(email_sends::address_key.eq(address_key))
        .filter(email_sends::kind.eq(kind))
        .select(diesel::dsl::max(email_sends::sent_at))
        .first(conn)
        .await?)
}
