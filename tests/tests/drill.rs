//! The multi-replica drill: two identity-server replicas behind a real load balancer (nginx,
//! `grpc_pass`), two relays, one PostgreSQL and one nats-server, all on this machine. Under a
//! steady load of sign-ups and logins, one replica and one relay are killed (`kill -9`). Only
//! the calls in flight on the killed replica fail, as UNAVAILABLE, and the client retries them;
//! no email and no event is lost, no event is stored twice, and an email is sent twice only if
//! the killed relay was sending it; the rate limits hold across the replicas. The figures are
//! printed (run it with `scripts/drill`, or `--no-capture`).

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use identity_proto::{
    identity::{
        events::v1::{UserLoggedIn, UserRegistered, UserVerified},
        v1::{
            self as pb, registration_service_client::RegistrationServiceClient,
            session_service_client::SessionServiceClient,
        },
    },
    outbox::{DomainEvent, EmailVerificationV1},
};
use identity_tests::{
    nats::{NatsServer, STREAM},
    nginx::{Access, Nginx},
    outbox::{self, count},
    relay::{self, delivered_ids},
    server::{PASSWORD, Server, reason, register_request},
    smtp::{SmtpServer, text_part, token_after},
    wait,
};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(60);
/// Concurrent simulated clients of the load.
const CLIENTS: usize = 8;
/// Verified accounts the load logs in to, in turn. Login allows 10 calls at once per address
/// (`30/1h+10`): 24 accounts take 240 logins, well over what the load makes.
const ACCOUNTS: usize = 24;
/// Sign-ups before the kill, and after it through the surviving replica.
const BEFORE_KILL: usize = 50;
const AFTER_KILL: usize = 50;
/// Attempts of one call that keeps answering UNAVAILABLE.
const ATTEMPTS: u32 = 5;
/// The relays' concurrent sends: the most a killed relay can have sent without recording it.
const RELAY_CONCURRENCY: usize = 16;
/// One client (a forwarded address) trying to sign up many times: Register allows 5 calls at
/// once per IP (`10/1h+5`), then one every 6 minutes.
const LIMITED_IP: &str = "203.0.113.77";
const REGISTER_BURST: usize = 5;
const LIMITED_CALLS: usize = 20;
const VERIFY_LINK: &str = "https://app.example.com/verify?token=";

