//! Prometheus metrics of the built server and relay: the exposition on their own ports after a
//! sign-up.

use identity_proto::identity::v1 as pb;
use identity_tests::{
    http::{sample, scrape},
    pg::free_port,
    prometheus::Prometheus,
    relay,
    server::Server,
    smtp::SmtpServer,
};

#[tokio::test]
async fn a_sign_up_shows_in_the_rpc_histogram_the_registration_counter_and_the_hashing_metrics() {
    let metrics_addr = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let server = Server::start(&[("IDENTITY_METRICS_ADDR", metrics_addr.as_str())]).await;
    server.register("ada@example.com").await;
    let refused = server
        .registration()
        .await
        .register(pb::RegisterRequest {
            email: "not an address".into(),
            ..identity_tests::server::register_request("x@example.com")
        })
        .await
        .expect_err("a malformed address is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let exposition = scrape(&metrics_addr).await;

    let register = |code: &str| {
        format!(
            "rpc_server_call_duration_seconds_count{{rpc_system=\"grpc\",rpc_service=\"identity.v1.RegistrationService\",rpc_method=\"Register\",rpc_grpc_status_code=\"{code}\"}}"
        )
    };
    assert_eq!(
        sample(&exposition, &register("0")),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(
        sample(&exposition, &register("3")),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(
        sample(&exposition, "identity_registrations_total"),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(
        sample(
            &exposition,
            "identity_password_hash_duration_seconds_count{task=\"hash\"}"
        ),
        Some(1.0),
        "{exposition}"
    );
    assert!(
        exposition.contains("identity_password_hash_queue_depth"),
        "{exposition}"
    );
}

#[tokio::test]
async fn the_database_pool_is_sampled() {
    let metrics_addr = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let server = Server::start(&[
        ("IDENTITY_METRICS_ADDR", metrics_addr.as_str()),
        ("IDENTITY_DB_POOL_SIZE", "4"),
    ])
    .await;
    server.register("ada@example.com").await;

    // The pool is sampled every second; at rest nothing is checked out and nobody waits.
    let exposition = identity_tests::wait::until(
        "the pool gauges",
        std::time::Duration::from_secs(10),
        async || {
            let exposition = scrape(&metrics_addr).await;
            sample(&exposition, "identity_db_pool_waiting").map(|_| exposition)
        },
    )
    .await;
    assert_eq!(sample(&exposition, "identity_db_pool_waiting"), Some(0.0));
    let in_use = sample(&exposition, "identity_db_pool_connections_in_use").expect("sampled");
    assert!((0.0..=4.0).contains(&in_use), "{in_use}");
}

#[tokio::test]
async fn the_relay_counts_its_sends_and_reports_the_outbox_backlog_from_the_database() {
    let smtp = SmtpServer::start();
    let server = Server::start(&[]).await;
    // Two emails waiting before any relay runs: the backlog is read from the database.
    server.register("ada@example.com").await;
    server.register("grace@example.com").await;
    let metrics_addr = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let _relay = relay::start(
        &server.db.url,
        &smtp.url(),
        &[("RELAY_METRICS_ADDR", metrics_addr.as_str())],
    )
    .await;

    let exposition = identity_tests::wait::until(
        "two sends and an empty outbox in the relay's metrics",
        std::time::Duration::from_secs(30),
        async || {
            let exposition = scrape(&metrics_addr).await;
            let sent = sample(
                &exposition,
                "outbox_sends_total{kind=\"email.verification.v1\",result=\"delivered\"}",
            );
            let pending = sample(&exposition, "outbox_pending_messages");
            (sent == Some(2.0) && pending == Some(0.0)).then_some(exposition)
        },
    )
    .await;
    assert_eq!(
        sample(&exposition, "outbox_oldest_pending_age_seconds"),
        Some(0.0),
        "{exposition}"
    );
    assert_eq!(sample(&exposition, "outbox_relay_paused"), Some(0.0));
    assert_eq!(
        sample(
            &exposition,
            "outbox_claim_to_send_seconds_count{kind=\"email.verification.v1\"}"
        ),
        Some(2.0),
        "{exposition}"
    );
}

#[tokio::test]
async fn prometheus_scrapes_both_binaries_during_a_sign_up() {
    let smtp = SmtpServer::start();
    let server_metrics = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let relay_metrics = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let server = Server::start(&[("IDENTITY_METRICS_ADDR", server_metrics.as_str())]).await;
    let _relay = relay::start(
        &server.db.url,
        &smtp.url(),
        &[("RELAY_METRICS_ADDR", relay_metrics.as_str())],
    )
    .await;
    let prometheus = Prometheus::start(&[&server_metrics, &relay_metrics]).await;

    server.register("ada@example.com").await;

    // Prometheus scrapes every second; wait until it has seen the sign-up through to the email.
    let queries = [
        "sum(rpc_server_call_duration_seconds_count{rpc_method=\"Register\",rpc_grpc_status_code=\"0\"})",
        "sum(identity_registrations_total)",
        "sum(outbox_sends_total{result=\"delivered\"})",
    ];
    identity_tests::wait::until(
        "Prometheus to hold the sign-up",
        std::time::Duration::from_secs(60),
        async || {
            for query in queries {
                if prometheus.query(query).await != [1.0] {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Once the email is accepted, the outbox is empty: its oldest message has no age.
    identity_tests::wait::until(
        "the outbox age gauge at 0 in Prometheus",
        std::time::Duration::from_secs(30),
        async || {
            (prometheus
                .query("max(outbox_oldest_pending_age_seconds)")
                .await
                == [0.0])
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        prometheus
            .query("count(rpc_server_call_duration_seconds_bucket{rpc_method=\"Register\"})")
            .await,
        [14.0],
        "the Register histogram has its 13 buckets and +Inf"
    );
}
