//! The proof-of-work challenge end to end: the built server (one or two replicas) on
//! PostgreSQL, a client that solves challenges by brute force, and altcha-lib (npm) solving them
//! as the ALTCHA widget does.

use std::time::Instant;

use identity_proto::identity::v1::{
    self as pb, CreateChallengeResponse, challenge_service_client::ChallengeServiceClient,
    password_reset_service_client::PasswordResetServiceClient,
    registration_service_client::RegistrationServiceClient,
};
use identity_tests::{
    altcha, process,
    server::{CHALLENGE_KEY, Server, reason, register_request},
};
use tonic::{Code, Status, transport::Channel};

const ALWAYS: &[(&str, &str)] = &[("IDENTITY_CHALLENGE_POLICY", "always")];
/// The policy `always` without rate limits, for tests that make many calls from one client
/// (rate_limits.rs tests the limits).
const ALWAYS_UNLIMITED: &[(&str, &str)] = &[
    ("IDENTITY_CHALLENGE_POLICY", "always"),
    ("IDENTITY_RATE_LIMITING", "false"),
];

#[track_caller]
fn assert_refused(result: Result<(), Status>, expected_reason: &str) {
    let status = result.expect_err("the call is refused");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::FailedPrecondition, expected_reason),
        "{status:?}"
    );
}

async fn create_challenge(channel: &Channel) -> CreateChallengeResponse {
    ChallengeServiceClient::new(channel.clone())
        .create_challenge(pb::CreateChallengeRequest {})
        .await
        .expect("a challenge")
        .into_inner()
}

/// A fresh challenge from the server, solved.
async fn solved(channel: &Channel) -> (CreateChallengeResponse, u64) {
    let challenge = create_challenge(channel).await;
    let number = altcha::solve(&challenge).expect("a number within maxnumber solves it");
    (challenge, number)
}

async fn register(channel: &Channel, email: &str, altcha: &str) -> Result<(), Status> {
    RegistrationServiceClient::new(channel.clone())
        .register(pb::RegisterRequest {
            altcha: altcha.into(),
            ..register_request(email)
        })
        .await
        .map(|_| ())
}

async fn resend(channel: &Channel, email: &str, altcha: &str) -> Result<(), Status> {
    RegistrationServiceClient::new(channel.clone())
        .resend_verification_email(pb::ResendVerificationEmailRequest {
            email: email.into(),
            altcha: altcha.into(),
        })
        .await
        .map(|_| ())
}

async fn request_reset(channel: &Channel, email: &str, altcha: &str) -> Result<(), Status> {
    PasswordResetServiceClient::new(channel.clone())
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: email.into(),
            altcha: altcha.into(),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn with_the_policy_always_every_call_that_sends_email_requires_a_solution() {
    let server = Server::start(ALWAYS).await;
    let channel = server.channel().await;

    assert_refused(
        register(&channel, "ada@example.com", "").await,
        "CHALLENGE_REQUIRED",
    );
    assert_refused(
        resend(&channel, "ada@example.com", "").await,
        "CHALLENGE_REQUIRED",
    );
    assert_refused(
        request_reset(&channel, "ada@example.com", "").await,
        "CHALLENGE_REQUIRED",
    );
    assert!(server.emails_to("ada@example.com").await.is_empty());
}

#[tokio::test]
async fn a_solved_challenge_is_accepted_once() {
    let server = Server::start(ALWAYS).await;
    let channel = server.channel().await;
    let (challenge, number) = solved(&channel).await;
    let solution = altcha::payload(&challenge, number);

    register(&channel, "ada@example.com", &solution)
        .await
        .expect("the solution is accepted");
    assert_refused(
        resend(&channel, "ada@example.com", &solution).await,
        "CHALLENGE_INVALID",
    );
    assert_refused(
        request_reset(&channel, "ada@example.com", &solution).await,
        "CHALLENGE_INVALID",
    );

    // Each call with a fresh solution passes.
    let (challenge, number) = solved(&channel).await;
    request_reset(
        &channel,
        "ada@example.com",
        &altcha::payload(&challenge, number),
    )
    .await
    .expect("a fresh solution is accepted");
}

#[tokio::test]
async fn a_solution_used_on_one_replica_is_refused_on_the_other_even_at_once() {
    let server = Server::start(ALWAYS_UNLIMITED).await;
    let replica = server.replica(ALWAYS_UNLIMITED).await;
    let (first, second) = (server.channel().await, replica.channel().await);

    // Issued by one replica, accepted by the other (they share the key), then refused by both.
    let (challenge, number) = solved(&first).await;
    let solution = altcha::payload(&challenge, number);
    register(&second, "ada@example.com", &solution)
        .await
        .expect("the other replica accepts it");
    assert_refused(
        register(&first, "bob@example.com", &solution).await,
        "CHALLENGE_INVALID",
    );

    // One solution sent 16 times at once, half to each replica: one call goes through.
    let (challenge, number) = solved(&second).await;
    let solution = altcha::payload(&challenge, number);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let channel = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let solution = solution.clone();
        calls.spawn(async move {
            register(&channel, &format!("racer{i}@example.com"), &solution).await
        });
    }
    let results = calls.join_all().await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    for refused in results.into_iter().filter_map(Result::err) {
        assert_eq!(reason(&refused), "CHALLENGE_INVALID", "{refused:?}");
    }
    assert_eq!(accepted, 1);
}

