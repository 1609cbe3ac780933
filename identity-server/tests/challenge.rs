//! The challenge gate on a real PostgreSQL with a clock the test moves: when the adaptive
//! policy starts asking, and a solution's life from issue to expiry.

use std::{sync::Arc, time::Duration as StdDuration};

use identity_proto::identity::v1::CreateChallengeResponse;
use identity_server::{
    challenge::{self, ChallengeError, ChallengeKey, Challenges, IpPressure, Policy},
    clock::ManualClock,
    db,
};
use identity_tests::{altcha, pg::TestDb};
use secrecy::SecretString;
use time::{Duration, OffsetDateTime};

/// A gate with `policy` on a fresh database, and the clock it reads.
async fn gate(policy: Policy) -> (Challenges, ManualClock, TestDb) {
    let db = TestDb::create().await;
    let pool = db::pool(&db::PoolConfig {
        url: SecretString::from(db.url.clone()),
        max_size: 2,
        timeout: StdDuration::from_secs(5),
        session: identity_proto::pg::SessionTimeouts::default(),
    })
    .expect("a pool");
    let clock = ManualClock::new(OffsetDateTime::now_utc());
    let settings = challenge::Settings {
        policy,
        key: Some(ChallengeKey::new(vec![9; 32]).expect("long enough")),
        max_number: 1_000,
        ..challenge::Settings::off()
    };
    let gate = Challenges::new(pool, Arc::new(clock.clone()), settings).expect("a gate");
    (gate, clock, db)
}

/// A challenge from `gate`, solved, as the widget's payload.
fn solved(gate: &Challenges) -> String {
    let issued = gate.issue().expect("a challenge");
    let challenge = CreateChallengeResponse {
        algorithm: issued.algorithm.into(),
        challenge: issued.challenge,
        maxnumber: issued.max_number,
        salt: issued.salt,
        signature: issued.signature,
    };
    let number = altcha::solve(&challenge).expect("solvable");
    altcha::payload(&challenge, number)
}

#[tokio::test]
async fn the_adaptive_policy_asks_from_the_soft_threshold_on() {
    let (gate, _clock, _db) = gate(Policy::Adaptive).await;

    for below in [
        IpPressure::Unknown,
        IpPressure::UsedPercent(0),
        IpPressure::UsedPercent(49),
    ] {
        gate.check("", below)
            .await
            .unwrap_or_else(|e| panic!("{below:?} needs no solution: {e}"));
    }
    for at_or_above in [IpPressure::UsedPercent(50), IpPressure::of_burst(10, 10)] {
        assert!(matches!(
            gate.check("", at_or_above).await,
            Err(ChallengeError::Required)
        ));
    }
    gate.check(&solved(&gate), IpPressure::UsedPercent(50))
        .await
        .expect("a solution passes at the threshold");
}

#[tokio::test]
async fn a_solution_works_until_its_challenge_expires_and_only_once() {
    let (gate, clock, _db) = gate(Policy::Always).await;
    let first = solved(&gate);
    let second = solved(&gate);

    // The salt holds whole seconds: just before the default ten minutes run out, it still works.
    clock.advance(Duration::minutes(10) - Duration::seconds(1));
    gate.check(&first, IpPressure::Unknown)
        .await
        .expect("valid until its expiry");
    assert!(matches!(
        gate.check(&first, IpPressure::Unknown).await,
        Err(ChallengeError::Invalid)
    ));

    clock.advance(Duration::seconds(1));
    assert!(matches!(
        gate.check(&second, IpPressure::Unknown).await,
        Err(ChallengeError::Invalid)
    ));
}

#[tokio::test]
async fn without_a_key_only_the_off_policy_builds_and_it_issues_nothing() {
    let db = TestDb::create().await;
    let pool = db::pool(&db::PoolConfig {
        url: SecretString::from(db.url.clone()),
        max_size: 1,
        timeout: StdDuration::from_secs(5),
        session: identity_proto::pg::SessionTimeouts::default(),
    })
    .expect("a pool");
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let keyless = |policy| challenge::Settings {
        policy,
        ..challenge::Settings::off()
    };

    for policy in [Policy::Always, Policy::Adaptive] {
        assert!(Challenges::new(pool.clone(), clock.clone(), keyless(policy)).is_err());
    }
    let off = Challenges::new(pool, clock, keyless(Policy::Off)).expect("builds");
    assert!(matches!(off.issue(), Err(ChallengeError::Disabled)));
    off.check("", IpPressure::UsedPercent(100))
        .await
        .expect("off never asks");
}
