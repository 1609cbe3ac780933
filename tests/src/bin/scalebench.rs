//! Benchmark of identity-server as its tables grow: the same calls on a database holding 0, then
//! 1,000,000, then 10,000,000 users (by default), against the release binary it starts itself.
//!
//! The users are made with SQL `generate_series`, in realistic states: 98% active, 2% pending with
//! a live verification secret and its send in the email budget's ledger, a live session with a
//! current and two retired refresh tokens for about a fifth of the active ones, a password reset
//! used two days ago for 1 in 100 and a login-throttle row for a few; every one with the server's
//! own hash of the load generators' password, so any of them can log in. Then, at each size,
//! after `VACUUM ANALYZE`:
//!
//! 1. Register of fresh addresses (random, so they land anywhere in the address index);
//! 2. VerifyEmail of those registrations, by the link token the outbox holds;
//! 3. Login as users picked at random among all of them;
//! 4. RefreshSession, each caller rotating its own session.
//!
//! Each phase starts with fresh statistics (`ANALYZE`, as autovacuum would have them) and runs
//! `--callers` callers in a closed loop for `--seconds` and prints throughput and
//! p50/p99. The server hashes with cheap Argon2 settings (64 KiB, t=1), so what grows with the
//! tables is not hidden behind the hash.
//!
//! At the largest size it then:
//!
//! 5. captures the plan of every statement each call runs (`auto_explain` with `ANALYZE` and
//!    `BUFFERS`, on a second server whose connections alone have it; each call is made seven times
//!    so the plan kept is the one prepared statements settle on) from the PostgreSQL log
//!    (`--pg-log`) into `--explain-file`, and checks each for a sequential scan of a table that
//!    grows and for a sort;
//! 6. times Register while a janitor sweeps `--sweep-rows` expired rows (spent verification
//!    secrets, expired sessions and their refresh tokens), beside Register just before.
//!
//! It needs `DATABASE_URL` (a superuser, to create the database and load `auto_explain`) and the
//! release binaries next to it (`scripts/bench scale` does both). It prints figures; it asserts
//! nothing. The database is dropped at the end.

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use identity_proto::identity::v1::{
    self as pb, password_reset_service_client::PasswordResetServiceClient,
    registration_service_client::RegistrationServiceClient,
    session_service_client::SessionServiceClient, user_service_client::UserServiceClient,
};
use identity_tests::{
    load::{PASSWORD, Tally, refresh_phase, until_stopped},
    pg::{TestDb, admin_url},
    server::Server,
};
use tonic::transport::Channel;

/// Measure identity-server's calls as the user table grows, capture the plans of their
/// statements at the largest size, and time Register during a janitor sweep.
#[derive(Debug, Parser)]
#[command(name = "scalebench")]
struct Args {
    /// Numbers of generated users to measure at, ascending (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1000000,10000000")]
    users: Vec<u64>,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent callers in each phase.
    #[arg(long, default_value_t = 16)]
    callers: usize,
    /// The PostgreSQL server's log, where `auto_explain` writes the plans; without it no plans
    /// are captured.
    #[arg(long)]
    pg_log: Option<PathBuf>,
    /// Where the plans go.
    #[arg(long, default_value = "target/scale-explain.txt")]
    explain_file: PathBuf,
    /// Expired rows the janitor sweeps while Register runs (0: no sweep phase).
    #[arg(long, default_value_t = 1_000_000)]
    sweep_rows: u64,
}

/// Tables whose size grows with the users: a sequential scan of one is a cost that grows too.
const GROWING: [&str; 8] = [
    "users",
    "verification_secrets",
    "sessions",
    "refresh_tokens",
    "password_reset_tokens",
    "outbox",
    "email_sends",
    "login_throttle",
];

/// The address of generated user `i` (zero-padded, so the generator appends to the index).
fn generated_email(i: u64) -> String {
    format!("user{i:09}@scale.example.com")
}

