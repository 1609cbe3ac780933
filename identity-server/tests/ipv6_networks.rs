//! IPv6 clients in process, named by a trusted proxy's `x-forwarded-for` (loopback cannot route
//! IPv6 here): the /64s of one /48 share the /48's limit, and its use raises the adaptive
//! challenge's pressure like the use of one client's own limit.

mod support;

use identity_server::{
    abuse::TrustedProxies,
    challenge::{self, ChallengeKey, Policy},
};
use support::{TestApp, register_request};
use tonic::Request;
use tonic_types::StatusExt;

/// A server behind a trusted proxy at 127.0.0.1 (the test's connections), with the default
/// limits and the default adaptive challenge.
async fn behind_a_proxy() -> TestApp {
    TestApp::spawn_with(|settings| {
        settings.abuse.identity.trusted_proxies =
            TrustedProxies::new(vec!["127.0.0.1/32".parse().expect("a CIDR")]);
        settings.challenge = challenge::Settings {
            policy: Policy::Adaptive,
            key: Some(ChallengeKey::new(vec![9; 32]).expect("long enough")),
            ..challenge::Settings::off()
        };
    })
    .await
}

/// Registers `email` for the client the proxy names `client`, without a challenge solution;
/// the answer as `OK`, or the refusal's reason and scope.
async fn register_for(app: &TestApp, client: &str, email: &str) -> String {
    let mut request = Request::new(register_request(email));
    request
        .metadata_mut()
        .insert("x-forwarded-for", client.parse().expect("ASCII"));
    match app.client.clone().register(request).await {
        Ok(_) => "OK".to_owned(),
        Err(status) => {
            let info = status.get_details_error_info().expect("ErrorInfo");
            match info.metadata.get("scope") {
                Some(scope) => format!("{} {scope}", info.reason),
                None => info.reason,
            }
        }
    }
}

#[tokio::test]
async fn sign_ups_from_many_slash_64s_of_one_slash_48_are_challenged_then_refused() {
    let app = behind_a_proxy().await;

    let mut answers = Vec::new();
    for i in 0..100u32 {
        // The i-th /64 of 2001:db8:1::/48: each one's own limit is untouched.
        let client = format!("2001:db8:1:{i:x}::1");
        answers.push(register_for(&app, &client, &format!("u{i}@example.com")).await);
    }

    // Register's /48 limit is 160/1h+80: from its 40th call on the /48 has used half its
    // burst, so a solution is required (and a refused call still counts); past 80 it refuses.
    let expected: Vec<String> = std::iter::repeat_n("OK", 39)
        .chain(std::iter::repeat_n("CHALLENGE_REQUIRED", 41))
        .chain(std::iter::repeat_n("RATE_LIMITED ip48", 20))
        .map(str::to_owned)
        .collect();
    assert_eq!(answers, expected);
    assert_eq!(
        register_for(&app, "2001:db8:2::1", "neighbour@example.com").await,
        "OK",
        "another /48 is untouched"
    );
}