/// Where the drill is with the kill; each attempt notes it when it starts and when it ends.
const BEFORE: u8 = 0;
const KILLING: u8 = 1;
const KILLED: u8 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_replica_and_a_relay_under_load_fails_no_call_and_loses_nothing() {
    let started = Instant::now();
    let smtp = SmtpServer::start();
    // A provider's pace: each email is taken (recorded) at once and acknowledged 100 ms later,
    // so a relay always has sends in flight, and a kill catches some between the two.
    smtp.delay_each_message(Duration::from_millis(100));
    let nats = NatsServer::start().await;
    let env = [
        ("IDENTITY_DOMAIN_EVENTS", "true"),
        ("IDENTITY_CHALLENGE_POLICY", "off"),
        // nginx, the trusted proxy, appends the client's address to x-forwarded-for.
        ("IDENTITY_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("IDENTITY_SHUTDOWN_DRAIN_DELAY_SECS", "0"),
    ];
    let server = Server::start(&env).await;
    let mut replica = server.replica(&env).await;
    let nginx = Nginx::start(&[&server.addr, &replica.addr]).await;
    let nats_url = nats.url();
    let concurrency = RELAY_CONCURRENCY.to_string();
    let relay_env = [
        ("NATS_URL", nats_url.as_str()),
        ("RELAY_CONCURRENCY", concurrency.as_str()),
        // The shortest lease the relay accepts (2 x the SMTP timeout + 3 s): what the killed
        // relay held goes back to the outbox 7 s after the kill.
        ("RELAY_SMTP_TIMEOUT_SECS", "2"),
        ("RELAY_LEASE_SECS", "7"),
    ];
    let relay_a = relay::start(&server.db.url, &smtp.url(), &relay_env).await;
    let mut relay_b = relay::start(&server.db.url, &smtp.url(), &relay_env).await;
    let channel = nginx.channel().await;
    let mut conn = server.db.connect().await;

    // Accounts to log in to, signed up and verified through nginx.
    let signups = (0..ACCOUNTS).map(|i| {
        let (channel, smtp) = (channel.clone(), &smtp);
        async move {
            let email = format!("member{i}@example.com");
            let ip = format!("10.200.0.{}", i + 1);
            let mut registration = RegistrationServiceClient::new(channel);
            registration
                .register(forwarded(register_request(&email), &ip))
                .await
                .unwrap_or_else(|e| panic!("registering {email}: {e:?}"));
            let mail = smtp.wait_for_message_to(&email, WAIT).await;
            let token = token_after(&text_part(&mail.data), VERIFY_LINK);
            let proof = Some(pb::verify_email_request::Proof::Token(token));
            registration
                .verify_email(forwarded(
                    pb::VerifyEmailRequest {
                        proof,
                        password: identity_tests::server::PASSWORD.into(),
                    },
                    &ip,
                ))
                .await
                .unwrap_or_else(|e| panic!("verifying {email}: {e:?}"));
            email
        }
    });
    let accounts = Arc::new(futures_util::future::join_all(signups).await);

    // The limits are shared: one client's Registers, alternated by nginx across both replicas,
    // are admitted exactly up to the burst, and each replica refuses once the other admitted.
    let limit = check_shared_limit(&channel, &nginx, &server.addr, &replica.addr).await;

    // The load: CLIENTS tasks signing up new addresses and logging in, each call from a client
    // address of its own (x-forwarded-for), so per-IP limits never throttle it.
    let load = Arc::new(Load::default());
    let load_started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(client(
            channel.clone(),
            Arc::clone(&accounts),
            Arc::clone(&load),
        ));
    }
    wait::until("sign-ups before the kill", WAIT, || {
        std::future::ready((load.registered_count() >= BEFORE_KILL).then_some(()))
    })
    .await;
    load.phase.store(KILLING, Ordering::SeqCst);
    replica.process.kill();
    relay_b.kill();
    load.phase.store(KILLED, Ordering::SeqCst);
    let at_kill = load.registered_count();
    wait::until("sign-ups through the surviving replica", WAIT, || {
        std::future::ready((load.registered_count() >= at_kill + AFTER_KILL).then_some(()))
    })
    .await;
    load.stop.store(true, Ordering::SeqCst);
    clients.join_all().await;
    let load_time = load_started.elapsed();

    // Every call eventually succeeded; the only retries were of attempts in flight at the kill.
    let failures = lock(&load.failures).clone();
    let retried = lock(&load.retried).clone();
    let registered = lock(&load.registered).clone();
    assert!(failures.is_empty(), "calls failed: {failures:#?}");
    let not_in_flight: Vec<&Retried> = retried
        .iter()
        .filter(|r| r.started == KILLED || r.ended == BEFORE)
        .collect();
    assert!(
        not_in_flight.is_empty(),
        "retried attempts that were not in flight at the kill: {not_in_flight:#?}"
    );
    assert!(
        retried.len() <= CLIENTS,
        "at most one attempt per client is in flight: {retried:#?}"
    );
    // nginx: the replica's death cost only the calls it was serving; the others it sent on to
    // the surviving replica (a refused connection: the call was never sent, so that is safe).
    let attempts = load.calls.load(Ordering::SeqCst) + retried.len();
    let through_nginx = 2 * ACCOUNTS + LIMITED_CALLS + attempts;
    let log = nginx.wait_for_calls(through_nginx, WAIT).await;
    assert_eq!(
        log.len(),
        through_nginx,
        "each attempt went through nginx once"
    );
    let (a, b) = (server.addr.as_str(), replica.addr.as_str());
    let answered_unavailable = log
        .iter()
        .filter(|call| call.status == 204 && call.upstreams == [b])
        .count();
    let passed_on = log.iter().filter(|call| call.upstreams == [b, a]).count();
    let nginx_errors = nginx.output();
    let nginx_errors = |reason: &str| {
        nginx_errors
            .lines()
            .filter(|line| line.contains("[error]") && line.contains(reason))
            .count()
    };
    let (closed, reset, connect_refused) = (
        nginx_errors("upstream prematurely closed connection"),
        nginx_errors("Connection reset by peer"),
        nginx_errors("Connection refused"),
    );
    let served_otherwise = log
        .iter()
        .filter(|call| {
            !(call.status == 200 && (call.upstreams == [a] || call.upstreams == [b]))
                && !(call.status == 204 && call.upstreams == [b])
                && !(call.status == 200 && call.upstreams == [b, a])
        })
        .count();
    assert_eq!(
        answered_unavailable,
        retried.len(),
        "nginx answered UNAVAILABLE exactly the retried attempts"
    );
    assert_eq!(
        served_otherwise, 0,
        "every other call was answered by one replica, or passed on from the dead one"
    );

    // Emails: every one written was delivered; a copy only of what the killed relay had sent.
    outbox::drained(&mut conn, WAIT).await;
    assert!(
        outbox::dead_letters(&mut conn).await.is_empty(),
        "nothing was dead-lettered"
    );
    let written = usize_of(
        count(
            &mut conn,
            &format!(
                "SELECT count(*) AS n FROM email_sends WHERE kind = '{}'",
                EmailVerificationV1::KIND
            ),
        )
        .await,
    );
    let users = usize_of(count(&mut conn, "SELECT count(*) AS n FROM users").await);
    let double_registrations = usize_of(
        count(
            &mut conn,
            "SELECT count(*) - count(DISTINCT lower(email)) AS n FROM users",
        )
        .await,
    );
    let active = usize_of(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM users WHERE status = 'active'",
        )
        .await,
    );
    let sessions = usize_of(count(&mut conn, "SELECT count(*) AS n FROM sessions").await);
    assert_eq!(written, users, "one verification email per registration");
    let mails = smtp.messages();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for mail in &mails {
        *copies.entry(message_id(&mail.data)).or_default() += 1;
    }
    let duplicated: usize = copies.values().map(|n| n - 1).sum();
    // Events the killed relay had published but not yet deleted, published again by the other
    // once their lease lapsed: JetStream acknowledged them as duplicates and stored nothing.
    let republished = relay_a
        .output()
        .lines()
        .filter(|line| line.contains("event published") && line.contains("duplicate=true"))
        .count();
    let recipients: HashSet<String> = mails
        .iter()
        .flat_map(|mail| mail.to.iter().map(|to| to.to_ascii_lowercase()))
        .collect();
    let unmailed: Vec<&String> = registered
        .iter()
        .filter(|email| !recipients.contains(*email))
        .collect();
    assert!(
        unmailed.is_empty(),
        "signed up, never emailed: {unmailed:?}"
    );
    assert_eq!(copies.len(), written, "every email written was delivered");
    assert!(
        duplicated <= RELAY_CONCURRENCY,
        "{duplicated} copies; the killed relay sent at most {RELAY_CONCURRENCY} at once"
    );
    // A copy is of an email the killed relay was sending: the survivor sent it again once its
    // lease lapsed. Neither relay sent anything twice itself.
    let (by_a, by_b) = (delivered_ids(&relay_a), delivered_ids(&relay_b));
    let by_a_set: HashSet<&String> = by_a.iter().collect();
    assert_eq!(by_a_set.len(), by_a.len(), "relay A sent nothing twice");
    assert_eq!(
        by_b.iter().collect::<HashSet<_>>().len(),
        by_b.len(),
        "relay B sent nothing twice"
    );
    for (id, n) in &copies {
        let outbox_id = id
            .trim_start_matches('<')
            .split('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            *n == 1 || by_a_set.contains(&outbox_id),
            "{id} was sent {n} times, not again by the surviving relay"
        );
    }

    // Events: each one written is stored exactly once, and each user's are in order.
    let events_written = users + active + sessions;
    let stored = nats.stream_len(STREAM).await;
    let events = nats
        .read_all(
            STREAM,
            u64::try_from(events_written).expect("a count"),
            WAIT,
        )
        .await;
    let ids: HashSet<&str> = events.iter().map(|e| e.header("ce-id")).collect();
    let event_duplicates = events.len() - ids.len();
    let mut by_type: HashMap<&str, usize> = HashMap::new();
    let mut by_user: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in &events {
        *by_type.entry(event.header("ce-type")).or_default() += 1;
        by_user
            .entry(event.header("ce-subject"))
            .or_default()
            .push(event.header("ce-type"));
    }
    assert_eq!(
        stored,
        u64::try_from(events_written).expect("a count"),
        "the stream holds each event written once"
    );
    assert_eq!(event_duplicates, 0, "no ce-id twice");
    assert_eq!(by_type.get(UserRegistered::TYPE).copied(), Some(users));
    assert_eq!(by_type.get(UserVerified::TYPE).copied(), Some(active));
    assert_eq!(by_type.get(UserLoggedIn::TYPE).copied(), Some(sessions));
    assert_eq!(by_user.len(), users, "every registration's events");
    for (user, types) in &by_user {
        assert!(
            in_order(types),
            "user {user}'s events out of order: {types:?}"
        );
    }

    let logins = load.logins.load(Ordering::SeqCst);
    // Each Register answered OK made one registration; a retried one that the killed replica
    // had committed before dying made one more (the same address twice). Likewise a login.
    assert_eq!(
        users,
        ACCOUNTS + REGISTER_BURST + registered.len() + double_registrations,
        "registrations: the answered ones, plus those committed by the killed replica"
    );
    assert!(sessions >= logins, "every answered login started a session");
    let retried_register = retried.iter().filter(|r| r.method == "Register").count();
    let (admitted, refused) = (limit.admitted, limit.refused);
    println!(
        "drill: {CLIENTS} clients, {:.1} s of load through nginx over 2 replicas: {} calls \
         ({} Register, {logins} Login), 0 failed, {} retried after UNAVAILABLE \
         ({retried_register} Register; all in flight on replica B when it and relay B were \
         killed, after {at_kill} sign-ups); nginx passed {passed_on} on from the dead replica \
         (its errors: {closed} closed before answering, {reset} reset, {connect_refused} refused) \
         | registrations {users} ({double_registrations} twice), sessions {sessions} \
         | emails: {written} written, {} delivered ({} by relay A, \
         {} by relay B), {duplicated} sent twice (bound {RELAY_CONCURRENCY}) \
         | events: {events_written} written, {stored} stored, {event_duplicates} duplicates \
         ({republished} published again and dropped by JetStream), in order for {} users \
         | limit: {} of {LIMITED_CALLS} Registers from one IP admitted (A {}, B {}), {} \
         refused (A {}, B {}) | {:.1} s in all",
        load_time.as_secs_f64(),
        load.calls.load(Ordering::SeqCst),
        registered.len(),
        retried.len(),
        copies.len(),
        by_a.len(),
        by_b.len(),
        by_user.len(),
        admitted.0 + admitted.1,
        admitted.0,
        admitted.1,
        refused.0 + refused.1,
        refused.0,
        refused.1,
        started.elapsed().as_secs_f64(),
    );
    for retry in &retried {
        println!("  retried {}: {}", retry.method, retry.status);
    }
}