#[tokio::test]
async fn a_wrong_number_is_refused() {
    let server = Server::start(ALWAYS).await;
    let channel = server.channel().await;
    let (challenge, number) = solved(&channel).await;

    assert_refused(
        register(
            &channel,
            "ada@example.com",
            &altcha::payload(&challenge, number + 1),
        )
        .await,
        "CHALLENGE_INVALID",
    );
}

#[tokio::test]
async fn an_expired_challenge_is_refused() {
    let server = Server::start(ALWAYS).await;
    let channel = server.channel().await;
    // Minted with the server's key, as the server would, but expired a second ago.
    let expired_at = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
    let challenge = altcha::mint(CHALLENGE_KEY, &altcha::salt_expiring_at(expired_at), 1234);
    // The same, expiring in an hour, is accepted: only the expiry differs.
    let in_an_hour = altcha::mint(
        CHALLENGE_KEY,
        &altcha::salt_expiring_at(expired_at + 3601),
        1234,
    );

    assert_refused(
        register(
            &channel,
            "ada@example.com",
            &altcha::payload(&challenge, 1234),
        )
        .await,
        "CHALLENGE_INVALID",
    );
    register(
        &channel,
        "ada@example.com",
        &altcha::payload(&in_an_hour, 1234),
    )
    .await
    .expect("an unexpired challenge minted the same way is accepted");
}

#[tokio::test]
async fn a_tampered_signature_is_refused() {
    let server = Server::start(ALWAYS).await;
    let channel = server.channel().await;
    let (mut challenge, number) = solved(&channel).await;
    let last = challenge.signature.pop().expect("a signature");
    challenge
        .signature
        .push(if last == '0' { '1' } else { '0' });

    assert_refused(
        register(
            &channel,
            "ada@example.com",
            &altcha::payload(&challenge, number),
        )
        .await,
        "CHALLENGE_INVALID",
    );
    // A challenge signed with another key is refused as well.
    let forged = altcha::mint(
        "not-the-server-key-0123456789abcdef0123",
        &challenge.salt,
        number,
    );
    assert_refused(
        register(
            &channel,
            "ada@example.com",
            &altcha::payload(&forged, number),
        )
        .await,
        "CHALLENGE_INVALID",
    );
}

#[tokio::test]
async fn moving_digits_of_the_number_into_the_salt_is_refused() {
    let server = Server::start(ALWAYS).await;
    let channel = server.channel().await;
    // A solution with a digit that can move into the salt while the rest
    // still reads as the same digits: the rest must not start with a zero
    // (105 would leave "05", which a number prints as "5").
    let (challenge, number, split) = loop {
        let (challenge, number) = solved(&channel).await;
        let digits = number.to_string();
        if let Some(split) = (1..digits.len()).find(|&at| !digits[at..].starts_with('0')) {
            break (challenge, number, split);
        }
    };
    let digits = number.to_string();
    let (moved, kept) = digits.split_at(split);
    let spliced_salt = format!("{}{moved}", challenge.salt);
    let kept: u64 = kept.parse().expect("digits");
    // Same hash, same signature: only the salt's form tells.
    assert_eq!(
        altcha::hash(&spliced_salt, kept),
        altcha::hash(&challenge.salt, number)
    );

    assert_refused(
        register(
            &channel,
            "ada@example.com",
            &altcha::payload_with_salt(&challenge, &spliced_salt, kept),
        )
        .await,
        "CHALLENGE_INVALID",
    );
}

