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
    sql_types::{BigInt, Integer, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, schema::email_sends};
use crate::domain::{EmailBudget, Limits, Spend};

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
    identity_proto::pg::statement("SELECT pg_advisory_xact_lock($1, hashtext($2))")
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

/// What the ledger says about one address, read in one statement that answers one row whatever
/// the address's history (so neither its cost nor its answer's size tells how many emails the
/// address was sent).
#[derive(Debug, QueryableByName)]
pub struct Ledger {
    /// The `per_hour`-th newest send of the last hour, if the hour holds that many.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    hour_full_since: Option<OffsetDateTime>,
    /// The `per_day`-th newest send of the last day, if the day holds that many.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    day_full_since: Option<OffsetDateTime>,
    /// When an email of the kind asked about last went, within the last day.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    kind_last_sent: Option<OffsetDateTime>,
}

impl Ledger {
    /// Whether the budget read with the ledger allows one more email at `now`.
    pub fn spend(&self, budget: EmailBudget, now: OffsetDateTime) -> Spend {
        let limits = Limits {
            hour: self.hour_full_since,
            day: self.day_full_since,
        };
        budget.decide_from(limits, now)
    }

    /// When an email of the kind passed to [`ledger`] last went to the address, within the
    /// last day.
    pub fn last_sent(&self) -> Option<OffsetDateTime> {
        self.kind_last_sent
    }
}

/// The ledger of `address_key` as of `now` under `budget`, and when an email of `kind` last
/// went to it. The caller holds [`lock_address`], and records what it sends ([`record_send`])
/// in the same transaction, so the decision and the spend commit or roll back together.
pub async fn ledger(
    conn: &mut AsyncPgConnection,
    address_key: &str,
    budget: EmailBudget,
    kind: &str,
    now: OffsetDateTime,
) -> Result<Ledger, StoreError> {
    let nth = |n: usize| i64::try_from(n).unwrap_or(i64::MAX) - 1;
    Ok(identity_proto::pg::statement(
        "SELECT
            (SELECT sent_at FROM email_sends
              WHERE address_key = $1 AND sent_at > $2 - interval '1 hour'
              ORDER BY sent_at DESC OFFSET $3 LIMIT 1) AS hour_full_since,
            (SELECT sent_at FROM email_sends
              WHERE address_key = $1 AND sent_at > $2 - interval '1 day'
              ORDER BY sent_at DESC OFFSET $4 LIMIT 1) AS day_full_since,
            (SELECT max(sent_at) FROM email_sends
              WHERE address_key = $1 AND sent_at > $2 - interval '1 day' AND kind = $5)
              AS kind_last_sent",
    )
    .bind::<Text, _>(address_key)
    .bind::<Timestamptz, _>(now)
    .bind::<BigInt, _>(nth(budget.per_hour()))
    .bind::<BigInt, _>(nth(budget.per_day()))
    .bind::<Text, _>(kind)
    .get_result(conn)
    .await?)
}

/// Records an email of `kind` to `address_key` at `now` in the ledger, unconditionally: ask
/// the [`Ledger`] first.
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