/// Adds generated users `first..=last` (see the module documentation) in one statement, with
/// their verification secrets, sessions and refresh tokens. `$1` is the password hash.
const GROW: &str = "
WITH numbered AS (
    SELECT i, timestamptz '2024-01-01 00:00:00+00' + i * interval '5 seconds' AS created,
           md5(i::text) AS r, i % 50 = 0 AS pending
      FROM generate_series($2::bigint, $3::bigint) AS i),
new_users AS (
    INSERT INTO users (id, email, status, password_hash, display_name, locale, created_at,
                       updated_at, verified_at)
    SELECT (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
            || substr(r, 1, 3) || '8' || substr(r, 4, 15))::uuid,
           'user' || lpad(i::text, 9, '0') || '@scale.example.com',
           CASE WHEN pending THEN 'pending_verification' ELSE 'active' END,
           $1, 'User ' || i, 'en',
           CASE WHEN pending THEN now() - (i % 1440) * interval '1 minute' ELSE created END,
           created + interval '1 hour',
           CASE WHEN pending THEN NULL ELSE created + interval '10 minutes' END
      FROM numbered
    RETURNING id, email, status, created_at),
secrets AS (
    INSERT INTO verification_secrets (id, user_id, token_hash, code_mac, created_at, expires_at)
    SELECT gen_random_uuid(), id, sha256(uuid_send(id) || '\\x01'::bytea),
           sha256(uuid_send(id) || '\\x02'::bytea), created_at, created_at + interval '2 days'
      FROM new_users WHERE status = 'pending_verification'),
sends AS (
    INSERT INTO email_sends (id, address_key, kind, sent_at)
    SELECT gen_random_uuid(), lower(email), 'email.verification.v1', created_at
      FROM new_users WHERE status = 'pending_verification'),
resets AS (
    INSERT INTO password_reset_tokens (id, user_id, token_hash, created_at, expires_at,
                                       consumed_at)
    SELECT gen_random_uuid(), id, sha256(uuid_send(id) || '\\x06'::bytea),
           now() - interval '2 days', now() - interval '47 hours',
           now() - interval '2 days' + interval '5 minutes'
      FROM new_users WHERE status = 'active' AND get_byte(uuid_send(id), 15) % 100 = 1),
throttled AS (
    INSERT INTO login_throttle (email_key, failures, last_failed_at, blocked_until)
    SELECT lower(email), 3, now() - interval '1 hour', now() - interval '1 hour'
      FROM new_users WHERE get_byte(uuid_send(id), 15) % 250 = 2),
new_sessions AS (
    INSERT INTO sessions (id, user_id, created_at, expires_at, generation)
    SELECT gen_random_uuid(), id, started, started + interval '30 days', 2
      FROM new_users,
           LATERAL (SELECT now() - (get_byte(uuid_send(id), 14) * 8000) * interval '1 second'
                    AS started) s
     WHERE status = 'active' AND get_byte(uuid_send(id), 15) % 5 = 0
    RETURNING id, created_at)
INSERT INTO refresh_tokens (token_hash, session_id, created_at, retired_at, generation)
SELECT sha256(uuid_send(id) || int4send(g)), id, created_at + g * interval '1 hour',
       CASE WHEN g < 2 THEN created_at + (g + 1) * interval '1 hour' END, g
  FROM new_sessions, generate_series(0, 2) AS g";

/// `n` rows the janitor deletes at its next sweep: spent verification secrets (half), expired
/// sessions and one refresh token of each (a quarter each), all of generated active users.
const EXPIRED: &str = "
WITH owners AS (
    SELECT id, row_number() OVER () AS k FROM users
     WHERE status = 'active' LIMIT $1::bigint / 2),
spent AS (
    INSERT INTO verification_secrets (id, user_id, token_hash, code_mac, created_at, expires_at,
                                      consumed_at)
    SELECT gen_random_uuid(), id, sha256(uuid_send(id) || '\\x03'::bytea),
           sha256(uuid_send(id) || '\\x04'::bytea), now() - interval '40 days',
           now() - interval '39 days', now() - interval '39 days 23 hours'
      FROM owners),