/// What the load did, shared by its client tasks.
#[derive(Debug, Default)]
struct Load {
    stop: AtomicBool,
    /// BEFORE, KILLING or KILLED.
    phase: AtomicU8,
    /// The next sign-up's number.
    next: AtomicUsize,
    /// Logins begun, to take the accounts in turn.
    logins_begun: AtomicUsize,
    /// Calls made (a retried call counts once).
    calls: AtomicUsize,
    logins: AtomicUsize,
    /// Addresses whose Register answered OK.
    registered: Mutex<Vec<String>>,
    retried: Mutex<Vec<Retried>>,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn registered_count(&self) -> usize {
        lock(&self.registered).len()
    }
}

/// An attempt that answered UNAVAILABLE and was made again.
#[derive(Debug, Clone)]
struct Retried {
    method: &'static str,
    /// The phase when the attempt started, and when it ended.
    started: u8,
    ended: u8,
    status: String,
}

/// One simulated client after another: Register a new address, then Login to an account.
async fn client(channel: Channel, accounts: Arc<Vec<String>>, load: Arc<Load>) {
    let registration = RegistrationServiceClient::new(channel.clone());
    let sessions = SessionServiceClient::new(channel);
    while !load.stop.load(Ordering::SeqCst) {
        let n = load.next.fetch_add(1, Ordering::SeqCst);
        let ip = client_ip(n);
        let email = format!("load{n}@example.com");
        let outcome = call(&load, "Register", || {
            let mut registration = registration.clone();
            let request = forwarded(register_request(&email), &ip);
            async move { registration.register(request).await.map(drop) }
        })
        .await;
        match outcome {
            Ok(()) => lock(&load.registered).push(email.clone()),
            Err(status) => lock(&load.failures).push(format!("Register {email}: {status:?}")),
        }

        let turn = load.logins_begun.fetch_add(1, Ordering::SeqCst);
        let account = &accounts[turn % accounts.len()];
        let outcome = call(&load, "Login", || {
            let mut sessions = sessions.clone();
            let request = forwarded(
                pb::LoginRequest {
                    email: account.clone(),
                    password: PASSWORD.into(),
                },
                &ip,
            );
            async move { sessions.login(request).await.map(drop) }
        })
        .await;
        match outcome {
            Ok(()) => {
                load.logins.fetch_add(1, Ordering::SeqCst);
            }
            Err(status) => lock(&load.failures).push(format!("Login {account}: {status:?}")),
        }
    }
}

