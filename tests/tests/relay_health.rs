//! outbox-relay's gRPC health service: the built relay against a throwaway PostgreSQL cluster
//! that the test stops and resumes, and against an SMTP server that makes it pause sending.

use std::time::Duration;

use identity_tests::{
    outbox::enqueue,
    pg::{Cluster, TestDb},
    relay,
    smtp::{Reply, SmtpServer},
    wait,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const WAIT: Duration = Duration::from_secs(60);

/// A client of the relay's health service at `addr`.
async fn health(addr: &str) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the relay's health service at {addr}: {e}"));
    HealthClient::new(channel)
}

/// The status the relay reports for `service`.
async fn status(client: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health check of {service:?} failed: {e}"))
        .into_inner()
        .status()
}

/// Waits until `service` reports `expected`.
async fn wait_for(client: &mut HealthClient<Channel>, service: &str, expected: ServingStatus) {
    let what = format!("{service:?} to report {expected:?}");
    wait::until(&what, WAIT, async || {
        (status(client, service).await == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_relay_is_not_ready_while_its_database_is_down_but_stays_alive() {
    let cluster = Cluster::start().expect("a throwaway PostgreSQL cluster starts");
    let db = TestDb::create_on(&cluster.url())
        .await
        .expect("a database on the throwaway cluster");
    let smtp = SmtpServer::start();
    let relay = relay::start(&db.url, &smtp.url(), &[]).await;
    let mut client = health(&relay::health_addr(&relay)).await;
    wait_for(&mut client, "readiness", ServingStatus::Serving).await;
    assert_eq!(status(&mut client, "").await, ServingStatus::Serving);
    assert_eq!(
        status(&mut client, "liveness").await,
        ServingStatus::Serving
    );

    cluster.stop().expect("the cluster stops");
    wait_for(&mut client, "readiness", ServingStatus::NotServing).await;
    assert_eq!(status(&mut client, "").await, ServingStatus::NotServing);
    assert_eq!(
        status(&mut client, "liveness").await,
        ServingStatus::Serving
    );

    cluster.resume().expect("the cluster starts again");
    wait_for(&mut client, "readiness", ServingStatus::Serving).await;
    assert_eq!(status(&mut client, "").await, ServingStatus::Serving);
}

#[tokio::test]
async fn the_relay_is_not_ready_while_sending_is_paused_but_stays_alive() {
    let smtp = SmtpServer::start();
    // 530 ("authentication required") pauses sending: the fault is ours, not the message's.
    smtp.reply_to("paused1@example.com", Reply::Permanent(530));
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let mut relay = relay::start(
        &db.url,
        &smtp.url(),
        &[("RELAY_REFUSED_PAUSE_SECS", "3600")],
    )
    .await;
    let mut client = health(&relay::health_addr(&relay)).await;
    wait_for(&mut client, "readiness", ServingStatus::Serving).await;

    enqueue(&mut conn, "paused", 1).await;
    relay.wait_for_line("pausing delivery", WAIT).await;

    wait_for(&mut client, "readiness", ServingStatus::NotServing).await;
    assert_eq!(status(&mut client, "").await, ServingStatus::NotServing);
    assert_eq!(
        status(&mut client, "liveness").await,
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn the_relay_health_port_answers_reflection_so_grpcurl_needs_no_proto() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let relay = relay::start(&db.url, &smtp.url(), &[]).await;
    let channel = Channel::from_shared(format!("http://{}", relay::health_addr(&relay)))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the health port accepts connections");

    let v1 = identity_tests::list_services!(v1, channel.clone());
    let v1alpha = identity_tests::list_services!(v1alpha, channel);

    for services in [v1, v1alpha] {
        assert!(
            services.iter().any(|s| s == "grpc.health.v1.Health"),
            "{services:?}"
        );
    }
}
