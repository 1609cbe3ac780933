//! The door on a real PostgreSQL with a clock the test moves: a burst, a refusal that says when
//! to retry, the retry passing at that instant, the usage an adaptive policy reads, and the
//! janitor deleting only rows that hold no state.

mod support;

use std::{sync::Arc, time::Duration as StdDuration};

use identity_server::{
    abuse::{Action, AdmitError, ClientIp, Door, Limits, Scope, Settings, Usage},
    db,
    domain::EmailAddress,
    janitor::{self, Janitor},
};
use secrecy::SecretString;
use support::TestApp;
use time::Duration;

fn pool(app: &TestApp) -> db::Pool {
    db::pool(&db::PoolConfig {
        url: SecretString::from(app.db.url.clone()),
        max_size: 2,
        timeout: StdDuration::from_secs(5),
        session: identity_proto::pg::SessionTimeouts::default(),
    })
    .expect("a pool")
}

/// A door with `overrides` on top of the defaults, on `app`'s database and clock.
fn door(app: &TestApp, overrides: &str) -> Door {
    let settings = Settings {
        limits: Some(Limits::with_overrides(overrides).expect("valid overrides")),
        ..Settings::default()
    };
    Door::new(pool(app), Arc::new(app.clock.clone()), settings)
}

fn client(raw: &str) -> ClientIp {
    ClientIp::new(raw.parse().expect("test address"))
}

fn email(raw: &str) -> EmailAddress {
    EmailAddress::parse(raw).expect("valid")
}

#[tokio::test]
async fn a_burst_passes_then_the_refusal_names_the_instant_the_next_call_passes() {
    let app = TestApp::spawn().await;
    // Burst 3, then one every 20 minutes.
    let door = door(&app, "register.ip=3/1h+3,register.address=off");
    let ip = client("203.0.113.5");

    let mut usage = Vec::new();
    for i in 0..3 {
        let admission = door
            .admit(
                ip,
                Action::Register,
                Some(&email(&format!("u{i}@example.com"))),
            )
            .await
            .expect("within the burst");
        usage.push(admission.ip_usage());
    }
    let refused = door.admit(ip, Action::Register, None).await;

    let burst = |used| Some(Usage { used, burst: 3 });
    assert_eq!(usage, [burst(1), burst(2), burst(3)]);
    let Err(AdmitError::RateLimited {
        action,
        scope,
        retry_after,
    }) = refused
    else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!((action, scope), (Action::Register, Scope::Ip));
    assert_eq!(retry_after, StdDuration::from_secs(20 * 60));

    app.clock
        .advance(Duration::minutes(20) - Duration::MICROSECOND);
    assert!(
        door.admit(ip, Action::Register, None).await.is_err(),
        "a microsecond early is still refused"
    );
    app.clock.advance(Duration::MICROSECOND);
    let admission = door
        .admit(ip, Action::Register, None)
        .await
        .expect("at the retry instant");
    assert_eq!(admission.ip_usage(), burst(3));
}

#[tokio::test]
async fn one_replica_s_refusal_holds_on_another_and_other_clients_are_untouched() {
    let app = TestApp::spawn().await;
    let (first, second) = (
        door(&app, "login.ip=2/1h,login.address=off"),
        door(&app, "login.ip=2/1h,login.address=off"),
    );
    let ip = client("2001:db8:1:2::1");

    first.admit(ip, Action::Login, None).await.expect("1st");
    second.admit(ip, Action::Login, None).await.expect("2nd");

    assert!(first.admit(ip, Action::Login, None).await.is_err());
    assert!(
        second
            .admit(client("2001:db8:1:2:ffff::9"), Action::Login, None)
            .await
            .is_err(),
        "the same /64 is the same client"
    );
    second
        .admit(client("2001:db8:1:3::1"), Action::Login, None)
        .await
        .expect("another /64 is another client");
}

