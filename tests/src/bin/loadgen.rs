//! Load generator for `identity.v1.RegistrationService/Register`.
//!
//! Against a running server it measures, in one run:
//! 1. the Argon2 bound: hashes per second this machine does on all cores with the server's
//!    parameters, and the time of one hash;
//! 2. saturation: Register throughput and latency with enough concurrent callers to keep every
//!    hashing worker busy;
//! 3. half load: latency at half the saturating throughput, arrivals at a fixed rate;
//! 4. a burst of many concurrent callers (500 by default): how many were turned away with
//!    RESOURCE_EXHAUSTED, that nothing else failed, and that the server is still serving.
//!
//! Throughout, it samples the server's resident memory from /proc (`--server-pid`, or the one
//! process named identity-server) and reports the peak. It prints figures; it asserts nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use argon2::Params;
use clap::Parser;
use identity_proto::identity::v1::{
    RegisterRequest, registration_service_client::RegistrationServiceClient,
};
use identity_tests::load::{CpuTicks, Tally, argon2_bound, at_rate, find_server_pid, gather};
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

/// Drive Register against a running identity-server and print throughput, latency
/// percentiles, rejections and the server's peak memory beside the machine's Argon2 bound.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// PID of the server, to sample its memory (default: the one process named identity-server).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Concurrent callers in the saturation phase (default: 4 per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Concurrent callers in the burst phase.
    #[arg(long, default_value_t = 500)]
    burst: usize,
    /// The server's hashing workers (IDENTITY_HASH_WORKERS), for the memory limit; default: cores.
    #[arg(long)]
    hash_workers: Option<usize>,
    /// The server's Argon2 memory cost in KiB (IDENTITY_ARGON2_M_KIB).
    #[arg(long, default_value_t = Params::DEFAULT_M_COST)]
    argon2_m_kib: u32,
    /// The server's Argon2 iterations (IDENTITY_ARGON2_T).
    #[arg(long, default_value_t = Params::DEFAULT_T_COST)]
    argon2_t: u32,
    /// The server's Argon2 parallelism (IDENTITY_ARGON2_P).
    #[arg(long, default_value_t = Params::DEFAULT_P_COST)]
    argon2_p: u32,
}

/// Unique addresses across runs and callers.
struct Addresses {
    run: String,
    next: AtomicU64,
}

impl Addresses {
    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("lg-{}-{n}@loadgen.example.com", self.run)
    }
}

/// One Register call; sorts the outcome into `tally`. Returns the retry delay on overload.
async fn register_once(
    client: &mut RegistrationServiceClient<Channel>,
    addresses: &Addresses,
    tally: &mut Tally,
) -> Option<Duration> {
    let request = RegisterRequest {
        email: addresses.next(),
        password: "tangerine-kettle-orbit-42".into(),
        display_name: "Load Generator".into(),
        locale: "en".into(),
        ..Default::default()
    };
    let started = Instant::now();
    match client.register(request).await {
        Ok(_) => {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            tally.latencies_us.push(micros);
            None
        }
        Err(status) if status.code() == Code::ResourceExhausted => {
            tally.exhausted += 1;
            Some(
                status
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .unwrap_or(Duration::from_millis(100)),
            )
        }
        Err(status) => {
            if tally.other_errors == 0 {
                eprintln!(
                    "first unexpected error: {:?}: {}",
                    status.code(),
                    status.message()
                );
            }
            tally.other_errors += 1;
            None
        }
    }
}

/// `callers` callers, each calling again as soon as it has an answer (after the server's retry
/// delay when it was turned away), for `duration`.
async fn closed_loop(
    channel: &Channel,
    addresses: &Arc<Addresses>,
    callers: usize,
    duration: Duration,
) -> Tally {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..callers {
        let mut client = RegistrationServiceClient::new(channel.clone());
        let addresses = Arc::clone(addresses);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                if let Some(delay) = register_once(&mut client, &addresses, &mut tally).await {
                    tokio::time::sleep(delay).await;
                }
            }
            tally
        });
    }
    gather(tasks, started).await
}

