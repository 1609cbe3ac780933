//! An in-process server on a fresh database with a clock the test controls, and helpers to read
//! what it wrote.

#![allow(dead_code)] // Each test binary uses its own subset.

pub mod calls;

use std::{sync::Arc, time::Duration};

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use identity_proto::{
    identity::v1::{self as pb, registration_service_client::RegistrationServiceClient},
    outbox::EmailVerificationV1,
};
use identity_server::{
    clock::ManualClock,
    db::{self, schema},
    domain::CodeKey,
    hashing::HashingConfig,
    registration, sessions,
    startup::{Application, Settings},
    tokens::{KeyDirectory, KeyRing},
};
use identity_tests::pg::TestDb;
use secrecy::SecretString;
use tokio::sync::oneshot;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

/// A valid password that no policy objects to.
pub const PASSWORD: &str = "tangerine-kettle-orbit-42";

/// Turns the rate limits off, for a test that makes many calls from one client (127.0.0.1)
/// about something else; `door.rs` tests the limits.
pub fn without_rate_limits(settings: &mut Settings) {
    settings.abuse.limits = None;
}

/// A server running in this process.
pub struct TestApp {
    pub db: TestDb,
    pub clock: ManualClock,
    pub client: RegistrationServiceClient<Channel>,
    /// A channel to the server, for the other services' clients.
    pub channel: Channel,
    /// The directory of signing keys the server loaded.
    pub keys_dir: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
}

impl TestApp {
    /// A server with default settings on a fresh database.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose settings `customize` adjusts, on a fresh database.
    pub async fn spawn_with(customize: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_on(TestDb::create().await, customize).await
    }

    /// A server on the given database.
    pub async fn spawn_on(db: TestDb, customize: impl FnOnce(&mut Settings)) -> Self {
        let clock = ManualClock::new(time::OffsetDateTime::now_utc());
        let keys_dir =
            std::env::temp_dir().join(format!("identity-keys-{}", uuid::Uuid::new_v4().simple()));
        KeyRing::generate(&keys_dir, identity_server::clock::Clock::now(&clock))
            .expect("a key is generated");
        let keys = KeyDirectory::open(
            &keys_dir,
            identity_server::tokens::Rotation::default(),
            identity_server::clock::Clock::now(&clock),
        )
        .expect("the key loads");
        let mut settings = Settings {
            grpc_addr: "127.0.0.1:0".parse().expect("valid address"),
            metrics_addr: None,
            database: db::PoolConfig {
                url: SecretString::from(db.url.clone()),
                max_size: 8,
                timeout: Duration::from_secs(1),
                session: identity_proto::pg::SessionTimeouts::default(),
            },
            hashing: HashingConfig {
                params: argon2::Params::DEFAULT,
                workers: 2,
                queue: 64,
            },
            code_key: CodeKey::new(vec![42; 32]).expect("long enough"),
            registration: registration::Settings::default(),
            keys: std::sync::Arc::new(keys),
            sessions: sessions::Settings::default(),
            password_reset: identity_server::password_reset::Settings::default(),
            challenge: identity_server::challenge::Settings::off(),
            cors_allowed_origins: Vec::new(),
            janitor: identity_server::janitor::Settings::default(),
            abuse: identity_server::abuse::Settings::default(),
            readiness_interval: Duration::from_secs(5),
            transport: identity_server::startup::Transport::default(),
            shutdown: identity_server::startup::Shutdown {
                drain_delay: Duration::ZERO,
                grace: Duration::from_secs(10),
            },
        };
        customize(&mut settings);
        let app = Application::build(settings, Arc::new(clock.clone()))
            .await
            .expect("server builds");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("valid URI")
            .connect()
            .await
            .expect("server accepts connections");
        Self {
            db,
            clock,
            client: RegistrationServiceClient::new(channel.clone()),
            channel,
            keys_dir,
            stop: Some(stop),
        }
    }

