//! Calls that must not tell a registered address from an unknown one by their time (issue 16,
//! point 2): Register, ResendVerificationEmail and RequestPasswordReset run the same statements
//! on every path, counted by PostgreSQL; and RequestPasswordReset's medians over interleaved
//! calls for a registered address and for unknown ones differ by no more than the noise.
//! Through the built server on a real PostgreSQL.

use std::time::{Duration, Instant};

use identity_proto::identity::v1::{
    self as pb, password_reset_service_client::PasswordResetServiceClient,
};
use identity_tests::{
    server::Server,
    statements::{StatementCounter, Statements},
};
use tonic::transport::Channel;

/// Rate limits off (hundreds of calls from one client), and no janitor sweep while counting.
const ENV: &[(&str, &str)] = &[
    ("IDENTITY_RATE_LIMITING", "false"),
    ("IDENTITY_JANITOR_INTERVAL_SECS", "86400"),
];

async fn request(channel: &Channel, email: &str) {
    PasswordResetServiceClient::new(channel.clone())
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: email.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("RequestPasswordReset for {email}: {e:?}"));
}

/// How many reset emails the outbox holds for `email`.
async fn reset_emails(server: &Server, email: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM outbox
          WHERE kind = 'email.password_reset.v1' AND payload->>'recipient' = $1",
    )
    .bind::<diesel::sql_types::Text, _>(email)
    .get_result(&mut server.db.connect().await)
    .await
    .expect("counts");
    count.n
}

#[tokio::test]
async fn request_password_reset_runs_the_same_statements_whatever_the_address() {
    let counter = StatementCounter::start().await;
    let server = Server::start_on(counter.db.clone(), ENV).await;
    let channel = server.channel().await;
    server.activate("active@example.com").await;
    server.register("pending@example.com").await;

    let cases = [
        ("an unknown address", "nobody@example.com"),
        (
            "an active account (the email is queued)",
            "active@example.com",
        ),
        (
            "an active account within the cooldown",
            "active@example.com",
        ),
        ("a pending registration only", "pending@example.com"),
        ("another unknown address", "nobody.else@example.com"),
    ];
    assert_same_statements(&counter, "RequestPasswordReset", &cases, async |email| {
        request(&channel, email).await;
    })
    .await;
    assert_eq!(
        reset_emails(&server, "active@example.com").await,
        1,
        "the active account was sent one reset email (the second call was in the cooldown)"
    );
}

/// Runs `call` for each case, counting its statements, and asserts that every case ran the
/// statements of the first.
async fn assert_same_statements<'a>(
    counter: &StatementCounter,
    call_name: &str,
    cases: &[(&'a str, &'a str)],
    call: impl AsyncFn(&'a str),
) {
    let mut runs: Vec<(&str, Statements)> = Vec::new();
    for (what, email) in cases {
        let ((), statements) = counter.during(async || call(email).await).await;
        runs.push((what, statements));
    }
    let (first, expected) = &runs[0];
    println!("{call_name} for {first}:\n{expected}");
    for (what, statements) in &runs[1..] {
        assert_eq!(
            statements, expected,
            "{call_name} for {what} ran\n{statements}\nbut for {first}\n{expected}"
        );
    }
}

#[tokio::test]
async fn register_runs_the_same_statements_whatever_the_address() {
    let counter = StatementCounter::start().await;
    let server = Server::start_on(counter.db.clone(), ENV).await;
    server.activate("active@example.com").await;
    // The default budget is three emails an hour: spend it.
    for _ in 0..3 {
        server.register("spent@example.com").await;
    }

    let cases = [
        ("a new address", "new@example.com"),
        (
            "an active account (its owner is notified)",
            "active@example.com",
        ),
        (
            "an active account whose owner was notified",
            "active@example.com",
        ),
        ("an address with a pending registration", "new@example.com"),
        ("an address over its email budget", "spent@example.com"),
        ("another new address", "other.new@example.com"),
    ];
    assert_same_statements(&counter, "Register", &cases, async |email| {
        server.register(email).await;
    })
    .await;
}