#[tokio::test]
async fn the_address_limit_ignores_letter_case_and_says_its_scope() {
    let app = TestApp::spawn().await;
    let door = door(&app, "resend_verification_email.address=1/1h");

    door.admit(
        client("198.51.100.1"),
        Action::ResendVerificationEmail,
        Some(&email("Ada@Example.com")),
    )
    .await
    .expect("first");
    let refused = door
        .admit(
            client("198.51.100.2"),
            Action::ResendVerificationEmail,
            Some(&email("ada@example.COM")),
        )
        .await;

    assert!(
        matches!(
            refused,
            Err(AdmitError::RateLimited {
                scope: Scope::Address,
                ..
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn with_limits_off_every_call_passes_and_reports_no_usage() {
    let app = TestApp::spawn().await;
    let door = Door::new(
        pool(&app),
        Arc::new(app.clock.clone()),
        Settings {
            limits: None,
            ..Settings::default()
        },
    );
    for _ in 0..50 {
        let admission = door
            .admit(client("203.0.113.5"), Action::Register, None)
            .await
            .expect("no limit");
        assert_eq!(admission.ip_usage(), None);
    }
}

#[tokio::test]
async fn the_janitor_deletes_rate_limit_rows_once_their_state_has_lapsed() {
    let app = TestApp::spawn().await;
    let door = door(&app, "register.ip=2/1h,register.address=off");
    door.admit(client("203.0.113.1"), Action::Register, None)
        .await
        .expect("passes");
    app.clock.advance(Duration::minutes(20));
    door.admit(client("203.0.113.2"), Action::Register, None)
        .await
        .expect("passes");
    let janitor = Janitor::new(
        pool(&app),
        Arc::new(app.clock.clone()),
        janitor::Settings::default(),
    );

    // 203.0.113.1's state runs to +30 min, 203.0.113.2's to +50 min.
    app.clock
        .advance(Duration::minutes(10) - Duration::MICROSECOND);
    assert_eq!(janitor.sweep().await.expect("sweeps").rate_limits, 0);
    app.clock.advance(Duration::MICROSECOND);
    assert_eq!(janitor.sweep().await.expect("sweeps").rate_limits, 1);
    app.clock.advance(Duration::minutes(20));
    assert_eq!(janitor.sweep().await.expect("sweeps").rate_limits, 1);
}

#[tokio::test]
async fn generous_limits_charged_in_batches_still_admit_exactly_the_burst() {
    let app = TestApp::spawn().await;
    // Burst 100: batches of 3 cells, the last call alone.
    let door = door(&app, "refresh_session.ip=100/1h");
    let ip = client("203.0.113.9");

    let mut admitted = 0;
    let mut last_usage = None;
    for _ in 0..120 {
        if let Ok(admission) = door.admit(ip, Action::RefreshSession, None).await {
            admitted += 1;
            last_usage = admission.ip_usage();
        }
    }

    assert_eq!(admitted, 100);
    assert_eq!(
        last_usage,
        Some(Usage {
            used: 100,
            burst: 100
        })
    );
}

#[tokio::test]
async fn replicas_charging_in_batches_never_admit_more_than_the_burst_together() {
    let app = TestApp::spawn().await;
    let doors = [
        door(&app, "refresh_session.ip=200/1h"),
        door(&app, "refresh_session.ip=200/1h"),
        door(&app, "refresh_session.ip=200/1h"),
    ];
    let ip = client("203.0.113.9");

    let mut admitted = 0;
    for i in 0..300 {
        if doors[i % 3]
            .admit(ip, Action::RefreshSession, None)
            .await
            .is_ok()
        {
            admitted += 1;
        }
    }

    // Spares held by the other replicas can only make it stricter.
    assert!(admitted <= 200, "{admitted} admitted");
    assert!(admitted > 150, "{admitted} admitted");
}

#[tokio::test]
async fn concurrent_calls_on_one_replica_share_one_batch() {
    use diesel::{QueryableByName, sql_types::Timestamptz};
    use diesel_async::RunQueryDsl;
    use identity_server::clock::Clock;

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Timestamptz)]
        tat: time::OffsetDateTime,
    }

    let app = TestApp::spawn().await;
    // Burst 3200: batches of 16 cells, one cell every 1.125 s.
    let door = Arc::new(door(&app, "refresh_session.ip=3200/1h"));
    let ip = client("203.0.113.9");
    let now = app.clock.now();

    let calls: Vec<_> = (0..16)
        .map(|_| {
            let door = Arc::clone(&door);
            tokio::spawn(async move { door.admit(ip, Action::RefreshSession, None).await })
        })
        .collect();
    for call in calls {
        call.await.expect("joins").expect("admitted");
    }

    // 16 calls arriving together are served by one batch of 16 cells, not a batch each.
    let row: Row = diesel::sql_query("SELECT tat FROM rate_limits")
        .get_result(&mut app.db.connect().await)
        .await
        .expect("one row");
    assert_eq!(row.tat - now, Duration::milliseconds(16 * 1125));
}

#[tokio::test]
async fn the_slash_64s_of_one_slash_48_share_its_limit_and_fill_its_usage() {
    let app = TestApp::spawn().await;
    // The default per-IP limit (10/1h+5); one call from each /64 of 2001:db8:1::/48.
    let door = door(&app, "register.address=off");

    let mut usage = Vec::new();
    let mut refused = None;
    for i in 0..200u32 {
        let ip = client(&format!("2001:db8:1:{i:x}::1"));
        match door.admit(ip, Action::Register, None).await {
            Ok(admission) => usage.push(admission.ip_usage()),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }

    // The /48's limit is 16 times the per-IP one (160/1h+80): each call counts towards it,
    // and its usage, the fullest, is what the adaptive challenge reads.
    assert_eq!(usage.len(), 80, "calls admitted before the /48 is full");
    assert_eq!(
        usage[39],
        Some(Usage {
            used: 40,
            burst: 80
        })
    );
    assert_eq!(
        usage[79],
        Some(Usage {
            used: 80,
            burst: 80
        })
    );
    let Some(AdmitError::RateLimited {
        scope, retry_after, ..
    }) = refused
    else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!(scope.name(), "ip48");
    // One call of the /48 every 22.5 s.
    assert_eq!(retry_after, StdDuration::from_millis(22_500));
    let elsewhere = door
        .admit(client("2001:db8:2::1"), Action::Register, None)
        .await
        .expect("another /48 has a limit of its own");
    assert_eq!(elsewhere.ip_usage(), Some(Usage { used: 1, burst: 5 }));
}

#[tokio::test]
async fn the_slash_48s_of_one_slash_32_share_its_limit() {
    let app = TestApp::spawn().await;
    let door = door(&app, "register.address=off,register.ip32=8/1h");

    let mut admitted = 0;
    let mut refused = None;
    for i in 0..20u32 {
        // The i-th /48 of 2001:db8::/32.
        match door
            .admit(
                client(&format!("2001:db8:{i:x}::1")),
                Action::Register,
                None,
            )
            .await
        {
            Ok(_) => admitted += 1,
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }

    assert_eq!(admitted, 8);
    assert!(
        matches!(
            refused,
            Some(AdmitError::RateLimited {
                scope: Scope::Ip32,
                ..
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn generous_ipv6_limits_charged_in_batches_still_admit_exactly_what_the_slash_48_allows() {
    let app = TestApp::spawn().await;
    // Batches of 3 cells on the /64, the /48 and the /32 together.
    let door = door(
        &app,
        "refresh_session.ip=100/1h,refresh_session.ip48=150/1h",
    );
    let admitted_from = async |ip: &str| {
        let mut admitted = 0;
        for _ in 0..120 {
            if door
                .admit(client(ip), Action::RefreshSession, None)
                .await
                .is_ok()
            {
                admitted += 1;
            }
        }
        admitted
    };

    let first = admitted_from("2001:db8:1:1::1").await;
    let second = admitted_from("2001:db8:1:2::1").await;

    assert_eq!((first, second), (100, 50));
    let refused = door
        .admit(client("2001:db8:1:3::1"), Action::RefreshSession, None)
        .await;
    assert!(
        matches!(
            refused,
            Err(AdmitError::RateLimited {
                scope: Scope::Ip48,
                ..
            })
        ),
        "{refused:?}"
    );
}
