//! `identity-server` as a user runs it: `migrate` on a new empty database, then `serve` on a
//! free port, with its output captured.

use std::{net::IpAddr, time::Duration};

use diesel::{QueryableByName, sql_types::Jsonb};
use diesel_async::RunQueryDsl;
use identity_proto::{
    identity::v1::{RegisterRequest, registration_service_client::RegistrationServiceClient},
    outbox::EmailVerificationV1,
};
use tonic::transport::Channel;

use crate::{
    pg::TestDb,
    process::{self, Process},
};

/// A valid password that no policy objects to; every test sign-up uses it.
pub const PASSWORD: &str = "tangerine-kettle-orbit-42";

/// A sign-up of `email` with valid other fields.
pub fn register_request(email: &str) -> RegisterRequest {
    RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
        display_name: "Ada Lovelace".into(),
        locale: "en-GB".into(),
        ..Default::default()
    }
}

/// A directory holding one signing key made by `identity-server keygen`, named after `db`.
pub fn keygen_for(db: &TestDb) -> std::path::PathBuf {
    let keys_dir = std::env::temp_dir().join(format!("identity-keys-{}", db.name));
    let keygen = process::run(
        "identity-server",
        &["keygen"],
        &[("IDENTITY_KEYS_DIR", &keys_dir.display().to_string())],
    );
    assert!(keygen.status.success(), "keygen failed: {keygen:?}");
    keys_dir
}

/// The code MAC key every test server uses.
pub const CODE_KEY: &str = "e2e-code-key-0123456789abcdef0123456789";

/// The challenge key every test server uses (with the default adaptive policy, which requires
/// a key), so a test can mint challenges of its own, expired ones for instance.
pub const CHALLENGE_KEY: &str = "e2e-challenge-key-0123456789abcdef01234";

/// A running `identity-server serve`, its database and where it listens.
#[derive(Debug)]
pub struct Server {
    pub process: Process,
    pub addr: String,
    pub db: TestDb,
    /// The signing keys, made with `identity-server keygen`.
    pub keys_dir: std::path::PathBuf,
}

/// `identity-server serve` on port 0 with the test keys, plus `extra_env`; returns it once it
/// listens, with its address.
async fn serve(
    database_url: &str,
    keys_dir: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> (Process, String) {
    let keys = keys_dir.display().to_string();
    let mut env = vec![
        ("DATABASE_URL", database_url),
        ("IDENTITY_GRPC_ADDR", "127.0.0.1:0"),
        ("IDENTITY_CODE_HMAC_KEY", CODE_KEY),
        ("IDENTITY_CHALLENGE_HMAC_KEY", CHALLENGE_KEY),
        ("IDENTITY_KEYS_DIR", keys.as_str()),
    ];
    env.extend_from_slice(extra_env);
    let mut process = Process::spawn("identity-server", &["serve"], &env);
    let line = process
        .wait_for_line("identity-server listening", Duration::from_secs(30))
        .await;
    let addr = process::field(&line, "grpc.addr")
        .unwrap_or_else(|| panic!("no grpc.addr in {line:?}"))
        .to_owned();
    (process, addr)
}

/// A second `identity-server serve` on a [`Server`]'s database (see [`Server::replica`]).
#[derive(Debug)]
pub struct Replica {
    pub process: Process,
    pub addr: String,
}

impl Replica {
    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        channel_from(&self.addr, None).await
    }

    /// A channel whose socket is bound to `source`.
    pub async fn channel_from(&self, source: IpAddr) -> Channel {
        channel_from(&self.addr, Some(source)).await
    }
}

impl Server {
    /// Migrates a new empty database with `identity-server migrate`, then serves on port 0.
    pub async fn start(extra_env: &[(&str, &str)]) -> Self {
        Self::start_on(TestDb::create_empty().await, extra_env).await
    }

    /// Migrates `db` with `identity-server migrate`, then serves on port 0.
    pub async fn start_on(db: TestDb, extra_env: &[(&str, &str)]) -> Self {
        let migrate = process::run(
            "identity-server",
            &["migrate"],
            &[("DATABASE_URL", &db.url)],
        );
        assert!(migrate.status.success(), "migrate failed: {migrate:?}");
        Self::serve_as_is(db, extra_env).await
    }

    /// Serves `db` on port 0 as it is, without migrating it (for a test that prepared its
    /// schema itself).
    pub async fn serve_as_is(db: TestDb, extra_env: &[(&str, &str)]) -> Self {
        let keys_dir = keygen_for(&db);
        let (process, addr) = serve(&db.url, &keys_dir, extra_env).await;
        Self {
            process,
            addr,
            db,
            keys_dir,
        }
    }