#[tokio::test]
async fn resend_runs_the_same_statements_whatever_the_address() {
    let counter = StatementCounter::start().await;
    // No cooldown, so that a resend right after the registration queues an email.
    let server = Server::start_on(
        counter.db.clone(),
        &[ENV, &[("IDENTITY_RESEND_COOLDOWN_SECS", "0")]].concat(),
    )
    .await;
    server.activate("active@example.com").await;
    server.register("pending@example.com").await;
    for _ in 0..3 {
        server.register("spent@example.com").await;
    }
    let channel = server.channel().await;
    let resend = async |email: &str| {
        pb::registration_service_client::RegistrationServiceClient::new(channel.clone())
            .resend_verification_email(pb::ResendVerificationEmailRequest {
                email: email.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("Resend for {email}: {e:?}"));
    };

    let cases = [
        ("an unknown address", "nobody@example.com"),
        (
            "a pending registration (the email is queued)",
            "pending@example.com",
        ),
        ("an active account", "active@example.com"),
        ("an address over its email budget", "spent@example.com"),
        ("another unknown address", "nobody.else@example.com"),
    ];
    assert_same_statements(&counter, "ResendVerificationEmail", &cases, resend).await;
    assert_eq!(
        server.emails_to("pending@example.com").await.len(),
        2,
        "the pending registration was sent one more email"
    );
}

#[tokio::test]
async fn a_refused_login_runs_the_same_statements_whatever_the_address() {
    let counter = StatementCounter::start().await;
    let server = Server::start_on(counter.db.clone(), ENV).await;
    server.activate("active@example.com").await;
    server.register("pending@example.com").await;
    let channel = server.channel().await;
    let login = async |email: &str| {
        let refused = pb::session_service_client::SessionServiceClient::new(channel.clone())
            .login(pb::LoginRequest {
                email: email.into(),
                password: "not-the-password-of-anyone-1".into(),
            })
            .await
            .expect_err("a wrong password");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{email}");
    };

    let cases = [
        ("an unknown address", "nobody@example.com"),
        ("an active account", "active@example.com"),
        ("a pending registration", "pending@example.com"),
        ("another unknown address", "nobody.else@example.com"),
    ];
    assert_same_statements(&counter, "a refused Login", &cases, login).await;
}

/// The median of `samples`, in milliseconds.
fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::test]
async fn request_password_reset_takes_as_long_for_a_registered_address_as_for_an_unknown_one() {
    const CALLS: usize = 80;
    const UNKNOWN_SETS: usize = 3;
    // Every call for the registered address queues an email: no cooldown, a budget it never
    // reaches. That is the path that does the most.
    let server = Server::start(
        &[
            ENV,
            &[
                ("IDENTITY_RESET_COOLDOWN_SECS", "0"),
                ("IDENTITY_EMAIL_BUDGET_PER_HOUR", "1000"),
                ("IDENTITY_EMAIL_BUDGET_PER_DAY", "1000"),
            ],
        ]
        .concat(),
    )
    .await;
    let channel = server.channel().await;
    server.activate("owner@example.com").await;
    for i in 0..5 {
        request(&channel, "owner@example.com").await;
        request(&channel, &format!("warm{i}@example.com")).await;
    }

    // Set 0 is the registered address; sets 1.. are unknown addresses, a new one each call.
    let mut samples: Vec<Vec<Duration>> = (0..=UNKNOWN_SETS)
        .map(|_| Vec::with_capacity(CALLS))
        .collect();
    for i in 0..CALLS {
        let mut round: Vec<usize> = (0..=UNKNOWN_SETS).collect();
        // Each set takes each place in the round equally often.
        round.rotate_left(i % (1 + UNKNOWN_SETS));
        for set in round {
            let email = match set {
                0 => "owner@example.com".to_owned(),
                n => format!("unknown{n}.{i}@example.com"),
            };
            let started = Instant::now();
            request(&channel, &email).await;
            samples[set].push(started.elapsed());
        }
    }

    let medians: Vec<f64> = samples.iter_mut().map(|s| median_ms(s)).collect();
    let registered = medians[0];
    let mut unknown = medians[1..].to_vec();
    unknown.sort_by(f64::total_cmp);
    let typical = unknown[unknown.len() / 2];
    let gap = (registered - typical).abs();
    // How far apart calls that take the same path land: the spread of the unknown sets.
    let noise = unknown[unknown.len() - 1] - unknown[0];
    // Before the fix the registered path took a quarter longer or more (a flushed commit
    // against a read-only one), up to twice as long. What is left: the rows a registered
    // address has (its account row locked, the ledger row of its verification email, the
    // foreign key checked at commit, the relay notified), 0.03-0.06 ms on a 3 ms call with a
    // release build; this debug build takes 0.2-0.25 ms more of a 5 ms call on an idle machine,
    // and up to 0.5 ms (12%) while the whole suite runs. It must hide in the noise, or stay
    // under a fifth of the call: what the divergence this guards against cost, and more.
    let allowed = (2.0 * noise).max(0.20 * typical);
    println!(
        "RequestPasswordReset medians over {CALLS} interleaved calls each: registered \
         {registered:.3} ms, unknown {unknown:.3?} ms; gap {gap:.3} ms, spread of the unknown \
         sets {noise:.3} ms, allowed {allowed:.3} ms"
    );
    assert!(
        gap <= allowed,
        "a registered address answers {gap:.3} ms apart from an unknown one, beyond the noise \
         ({noise:.3} ms between unknown sets) and 20% of the call"
    );
}
