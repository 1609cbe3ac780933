//! Queries on `sessions`, `refresh_tokens` and `login_throttle`.

use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Bytea, Double, Integer, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    StoreError, lower,
    schema::{login_throttle, refresh_tokens, sessions, users},
};
use crate::domain::{TokenHash, UserStatus};

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

/// What Login checks a password against: the address's active account and its newest pending
/// registration, each if there is one.
#[derive(Debug, Default)]
pub struct Candidates {
    pub active: Option<Credentials>,
    pub pending: Option<Credentials>,
}

/// The rows of this address (any letter case) a Login checks, in one statement: the active
/// account first, then the newest pending registrations (of which the first is kept).
pub async fn candidates(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<Candidates, StoreError> {
    let rows: Vec<Credentials> = users::table
        .filter(lower(users::email).eq(lower(email)))
        .order((
            users::status.eq(UserStatus::Active.as_str()).desc(),
            users::created_at.desc(),
            users::id.desc(),
        ))
        .select(Credentials::as_select())
        .limit(2)
        .load(conn)
        .await?;
    let mut candidates = Candidates::default();
    for row in rows {
        let slot = match UserStatus::from_db(&row.status) {
            Some(UserStatus::Active) => &mut candidates.active,
            _ => &mut candidates.pending,
        };
        if slot.is_none() {
            *slot = Some(row);
        }
    }
    Ok(candidates)
}

/// Locks the active account `user_id` against a password change until the transaction ends,
/// if its password hash is still `password_hash`; says whether it is. A reset that commits
/// after this waits for the transaction, and then revokes the session it started.
pub async fn lock_if_password_unchanged(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    password_hash: &str,
) -> Result<bool, StoreError> {
    let found: Option<Uuid> = users::table
        .filter(users::id.eq(user_id))
        .filter(users::password_hash.eq(password_hash))
        .filter(users::status.eq(UserStatus::Active.as_str()))
        .select(users::id)
        .for_no_key_update()
        .first(conn)
        .await
        .optional()?;
    Ok(found.is_some())
}

/// Ends the oldest live sessions of `user_id` beyond the newest `keep`, with the reason
/// `session_limit`; returns their ids. The caller holds the user's row lock, so concurrent
/// logins of one user take turns and the bound is exact.
pub async fn revoke_beyond(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: i64,
    now: OffsetDateTime,
) -> Result<Vec<Uuid>, StoreError> {
    #[derive(QueryableByName)]
    struct Revoked {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    let revoked: Vec<Revoked> = identity_proto::pg::statement(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = 'session_limit'
          WHERE id IN (SELECT id FROM sessions
                        WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
                        ORDER BY created_at DESC, id DESC
                        OFFSET $3)
          RETURNING id",
    )
    .bind::<diesel::sql_types::Uuid, _>(user_id)
    .bind::<Timestamptz, _>(now)
    .bind::<diesel::sql_types::BigInt, _>(keep)
    .load(conn)
    .await?;
    Ok(revoked.into_iter().map(|r| r.id).collect())
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

/// What the login throttle decided about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Go ahead: the attempt is counted as a failure until a success clears the count.
    Allowed {
        /// Consecutive failures of the address, this attempt included.
        failures: i32,
    },
    /// Refused: an earlier attempt blocked the address until `until`.
    Refused {
        until: OffsetDateTime,
        /// Attempts refused since the last one let through, this one included.
        refused: i32,
    },
}

#[derive(QueryableByName)]
struct Decision {
    #[diesel(sql_type = Integer)]
    failures: i32,
    #[diesel(sql_type = Timestamptz)]
    blocked_until: OffsetDateTime,
    #[diesel(sql_type = Integer)]
    refused_attempts: i32,
}

/// Reserves a login attempt for this address in one statement, so concurrent attempts (on any
/// replica) queue on the row and each sees the decisions before it.
///
/// An attempt is let through when the address is not blocked at `now`; it is then counted as a
/// failure up front and blocks the address for `delays[n - 1]` seconds, where `n` is the new
/// count (the last delay repeats). A refused attempt changes nothing but the refusal count, so
/// a block never lasts longer than the longest delay after the attempt that set it.
pub async fn reserve_attempt(
    conn: &mut AsyncPgConnection,
    email_key: &str,
    now: OffsetDateTime,
    delays: &[f64],
) -> Result<Attempt, StoreError> {
    let decision: Decision = identity_proto::pg::statement(
        "INSERT INTO login_throttle AS t
                (email_key, failures, last_failed_at, blocked_until, refused_attempts)
         VALUES ($1, 1, $2, $2 + make_interval(secs => $3[1]), 0)
         ON CONFLICT (email_key) DO UPDATE SET
            failures = CASE WHEN t.blocked_until <= $2
                THEN LEAST(t.failures, 2147483646) + 1 ELSE t.failures END,
            last_failed_at = CASE WHEN t.blocked_until <= $2
                THEN $2 ELSE t.last_failed_at END,
            refused_attempts = CASE WHEN t.blocked_until <= $2
                THEN 0 ELSE LEAST(t.refused_attempts, 2147483646) + 1 END,
            blocked_until = CASE WHEN t.blocked_until <= $2
                THEN $2 + make_interval(secs => $3[LEAST(t.failures, cardinality($3) - 1) + 1])
                ELSE t.blocked_until END
         RETURNING failures, blocked_until, refused_attempts",
    )
    .bind::<Text, _>(email_key)
    .bind::<Timestamptz, _>(now)
    .bind::<Array<Double>, _>(delays)
    .get_result(conn)
    .await?;
    Ok(if decision.refused_attempts == 0 {
        Attempt::Allowed {
            failures: decision.failures,
        }
    } else {
        Attempt::Refused {
            until: decision.blocked_until,
            refused: decision.refused_attempts,
        }
    })
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

/// Gives `session_id` a new current refresh token of `generation`.
pub async fn insert_refresh_token(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    hash: &TokenHash,
    generation: i64,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::token_hash.eq(&hash.0[..]),
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::generation.eq(generation),
            refresh_tokens::created_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A session, as a refresh sees it.
#[derive(Debug, QueryableByName)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct LockedSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    /// Rotations so far; the current refresh tokens carry this generation.
    pub generation: i64,
}

/// A presented refresh token's place in its session.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct TokenState {
    /// The generation the token was issued in.
    #[diesel(sql_type = BigInt, column_name = token_generation)]
    pub generation: i64,
    /// When a rotation retired it, as the statement that locked the session read it: a
    /// rotation that committed while that statement waited for the lock is missing here (the
    /// session's generation, read after the wait, shows it).
    #[diesel(sql_type = Nullable<Timestamptz>, column_name = token_retired_at)]
    pub retired_at: Option<OffsetDateTime>,
}

/// A session locked for a refresh, and the presented token.
#[derive(Debug, QueryableByName)]
pub struct Presented {
    #[diesel(embed)]
    pub session: LockedSession,
    #[diesel(embed)]
    pub token: TokenState,
}

/// The session the refresh token with this hash belongs to, locked until the transaction ends,
/// with the token's generation and retirement: one statement.
///
/// Every change to a session's refresh tokens happens under this lock, taken before any token
/// row is touched, so concurrent refreshes of one session (of one token, or of two tokens of it)
/// take turns and never lock in opposite orders. A refresh that waited for the lock reads the
/// session as the one before it left it (PostgreSQL reads a locked row again after the wait),
/// but the token as it was when the statement started; see [`TokenState::retired_at`].
pub async fn lock_presented(
    conn: &mut AsyncPgConnection,
    hash: &TokenHash,
) -> Result<Option<Presented>, StoreError> {
    Ok(identity_proto::pg::statement(
        "SELECT s.id, s.user_id, s.expires_at, s.revoked_at, s.generation,
                t.generation AS token_generation, t.retired_at AS token_retired_at
           FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
          WHERE t.token_hash = $1
            FOR NO KEY UPDATE OF s",
    )
    .bind::<Bytea, _>(&hash.0[..])
    .get_result(conn)
    .await
    .optional()?)
}

/// The session the refresh token with this hash belongs to, locked until the transaction ends
/// (as [`lock_presented`] locks it), for ending it.
pub async fn lock_session_of(
    conn: &mut AsyncPgConnection,
    hash: &TokenHash,
) -> Result<Option<LockedSession>, StoreError> {
    Ok(lock_presented(conn, hash).await?.map(|p| p.session))
}

/// [`rotate`]'s statement: `$1` the session, `$2` now, `$3` the new token's hash.
const ROTATE: &str = "WITH next AS (
        UPDATE sessions SET generation = generation + 1 WHERE id = $1
        RETURNING generation
    ), retired AS (
        UPDATE refresh_tokens SET retired_at = $2
         WHERE session_id = $1 AND retired_at IS NULL
    )
    INSERT INTO refresh_tokens (token_hash, session_id, generation, created_at)
    SELECT $3, $1, generation, $2 FROM next
    RETURNING generation";

/// Starts the session's next generation in one statement: retires every current refresh token
/// of the session, moves the session to the next generation, and stores `hash` as the one
/// current token of it. Returns the new generation.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    hash: &TokenHash,
    now: OffsetDateTime,
) -> Result<i64, StoreError> {
    #[derive(QueryableByName)]
    struct Next {
        #[diesel(sql_type = BigInt)]
        generation: i64,
    }
    // The statements of one query see the same snapshot: the token inserted here is not among
    // those the update retires.
    let next: Next = identity_proto::pg::statement(ROTATE)
        .bind::<diesel::sql_types::Uuid, _>(session_id)
        .bind::<Timestamptz, _>(now)
        .bind::<Bytea, _>(&hash.0[..])
        .get_result(conn)
        .await?;
    Ok(next.generation)
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

#[cfg(test)]
mod tests {
    use identity_tests::pg::{PlanLine, TestDb};

    use super::*;

    #[tokio::test]
    async fn a_rotation_reads_the_sessions_current_tokens_only_however_old_the_session() {
        // A session refreshed every five minutes for a month has over 8,000 retired tokens.
        const RETIRED: i64 = 10_000;
        let db = TestDb::create().await;
        let mut conn = db.connect().await;
        let session = Uuid::new_v4();
        for statement in [
            "INSERT INTO users (id, email, password_hash, status, display_name, locale,
                                created_at, updated_at, verified_at)
             VALUES ('00000000-0000-0000-0000-000000000001', 'ada@example.com', '$argon2id$x',
                     'active', 'Ada', 'en', now(), now(), now())",
            "INSERT INTO sessions (id, user_id, created_at, expires_at, generation)
             VALUES ($1, '00000000-0000-0000-0000-000000000001', now(),
                     now() + interval '30 days', 10000)",
            "INSERT INTO refresh_tokens (token_hash, session_id, generation, created_at,
                                         retired_at)
             SELECT sha256(i::text::bytea), $1, i, now(),
                    CASE WHEN i < 10000 THEN now() END
               FROM generate_series(0, 10000) AS i",
            "ANALYZE refresh_tokens",
        ] {
            let query = diesel::sql_query(statement);
            if statement.contains("$1") {
                query
                    .bind::<diesel::sql_types::Uuid, _>(session)
                    .execute(&mut conn)
                    .await
            } else {
                query.execute(&mut conn).await
            }
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }

        let plan: Vec<PlanLine> =
            diesel::sql_query(format!("EXPLAIN (ANALYZE, TIMING OFF) {ROTATE}"))
                .bind::<diesel::sql_types::Uuid, _>(session)
                .bind::<Timestamptz, _>(OffsetDateTime::now_utc())
                .bind::<Bytea, _>(&[7_u8; 32][..])
                .load(&mut conn)
                .await
                .expect("the rotation runs");
        let plan: Vec<String> = plan.into_iter().map(|p| p.line).collect();
        let most = identity_tests::pg::most_rows_read(&plan, "refresh_tokens");
        let plan = plan.join("\n");
        assert!(
            most <= 1,
            "a scan of refresh_tokens read {most} rows to retire the one current token of a \
             session with {RETIRED} retired ones:\n{plan}"
        );
    }
}
