//! Measuring helpers shared by the load generators: a tally of outcomes and latencies, the
//! refresh loops (closed and at a fixed rate), and the Argon2 bound of the machine (the most password hashes per second it
//! can do).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use diesel::{QueryableByName, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use identity_proto::identity::v1::{
    self as pb, registration_service_client::RegistrationServiceClient,
    session_service_client::SessionServiceClient,
};
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};

/// The `p`th percentile of `sorted` latencies, in milliseconds (nearest rank).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank].as_secs_f64() * 1000.0
}

/// What one phase saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub latencies_us: Vec<u64>,
    pub exhausted: u64,
    pub other_errors: u64,
    pub elapsed: Duration,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.exhausted += other.exhausted;
        self.other_errors += other.other_errors;
    }

    pub fn ok(&self) -> usize {
        self.latencies_us.len()
    }

    pub fn per_second(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let rank = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[rank] as f64 / 1000.0
    }

    pub fn summary(&mut self) -> String {
        format!(
            "{} ok in {:.1} s = {:.1}/s; p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; {} RESOURCE_EXHAUSTED, {} other errors",
            self.ok(),
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.percentile_ms(50.0),
            self.percentile_ms(95.0),
            self.percentile_ms(99.0),
            self.exhausted,
            self.other_errors
        )
    }
}

/// The median time of one hash on one core, and hashes per second on all cores.
pub fn argon2_bound(params: &Params, cores: usize) -> (Duration, f64) {
    let hash = |memory: &mut [Block], i: u64| {
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(
                b"tangerine-kettle-orbit-42",
                &i.to_le_bytes().repeat(2),
                &mut out,
                memory,
            )
            .expect("valid Argon2 input");
    };
    let mut memory = vec![Block::default(); params.block_count()];
    let mut times: Vec<Duration> = (0..7)
        .map(|i| {
            let started = Instant::now();
            hash(&mut memory, i);
            started.elapsed()
        })
        .collect();
    times.sort();
    let one = times[times.len() / 2];

    let window = Duration::from_secs(3);
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(|| {
                    let mut memory = vec![Block::default(); params.block_count()];
                    let mut n = 0u64;
                    while started.elapsed() < window {
                        hash(&mut memory, n);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    (one, total as f64 / started.elapsed().as_secs_f64())
}

/// Counts one call's outcome: its latency if it succeeded, RESOURCE_EXHAUSTED apart, and any
/// other error (the first one is printed).
pub fn record<T>(tally: &mut Tally, started: Instant, result: &Result<T, tonic::Status>) {
    match result {
        Ok(_) => tally
            .latencies_us
            .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
        Err(status) if status.code() == Code::ResourceExhausted => tally.exhausted += 1,
        Err(status) => {
            if tally.other_errors == 0 {
                eprintln!(
                    "first unexpected error: {:?}: {}",
                    status.code(),
                    status.message()
                );
            }
            tally.other_errors += 1;
        }
    }
}

/// Waits for every caller and adds up what they saw; `started` is when the phase began.
pub async fn gather(mut tasks: JoinSet<Tally>, started: Instant) -> Tally {
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        total.merge(done.unwrap_or_default());
    }
    total.elapsed = started.elapsed();
    total
}

/// Logs `callers` sessions in (round-robin over `emails`, all with [`PASSWORD`]), then has each
/// refresh its session in a loop for `run_for`, rotating its token on every answer.
pub async fn refresh_phase(
    channel: &Channel,
    emails: &[String],
    callers: usize,
    run_for: Duration,
) -> anyhow::Result<Tally> {
    let sessions = log_in(channel, emails, callers).await?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for mut token in sessions {
        let mut client = SessionServiceClient::new(channel.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while started.elapsed() < run_for {
                let call = Instant::now();
                let result = client
                    .refresh_session(pb::RefreshSessionRequest {
                        refresh_token: token.clone(),
                    })
                    .await;
                record(&mut tally, call, &result);
                match result {
                    Ok(response) => token = response.into_inner().refresh_token,
                    Err(_) => break,
                }
            }
            tally
        });
    }
    Ok(gather(tasks, started).await)
}

/// Logs `n` sessions in, round-robin over `emails` (all with [`PASSWORD`]); returns their
/// refresh tokens.
pub async fn log_in(channel: &Channel, emails: &[String], n: usize) -> anyhow::Result<Vec<String>> {
    let mut client = SessionServiceClient::new(channel.clone());
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let token = client
            .login(pb::LoginRequest {
                email: emails[i % emails.len()].clone(),
                password: PASSWORD.into(),
            })
            .await
            .context("logging in before a refresh phase")?
            .into_inner()
            .refresh_token;
        tokens.push(token);
    }
    Ok(tokens)
}

/// RefreshSession arriving at a fixed `rate` per second for `run_for`, whatever the latency:
/// each arrival takes one of `sessions` that no call is refreshing (a session is refreshed by
/// one call at a time, as one client would; an arrival that finds every session busy waits for
/// one), and puts its new token back. Latency counts from the arrival, waits included.
pub async fn refresh_at_rate(
    channel: &Channel,
    sessions: Vec<String>,
    rate: f64,
    run_for: Duration,
) -> Tally {
    let (idle, next) = tokio::sync::mpsc::unbounded_channel();
    for token in sessions {
        idle.send(token).expect("the receiver is here");
    }
    let next = Arc::new(tokio::sync::Mutex::new(next));
    at_rate(rate, run_for, |arrival| {
        let mut client = SessionServiceClient::new(channel.clone());
        let (idle, next) = (idle.clone(), Arc::clone(&next));
        async move {
            let mut tally = Tally::default();
            let Some(token) = next.lock().await.recv().await else {
                return tally;
            };
            let result = client
                .refresh_session(pb::RefreshSessionRequest {
                    refresh_token: token,
                })
                .await;
            record(&mut tally, arrival, &result);
            if let Ok(response) = result {
                // The receiver lives as long as any task.
                let _ = idle.send(response.into_inner().refresh_token);
            }
            tally
        }
    })
    .await
}

