//! Load generator for sessions: Login (one Argon2 check per call) and RefreshSession (no
//! hashing: a rotation in PostgreSQL and a PASETO signature), against a running server.
//!
//! It signs up `--users` accounts first (reading their verification tokens from the outbox,
//! hence `DATABASE_URL`), measures the machine's Argon2 bound, then runs each phase for
//! `--seconds` and prints throughput and latency percentiles. It asserts nothing.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use argon2::Params;
use clap::Parser;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_proto::identity::v1::{self as pb, session_service_client::SessionServiceClient};
use identity_tests::load::{
    CpuTicks, PASSWORD, Tally, argon2_bound, find_server_pid, gather, log_in, record,
    refresh_at_rate, refresh_phase, sign_up_verified,
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Drive Login and RefreshSession against a running identity-server and print throughput and
/// latency beside the machine's Argon2 bound.
#[derive(Debug, Parser)]
#[command(name = "sessionload")]
struct Args {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// The server's database, to read verification tokens during set-up.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Accounts to sign up and log in as.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Concurrent callers for Login (default: 4 per core).
    #[arg(long)]
    login_callers: Option<usize>,
    /// Concurrent callers for RefreshSession, each rotating its own session.
    #[arg(long, default_value_t = 16)]
    refresh_callers: usize,
    /// RefreshSession arrivals per second for the latency phase (each refreshing one of 64
    /// sessions, one call per session at a time).
    #[arg(long, default_value_t = 2500.0)]
    refresh_rate: f64,
    /// Run the Login phase only (its ceiling, e.g. with cheap Argon2 settings on the server).
    #[arg(long)]
    login_only: bool,
}

/// Signs up and verifies `n` accounts; returns their addresses.
async fn active_users(
    channel: &Channel,
    database_url: &str,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut db = AsyncPgConnection::establish(database_url).await?;
    let mut emails = Vec::new();
    for i in 0..n {
        let email = format!("sl-{}-{i}@loadgen.example.com", &run[..8]);
        sign_up_verified(channel, &mut db, &email, "Session Load").await?;
        emails.push(email);
    }
    Ok(emails)
}

async fn login_phase(
    channel: &Channel,
    emails: &Arc<Vec<String>>,
    callers: usize,
    run_for: Duration,
) -> Tally {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for caller in 0..callers {
        let mut client = SessionServiceClient::new(channel.clone());
        let emails = Arc::clone(emails);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut i = caller;
            while started.elapsed() < run_for {
                let request = pb::LoginRequest {
                    email: emails[i % emails.len()].clone(),
                    password: PASSWORD.into(),
                };
                let call = Instant::now();
                let result = client.login(request).await;
                record(&mut tally, call, &result);
                i += callers;
            }
            tally
        });
    }
    gather(tasks, started).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let run_for = Duration::from_secs(args.seconds);
    let channel = Channel::from_shared(args.addr.clone())?.connect().await?;

    let (one_hash, bound) =
        tokio::task::spawn_blocking(move || argon2_bound(&Params::DEFAULT, cores)).await?;
    println!(
        "Argon2id (defaults) on {cores} cores: one hash {:.1} ms; bound {bound:.1} hashes/s",
        one_hash.as_secs_f64() * 1000.0
    );
    let emails = Arc::new(active_users(&channel, &args.database_url, args.users).await?);

    let callers = args.login_callers.unwrap_or(4 * cores);
    let pid = find_server_pid();
    let cpu = pid.map(CpuTicks::now);
    let mut login = login_phase(&channel, &emails, callers, run_for).await;
    println!("login, {callers} callers: {}", login.summary());
    if let (Some(pid), Some(cpu)) = (pid, cpu) {
        println!("  CPU time: {}", cpu.shares_until(&CpuTicks::now(pid)));
    }
    println!(
        "  throughput = {:.0}% of the Argon2 bound (goal: at least 85%)",
        login.per_second() / bound * 100.0
    );

    if args.login_only {
        return Ok(());
    }

    let mut refresh = refresh_phase(&channel, &emails, args.refresh_callers, run_for).await?;
    println!(
        "refresh, {} callers: {}",
        args.refresh_callers,
        refresh.summary()
    );
    println!("  goal: at least 2,500 calls/s");

    let sessions = log_in(&channel, &emails, 64).await?;
    let rate = args.refresh_rate;
    let mut at_rate = refresh_at_rate(&channel, sessions, rate, run_for).await;
    println!("refresh, {rate:.0} arrivals/s: {}", at_rate.summary());
    println!("  goal: p99 under 10 ms");
    Ok(())
}