    /// Migrates `db` directly with `identity-server migrate`, then serves on port 0 with
    /// `database_url` as its `DATABASE_URL` (the same database reached another way, e.g.
    /// through a connection pooler).
    pub async fn start_through(db: TestDb, database_url: &str, extra_env: &[(&str, &str)]) -> Self {
        let migrate = process::run(
            "identity-server",
            &["migrate"],
            &[("DATABASE_URL", &db.url)],
        );
        assert!(migrate.status.success(), "migrate failed: {migrate:?}");
        let keys_dir = keygen_for(&db);
        let (process, addr) = serve(database_url, &keys_dir, extra_env).await;
        Self {
            process,
            addr,
            db,
            keys_dir,
        }
    }

    /// Another `identity-server serve` on the same database and signing keys (a second
    /// replica), with the base environment plus `extra_env`.
    pub async fn replica(&self, extra_env: &[(&str, &str)]) -> Replica {
        let (process, addr) = serve(&self.db.url, &self.keys_dir, extra_env).await;
        Replica { process, addr }
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        channel_from(&self.addr, None).await
    }

    /// A channel whose socket is bound to `source` (e.g. 127.0.0.2), so the server sees the calls
    /// come from that address: distinct loopback addresses are distinct clients.
    pub async fn channel_from(&self, source: IpAddr) -> Channel {
        channel_from(&self.addr, Some(source)).await
    }

    /// A RegistrationService client.
    pub async fn registration(&self) -> RegistrationServiceClient<Channel> {
        RegistrationServiceClient::new(self.channel().await)
    }

    /// Registers `email` with valid other fields.
    pub async fn register(&self, email: &str) {
        self.registration()
            .await
            .register(register_request(email))
            .await
            .unwrap_or_else(|e| panic!("registering {email} failed: {e:?}"));
    }

    /// Registers `email` and verifies it with the link's token from the email `smtp` received
    /// (a relay must be delivering to it); returns the user id.
    pub async fn register_and_verify(&self, smtp: &crate::smtp::SmtpServer, email: &str) -> String {
        let mut registration = self.registration().await;
        let user_id = registration
            .register(register_request(email))
            .await
            .unwrap_or_else(|e| panic!("registering {email} failed: {e:?}"))
            .into_inner()
            .user_id;
        let mail = smtp
            .wait_for_message_to(email, std::time::Duration::from_secs(60))
            .await;
        let token = crate::smtp::token_after(
            &crate::smtp::text_part(&mail.data),
            "https://app.example.com/verify?token=",
        );
        verify_with_token(&mut registration, email, token).await;
        user_id
    }

    /// Registers `email` and verifies it with the token of its email in the outbox (no relay
    /// may be draining it), so it has an active account with [`PASSWORD`].
    pub async fn activate(&self, email: &str) {
        let mut registration = self.registration().await;
        registration
            .register(register_request(email))
            .await
            .unwrap_or_else(|e| panic!("registering {email} failed: {e:?}"));
        let token = self.emails_to(email).await[0].token.clone();
        verify_with_token(&mut registration, email, token).await;
    }

    /// The verification emails still in the outbox for `recipient`, oldest first.
    pub async fn emails_to(&self, recipient: &str) -> Vec<EmailVerificationV1> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Jsonb)]
            payload: serde_json::Value,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT payload FROM outbox WHERE payload->>'recipient' = $1 ORDER BY id",
        )
        .bind::<diesel::sql_types::Text, _>(recipient)
        .load(&mut self.db.connect().await)
        .await
        .expect("outbox is readable");
        rows.into_iter()
            .map(|row| serde_json::from_value(row.payload).expect("payload parses"))
            .collect()
    }
}

/// Verifies `email`'s registration with the link's `token` and [`PASSWORD`].
async fn verify_with_token(
    registration: &mut RegistrationServiceClient<Channel>,
    email: &str,
    token: String,
) {
    registration
        .verify_email(identity_proto::identity::v1::VerifyEmailRequest {
            proof: Some(identity_proto::identity::v1::verify_email_request::Proof::Token(token)),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("verifying {email} failed: {e:?}"));
}

/// A channel to `addr`, its socket bound to `source` if given.
pub async fn channel_from(addr: &str, source: Option<IpAddr>) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid URI")
        .local_address(source)
        .connect()
        .await
        .expect("the server accepts connections")
}

/// The `google.rpc.ErrorInfo` reason of an error status, or "" without one.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}
