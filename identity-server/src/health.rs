//! Health as orchestrators probe it, over the standard `grpc.health.v1.Health` service:
//!
//! - `liveness`: SERVING as long as the process answers, whatever the database does (a failing
//!   liveness probe restarts the pod, which would not bring a database back).
//! - `readiness`: SERVING while the database answers a cheap query through the pool (checked
//!   every `interval`) and the server is not shutting down; NOT_SERVING otherwise, so that load
//!   balancers route calls elsewhere.
//! - `""` (the whole server) and every API service follow readiness.

use std::{sync::Arc, time::Duration};

use diesel_async::RunQueryDsl;
use tokio::sync::Mutex;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::db;

/// The health service name of liveness.
pub const LIVENESS: &str = "liveness";
/// The health service name of readiness.
pub const READINESS: &str = "readiness";

/// What readiness depends on.
#[derive(Debug)]
struct State {
    database_up: bool,
    shutting_down: bool,
}

/// The health the server reports, kept consistent under concurrent updates.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// Services that follow readiness besides `readiness` itself.
    followers: Arc<[&'static str]>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("followers", &self.followers)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Reports liveness SERVING and readiness NOT_SERVING (until a database check succeeds);
    /// `followers` ("" and the API services) follow readiness.
    pub async fn new(reporter: HealthReporter, followers: &[&'static str]) -> Self {
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let health = Self {
            reporter,
            followers: followers.into(),
            state: Arc::new(Mutex::new(State {
                database_up: false,
                shutting_down: false,
            })),
        };
        let state = health.state.lock().await;
        health.publish(&state).await;
        drop(state);
        health
    }

    /// From now on readiness is NOT_SERVING, whatever the database does.
    pub async fn shutting_down(&self) {
        let mut state = self.state.lock().await;
        state.shutting_down = true;
        self.publish(&state).await;
    }

    /// Checks the database once and reports the outcome.
    pub async fn check_database(&self, pool: &db::Pool, timeout: Duration) {
        let outcome = tokio::time::timeout(timeout, ping(pool))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        let mut state = self.state.lock().await;
        match (&outcome, state.database_up) {
            (Err(e), true) => tracing::warn!(
                error.message = %e,
                "the database does not answer: readiness reports NOT_SERVING"
            ),
            (Ok(()), false) if !state.shutting_down => {
                tracing::info!("the database answers: readiness reports SERVING");
            }
            _ => {}
        }
        state.database_up = outcome.is_ok();
        self.publish(&state).await;
    }

    /// Checks the database every `interval` until the task is dropped.
    pub async fn watch_database(self, pool: db::Pool, interval: Duration, timeout: Duration) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.check_database(&pool, timeout).await;
        }
    }

    async fn publish(&self, state: &State) {
        let status = if state.database_up && !state.shutting_down {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(READINESS, status).await;
        for service in self.followers.iter() {
            self.reporter.set_service_status(*service, status).await;
        }
    }
}

/// One cheap round trip through the pool.
async fn ping(pool: &db::Pool) -> Result<(), String> {
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
