//! Health as Kubernetes probes it (`liveness`, `readiness`) and the shutdown sequence, against
//! the built `identity-server`.

use std::time::Duration;

use identity_proto::identity::v1 as pb;
use identity_tests::{
    pg::{Cluster, TestDb},
    server::{Server, register_request},
    wait,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// What the health service answers for `service`.
async fn health_of(channel: &Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health of {service:?}: {e:?}"))
        .into_inner()
        .status()
}

/// Waits until `service` reports `wanted`, asserting on every look that liveness stays SERVING.
async fn wait_for_health(channel: &Channel, service: &str, wanted: ServingStatus) {
    wait::until(
        &format!("{service:?} to report {wanted:?}"),
        Duration::from_secs(30),
        async || {
            assert_eq!(
                health_of(channel, "liveness").await,
                ServingStatus::Serving,
                "liveness stays SERVING"
            );
            (health_of(channel, service).await == wanted).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn readiness_is_not_serving_while_the_database_is_down_and_liveness_stays_serving() {
    let cluster = Cluster::start().expect("a private PostgreSQL starts");
    let db = TestDb::create_on(&cluster.url())
        .await
        .expect("test database");
    let server = Server::start_on(db, &[("IDENTITY_READINESS_INTERVAL_MS", "200")]).await;
    let channel = server.channel().await;
    wait_for_health(&channel, "readiness", ServingStatus::Serving).await;
    assert_eq!(health_of(&channel, "").await, ServingStatus::Serving);

    cluster.stop().expect("the database stops");
    wait_for_health(&channel, "readiness", ServingStatus::NotServing).await;
    assert_eq!(
        health_of(&channel, "").await,
        ServingStatus::NotServing,
        "the whole server follows readiness"
    );

    cluster.resume().expect("the database restarts");
    wait_for_health(&channel, "readiness", ServingStatus::Serving).await;
    assert_eq!(health_of(&channel, "").await, ServingStatus::Serving);
}

#[tokio::test]
async fn on_sigterm_readiness_turns_not_serving_calls_succeed_during_the_drain_delay_and_it_exits_0()
 {
    let mut server = Server::start(&[("IDENTITY_SHUTDOWN_DRAIN_DELAY_SECS", "10")]).await;
    let channel = server.channel().await;
    wait_for_health(&channel, "readiness", ServingStatus::Serving).await;

    server.process.send_sigterm();
    wait_for_health(&channel, "readiness", ServingStatus::NotServing).await;
    assert_eq!(health_of(&channel, "").await, ServingStatus::NotServing);

    // A load balancer may still route a call or open a connection before it notices.
    pb::registration_service_client::RegistrationServiceClient::new(channel.clone())
        .register(register_request("existing@example.com"))
        .await
        .expect("a call on an open connection succeeds during the drain delay");
    server
        .registration()
        .await
        .register(register_request("new@example.com"))
        .await
        .expect("a call on a new connection succeeds during the drain delay");

    let exit = server.process.wait_for_exit(Duration::from_secs(60)).await;
    assert!(exit.success(), "exit status {exit}");
    let log = server.process.output();
    let not_serving = log.find("reporting NOT_SERVING").expect("logged");
    let stopped_accepting = log.find("no longer accepting").expect("logged");
    assert!(not_serving < stopped_accepting, "{log}");
}
