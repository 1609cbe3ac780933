//! The relay's health over the gRPC health protocol (`grpc.health.v1.Health`, which Kubernetes'
//! gRPC probes and grpc-health-probe speak), on an address of its own:
//!
//! - `liveness`: SERVING while the process runs;
//! - `readiness`, and `""` (the whole server) with it: SERVING while the database answers and
//!   sending is not paused; NOT_SERVING while the database is unreachable, while sending is
//!   paused (the SMTP server refused us), and once shutdown began.
//!
//! The database is checked every [`CHECK_INTERVAL`] with a trivial query from the relay's pool.
//! Server reflection (v1 and v1alpha) is served too, so grpcurl and `buf curl` can call the
//! health service without its .proto.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::relay::Relay;

/// The service name that reports whether the process runs.
pub const LIVENESS: &str = "liveness";
/// The service name that reports whether the relay can do its work.
pub const READINESS: &str = "readiness";
/// How often the database is checked; also the longest a check may take.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The health service, bound to its address.
#[derive(Debug)]
pub struct HealthService {
    listener: TcpListener,
}

impl HealthService {
    /// Binds `addr` (port 0 picks a free port) and logs the address.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for health checks on {addr} (RELAY_HEALTH_ADDR)")
        })?;
        let local = listener.local_addr()?;
        tracing::info!(health.addr = %local, "health service listening");
        Ok(Self { listener })
    }

    /// Serves health checks about `relay` on a task of its own, until the task is aborted.
    pub fn spawn(self, relay: Arc<Relay>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if let Err(e) = self.serve(relay).await {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "health checks are no longer answered");
            }
        })
    }

    async fn serve(self, relay: Arc<Relay>) -> anyhow::Result<()> {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        // Not ready until the first check says so.
        set_readiness(&reporter, ServingStatus::NotServing).await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let incoming = TcpIncoming::from(self.listener);
        let server = Server::builder()
            .add_service(service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming(incoming);
        tokio::select! {
            served = server => {
                served.context("the health service failed")
            }
            () = follow_readiness(&reporter, &relay) => Ok(()),
        }
    }
}

/// Checks the relay every [`CHECK_INTERVAL`] and reports its readiness when it changes.
async fn follow_readiness(reporter: &HealthReporter, relay: &Relay) {
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = None;
    loop {
        ticks.tick().await;
        let database = relay.database_answers(CHECK_INTERVAL).await;
        let paused = relay.is_paused();
        let stopping = relay.is_stopping();
        let ready = database && !paused && !stopping;
        if reported == Some(ready) {
            continue;
        }
        if ready {
            tracing::info!("ready: the database answers and sending is not paused");
        } else {
            tracing::warn!(database, paused, stopping, "not ready");
        }
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_readiness(reporter, status).await;
        reported = Some(ready);
    }
}

async fn set_readiness(reporter: &HealthReporter, status: ServingStatus) {
    for service in [READINESS, ""] {
        reporter.set_service_status(service, status).await;
    }
}