/// Arrivals at a fixed `rate` per second for `duration`, whatever the latency.
async fn open_loop(
    channel: &Channel,
    addresses: &Arc<Addresses>,
    rate: f64,
    duration: Duration,
) -> Tally {
    at_rate(rate, duration, |_| {
        let mut client = RegistrationServiceClient::new(channel.clone());
        let addresses = Arc::clone(addresses);
        async move {
            let mut tally = Tally::default();
            register_once(&mut client, &addresses, &mut tally).await;
            tally
        }
    })
    .await
}

/// Samples a process's resident memory until stopped; returns the peak in KiB.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(status_kib(pid, "VmRSS:").unwrap_or(0));
            std::thread::sleep(Duration::from_millis(10));
        }
        peak.max(status_kib(pid, "VmHWM:").unwrap_or(0))
    })
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let params = Params::new(args.argon2_m_kib, args.argon2_t, args.argon2_p, None)
        .map_err(|e| anyhow::anyhow!("invalid Argon2 parameters: {e}"))?;
    let phase = Duration::from_secs(args.seconds);
    let workers = args.hash_workers.unwrap_or(cores);

    println!(
        "Argon2id m={} KiB t={} p={} on {cores} cores",
        args.argon2_m_kib, args.argon2_t, args.argon2_p
    );
    let (one_hash, bound) =
        tokio::task::spawn_blocking(move || argon2_bound(&params, cores)).await?;
    println!(
        "  one hash {:.1} ms; bound {bound:.1} hashes/s on all cores",
        one_hash.as_secs_f64() * 1000.0
    );

    let channel = Channel::from_shared(args.addr.clone())?.connect().await?;
    let pid = args.server_pid.or_else(find_server_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let rss = pid.map(|pid| watch_rss(pid, Arc::clone(&stop)));
    if pid.is_none() {
        println!("  (server process not found: no memory figures; pass --server-pid)");
    }
    let addresses = Arc::new(Addresses {
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        next: AtomicU64::new(0),
    });

    let callers = args.concurrency.unwrap_or(4 * cores);
    let cpu = pid.map(CpuTicks::now);
    let mut saturated = closed_loop(&channel, &addresses, callers, phase).await;
    println!("saturation, {callers} callers: {}", saturated.summary());
    if let (Some(pid), Some(cpu)) = (pid, cpu) {
        println!("  CPU time: {}", cpu.shares_until(&CpuTicks::now(pid)));
    }
    let share = saturated.per_second() / bound * 100.0;
    println!("  throughput = {share:.0}% of the Argon2 bound (goal: at least 85%)");

    let half_rate = saturated.per_second() / 2.0;
    let mut half = open_loop(&channel, &addresses, half_rate, phase).await;
    println!("half load, {half_rate:.1} arrivals/s: {}", half.summary());
    let p95 = half.percentile_ms(95.0);
    let hash_ms = one_hash.as_secs_f64() * 1000.0;
    println!("  p95 = {:.1}x one hash (goal: under 3x)", p95 / hash_ms);

    let mut burst = closed_loop(&channel, &addresses, args.burst, phase).await;
    println!("burst, {} callers: {}", args.burst, burst.summary());

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status().as_str_name().to_owned())
        .unwrap_or_else(|e| format!("health check failed: {e}"));
    println!("  server health after the burst: {serving}");

    stop.store(true, Ordering::Relaxed);
    if let Some(rss) = rss {
        let peak_kib = rss.join().unwrap_or(0);
        let limit_kib = workers as u64 * u64::from(args.argon2_m_kib) + 64 * 1024;
        println!(
            "  server peak RSS {:.1} MiB (goal: under {workers} workers x {} MiB + 64 MiB = {:.1} MiB)",
            peak_kib as f64 / 1024.0,
            args.argon2_m_kib / 1024,
            limit_kib as f64 / 1024.0
        );
        println!(
            "README: Register {:.1}/s = {share:.0}% of the Argon2 bound ({bound:.1}/s, one hash {hash_ms:.1} ms); \
             half load p95 {p95:.1} ms ({:.1}x a hash); {} callers: {} ok, {} RESOURCE_EXHAUSTED, {} other errors, peak RSS {:.0} MiB (limit {:.0} MiB)",
            saturated.per_second(),
            p95 / hash_ms,
            args.burst,
            burst.ok(),
            burst.exhausted,
            burst.other_errors,
            peak_kib as f64 / 1024.0,
            limit_kib as f64 / 1024.0
        );
    }
    Ok(())
}