    /// Registers `email` with valid other fields.
    pub async fn register(&self, email: &str) -> Result<pb::RegisterResponse, Status> {
        self.client
            .clone()
            .register(register_request(email))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn verify_token(&self, token: &str) -> Result<pb::VerifyEmailResponse, Status> {
        self.verify(pb::verify_email_request::Proof::Token(token.into()))
            .await
    }

    pub async fn verify_code(
        &self,
        email: &str,
        code: &str,
    ) -> Result<pb::VerifyEmailResponse, Status> {
        self.verify(pb::verify_email_request::Proof::EmailCode(pb::EmailCode {
            email: email.into(),
            code: code.into(),
        }))
        .await
    }

    pub async fn verify(
        &self,
        proof: pb::verify_email_request::Proof,
    ) -> Result<pb::VerifyEmailResponse, Status> {
        self.client
            .clone()
            .verify_email(pb::VerifyEmailRequest {
                proof: Some(proof),
                password: PASSWORD.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn resend(&self, email: &str) -> Result<(), Status> {
        self.client
            .clone()
            .resend_verification_email(pb::ResendVerificationEmailRequest {
                email: email.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// What the server's clock shows.
    pub fn now(&self) -> time::OffsetDateTime {
        use identity_server::clock::Clock;
        self.clock.now()
    }

    pub async fn conn(&self) -> AsyncPgConnection {
        self.db.connect().await
    }

    /// Every verification email queued for `recipient`, oldest first.
    pub async fn emails_to(&self, recipient: &str) -> Vec<EmailVerificationV1> {
        use schema::outbox::dsl as o;
        let payloads: Vec<serde_json::Value> = o::outbox
            .filter(o::kind.eq(EmailVerificationV1::KIND))
            .order(o::id.asc())
            .select(o::payload)
            .load(&mut self.conn().await)
            .await
            .expect("outbox is readable");
        payloads
            .into_iter()
            .map(|p| serde_json::from_value::<EmailVerificationV1>(p).expect("payload parses"))
            .filter(|p| p.recipient.eq_ignore_ascii_case(recipient))
            .collect()
    }

    /// The only verification email queued for `recipient`.
    pub async fn email_to(&self, recipient: &str) -> EmailVerificationV1 {
        let mut emails = self.emails_to(recipient).await;
        assert_eq!(emails.len(), 1, "expected one email to {recipient}");
        emails.remove(0)
    }

    pub async fn count_users(&self) -> i64 {
        schema::users::table
            .count()
            .get_result(&mut self.conn().await)
            .await
            .expect("users is readable")
    }

    pub async fn count_outbox(&self) -> i64 {
        schema::outbox::table
            .count()
            .get_result(&mut self.conn().await)
            .await
            .expect("outbox is readable")
    }

    /// The stored status of the user with this address.
    pub async fn status_of(&self, email: &str) -> String {
        use schema::users::dsl as u;
        u::users
            .filter(u::email.eq(email))
            .select(u::status)
            .first(&mut self.conn().await)
            .await
            .expect("the user exists")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn register_request(email: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        display_name: "Ada Lovelace".into(),
        locale: "en".into(),
        ..Default::default()
    }
}

/// Asserts `status` has `code` and an ErrorInfo with `reason` in the identity.v1 domain.
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason);
    assert_eq!(info.domain, "identity.v1");
}

/// The fields named by the BadRequest violations of an INVALID_ARGUMENT status.
#[track_caller]
pub fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "unexpected status: {status:?}"
    );
    let bad_request = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    bad_request
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// A sign-up of `email` with `password` and valid other fields.
pub fn register_request_with(email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        password: password.into(),
        ..register_request(email)
    }
}

impl TestApp {
    /// Registers `email` with `password`.
    pub async fn register_with(
        &self,
        email: &str,
        password: &str,
    ) -> Result<pb::RegisterResponse, Status> {
        self.client
            .clone()
            .register(register_request_with(email, password))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The payloads of every outbox message of `kind` addressed to `recipient` (any letter
    /// case), oldest first.
    pub async fn queued_to(&self, kind: &str, recipient: &str) -> Vec<serde_json::Value> {
        use schema::outbox::dsl as o;
        let payloads: Vec<serde_json::Value> = o::outbox
            .filter(o::kind.eq(kind))
            .order(o::id.asc())
            .select(o::payload)
            .load(&mut self.conn().await)
            .await
            .expect("outbox is readable");
        payloads
            .into_iter()
            .filter(|p| {
                p["recipient"]
                    .as_str()
                    .is_some_and(|r| r.eq_ignore_ascii_case(recipient))
            })
            .collect()
    }

    /// Every outbox message addressed to `recipient`, whatever its kind.
    pub async fn count_outbox_to(&self, recipient: &str) -> usize {
        use schema::outbox::dsl as o;
        let payloads: Vec<serde_json::Value> = o::outbox
            .select(o::payload)
            .load(&mut self.conn().await)
            .await
            .expect("outbox is readable");
        payloads
            .iter()
            .filter(|p| {
                p["recipient"]
                    .as_str()
                    .is_some_and(|r| r.eq_ignore_ascii_case(recipient))
            })
            .count()
    }

    /// The users rows of `email` (any letter case): (id, status), by id.
    pub async fn rows_of(&self, email: &str) -> Vec<(uuid::Uuid, String)> {
        use schema::users::dsl as u;
        let rows: Vec<(uuid::Uuid, String, String)> = u::users
            .order(u::id.asc())
            .select((u::id, u::email, u::status))
            .load(&mut self.conn().await)
            .await
            .expect("users is readable");
        rows.into_iter()
            .filter(|(_, e, _)| e.eq_ignore_ascii_case(email))
            .map(|(id, _, status)| (id, status))
            .collect()
    }
}