#[tokio::test]
async fn an_unterminated_salt_cannot_be_spliced_to_extend_its_expiry() {
    // CVE-2025-68113: a salt without the final "&", expired, signed with the server's key; moving
    // the number's first two digits onto the expiry makes it a hundred times later, with the
    // same hash and signature.
    let server = Server::start(ALWAYS).await;
    let channel = server.channel().await;
    let expired_at = time::OffsetDateTime::now_utc().unix_timestamp() - 60;
    let salt = altcha::salt_expiring_at(expired_at);
    let unterminated = salt.strip_suffix('&').expect("terminated");
    let challenge = altcha::mint(CHALLENGE_KEY, unterminated, 98_765);
    let spliced_salt = format!("{unterminated}98");
    assert_eq!(
        altcha::hash(&spliced_salt, 765),
        altcha::hash(unterminated, 98_765)
    );

    assert_refused(
        register(
            &channel,
            "ada@example.com",
            &altcha::payload_with_salt(&challenge, &spliced_salt, 765),
        )
        .await,
        "CHALLENGE_INVALID",
    );
}

#[tokio::test]
async fn a_refused_solution_is_explained_at_debug_and_the_key_never_logged() {
    let mut server = Server::start(&[
        ("IDENTITY_CHALLENGE_POLICY", "always"),
        ("RUST_LOG", "debug"),
    ])
    .await;
    let channel = server.channel().await;
    let (challenge, number) = solved(&channel).await;
    let _ = register(
        &channel,
        "ada@example.com",
        &altcha::payload(&challenge, number + 1),
    )
    .await;
    register(
        &channel,
        "ada@example.com",
        &altcha::payload(&challenge, number),
    )
    .await
    .expect("accepted");
    let _ = register(
        &channel,
        "bob@example.com",
        &altcha::payload(&challenge, number),
    )
    .await;

    // The log is read as the server writes it: wait for the lines rather than race them.
    let wait = std::time::Duration::from_secs(30);
    (server.process)
        .wait_for_line("SHA-256(salt ‖ number) is not the challenge", wait)
        .await;
    server.process.wait_for_line("already used", wait).await;
    let log = server.process.output();
    assert!(!log.contains(CHALLENGE_KEY), "the key leaked:\n{log}");
}

#[tokio::test]
async fn with_the_policy_off_no_solution_is_needed() {
    let server = Server::start(&[("IDENTITY_CHALLENGE_POLICY", "off")]).await;
    let channel = server.channel().await;

    register(&channel, "ada@example.com", "")
        .await
        .expect("registers");
    resend(&channel, "ada@example.com", "")
        .await
        .expect("answers OK");
    request_reset(&channel, "ada@example.com", "not even a payload")
        .await
        .expect("answers OK");
}

#[tokio::test]
async fn the_server_refuses_to_start_without_a_challenge_key_or_with_a_short_one() {
    let keys_dir = std::env::temp_dir().join("identity-challenge-no-key");
    let keys_dir = keys_dir.display().to_string();
    let env = [
        ("DATABASE_URL", "postgres://127.0.0.1:1/unused"),
        (
            "IDENTITY_CODE_HMAC_KEY",
            "e2e-code-key-0123456789abcdef0123456789",
        ),
        ("IDENTITY_KEYS_DIR", keys_dir.as_str()),
    ];

    let serve = process::run("identity-server", &["serve"], &env);
    assert!(!serve.status.success());
    let output = String::from_utf8_lossy(&serve.stderr).into_owned()
        + &String::from_utf8_lossy(&serve.stdout);
    assert!(
        output.contains("IDENTITY_CHALLENGE_HMAC_KEY is required"),
        "{output}"
    );

    let mut short_key = env.to_vec();
    short_key.push(("IDENTITY_CHALLENGE_HMAC_KEY", "too-short"));
    let serve = process::run("identity-server", &["serve"], &short_key);
    let output = String::from_utf8_lossy(&serve.stderr).into_owned()
        + &String::from_utf8_lossy(&serve.stdout);
    assert!(!serve.status.success());
    assert!(
        output.contains("IDENTITY_CHALLENGE_HMAC_KEY must be at least 32 bytes"),
        "{output}"
    );
}

