//! Sign-up abuse controls end to end (issue 8): pre-hijack-safe pending registrations, the email
//! budget per address and enumeration-safe Register, through the built server and relay, a real
//! PostgreSQL and a real SMTP server.

use std::time::{Duration, Instant};

use identity_proto::identity::v1::{
    self as pb, registration_service_client::RegistrationServiceClient,
    session_service_client::SessionServiceClient,
};
use identity_tests::{
    outbox, relay,
    server::{Server, reason},
    smtp::{SmtpServer, text_part, token_after},
};
use prost::Message;
use tonic::{Code, transport::Channel};

const WAIT: Duration = Duration::from_secs(60);
const VERIFY_URL: &str = "https://app.example.com/verify?token=";
const VICTIM_PASSWORD: &str = "tangerine-kettle-orbit-42";
const ATTACKER_PASSWORD: &str = "quartz-lantern-marmalade-8";

/// Settings of the server the enumeration test measures, beyond the defaults. Calls from one
/// client that other controls would refuse (rate limits per IP and per address) are raised
/// here, so that the test measures Register itself.
// Hundreds of calls from one client: the rate limits (and, under them, the adaptive challenge)
// would refuse most of them. This test is about what the answers reveal, so both are off.
const ENUMERATION_SERVER_ENV: &[(&str, &str)] = &[("IDENTITY_RATE_LIMITING", "false")];

fn request(email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        password: password.into(),
        display_name: "Ada Lovelace".into(),
        locale: "en".into(),
        ..Default::default()
    }
}

/// The 43-character verification token in an email.
fn token_in(data: &str) -> String {
    token_after(&text_part(data), VERIFY_URL)
}

async fn login(channel: &Channel, email: &str, password: &str) -> Result<(), tonic::Status> {
    SessionServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .map(|_| ())
}

async fn verify(
    client: &mut RegistrationServiceClient<Channel>,
    token: String,
) -> Result<pb::VerifyEmailResponse, tonic::Status> {
    client
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(token)),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_squatted_address_goes_to_the_owner_who_verifies_with_the_password_they_chose() {
    let smtp = SmtpServer::start();
    let server = Server::start(&[]).await;
    let _relay = relay::start(&server.db.url, &smtp.url(), &[]).await;
    let channel = server.channel().await;
    let mut client = RegistrationServiceClient::new(channel.clone());

    // The attacker signs up with the victim's address; the email lands in the victim's mailbox.
    client
        .register(request("victim@example.com", ATTACKER_PASSWORD))
        .await
        .expect("the attacker's sign-up is accepted");
    let attackers_email = smtp.wait_for_message_to("victim@example.com", WAIT).await;

    // The victim signs up too, and verifies with the link of their own sign-up.
    let victim = client
        .register(request("victim@example.com", VICTIM_PASSWORD))
        .await
        .expect("the victim's sign-up is accepted too")
        .into_inner();
    let mails = smtp.wait_for_messages(2, WAIT).await;
    let victims_email = mails.last().expect("the victim's email");
    assert!(victims_email.is_for("victim@example.com"));
    let verified = verify(&mut client, token_in(&victims_email.data))
        .await
        .expect("the victim verifies");

    assert_eq!(verified.user_id, victim.user_id);
    login(&channel, "victim@example.com", VICTIM_PASSWORD)
        .await
        .expect("the victim's password works");
    let refused = login(&channel, "victim@example.com", ATTACKER_PASSWORD)
        .await
        .expect_err("the attacker's password does not");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let dead = verify(&mut client, token_in(&attackers_email.data))
        .await
        .expect_err("the attacker's link no longer works");
    assert_eq!(reason(&dead), "VERIFICATION_TOKEN_INVALID", "{dead:?}");
}

