//! costbench: what a feature costs. Two identity-servers on one database, one with the feature
//! off and one with it on; Register and RefreshSession throughput on each, in alternating rounds
//! of one run, so drift of the shared machine hits both alike.
//!
//! `scripts/bench limits` measures the rate limiter (on: limits raised so that every call is
//! decided against PostgreSQL and passes); `scripts/bench observability` measures trace export
//! and metrics. Each starts both servers and runs this; see `--help` for running it against
//! servers of your own.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use clap::Parser;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_proto::identity::v1::{
    self as pb, registration_service_client::RegistrationServiceClient,
};
use identity_tests::load::{PASSWORD, Tally, gather, record, refresh_phase, sign_up_verified};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Register and RefreshSession throughput with a feature off and on, in one run.
#[derive(Debug, Parser)]
struct Args {
    /// The server with the feature off.
    #[arg(long, default_value = "http://127.0.0.1:50151")]
    off: String,
    /// The server with the feature on (and every call still allowed).
    #[arg(long, default_value = "http://127.0.0.1:50152")]
    on: String,
    /// What differs between the two, for the report.
    #[arg(long, default_value = "limits")]
    feature: String,
    /// The most Register may lose with the feature on, in percent, for the report.
    #[arg(long, default_value_t = 3.0)]
    register_goal: f64,
    /// The most RefreshSession may lose with the feature on, in percent, for the report.
    #[arg(long, default_value_t = 3.0)]
    refresh_goal: f64,
    /// The servers' (shared) database, to read verification tokens during set-up.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Rounds; each runs every phase once on each server, the order alternating.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent Register callers (default: 4 per core).
    #[arg(long)]
    register_callers: Option<usize>,
    /// Concurrent RefreshSession callers, each rotating its own session.
    #[arg(long, default_value_t = 16)]
    refresh_callers: usize,
}

static NEXT_ADDRESS: AtomicU64 = AtomicU64::new(0);

fn next_address(run: &str) -> String {
    let n = NEXT_ADDRESS.fetch_add(1, Ordering::Relaxed);
    format!("cb-{run}-{n}@costbench.example.com")
}

fn register_request(email: String) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email,
        password: PASSWORD.into(),
        display_name: "Cost Bench".into(),
        locale: "en".into(),
        ..Default::default()
    }
}

/// An active account, on a fresh address of `run`.
async fn active_user(
    channel: &Channel,
    db: &mut AsyncPgConnection,
    run: &str,
) -> anyhow::Result<String> {
    let email = next_address(run);
    sign_up_verified(channel, db, &email, "Cost Bench").await?;
    Ok(email)
}

/// Register with distinct addresses from `callers` closed-loop callers for `run_for`.
async fn register_phase(channel: &Channel, run: &str, callers: usize, run_for: Duration) -> Tally {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let mut client = RegistrationServiceClient::new(channel.clone());
        let run = run.to_owned();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while started.elapsed() < run_for {
                let call = Instant::now();
                let result = client.register(register_request(next_address(&run))).await;
                record(&mut tally, call, &result);
            }
            tally
        });
    }
    gather(tasks, started).await
}

/// Calls and seconds summed over rounds.
#[derive(Debug, Default, Clone, Copy)]
struct Sum {
    calls: usize,
    seconds: f64,
    refused: u64,
    errors: u64,
}

impl Sum {
    fn add(&mut self, tally: &Tally) {
        self.calls += tally.ok();
        self.seconds += tally.elapsed.as_secs_f64();
        self.refused += tally.exhausted;
        self.errors += tally.other_errors;
    }

    fn per_second(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let register_callers = args.register_callers.unwrap_or(4 * cores);
    let run_for = Duration::from_secs(args.seconds);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let servers = [
        (
            "off",
            Channel::from_shared(args.off.clone())?.connect().await?,
        ),
        (
            "on",
            Channel::from_shared(args.on.clone())?.connect().await?,
        ),
    ];
    let mut db = AsyncPgConnection::establish(&args.database_url).await?;
    let mut emails = Vec::new();
    for _ in 0..args.refresh_callers {
        emails.push(active_user(&servers[0].1, &mut db, &run).await?);
    }

    // [server][0: Register, 1: RefreshSession]
    let mut sums = [[Sum::default(); 2]; 2];
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (name, channel) = &servers[which];
            let mut register = register_phase(channel, &run, register_callers, run_for).await;
            let mut refresh =
                refresh_phase(channel, &emails, args.refresh_callers, run_for).await?;
            let feature = &args.feature;
            println!(
                "round {round}, {feature} {name}: register {}",
                register.summary()
            );
            println!(
                "round {round}, {feature} {name}: refresh  {}",
                refresh.summary()
            );
            sums[which][0].add(&register);
            sums[which][1].add(&refresh);
        }
    }
    for (rpc, i, goal) in [
        ("Register", 0, args.register_goal),
        ("RefreshSession", 1, args.refresh_goal),
    ] {
        let (off, on) = (sums[0][i], sums[1][i]);
        println!(
            "{rpc}: {} off {:.1}/s, on {:.1}/s: cost {:.1}% (goal: under {goal}%); refused off/on {}/{}, other errors {}/{}",
            args.feature,
            off.per_second(),
            on.per_second(),
            (1.0 - on.per_second() / off.per_second()) * 100.0,
            off.refused,
            on.refused,
            off.errors,
            on.errors
        );
    }
    Ok(())
}
