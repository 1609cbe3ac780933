//! RequestPasswordReset must not tell a registered address from an unknown one by its time
//! (issue 16, point 2): the same statements on every path, and medians of interleaved calls no
//! further apart than two sets of unknown addresses are. Through the built server on a real
//! PostgreSQL.

use std::time::{Duration, Instant};

use identity_proto::identity::v1::{
    self as pb, password_reset_service_client::PasswordResetServiceClient,
};
use identity_tests::{
    server::{Server, register_request},
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

/// Registers `email` and verifies it, so it has an active account.
async fn activate(server: &Server, email: &str) {
    let mut client = server.registration().await;
    client
        .register(register_request(email))
        .await
        .expect("registers");
    let token = server.emails_to(email).await[0].token.clone();
    client
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(token)),
        })
        .await
        .expect("verifies");
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
    activate(&server, "active@example.com").await;
    server.register("pending@example.com").await;

    let cases = [
        ("an unknown address", "nobody@example.com"),
        ("an active account (the email is queued)", "active@example.com"),
        ("an active account within the cooldown", "active@example.com"),
        ("a pending registration only", "pending@example.com"),
        ("another unknown address", "nobody.else@example.com"),
    ];
    let mut runs: Vec<(&str, Statements)> = Vec::new();
    for (what, email) in cases {
        let ((), statements) = counter.during(async || request(&channel, email).await).await;
        runs.push((what, statements));
    }

    assert_eq!(
        reset_emails(&server, "active@example.com").await,
        1,
        "the active account was sent one reset email (the second call was in the cooldown)"
    );
    let (first, expected) = &runs[0];
    println!("RequestPasswordReset for {first}:\n{expected}");
    for (what, statements) in &runs[1..] {
        assert_eq!(
            statements, expected,
            "RequestPasswordReset for {what} ran\n{statements}\nbut for {first}\n{expected}"
        );
    }
}

/// The median of `samples`, in milliseconds.
fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::test]
async fn request_password_reset_takes_as_long_for_a_registered_address_as_for_an_unknown_one() {
    const CALLS: usize = 60;
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
    activate(&server, "owner@example.com").await;
    for i in 0..5 {
        request(&channel, "owner@example.com").await;
        request(&channel, &format!("warm{i}@example.com")).await;
    }

    let (mut registered, mut unknown, mut unknown_too) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..CALLS {
        let mut round = [
            ("owner@example.com".to_owned(), &mut registered),
            (format!("a{i}@example.com"), &mut unknown),
            (format!("b{i}@example.com"), &mut unknown_too),
        ];
        // Each set takes each place in the round equally often.
        round.rotate_left(i % 3);
        for (email, samples) in round {
            let started = Instant::now();
            request(&channel, &email).await;
            samples.push(started.elapsed());
        }
    }

    let registered = median_ms(&mut registered);
    let unknown = median_ms(&mut unknown);
    let unknown_too = median_ms(&mut unknown_too);
    let gap = (registered - unknown).abs();
    let noise = (unknown - unknown_too).abs();
    println!(
        "RequestPasswordReset medians over {CALLS} interleaved calls each: registered \
         {registered:.3} ms, unknown {unknown:.3} ms, other unknown {unknown_too:.3} ms; \
         gap {gap:.3} ms against {noise:.3} ms between the two unknown sets"
    );
    assert!(
        gap <= (3.0 * noise).max(0.25),
        "a registered address answers {gap:.3} ms apart from an unknown one, beyond the noise \
         ({noise:.3} ms between two unknown sets)"
    );
}