#[tokio::test]
async fn five_rounds_of_register_and_resend_for_one_address_deliver_only_the_budget() {
    let smtp = SmtpServer::start();
    // No resend cooldown: only the budget stands between the calls and the mailbox.
    // The per-address rate limits would stop the rounds before the budget does; the budget must
    // hold whatever the limits are set to, so they are off here.
    let server = Server::start(&[
        ("IDENTITY_RESEND_COOLDOWN_SECS", "0"),
        ("IDENTITY_RATE_LIMITING", "false"),
    ])
    .await;
    let _relay = relay::start(&server.db.url, &smtp.url(), &[]).await;
    let mut client = server.registration().await;

    for round in 0..5 {
        client
            .register(request("target@example.com", VICTIM_PASSWORD))
            .await
            .unwrap_or_else(|e| panic!("register, round {round}: {e:?}"));
        client
            .resend_verification_email(pb::ResendVerificationEmailRequest {
                email: "target@example.com".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("resend, round {round}: {e:?}"));
    }
    // Then another address, so that once the outbox is empty everything queued was delivered.
    client
        .register(request("someone.else@example.com", VICTIM_PASSWORD))
        .await
        .expect("registers");
    smtp.wait_for_message_to("someone.else@example.com", WAIT)
        .await;
    outbox::drained(&mut server.db.connect().await, WAIT).await;

    let delivered = smtp.messages_to("target@example.com").len();
    println!("10 calls for one address delivered {delivered} emails");
    assert_eq!(delivered, 3);
}

/// The 25th, 50th and 75th percentiles of `samples`, in milliseconds.
fn quartiles(samples: &mut [Duration]) -> [f64; 3] {
    samples.sort();
    let at = |q: usize| samples[(samples.len() - 1) * q / 4].as_secs_f64() * 1000.0;
    [at(1), at(2), at(3)]
}

#[tokio::test]
async fn register_answers_new_and_registered_addresses_alike() {
    const CALLS: usize = 120;
    let server = Server::start(ENUMERATION_SERVER_ENV).await;
    let mut client = server.registration().await;
    // A registered, active address.
    client
        .register(request("owner@example.com", VICTIM_PASSWORD))
        .await
        .expect("registers");
    let token = server.emails_to("owner@example.com").await[0].token.clone();
    verify(&mut client, token).await.expect("verifies");
    // Warm up both paths (connections, caches) before measuring.
    for i in 0..5 {
        let _ = client
            .register(request(&format!("warm{i}@example.com"), VICTIM_PASSWORD))
            .await;
        let _ = client
            .register(request("owner@example.com", VICTIM_PASSWORD))
            .await;
    }

    let (mut new, mut registered) = (Vec::new(), Vec::new());
    let mut shapes = std::collections::BTreeSet::new();
    for i in 0..CALLS {
        // Interleaved, so that any drift of the machine's speed affects both alike.
        for (email, samples) in [
            (format!("new{i}@example.com"), &mut new),
            ("owner@example.com".to_owned(), &mut registered),
        ] {
            let started = Instant::now();
            let outcome = client.register(request(&email, VICTIM_PASSWORD)).await;
            samples.push(started.elapsed());
            let response = match outcome {
                Ok(response) => response.into_inner(),
                Err(status) => panic!(
                    "Register of {email} answered {:?} {}",
                    status.code(),
                    reason(&status)
                ),
            };
            let id: uuid::Uuid = response.user_id.parse().expect("a UUID");
            shapes.insert((
                id.get_version_num(),
                response.status(),
                response.encoded_len(),
            ));
        }
    }

    assert_eq!(
        shapes.len(),
        1,
        "every answer has the same shape: {shapes:?}"
    );
    let [new_q1, new_median, new_q3] = quartiles(&mut new);
    let [reg_q1, reg_median, reg_q3] = quartiles(&mut registered);
    println!(
        "Register latency over {CALLS} calls each (ms): new address q1 {new_q1:.2} median \
         {new_median:.2} q3 {new_q3:.2}; registered address q1 {reg_q1:.2} median \
         {reg_median:.2} q3 {reg_q3:.2}; medians differ by {:.2}",
        (new_median - reg_median).abs()
    );
    assert!(
        new_q1 <= reg_q3 && reg_q1 <= new_q3,
        "the interquartile ranges overlap"
    );
}

#[tokio::test]
async fn with_enumeration_safety_turned_off_by_its_variable_an_active_address_is_already_exists() {
    let server = Server::start(&[("IDENTITY_REGISTER_ENUMERATION_SAFE", "false")]).await;
    let mut client = server.registration().await;
    client
        .register(request("owner@example.com", VICTIM_PASSWORD))
        .await
        .expect("registers");
    let token = server.emails_to("owner@example.com").await[0].token.clone();
    verify(&mut client, token).await.expect("verifies");

    let status = client
        .register(request("OWNER@example.com", VICTIM_PASSWORD))
        .await
        .expect_err("the address is taken");

    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(reason(&status), "EMAIL_ALREADY_REGISTERED");
}

#[test]
fn serve_refuses_an_email_budget_or_an_enumeration_setting_that_makes_no_sense() {
    let base = [
        ("DATABASE_URL", "postgres://identity@127.0.0.1:1/identity"),
        ("IDENTITY_CODE_HMAC_KEY", identity_tests::server::CODE_KEY),
        (
            "IDENTITY_CHALLENGE_HMAC_KEY",
            identity_tests::server::CHALLENGE_KEY,
        ),
        ("IDENTITY_KEYS_DIR", "/nonexistent-keys"),
    ];
    for (setting, named) in [
        (
            [
                ("IDENTITY_EMAIL_BUDGET_PER_HOUR", "5"),
                ("IDENTITY_EMAIL_BUDGET_PER_DAY", "4"),
            ],
            "IDENTITY_EMAIL_BUDGET_PER_DAY",
        ),
        (
            [
                ("IDENTITY_EMAIL_BUDGET_PER_HOUR", "0"),
                ("IDENTITY_EMAIL_BUDGET_PER_DAY", "10"),
            ],
            "IDENTITY_EMAIL_BUDGET_PER_HOUR",
        ),
        (
            [
                ("IDENTITY_REGISTER_ENUMERATION_SAFE", "maybe"),
                ("IDENTITY_EMAIL_BUDGET_PER_DAY", "10"),
            ],
            "register-enumeration-safe",
        ),
    ] {
        let mut env = base.to_vec();
        env.extend_from_slice(&setting);
        let output = identity_tests::process::run("identity-server", &["serve"], &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{setting:?} was accepted");
        assert!(stderr.contains(named), "{setting:?}: {stderr}");
    }
}
