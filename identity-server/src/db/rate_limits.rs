//! The shared rate-limit state (table `rate_limits`): one GCRA decision for all the keys of a
//! call, in one statement.
//!
//! Each key holds a theoretical arrival time (`tat`). A call at `now` conforms for a key when
//! `now >= tat - tolerance`; a conforming call moves `tat` to `GREATEST(tat, now) + emission`.
//! The call passes only if it conforms for every key; a refused call charges no key, with one
//! exception: two calls racing on the same keys may both pass the first check, and if the
//! second then fails the locked re-check on one key, it is refused but may have charged the
//! others. Strict, never lax: an admitted call always charged every key under its row lock,
//! so no interleaving lets more calls through than the limit.

use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;

use super::StoreError;

/// One key of a decision and its rate, in whole microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLimit {
    /// `<action>:<scope>:<subject>`.
    pub key: String,
    /// Emission interval T: what one call costs.
    pub emission_us: i64,
    /// Tolerance τ = T·(burst − 1): how far `tat` may run ahead of `now`.
    pub tolerance_us: i64,
    /// Calls charged at once (1 for a call; more to reserve spare calls, see `abuse`): they
    /// conform together when `now >= tat + (cells - 1)·T - τ`, and move `tat` by `cells`·T.
    pub cells: i64,
}

/// What the decision found for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct KeyOutcome {
    /// The first instant at which the call (its `cells`) conforms for this key, as the state
    /// stood before the call; after `now` means this key refused.
    #[diesel(sql_type = Timestamptz)]
    pub allowed_from: OffsetDateTime,
    /// The key's new `tat` if the call charged it.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub charged_tat: Option<OffsetDateTime>,
}

/// Decides a call at `now` against `keys` and charges them if it passes; outcomes come in the
/// order of `keys`. The call passed if every outcome has a `charged_tat`.
pub async fn decide(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
    keys: &[KeyLimit],
) -> Result<Vec<KeyOutcome>, StoreError> {
    // `seen` reads the committed state; `charged` upserts every key only if all conform, and
    // re-checks each key under its row lock (ON CONFLICT ... WHERE sees the latest version).
    // GREATEST ignores NULL, so a key without a row starts at `now`. Rows are locked in key
    // order, the same in every call, so two calls sharing keys never deadlock.
    const SQL: &str = "
        WITH input AS (
            SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $5::bigint[])
                WITH ORDINALITY AS i(key, emission_us, tolerance_us, cells, position)
        ), seen AS (
            SELECT i.key, i.position, i.emission_us * i.cells AS cost_us,
                   GREATEST(r.tat, $4)
                   + ((i.cells - 1) * i.emission_us - i.tolerance_us) * interval '1 microsecond'
                   AS allowed_from
            FROM input i LEFT JOIN rate_limits r ON r.key = i.key
        ), charged AS (
            INSERT INTO rate_limits AS r (key, tat)
            SELECT s.key, $4 + s.cost_us * interval '1 microsecond' FROM seen s
            WHERE NOT EXISTS (SELECT 1 FROM seen WHERE allowed_from > $4)
            ORDER BY s.key
            ON CONFLICT (key) DO UPDATE
                SET tat = GREATEST(r.tat, $4) + (excluded.tat - $4)
                WHERE r.tat + (SELECT (i.cells - 1) * i.emission_us - i.tolerance_us
                               FROM input i WHERE i.key = r.key)
                              * interval '1 microsecond' <= $4
            RETURNING r.key, r.tat
        )
        SELECT s.allowed_from, c.tat AS charged_tat
        FROM seen s LEFT JOIN charged c ON c.key = s.key
        ORDER BY s.position";
    let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    let emissions: Vec<i64> = keys.iter().map(|k| k.emission_us).collect();
    let tolerances: Vec<i64> = keys.iter().map(|k| k.tolerance_us).collect();
    let cells: Vec<i64> = keys.iter().map(|k| k.cells).collect();
    Ok(identity_proto::pg::statement(SQL)
        .bind::<Array<Text>, _>(names)
        .bind::<Array<BigInt>, _>(emissions)
        .bind::<Array<BigInt>, _>(tolerances)
        .bind::<Timestamptz, _>(now)
        .bind::<Array<BigInt>, _>(cells)
        .load(conn)
        .await?)
}
