//! Builds the whole server from [`Settings`] and runs it until a shutdown signal: the listener,
//! the pool, the hashing workers, the background tasks (janitor, readiness checks) and the
//! tonic router with health, reflection and gRPC-Web.
//!
//! Shutdown (SIGTERM or Ctrl-C): readiness turns NOT_SERVING at once while the server keeps
//! serving for the drain delay, so load balancers stop routing to it; then it stops accepting
//! connections and lets in-flight calls finish within the grace period.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, Method};
use identity_proto::identity::v1::{
    challenge_service_server::ChallengeServiceServer, key_service_server::KeyServiceServer,
    password_reset_service_server::PasswordResetServiceServer,
    registration_service_server::RegistrationServiceServer,
    session_service_server::SessionServiceServer, user_service_server::UserServiceServer,
};
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    abuse::{self, Door},
    challenge::{self, Challenges},
    clock::Clock,
    db,
    domain::CodeKey,
    grpc::{
        BearerAuth, ChallengeApi, KeyApi, PasswordResetApi, RegistrationApi, SessionApi, UserApi,
    },
    hashing::{HashingConfig, PasswordHasher},
    health::Health,
    janitor::{self, Janitor},
    metrics,
    observe::ObserveLayer,
    password_reset::{self, PasswordReset},
    registration::{self, Registration},
    sessions::{self, Sessions},
    tls::{Tls, TlsSettings},
    tokens::{KeyDirectory, directory},
};

/// The shutdown sequence's two delays. Kubernetes gives a pod 30 s between SIGTERM and SIGKILL
/// by default: keep their sum below the pod's termination grace period.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// How long the server keeps serving, while reporting NOT_SERVING, before it stops
    /// accepting connections.
    pub drain_delay: Duration,
    /// How long in-flight calls then have to finish.
    pub grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(5),
            grace: Duration::from_secs(10),
        }
    }
}

/// How the gRPC port speaks: TLS or plaintext, and how long a connection may live.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// TLS (and mutual TLS) on the gRPC port; `None`: plaintext.
    pub tls: Option<TlsSettings>,
    /// A plaintext port serving only the health service (for probes that cannot speak TLS,
    /// such as Kubernetes' gRPC probes); `None`: health is served on the gRPC port only.
    pub health_addr: Option<SocketAddr>,
    /// After this long a connection is asked to close (HTTP/2 GOAWAY), so that clients
    /// reconnect and spread over new replicas; in-flight calls finish first.
    pub max_connection_age: Option<Duration>,
}

/// Everything the server needs to start.
#[derive(Debug)]
pub struct Settings {
    /// Where to listen; port 0 picks a free port (see [`Application::local_addr`]).
    pub grpc_addr: SocketAddr,
    /// Where to serve Prometheus metrics; `None` serves none.
    pub metrics_addr: Option<SocketAddr>,
    pub database: db::PoolConfig,
    pub hashing: HashingConfig,
    pub code_key: CodeKey,
    pub registration: registration::Settings,
    /// The keys that sign access tokens, reloaded while the server runs.
    pub keys: Arc<KeyDirectory>,
    pub sessions: sessions::Settings,
    pub password_reset: password_reset::Settings,
    /// The proof-of-work challenge: policy, key, difficulty.
    pub challenge: challenge::Settings,
    /// Browser origins allowed to call over gRPC-Web; empty allows none.
    pub cors_allowed_origins: Vec<HeaderValue>,
    pub janitor: janitor::Settings,
    /// Client identity (and whose trace context a call continues) and rate limits ([`abuse`]).
    pub abuse: abuse::Settings,
    /// How often readiness checks the database.
    pub readiness_interval: Duration,
    pub shutdown: Shutdown,
    pub transport: Transport,
}