/// Makes `attempt` until it answers anything but UNAVAILABLE, at most ATTEMPTS times, noting
/// each retry.
async fn call<F, Fut>(load: &Load, method: &'static str, mut attempt: F) -> Result<(), Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    load.calls.fetch_add(1, Ordering::SeqCst);
    let mut made = 1;
    loop {
        let started = load.phase.load(Ordering::SeqCst);
        let outcome = attempt().await;
        let ended = load.phase.load(Ordering::SeqCst);
        match outcome {
            Err(status) if status.code() == Code::Unavailable && made < ATTEMPTS => {
                lock(&load.retried).push(Retried {
                    method,
                    started,
                    ended,
                    status: format!("{:?}: {}", status.code(), status.message()),
                });
                // A client's back-off before trying again, not a wait for the test's sake.
                tokio::time::sleep(Duration::from_millis(20 << made)).await;
                made += 1;
            }
            outcome => return outcome,
        }
    }
}

/// How the shared limit answered one client's Registers, per replica (A, B).
#[derive(Debug)]
struct Limit {
    admitted: (usize, usize),
    refused: (usize, usize),
}

/// LIMITED_CALLS Registers from LIMITED_IP, one after the other through nginx (which takes the
/// replicas in turn): exactly the burst is admitted, the rest refused as RATE_LIMITED per IP;
/// nginx's log says which replica answered each.
async fn check_shared_limit(channel: &Channel, nginx: &Nginx, a: &str, b: &str) -> Limit {
    let mut registration = RegistrationServiceClient::new(channel.clone());
    let mut answers = Vec::new();
    for i in 0..LIMITED_CALLS {
        let request = forwarded(
            register_request(&format!("limited{i}@example.com")),
            LIMITED_IP,
        );
        answers.push(registration.register(request).await.map(drop));
    }
    for refused in answers.iter().filter_map(|answer| answer.as_ref().err()) {
        let scope = refused
            .get_details_error_info()
            .and_then(|info| info.metadata.get("scope").cloned());
        assert_eq!(
            (refused.code(), reason(refused).as_str(), scope.as_deref()),
            (Code::ResourceExhausted, "RATE_LIMITED", Some("ip")),
            "{refused:?}"
        );
    }
    let admitted = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(
        admitted, REGISTER_BURST,
        "exactly the per-IP burst is admitted across both replicas: {answers:?}"
    );
    // nginx's log says which replica answered each call (the client's address tells them
    // from the others).
    let calls: Vec<Access> = wait::until("the limited calls in nginx's log", WAIT, || {
        let calls: Vec<Access> = nginx
            .access_log()
            .into_iter()
            .filter(|call| call.forwarded_for == LIMITED_IP)
            .collect();
        std::future::ready((calls.len() >= LIMITED_CALLS).then_some(calls))
    })
    .await;
    assert_eq!(calls.len(), LIMITED_CALLS, "{calls:?}");
    let tally = |upstream: &str, grpc_status: &str| {
        calls
            .iter()
            .filter(|c| c.upstreams == [upstream] && c.grpc_status == grpc_status)
            .count()
    };
    // 8 is RESOURCE_EXHAUSTED.
    let limit = Limit {
        admitted: (tally(a, "0"), tally(b, "0")),
        refused: (tally(a, "8"), tally(b, "8")),
    };
    assert_eq!(
        limit.admitted.0 + limit.admitted.1 + limit.refused.0 + limit.refused.1,
        LIMITED_CALLS,
        "{calls:?}"
    );
    // Each replica refused although it had admitted fewer than the burst itself: it counted
    // the other's admissions.
    for (admitted, refused) in [
        (limit.admitted.0, limit.refused.0),
        (limit.admitted.1, limit.refused.1),
    ] {
        assert!(
            admitted < REGISTER_BURST && refused > 0,
            "both replicas served the client: {limit:?}"
        );
    }
    limit
}