/// Starts `arrive(arrival)` at a fixed `rate` per second for `run_for`, whatever the latency
/// (arrivals the 1 ms timer owes come at once), and adds up what each saw.
pub async fn at_rate<F>(rate: f64, run_for: Duration, mut arrive: impl FnMut(Instant) -> F) -> Tally
where
    F: Future<Output = Tally> + Send + 'static,
{
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    while started.elapsed() < run_for {
        ticks.tick().await;
        tasks.spawn(arrive(Instant::now()));
    }
    gather(tasks, started).await
}

/// `callers` callers, each making the call `next()` gives as soon as its previous one answered,
/// until `stop` is set or `next()` gives none; each call is timed and counted.
pub async fn until_stopped<T, F>(
    callers: usize,
    stop: Arc<AtomicBool>,
    next: impl Fn() -> Option<F> + Send + Sync + 'static,
) -> Tally
where
    F: Future<Output = Result<T, tonic::Status>> + Send,
    T: Send + 'static,
{
    let next = Arc::new(next);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let (stop, next) = (Arc::clone(&stop), Arc::clone(&next));
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let Some(call) = next() else { break };
                let started = Instant::now();
                let result = call.await;
                record(&mut tally, started, &result);
            }
            tally
        });
    }
    gather(tasks, started).await
}

/// The password of every account the load generators create.
pub const PASSWORD: &str = "tangerine-kettle-orbit-42";

/// Registers `email` through `channel` with [`PASSWORD`], then verifies it with the link token
/// the outbox holds for it (read through `db`), so the account can log in.
pub async fn sign_up_verified(
    channel: &Channel,
    db: &mut AsyncPgConnection,
    email: &str,
    display_name: &str,
) -> anyhow::Result<()> {
    #[derive(QueryableByName)]
    struct Token {
        #[diesel(sql_type = Text)]
        token: String,
    }
    let mut registration = RegistrationServiceClient::new(channel.clone());
    registration
        .register(pb::RegisterRequest {
            email: email.to_owned(),
            password: PASSWORD.into(),
            display_name: display_name.to_owned(),
            locale: "en".into(),
            ..Default::default()
        })
        .await
        .context("registering")?;
    let token: Token = diesel::sql_query(
        "SELECT payload->>'token' AS token FROM outbox WHERE payload->>'recipient' = $1",
    )
    .bind::<Text, _>(email)
    .get_result(db)
    .await
    .context("reading the verification token")?;
    registration
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(token.token)),
            password: PASSWORD.into(),
        })
        .await
        .context("verifying")?;
    Ok(())
}

/// CPU time so far, in clock ticks, of the machine and of the parties to a load test: the
/// server's Argon2 workers (threads named `argon2-*`), its other threads, every PostgreSQL
/// process, and this process. Read from /proc (Linux).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    machine_busy: u64,
    machine_idle: u64,
    argon2: u64,
    server_other: u64,
    postgres: u64,
    this: u64,
}

/// utime + stime and the command name from a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // After the name: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

impl CpuTicks {
    /// Now, with `server` the identity-server's process id.
    pub fn now(server: u32) -> Self {
        let mut ticks = Self::default();
        if let Some(cpu) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
        {
            let values: Vec<u64> = cpu
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is in user already).
            let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
            let all: u64 = values.iter().take(8).sum();
            ticks.machine_idle = idle;
            ticks.machine_busy = all - idle;
        }
        let read = |path: String| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| stat_ticks(&s))
        };
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{server}/task")) {
            for task in tasks.flatten() {
                if let Some((comm, t)) = read(format!("{}/stat", task.path().display())) {
                    if comm.starts_with("argon2-") {
                        ticks.argon2 += t;
                    } else {
                        ticks.server_other += t;
                    }
                }
            }
        }
        if let Ok(processes) = std::fs::read_dir("/proc") {
            for process in processes.flatten() {
                if let Some((comm, t)) = read(format!("{}/stat", process.path().display()))
                    && comm == "postgres"
                {
                    ticks.postgres += t;
                }
            }
        }
        ticks.this = read("/proc/self/stat".into()).map_or(0, |(_, t)| t);
        ticks
    }

    /// Where the machine's CPU time went between `self` and `later`, in percent of it.
    pub fn shares_until(&self, later: &Self) -> String {
        let all = ((later.machine_busy + later.machine_idle)
            .saturating_sub(self.machine_busy + self.machine_idle))
        .max(1) as f64;
        let share = |a: u64, b: u64| b.saturating_sub(a) as f64 / all * 100.0;
        let named = later.argon2 + later.server_other + later.postgres + later.this;
        let named_before = self.argon2 + self.server_other + self.postgres + self.this;
        let busy = share(self.machine_busy, later.machine_busy);
        format!(
            "Argon2 workers {:.0}%, server's other threads {:.0}%, PostgreSQL {:.0}%, load generator {:.0}%, anything else {:.0}%, idle {:.0}%",
            share(self.argon2, later.argon2),
            share(self.server_other, later.server_other),
            share(self.postgres, later.postgres),
            share(self.this, later.this),
            (busy - share(named_before, named)).max(0.0),
            share(self.machine_idle, later.machine_idle),
        )
    }
}

/// The one process named identity-server, if there is exactly one.
pub fn find_server_pid() -> Option<u32> {
    let mut found = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "identity-server")
        });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}