#[tokio::test]
async fn altcha_lib_solves_our_challenge_and_the_server_accepts_the_widget_payload() {
    let server = Server::start(ALWAYS).await;
    let channel = server.channel().await;
    let challenge = create_challenge(&channel).await;

    let solved =
        altcha::solve_with_altcha_lib(std::slice::from_ref(&challenge), Some(CHALLENGE_KEY));
    let [solution] = solved.as_slice() else {
        panic!("one solution: {solved:?}")
    };
    // altcha-lib's own verifier accepts our challenge and its solution with our key...
    assert_eq!(solution.verified, Some(true));
    // ...and so does the server, once.
    register(&channel, "ada@example.com", &solution.payload)
        .await
        .expect("the widget-style payload is accepted");
    assert_refused(
        register(&channel, "bob@example.com", &solution.payload).await,
        "CHALLENGE_INVALID",
    );
}

/// Solve times at the default difficulty, in Rust (this test's solver; a debug build with sha2
/// optimized) and in Node.js (altcha-lib's `solveChallenge`, single-threaded, as the widget's
/// fallback does). Prints the figures the README quotes; asserts nothing about time. Ignored by
/// default (about a minute):
/// `cargo nextest run -p identity-tests --test challenge_e2e solve_times --run-ignored only --no-capture`
#[tokio::test]
#[ignore = "a measurement; run it by name"]
async fn solve_times_at_the_default_difficulty() {
    const CHALLENGES: usize = 50;
    let server = Server::start(&[]).await;
    let channel = server.channel().await;
    let mut challenges = Vec::with_capacity(CHALLENGES);
    for _ in 0..CHALLENGES {
        challenges.push(create_challenge(&channel).await);
    }
    let maxnumber = challenges[0].maxnumber;

    let mut rust_ms: Vec<f64> = challenges
        .iter()
        .map(|challenge| {
            let started = Instant::now();
            altcha::solve(challenge).expect("solvable");
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let mut node_ms: Vec<f64> = altcha::solve_with_altcha_lib(&challenges, None)
        .into_iter()
        .map(|solution| solution.took_ms)
        .collect();

    for (who, times) in [
        ("rust (tests' solver, debug build)", &mut rust_ms),
        ("node (altcha-lib solveChallenge)", &mut node_ms),
    ] {
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "solve time, maxnumber {maxnumber}, {} challenges, {who}: median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            times.len(),
            at(0.5),
            at(0.95),
            at(1.0)
        );
    }
}

#[tokio::test]
async fn the_adaptive_policy_asks_a_client_for_a_solution_once_it_passes_the_soft_threshold() {
    // The default policy (adaptive, soft threshold 50 %) over a Register limit with a burst of 6:
    // a client's first two calls of a burst use 1/6 and 2/6, below the threshold; its third uses
    // 3/6 and must carry a solution. Another client's pressure is its own.
    let server = Server::start(&[("IDENTITY_RATE_LIMITS", "register.ip=6/1h")]).await;
    let busy = server.channel_from("127.0.0.2".parse().expect("IP")).await;
    let quiet = server.channel_from("127.0.0.3".parse().expect("IP")).await;

    register(&busy, "a1@example.com", "")
        .await
        .expect("the first call needs no solution");
    register(&busy, "a2@example.com", "")
        .await
        .expect("the second call needs no solution");
    assert_refused(
        register(&busy, "a3@example.com", "").await,
        "CHALLENGE_REQUIRED",
    );
    let (challenge, number) = solved(&busy).await;
    register(
        &busy,
        "a3@example.com",
        &altcha::payload(&challenge, number),
    )
    .await
    .expect("past the soft threshold, a solved challenge lets the call through");
    register(&quiet, "b1@example.com", "")
        .await
        .expect("another client is below its own threshold");

    assert_eq!(server.emails_to("a1@example.com").await.len(), 1);
    assert_eq!(server.emails_to("a3@example.com").await.len(), 1);
}