ended AS (
    INSERT INTO sessions (id, user_id, created_at, expires_at, generation)
    SELECT gen_random_uuid(), id, now() - interval '31 days', now() - interval '1 day', 0
      FROM owners WHERE k % 2 = 0
    RETURNING id, created_at)
INSERT INTO refresh_tokens (token_hash, session_id, created_at, generation)
SELECT sha256(uuid_send(id) || '\\x05'::bytea), id, created_at, 0 FROM ended";

#[derive(QueryableByName)]
struct Value {
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Grows the generated users from `from` to `to`, a million per statement, then vacuums and
/// analyzes.
async fn grow(conn: &mut AsyncPgConnection, hash: &str, from: u64, to: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut first = from + 1;
    while first <= to {
        let last = (first + 999_999).min(to);
        diesel::sql_query(GROW)
            .bind::<Text, _>(hash)
            .bind::<BigInt, _>(i64::try_from(first)?)
            .bind::<BigInt, _>(i64::try_from(last)?)
            .execute(conn)
            .await
            .context("generating users")?;
        println!(
            "  generated users up to {last} ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        first = last + 1;
    }
    conn.batch_execute("VACUUM ANALYZE").await?;
    println!(
        "  VACUUM ANALYZE done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One line on the sizes of the growing tables.
async fn sizes(conn: &mut AsyncPgConnection) -> anyhow::Result<String> {
    let rows: Vec<Value> = diesel::sql_query(
        "SELECT string_agg(format('%s %s rows, %s', relname, n_live_tup,
                                  pg_size_pretty(pg_total_relation_size(relid))), '; '
                           ORDER BY relname) AS value
           FROM pg_stat_user_tables
          WHERE relname IN ('users', 'verification_secrets', 'sessions', 'refresh_tokens')",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|r| r.value).unwrap_or_default())
}

/// A flag that turns true after `after`.
fn stop_after(after: Duration) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

/// Register of fresh random addresses by `callers` until `stop`; returns the tally and the
/// addresses that were registered.
async fn register_phase(
    channel: Channel,
    callers: usize,
    stop: Arc<AtomicBool>,
) -> (Tally, Vec<String>) {
    let registered = Arc::new(Mutex::new(Vec::new()));
    let tally = until_stopped(callers, stop, {
        let registered = Arc::clone(&registered);
        move || {
            let mut client = RegistrationServiceClient::new(channel.clone());
            let registered = Arc::clone(&registered);
            let email = format!("{}@scale.example.org", uuid::Uuid::new_v4().simple());
            Some(async move {
                let result = client
                    .register(pb::RegisterRequest {
                        email: email.clone(),
                        password: PASSWORD.into(),
                        display_name: "Scale Bench".into(),
                        locale: "en".into(),
                        ..Default::default()
                    })
                    .await;
                if result.is_ok() {
                    registered.lock().expect("not poisoned").push(email);
                }
                result
            })
        }
    })
    .await;
    let registered = std::mem::take(&mut *registered.lock().expect("not poisoned"));
    (tally, registered)
}

/// The link tokens the outbox holds for `emails`.
async fn tokens_for(
    conn: &mut AsyncPgConnection,
    emails: &[String],
) -> anyhow::Result<Vec<String>> {
    let rows: Vec<Value> = diesel::sql_query(
        "SELECT payload->>'token' AS value FROM outbox
          WHERE kind = 'email.verification.v1' AND payload->>'recipient' = ANY($1)",
    )
    .bind::<Array<Text>, _>(emails)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.value).collect())
}

/// VerifyEmail with `tokens`, one each, by `callers` until they run out or `stop`.
async fn verify_phase(
    channel: &Channel,
    tokens: Vec<String>,
    callers: usize,
    stop: Arc<AtomicBool>,
) -> Tally {
    let tokens = Mutex::new(tokens);
    let channel = channel.clone();
    until_stopped(callers, stop, move || {
        let token = tokens.lock().expect("not poisoned").pop()?;
        let mut client = RegistrationServiceClient::new(channel.clone());
        Some(async move {
            client
                .verify_email(pb::VerifyEmailRequest {
                    proof: Some(pb::verify_email_request::Proof::Token(token)),
                    password: PASSWORD.into(),
                })
                .await
        })
    })
    .await
}

/// Login by `callers` until `stop`, each call as one of `pick()`'s addresses.
async fn login_phase(
    channel: &Channel,
    callers: usize,
    stop: Arc<AtomicBool>,
    pick: Arc<dyn Fn() -> String + Send + Sync>,
) -> Tally {
    let channel = channel.clone();
    until_stopped(callers, stop, move || {
        let mut client = SessionServiceClient::new(channel.clone());
        let email = pick();
        Some(async move {
            client
                .login(pb::LoginRequest {
                    email,
                    password: PASSWORD.into(),
                })
                .await
        })
    })
    .await
}

/// What one size measured: per call, its name, calls per second, p50 and p99 in ms.
struct Figures {
    users: u64,
    calls: Vec<(&'static str, f64, f64, f64)>,
}

fn figures(name: &'static str, tally: &mut Tally) -> (&'static str, f64, f64, f64) {
    (
        name,
        tally.per_second(),
        tally.percentile_ms(50.0),
        tally.percentile_ms(99.0),
    )
}

/// A table of every call at every size, with each throughput's change from the first size.
fn table(results: &[Figures]) -> String {
    let mut out = format!("{:<16}", "users");
    for r in results {
        write!(out, "{:>34}", r.users).expect("writing to a String");
    }
    let Some(first) = results.first() else {
        return out;
    };
    for (i, (name, base, ..)) in first.calls.iter().enumerate() {
        write!(out, "\n{name:<16}").expect("writing to a String");
        for r in results {
            let (_, rate, p50, p99) = r.calls[i];
            write!(
                out,
                "{:>34}",
                format!(
                    "{rate:.0}/s ({:+.0}%) p50 {p50:.1} p99 {p99:.1}",
                    (rate / base - 1.0) * 100.0
                )
            )
            .expect("writing to a String");
        }
    }
    out
}

/// Runs the four phases at one size; prints a line each.
async fn measure(
    args: &Args,
    channel: &Channel,
    conn: &mut AsyncPgConnection,
    users: u64,
) -> anyhow::Result<Figures> {
    let run_for = Duration::from_secs(args.seconds);
    let (mut register, registered) =
        register_phase(channel.clone(), args.callers, stop_after(run_for)).await;
    println!("  Register:       {}", register.summary());

    // Statistics as autovacuum would have them by now (on a table that was empty, the
    // planner would otherwise still count on no rows).
    conn.batch_execute("ANALYZE").await?;
    let tokens = tokens_for(conn, &registered).await?;
    let mut verify = verify_phase(channel, tokens, args.callers, stop_after(run_for)).await;
    println!("  VerifyEmail:    {}", verify.summary());
    // The relay would have delivered them.
    conn.batch_execute("DELETE FROM outbox; ANALYZE").await?;

    let pick: Arc<dyn Fn() -> String + Send + Sync> = if users == 0 {
        let verified = Arc::new(registered);
        Arc::new(move || verified[rand::random_range(0..verified.len())].clone())
    } else {
        // Pending ones (every 50th) would answer EMAIL_NOT_VERIFIED.
        Arc::new(move || {
            loop {
                let i = rand::random_range(1..=users);
                if i % 50 != 0 {
                    break generated_email(i);
                }
            }
        })
    };
    let mut login = login_phase(
        channel,
        args.callers,
        stop_after(run_for),
        Arc::clone(&pick),
    )
    .await;
    println!("  Login:          {}", login.summary());

    conn.batch_execute("ANALYZE").await?;
    let emails: Vec<String> = (0..args.callers).map(|_| pick()).collect();
    let mut refresh = refresh_phase(channel, &emails, args.callers, run_for).await?;
    println!("  RefreshSession: {}", refresh.summary());
    Ok(Figures {
        users,
        calls: vec![
            figures("Register", &mut register),
            figures("VerifyEmail", &mut verify),
            figures("Login", &mut login),
            figures("RefreshSession", &mut refresh),
        ],
    })
}

/// The PostgreSQL log from byte `offset` on.
fn log_since(path: &PathBuf, offset: u64) -> anyhow::Result<String> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// The plans `auto_explain` logged in `log`, by query text (the last of each, the plan a
/// prepared statement settled on).
fn plans(log: &str) -> Vec<(String, String)> {
    let mut plans: Vec<(String, String)> = Vec::new();
    let mut current: Option<String> = None;
    let finish = |plan: Option<String>, plans: &mut Vec<(String, String)>| {
        let Some(plan) = plan else { return };
        let query = plan
            .split("\nQuery Text: ")
            .nth(1)
            .map(|rest| {
                rest.lines()
                    .take_while(|l| !l.contains("(cost="))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        plans.retain(|(q, _)| *q != query);
        plans.push((query, plan));
    };
    for line in log.lines() {
        if line.contains("LOG:  duration:") && line.ends_with("plan:") {
            finish(current.take(), &mut plans);
            current = Some(line.to_owned());
        } else if let (Some(plan), Some(rest)) = (current.as_mut(), line.strip_prefix('\t')) {
            plan.push('\n');
            plan.push_str(rest);
        } else {
            finish(current.take(), &mut plans);
        }
    }
    finish(current, &mut plans);
    plans
}

/// Most rows a sort may order: those of one user or one address (sessions under the cap of 50,
/// the registrations of one address), never a table's.
const SMALL_SORT: u64 = 1_000;

/// What in `plan` grows with the tables: sequential scans of growing tables, and sorts of more
/// than [`SMALL_SORT`] rows.
fn objections(plan: &str) -> Vec<String> {
    let sorted_rows = |node: &str| -> u64 {
        node.split("actual time=")
            .nth(1)
            .and_then(|rest| rest.split(" rows=").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    plan.lines()
        .filter(|line| {
            let node = line.trim_start().trim_start_matches("->  ");
            GROWING
                .iter()
                .any(|table| node.starts_with(&format!("Seq Scan on {table} ")))
                || (node.starts_with("Sort  (") && sorted_rows(node) > SMALL_SORT)
        })
        .map(|line| line.trim().to_owned())
        .collect()
}

/// Makes each call seven times against `channel` (a server whose connections run
/// `auto_explain`).
async fn every_call(
    channel: &Channel,
    conn: &mut AsyncPgConnection,
    users: u64,
) -> anyhow::Result<()> {
    let mut registration = RegistrationServiceClient::new(channel.clone());
    let mut sessions = SessionServiceClient::new(channel.clone());
    let mut resets = PasswordResetServiceClient::new(channel.clone());
    let mut me = UserServiceClient::new(channel.clone());
    let active = |k: u64| generated_email((users / 7 * k).max(1) | 1);
    for k in 1..=7u64 {
        let fresh = format!("{}@scale.example.org", uuid::Uuid::new_v4().simple());
        let request = |email: &str| pb::RegisterRequest {
            email: email.to_owned(),
            password: PASSWORD.into(),
            display_name: "Scale Bench".into(),
            locale: "en".into(),
            ..Default::default()
        };
        registration.register(request(&fresh)).await?;
        // A taken address (the enumeration-safe path).
        registration.register(request(&active(k))).await?;
        registration
            .resend_verification_email(pb::ResendVerificationEmailRequest {
                email: fresh.clone(),
                ..Default::default()
            })
            .await?;
        let token = tokens_for(conn, std::slice::from_ref(&fresh)).await?;
        registration
            .verify_email(pb::VerifyEmailRequest {
                proof: Some(pb::verify_email_request::Proof::Token(
                    token
                        .into_iter()
                        .next()
                        .context("a token for the fresh address")?,
                )),
                password: PASSWORD.into(),
            })
            .await?;
        let login = sessions
            .login(pb::LoginRequest {
                email: active(k),
                password: PASSWORD.into(),
            })
            .await?
            .into_inner();
        let wrong = sessions
            .login(pb::LoginRequest {
                email: generated_email(users / 7 * k + 3),
                password: "not-the-password-at-all".into(),
            })
            .await;
        anyhow::ensure!(wrong.is_err(), "a wrong password logged in");
        let mut request = tonic::Request::new(pb::GetCurrentUserRequest {});
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", login.access_token).parse()?,
        );
        me.get_current_user(request).await?;
        let refreshed = sessions
            .refresh_session(pb::RefreshSessionRequest {
                refresh_token: login.refresh_token,
            })
            .await?
            .into_inner();
        sessions
            .revoke_session(pb::RevokeSessionRequest {
                refresh_token: refreshed.refresh_token,
            })
            .await?;
        for email in [fresh, generated_email(users + k)] {
            resets
                .request_password_reset(pb::RequestPasswordResetRequest {
                    email,
                    ..Default::default()
                })
                .await?;
        }
        let token: Vec<Value> = diesel::sql_query(
            "SELECT payload->>'token' AS value FROM outbox
              WHERE kind = 'email.password_reset.v1' ORDER BY created_at DESC LIMIT 1",
        )
        .load(conn)
        .await?;
        resets
            .reset_password(pb::ResetPasswordRequest {
                token: token.into_iter().next().context("a reset token")?.value,
                new_password: PASSWORD.into(),
            })
            .await?;
        conn.batch_execute("DELETE FROM outbox").await?;
    }
    Ok(())
}

/// Captures the plans of every call's statements into `args.explain_file`; prints a summary.
async fn explain(
    args: &Args,
    server: &Server,
    conn: &mut AsyncPgConnection,
    pg_log: &PathBuf,
    users: u64,
) -> anyhow::Result<()> {
    let db = &server.db.name;
    conn.batch_execute(&format!(
        "ALTER DATABASE {db} SET session_preload_libraries = 'auto_explain';
         ALTER DATABASE {db} SET auto_explain.log_min_duration = 0;
         ALTER DATABASE {db} SET auto_explain.log_analyze = on;
         ALTER DATABASE {db} SET auto_explain.log_buffers = on;"
    ))
    .await?;
    let offset = std::fs::metadata(pg_log)?.len();
    // A second server: only its new connections load auto_explain.
    let explained = server.replica(&server_env()).await;
    let result = every_call(&explained.channel().await, conn, users).await;
    drop(explained);
    conn.batch_execute(&format!("ALTER DATABASE {db} RESET ALL"))
        .await?;
    result?;

    let plans = plans(&log_since(pg_log, offset)?);
    let mut file = format!(
        "# EXPLAIN (ANALYZE, BUFFERS) of every statement of Register (new and taken address), \
         ResendVerificationEmail, VerifyEmail, Login (right and wrong password), GetCurrentUser, \
         RefreshSession, RevokeSession, RequestPasswordReset (registered and unknown address) \
         and ResetPassword with {users} generated users; the last of seven executions of each.\n\n"
    );
    let mut objected = 0;
    for (query, plan) in &plans {
        let found = objections(plan);
        if !found.is_empty() {
            objected += 1;
            println!(
                "  grows with the tables: {}\n    {}",
                query.lines().next().unwrap_or_default(),
                found.join("\n    ")
            );
        }
        writeln!(file, "{plan}\n")?;
    }
    std::fs::write(&args.explain_file, file)?;
    println!(
        "  plans of {} statements written to {}: {} with a sequential scan of a growing table or a sort of more than {SMALL_SORT} rows (goal: none)",
        plans.len(),
        args.explain_file.display(),
        objected
    );
    Ok(())
}

/// Register beside a janitor sweep of `rows` expired rows.
async fn sweep(args: &Args, server: &Server, conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
    let channel = server.channel().await;
    let run_for = Duration::from_secs(args.seconds);
    let (mut before, _) = register_phase(channel.clone(), args.callers, stop_after(run_for)).await;
    println!("  Register, no sweep:     {}", before.summary());

    diesel::sql_query(EXPIRED)
        .bind::<BigInt, _>(i64::try_from(args.sweep_rows)?)
        .execute(conn)
        .await?;
    conn.batch_execute("VACUUM ANALYZE verification_secrets, sessions, refresh_tokens")
        .await?;
    let mut env = server_env();
    env.retain(|(key, _)| *key != "IDENTITY_JANITOR_INTERVAL_SECS" && *key != "RUST_LOG");
    env.extend([
        ("IDENTITY_JANITOR_INTERVAL_SECS", "1"),
        ("RUST_LOG", "warn,identity_server=info"),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(register_phase(
        channel.clone(),
        args.callers,
        Arc::clone(&stop),
    ));
    let started = Instant::now();
    let mut janitor = server.replica(&env).await;
    janitor
        .process
        .wait_for_line("janitor deleted expired rows", Duration::from_secs(1800))
        .await;
    let swept_in = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut during, _) = load.await?;
    drop(janitor);
    let left: Count = diesel::sql_query(
        "SELECT (SELECT count(*) FROM verification_secrets
                 WHERE LEAST(expires_at, consumed_at) <= now() - interval '7 days')
              + (SELECT count(*) FROM sessions WHERE expires_at <= now())
              + (SELECT count(*) FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id
                 WHERE s.expires_at <= now()) AS n",
    )
    .get_result(conn)
    .await?;
    println!(
        "  Register, during a sweep of {} expired rows ({:.1} s from the janitor's start, {} still due): {}",
        args.sweep_rows,
        swept_in.as_secs_f64(),
        left.n,
        during.summary()
    );
    println!(
        "  p99 during the sweep = {:.2}x without (goal: under 2x)",
        during.percentile_ms(99.0) / before.percentile_ms(99.0)
    );
    Ok(())
}

/// The server's settings: cheap Argon2, no rate limits or challenge (every call comes from
/// 127.0.0.1), no janitor but the sweep phase's, warnings only.
fn server_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("IDENTITY_ARGON2_M_KIB", "64"),
        ("IDENTITY_ARGON2_T", "1"),
        ("IDENTITY_RATE_LIMITING", "false"),
        ("IDENTITY_CHALLENGE_POLICY", "off"),
        ("IDENTITY_JANITOR_INTERVAL_SECS", "86400"),
        ("RUST_LOG", "warn,identity_server::startup=info"),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.users.is_sorted(),
        "--users must be ascending, e.g. 0,1000000,10000000"
    );
    let admin = admin_url();
    let db = TestDb::create_empty_on(&admin).await?;
    let server = Server::start_on(db, &server_env()).await;
    let channel = server.channel().await;
    let mut conn = server.db.connect().await;

    // The server's own hash of the password, for every generated user.
    RegistrationServiceClient::new(channel.clone())
        .register(pb::RegisterRequest {
            email: "hash@scale.example.org".into(),
            password: PASSWORD.into(),
            display_name: "Hash".into(),
            locale: "en".into(),
            ..Default::default()
        })
        .await?;
    let hash: Value = diesel::sql_query("SELECT password_hash AS value FROM users")
        .get_result(&mut conn)
        .await?;
    conn.batch_execute("DELETE FROM users; DELETE FROM outbox")
        .await?;

    let mut results = Vec::new();
    let mut generated = 0;
    for &users in &args.users {
        println!("{users} generated users");
        grow(&mut conn, &hash.value, generated, users).await?;
        generated = users;
        println!("  {}", sizes(&mut conn).await?);
        results.push(measure(&args, &channel, &mut conn, users).await?);
    }
    println!(
        "calls per second (change from the first size), p50 and p99 in ms; goal: Register within 10% at the largest size\n{}",
        table(&results)
    );
    match &args.pg_log {
        // The calls log in as generated users.
        Some(_) if generated == 0 => println!("no plans: they need generated users"),
        Some(pg_log) => {
            println!("plans at {generated} generated users");
            explain(&args, &server, &mut conn, pg_log, generated).await?;
        }
        None => {}
    }
    if args.sweep_rows > 0 {
        println!("janitor sweep at {generated} generated users");
        sweep(&args, &server, &mut conn).await?;
    }

    drop(conn);
    drop(channel);
    let Server {
        mut process, db, ..
    } = server;
    process.terminate(Duration::from_secs(30)).await;
    db.drop_on(&admin).await
}