/// A server bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<Arc<Tls>>,
    /// The plaintext health-only listener, when there is one.
    health_listener: Option<TcpListener>,
    max_connection_age: Option<Duration>,
    registration: Arc<Registration>,
    sessions: Arc<Sessions>,
    password_reset: Arc<PasswordReset>,
    door: Arc<Door>,
    /// Who calls: whose trace context a call continues.
    callers: Arc<abuse::ClientIdentity>,
    challenges: Arc<Challenges>,
    keys: Arc<KeyDirectory>,
    pool: db::Pool,
    clock: Arc<dyn Clock>,
    cors_allowed_origins: Vec<HeaderValue>,
    janitor: Janitor,
    /// Whether a metrics exporter is installed (then the pool is sampled).
    metrics: bool,
    /// Limit of one readiness check.
    database_timeout: Duration,
    readiness_interval: Duration,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the listener and builds the services. Does not touch the database, so the server
    /// starts (and later recovers) whether or not it is reachable.
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let pool = db::pool(&settings.database)?;
        let hasher = PasswordHasher::start(settings.hashing)?;
        let registration = Arc::new(Registration::new(
            pool.clone(),
            hasher.clone(),
            settings.code_key,
            Arc::clone(&clock),
            settings.registration,
        ));
        let password_reset = Arc::new(PasswordReset::new(
            pool.clone(),
            hasher.clone(),
            Arc::clone(&clock),
            settings.password_reset,
        ));
        let sessions = Arc::new(
            Sessions::new(
                pool.clone(),
                hasher,
                Arc::clone(&settings.keys),
                Arc::clone(&clock),
                settings.sessions,
            )
            .await?,
        );
        let challenges = Arc::new(Challenges::new(
            pool.clone(),
            Arc::clone(&clock),
            settings.challenge,
        )?);
        let janitor = Janitor::new(pool.clone(), Arc::clone(&clock), settings.janitor);
        let callers = Arc::new(settings.abuse.identity.clone());
        let door = Arc::new(Door::new(pool.clone(), Arc::clone(&clock), settings.abuse));
        if let Some(addr) = settings.metrics_addr {
            metrics::install(addr)?;
        }
        let tls = settings
            .transport
            .tls
            .map(Tls::load)
            .transpose()?
            .map(Arc::new);
        let listener = TcpListener::bind(settings.grpc_addr).await?;
        let local_addr = listener.local_addr()?;
        let health_listener = match settings.transport.health_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            tls,
            health_listener,
            max_connection_age: settings.transport.max_connection_age,
            registration,
            sessions,
            password_reset,
            door,
            callers,
            challenges,
            keys: settings.keys,
            pool,
            clock,
            cors_allowed_origins: settings.cors_allowed_origins,
            janitor,
            metrics: settings.metrics_addr.is_some(),
            database_timeout: settings.database.timeout,
            readiness_interval: settings.readiness_interval,
            shutdown: settings.shutdown,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING, keeps serving for the
    /// drain delay, and drains in-flight calls within the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter, &readiness_followers()).await;
        // Readiness is known before the server says it listens.
        health
            .check_database(&self.pool, self.database_timeout)
            .await;
        let readiness_checks = tokio::spawn(health.clone().watch_database(
            self.pool.clone(),
            self.readiness_interval,
            self.database_timeout,
        ));
        let janitor = tokio::spawn(self.janitor.run());
        let pool_samples = self
            .metrics
            .then(|| tokio::spawn(metrics::sample_pool(self.pool.clone())));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(identity_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(identity_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let registration = RegistrationServiceServer::new(RegistrationApi::new(
            self.registration,
            Arc::clone(&self.door),
            Arc::clone(&self.challenges),
        ));
        let challenge_service =
            ChallengeServiceServer::new(ChallengeApi::new(Arc::clone(&self.challenges)));
        let token_settings = self.sessions.token_settings().clone();
        let session_service =
            SessionServiceServer::new(SessionApi::new(self.sessions, Arc::clone(&self.door)));
        let password_reset_service = PasswordResetServiceServer::new(PasswordResetApi::new(
            self.password_reset,
            self.door,
            self.challenges,
        ));
        let key_service = KeyServiceServer::new(KeyApi::new(
            Arc::clone(&self.keys),
            Arc::clone(&self.clock),
            token_settings.access_ttl,
        ));
        // Listening for SIGHUP before the server says it listens, so a signal sent from then on
        // reloads the keys instead of ending the process.
        let key_reloads = tokio::spawn(
            Arc::clone(&self.keys).watch(Arc::clone(&self.clock), directory::hangups()),
        );
        let user_service = UserServiceServer::with_interceptor(
            UserApi::new(self.pool),
            BearerAuth::new(
                self.keys,
                self.clock,
                token_settings.issuer,
                token_settings.audience,
            ),
        );

        let health_only = match self.health_listener {
            Some(listener) => {
                tracing::info!(health.addr = %listener.local_addr()?, "health service listening (plaintext)");
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                Some(tokio::spawn(
                    Server::builder()
                        .add_service(health_service.clone())
                        .serve_with_incoming(incoming),
                ))
            }
            None => None,
        };
        tracing::info!(
            grpc.addr = %self.local_addr,
            tls = self.tls.is_some(),
            mutual_tls = self.tls.as_ref().is_some_and(|tls| tls.is_mutual()),
            "identity-server listening"
        );
        let stopping = Arc::new(tokio::sync::Notify::new());
        let Shutdown { drain_delay, grace } = self.shutdown;
        let mut builder = Server::builder();
        if let Some(age) = self.max_connection_age {
            // No max_connection_age_grace: with it, tonic 0.14 skips the graceful GOAWAY and
            // cuts the connection at age + grace (tests/tests/tls.rs saw no GOAWAY).
            builder = builder.max_connection_age(age);
        }
        let router = builder
            // gRPC-Web arrives over HTTP/1.1 as well as HTTP/2.
            .accept_http1(true)
            // A span per call (continuing a trusted caller's trace) and its duration.
            .layer(ObserveLayer {
                metrics: self.metrics,
                callers: self.callers,
            })
            .layer(cors(self.cors_allowed_origins))
            .layer(tonic_web::GrpcWebLayer::new())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(registration)
            .add_service(session_service)
            .add_service(key_service)
            .add_service(user_service)
            .add_service(password_reset_service)
            .add_service(challenge_service);
        let signal = {
            let stopping = Arc::clone(&stopping);
            async move {
                shutdown.await;
                tracing::info!(
                    ?drain_delay,
                    "shutting down: reporting NOT_SERVING, still serving during the drain delay"
                );
                health.shutting_down().await;
                tokio::time::sleep(drain_delay).await;
                tracing::info!(
                    ?grace,
                    "drain delay over: no longer accepting connections, draining in-flight calls"
                );
                stopping.notify_one();
            }
        };
        let mut tls_reloads = None;
        let serve: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match self.tls {
            Some(tls) => {
                tls_reloads = Some(tokio::spawn(Arc::clone(&tls).watch()));
                Box::pin(router.serve_with_incoming_shutdown(tls.incoming(self.listener), signal))
            }
            None => {
                let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
        };
        // Draining waits for clients to close their connections; a client that never does
        // must not keep the process alive past the grace period.
        let grace_elapsed = async {
            stopping.notified().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            served = serve => served,
            () = grace_elapsed => {
                tracing::warn!(?grace, "connections still open after the grace period; closing them");
                Ok(())
            }
        };
        // Stopping them mid-way is safe: a readiness check only reads, and each janitor batch
        // is one statement that commits or rolls back.
        readiness_checks.abort();
        janitor.abort();
        if let Some(samples) = pool_samples {
            samples.abort();
        }
        key_reloads.abort();
        if let Some(task) = tls_reloads {
            task.abort();
        }
        if let Some(task) = health_only {
            task.abort();
        }
        served?;
        tracing::info!("identity-server stopped");
        Ok(())
    }
}

/// The whole server ("") and each API service: they report what readiness reports.
fn readiness_followers() -> [&'static str; 7] {
    use tonic::server::NamedService;
    [
        "",
        <RegistrationServiceServer<RegistrationApi> as NamedService>::NAME,
        <SessionServiceServer<SessionApi> as NamedService>::NAME,
        <KeyServiceServer<KeyApi> as NamedService>::NAME,
        <UserServiceServer<UserApi> as NamedService>::NAME,
        <PasswordResetServiceServer<PasswordResetApi> as NamedService>::NAME,
        <ChallengeServiceServer<ChallengeApi> as NamedService>::NAME,
    ]
}

/// CORS for gRPC-Web callers in browsers; tonic-web does not answer preflight requests itself.
fn cors(allowed_origins: Vec<HeaderValue>) -> CorsLayer {
    const REQUEST_HEADERS: [&str; 6] = [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
        "grpc-accept-encoding",
    ];
    const RESPONSE_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed_origins))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(REQUEST_HEADERS.map(HeaderName::from_static))
        .expose_headers(RESPONSE_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 60 * 60))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (Kubernetes stopping the pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error.message = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error.message = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
