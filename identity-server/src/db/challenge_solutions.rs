//! Proof-of-work solutions already accepted: one row per challenge, so a solution is accepted
//! once whichever replica sees it (the primary key decides, in one statement).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;

use super::{StoreError, schema::challenge_solutions};

/// Marks the solution of `challenge` (the challenge hash) used until `expires_at`; returns
/// whether this was its first use. Two concurrent calls with one solution get one `true`.
pub async fn mark_used(
    conn: &mut AsyncPgConnection,
    challenge: &[u8; 32],
    expires_at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let inserted = diesel::insert_into(challenge_solutions::table)
        .values((
            challenge_solutions::challenge.eq(challenge.as_slice()),
            challenge_solutions::expires_at.eq(expires_at),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}
