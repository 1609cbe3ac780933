//! The rate-limit decision (one SQL statement on real PostgreSQL) against `governor` as an
//! oracle: the same timeline of calls, driven through governor's keyed GCRA with its fake clock
//! and through `db::rate_limits::decide`, must give the same allow/refuse decisions and the
//! same retry instants.

use std::{num::NonZeroU32, time::Duration};

use governor::{Quota, RateLimiter, clock::FakeRelativeClock};
use identity_server::db::rate_limits::{self, KeyLimit};
use identity_tests::pg::TestDb;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use time::OffsetDateTime;

/// One rate per key: (emission interval, burst).
const RATES: [(Duration, u32); 3] = [
    (Duration::from_millis(1500), 3),
    (Duration::from_millis(250), 1),
    (Duration::from_secs(7), 5),
];

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).expect("small")
}

#[tokio::test]
async fn the_sql_gcra_decides_exactly_as_governor_over_a_random_timeline() {
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let clock = FakeRelativeClock::default();
    let limiters: Vec<_> = RATES
        .iter()
        .map(|(emission, burst)| {
            let quota = Quota::with_period(*emission)
                .expect("positive")
                .allow_burst(NonZeroU32::new(*burst).expect("positive"));
            RateLimiter::hashmap_with_clock(quota, clock.clone())
        })
        .collect();
    let start = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid");
    let mut elapsed = Duration::ZERO;
    let mut rng = StdRng::seed_from_u64(8);
    let (mut allowed, mut refused) = (0, 0);

    for call in 0..600 {
        // Mostly bursts, sometimes a pause longer than any refill.
        let step = match rng.random_range(0..10) {
            0..=6 => Duration::from_micros(rng.random_range(0..30_000)),
            7..=8 => Duration::from_micros(rng.random_range(0..1_500_000)),
            _ => Duration::from_secs(rng.random_range(5..40)),
        };
        clock.advance(step);
        elapsed += step;
        let now = start + elapsed;
        let which = rng.random_range(0..RATES.len());
        let subject = rng.random_range(0..2);
        let (emission, burst) = RATES[which];

        let oracle = limiters[which].check_key(&subject);
        let key = KeyLimit {
            key: format!("oracle:{which}:{subject}"),
            emission_us: micros(emission),
            tolerance_us: micros(emission * (burst - 1)),
            cells: 1,
        };
        let outcome = rate_limits::decide(&mut conn, now, std::slice::from_ref(&key))
            .await
            .expect("decided")[0];

        match oracle {
            Ok(()) => {
                allowed += 1;
                assert!(
                    outcome.charged_tat.is_some(),
                    "call {call} ({key:?} at +{elapsed:?}): governor allows, SQL refuses"
                );
            }
            Err(not_until) => {
                refused += 1;
                assert_eq!(
                    outcome.charged_tat, None,
                    "call {call} ({key:?} at +{elapsed:?}): governor refuses, SQL allows"
                );
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&clock));
                assert_eq!(
                    outcome.allowed_from - now,
                    time::Duration::try_from(wait).expect("small"),
                    "call {call}: retry instants differ"
                );
            }
        }
    }
    println!("oracle timeline: {allowed} allowed, {refused} refused");
    assert!(
        allowed > 100 && refused > 100,
        "the timeline exercises both"
    );
}

#[tokio::test]
async fn a_call_refused_by_one_key_charges_none_of_its_keys() {
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("valid");
    let key = |name: &str, burst: i64| KeyLimit {
        key: name.into(),
        emission_us: 1_000_000,
        tolerance_us: 1_000_000 * (burst - 1),
        cells: 1,
    };
    let roomy = key("roomy", 10);
    let tight = key("tight", 1);

    let first = rate_limits::decide(&mut conn, now, &[roomy.clone(), tight.clone()])
        .await
        .expect("decided");
    let second = rate_limits::decide(&mut conn, now, &[roomy.clone(), tight.clone()])
        .await
        .expect("decided");
    let roomy_alone = rate_limits::decide(&mut conn, now, &[roomy])
        .await
        .expect("decided");

    assert!(first.iter().all(|o| o.charged_tat.is_some()));
    assert_eq!(second[1].charged_tat, None, "the tight key refuses");
    assert_eq!(
        second[0].charged_tat, None,
        "so the roomy key is not charged"
    );
    assert_eq!(
        roomy_alone[0].charged_tat,
        Some(now + time::Duration::seconds(2)),
        "the roomy key holds only the first call"
    );
    assert_eq!(second[1].allowed_from, now + time::Duration::seconds(1));
}