/// `message` with `x-forwarded-for: ip`, as a BFF in front of nginx would send it.
fn forwarded<T>(message: T, ip: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", ip.parse().expect("an ASCII address"));
    request
}

/// A client address of its own for sign-up `n` (10.0.0.1 onwards).
fn client_ip(n: usize) -> String {
    let n = n + 1;
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// The Message-ID header of an email (derived from its outbox id by the relay).
fn message_id(data: &str) -> String {
    let (headers, _) = mailparse::parse_headers(data.as_bytes()).expect("email headers");
    use mailparse::MailHeaderMap;
    headers
        .get_first_value("Message-ID")
        .expect("a Message-ID header")
}

/// Whether one user's event types are in a possible order: registered first, then at most one
/// verified, and logins only after it.
fn in_order(types: &[&str]) -> bool {
    let Some((first, rest)) = types.split_first() else {
        return false;
    };
    let mut verified = false;
    *first == UserRegistered::TYPE
        && rest.iter().all(|t| match *t {
            t if t == UserVerified::TYPE && !verified => {
                verified = true;
                true
            }
            t if t == UserLoggedIn::TYPE => verified,
            _ => false,
        })
}

fn usize_of(n: i64) -> usize {
    usize::try_from(n).expect("a count")
}

/// A poisoned lock only means a client task panicked; what it recorded is still worth reading.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
