//! Secrets as files: every secret setting of both binaries (`DATABASE_URL`, the MAC keys,
//! `SMTP_URL`, `NATS_URL`, `NATS_TOKEN`, `RELAY_LISTEN_DATABASE_URL`) also has a `…_FILE` form naming a file that holds it,
//! as a mounted Kubernetes Secret does. The built binaries are run as a user would run them,
//! with nothing in their environment but what each test gives them.

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::future::join_all;
use identity_proto::{
    identity::events::v1::{UserRegistered, UserVerified},
    identity::v1::{
        self as pb, CreateChallengeRequest, challenge_service_client::ChallengeServiceClient,
        registration_service_client::RegistrationServiceClient,
    },
    outbox::DomainEvent,
};
use identity_tests::{
    altcha,
    nats::{NatsServer, STREAM},
    pg::TestDb,
    process::{self, Process},
    server::{self, CHALLENGE_KEY, CODE_KEY, Server, keygen_for, register_request},
    smtp::{SmtpServer, text_part, token_after},
};
use support::TestCa;

const WAIT: Duration = Duration::from_secs(60);
/// How long a binary given a wrong secret setting has to refuse it (it does so before
/// connecting to anything).
const REFUSAL_WAIT: Duration = Duration::from_secs(20);
const VERIFY_LINK: &str = "https://app.example.com/verify?token=";

/// The secret settings of each binary.
const SERVER_SECRETS: [&str; 3] = [
    "DATABASE_URL",
    "IDENTITY_CODE_HMAC_KEY",
    "IDENTITY_CHALLENGE_HMAC_KEY",
];
const RELAY_SECRETS: [&str; 5] = [
    "DATABASE_URL",
    "SMTP_URL",
    "NATS_URL",
    "NATS_TOKEN",
    "RELAY_LISTEN_DATABASE_URL",
];

/// A folder of secret files, as a Secret volume holds them; removed when dropped.
struct SecretDir(PathBuf);

impl SecretDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "identity-secrets-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    /// Writes `contents` to the file `name` and returns its path as text.
    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("the secret file is written");
        path.to_str().expect("a UTF-8 path").to_owned()
    }

    /// Writes `value` as `echo value > file` would: with a newline after it.
    fn echo(&self, name: &str, value: &str) -> String {
        self.write(name, &format!("{value}\n"))
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `identity-server serve` on port 0 with its secrets only as files (written by `echo`), on
/// `db_url` with the keys in `keys_dir`, plus `extra` settings; returns it once it listens.
async fn serve_with_files(
    secrets: &SecretDir,
    db_url: &str,
    keys_dir: &Path,
    extra: &[(&str, &str)],
) -> (Process, String) {
    let database = secrets.echo("server-database-url", db_url);
    let code_key = secrets.echo("code-hmac-key", CODE_KEY);
    let challenge_key = secrets.echo("challenge-hmac-key", CHALLENGE_KEY);
    let keys = keys_dir.display().to_string();
    let mut env = vec![
        ("DATABASE_URL_FILE", database.as_str()),
        ("IDENTITY_CODE_HMAC_KEY_FILE", code_key.as_str()),
        ("IDENTITY_CHALLENGE_HMAC_KEY_FILE", challenge_key.as_str()),
        ("IDENTITY_GRPC_ADDR", "127.0.0.1:0"),
        ("IDENTITY_KEYS_DIR", keys.as_str()),
    ];
    env.extend_from_slice(extra);
    let mut process = Process::spawn_only("identity-server", &["serve"], &env);
    let line = process
        .wait_for_line("identity-server listening", WAIT)
        .await;
    let addr = process::field(&line, "grpc.addr")
        .unwrap_or_else(|| panic!("no grpc.addr in {line:?}"))
        .to_owned();
    (process, addr)
}

/// The environment the kernel shows for `process` (`/proc/<pid>/environ`), as text.
fn proc_environ(process: &Process) -> String {
    let raw = std::fs::read(format!("/proc/{}/environ", process.id()))
        .expect("/proc/<pid>/environ of our own child is readable");
    String::from_utf8_lossy(&raw).replace('\0', "\n")
}

#[tokio::test]
async fn a_server_and_a_relay_given_only_secret_files_sign_a_user_up_end_to_end() {
    let secrets = SecretDir::new();
    let ca = TestCa::new();
    let smtp = SmtpServer::start_tls(&ca.identity);
    smtp.require_auth("relay", "smtp-secret-password");
    let nats = NatsServer::start_with_token("nats-secret-token").await;
    let db = TestDb::create_empty().await;

    // migrate, then serve, with DATABASE_URL only in a file.
    let database = secrets.echo("migrator-database-url", &db.url);
    let migrate = process::run_until_exit(
        "identity-server",
        &["migrate"],
        &[("DATABASE_URL_FILE", &database)],
        WAIT,
    )
    .await
    .expect("migrate exits");
    assert!(migrate.status.success(), "migrate failed: {migrate:?}");
    let keys_dir = keygen_for(&db);
    // Everything at debug, for the check at the end that no secret is logged.
    let (server, addr) = serve_with_files(
        &secrets,
        &db.url,
        &keys_dir,
        &[("IDENTITY_DOMAIN_EVENTS", "true"), ("RUST_LOG", "debug")],
    )
    .await;

    // The relay: the database, SMTP (with credentials, over TLS) and NATS (with a token), each
    // only in a file.
    let relay_env = [
        (
            "DATABASE_URL_FILE",
            secrets.echo("relay-database-url", &db.url),
        ),
        (
            "SMTP_URL_FILE",
            secrets.echo(
                "smtp-url",
                &smtp.url_with_credentials("relay", "smtp-secret-password"),
            ),
        ),
        ("NATS_URL_FILE", secrets.echo("nats-url", &nats.url())),
        (
            "NATS_TOKEN_FILE",
            secrets.echo("nats-token", "nats-secret-token"),
        ),
        ("RELAY_SMTP_CA_FILE", ca.ca_file().display().to_string()),
        (
            "EMAIL_FROM",
            "Identity <no-reply@identity.example.com>".to_owned(),
        ),
        ("VERIFY_URL_TEMPLATE", format!("{VERIFY_LINK}{{token}}")),
        (
            "RESET_URL_TEMPLATE",
            "https://app.example.com/reset?token={token}".to_owned(),
        ),
        ("RELAY_POLL_INTERVAL_MS", "500".to_owned()),
        ("RELAY_HEALTH_ADDR", "127.0.0.1:0".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ];
    let relay_env: Vec<(&str, &str)> = relay_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut relay = Process::spawn_only("outbox-relay", &["serve"], &relay_env);
    relay.wait_for_line("outbox-relay started", WAIT).await;

    // A sign-up: the email reaches the SMTP server, sent with the credentials from the file.
    let email = "files@example.com";
    let mut registration = RegistrationServiceClient::new(server::channel_from(&addr, None).await);
    let user_id = registration
        .register(register_request(email))
        .await
        .expect("registers")
        .into_inner()
        .user_id;
    let mail = smtp.wait_for_message_to(email, WAIT).await;
    assert_eq!(mail.authenticated_as.as_deref(), Some("relay"));
    let token = token_after(&text_part(&mail.data), VERIFY_LINK);
    let verified = registration
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(token)),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("the link from the email verifies")
        .into_inner();
    assert_eq!(verified.user_id, user_id);
    assert_eq!(verified.status(), pb::UserStatus::Active);

    // Its events reach NATS, which accepted the relay's token from the file.
    let published = nats.read_all(STREAM, 2, WAIT).await;
    let types: Vec<&str> = published.iter().map(|m| m.header("ce-type")).collect();
    assert_eq!(types, [UserRegistered::TYPE, UserVerified::TYPE]);
    assert!(published.iter().all(|m| m.header("ce-subject") == user_id));

    // Nothing secret in the relay's environment, nor in either log.
    let environ = proc_environ(&relay);
    let logs = server.output() + &relay.output();
    assert!(logs.contains("DEBUG"), "the log is at debug:\n{logs}");
    for secret in ["smtp-secret-password", "nats-secret-token", db.url.as_str()] {
        assert!(
            !environ.contains(secret),
            "{secret} is in the relay's environment"
        );
    }
    for secret in [
        "smtp-secret-password",
        "nats-secret-token",
        CODE_KEY,
        CHALLENGE_KEY,
    ] {
        assert!(!logs.contains(secret), "{secret} was logged");
    }
}

#[tokio::test]
async fn key_files_written_by_echo_hold_the_same_keys_as_the_variables() {
    // A server given its keys as variables, and one given the same keys as files, each with the
    // newline `echo` leaves after it, on one database.
    let by_variables = Server::start(&[]).await;
    let secrets = SecretDir::new();
    let (_by_files, addr) =
        serve_with_files(&secrets, &by_variables.db.url, &by_variables.keys_dir, &[]).await;
    let channel = server::channel_from(&addr, None).await;

    // A code issued by the file-keyed server verifies on the variable-keyed one: one code MAC
    // key, without the newline.
    let email = "echo@example.com";
    RegistrationServiceClient::new(channel.clone())
        .register(register_request(email))
        .await
        .expect("registers");
    let code = by_variables.emails_to(email).await[0].code.clone();
    let verified = by_variables
        .registration()
        .await
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::EmailCode(pb::EmailCode {
                email: email.into(),
                code,
            })),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .expect("the code verifies on the other server")
        .into_inner();
    assert_eq!(verified.status(), pb::UserStatus::Active);

    // Its challenges are signed with the challenge key, without the newline.
    let challenge = ChallengeServiceClient::new(channel)
        .create_challenge(CreateChallengeRequest {})
        .await
        .expect("a challenge")
        .into_inner();
    assert_eq!(
        challenge.signature,
        altcha::signature(CHALLENGE_KEY, &challenge.challenge)
    );
}

#[tokio::test]
async fn secrets_given_as_files_stay_out_of_the_process_environment() {
    let by_variables = Server::start(&[]).await;
    let secrets = SecretDir::new();
    let (by_files, _) =
        serve_with_files(&secrets, &by_variables.db.url, &by_variables.keys_dir, &[]).await;

    // Given as variables, the keys are there for anyone who may read the process's memory.
    let exposed = proc_environ(&by_variables.process);
    assert!(exposed.contains(CODE_KEY) && exposed.contains(CHALLENGE_KEY));

    // Given as files, only the files' paths are.
    let environ = proc_environ(&by_files);
    assert!(
        environ.contains("IDENTITY_CODE_HMAC_KEY_FILE="),
        "{environ}"
    );
    for secret in [CODE_KEY, CHALLENGE_KEY, by_variables.db.url.as_str()] {
        assert!(
            !environ.contains(secret),
            "{secret} is in the environment:\n{environ}"
        );
    }
}

/// What a binary needs besides its secrets to start, and each secret as a variable: a migrated
/// database, signing keys, SMTP and NATS addresses (nothing needs to answer: a binary given a
/// wrong secret setting refuses before connecting).
struct Setup {
    db: TestDb,
    keys_dir: PathBuf,
    files: SecretDir,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDb::create().await;
        let keys_dir = keygen_for(&db);
        Self {
            db,
            keys_dir,
            files: SecretDir::new(),
        }
    }

    /// A whole configuration of `binary`, every secret given as a variable.
    fn env(&self, binary: &str) -> Vec<(String, String)> {
        let mut env = vec![("DATABASE_URL", self.db.url.clone())];
        if binary == "identity-server" {
            env.extend([
                ("IDENTITY_CODE_HMAC_KEY", CODE_KEY.to_owned()),
                ("IDENTITY_CHALLENGE_HMAC_KEY", CHALLENGE_KEY.to_owned()),
                ("IDENTITY_GRPC_ADDR", "127.0.0.1:0".to_owned()),
                ("IDENTITY_KEYS_DIR", self.keys_dir.display().to_string()),
            ]);
        } else {
            env.extend([
                ("SMTP_URL", "smtp://127.0.0.1:1".to_owned()),
                ("NATS_URL", "nats://127.0.0.1:1".to_owned()),
                ("NATS_TOKEN", "nats-secret-token".to_owned()),
                ("RELAY_LISTEN_DATABASE_URL", self.db.url.clone()),
                ("RELAY_HEALTH_ADDR", "127.0.0.1:0".to_owned()),
                (
                    "EMAIL_FROM",
                    "Identity <no-reply@identity.example.com>".to_owned(),
                ),
                (
                    "VERIFY_URL_TEMPLATE",
                    "https://app.example.com/verify?token={token}".to_owned(),
                ),
                (
                    "RESET_URL_TEMPLATE",
                    "https://app.example.com/reset?token={token}".to_owned(),
                ),
            ]);
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// The value `env` gives `name`.
    fn value(&self, binary: &str, name: &str) -> String {
        let env = self.env(binary);
        let value = env.iter().find(|(key, _)| key == name);
        value.map(|(_, v)| v.clone()).unwrap_or_default()
    }
}

/// Every secret setting of both binaries, with the binary's name.
fn every_secret() -> impl Iterator<Item = (&'static str, &'static str)> {
    let server = SERVER_SECRETS.map(|name| ("identity-server", name));
    let relay = RELAY_SECRETS.map(|name| ("outbox-relay", name));
    server.into_iter().chain(relay)
}

/// Runs `binary serve` with `env` and returns what it printed; panics unless it exits with a
/// failure within [`REFUSAL_WAIT`].
async fn refusal(case: String, binary: &str, env: Vec<(String, String)>) -> (String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let output = process::run_until_exit(binary, &["serve"], &env, REFUSAL_WAIT)
        .await
        .unwrap_or_else(|| {
            panic!("{case}: {binary} was still running after {REFUSAL_WAIT:?}: it refused nothing")
        });
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "{case}: {binary} succeeded:\n{printed}"
    );
    (case, printed)
}

/// `binary`'s whole configuration with `name` given as `name_FILE=path` instead.
fn with_file(setup: &Setup, binary: &str, name: &str, path: &str) -> Vec<(String, String)> {
    let mut env = setup.env(binary);
    env.retain(|(key, _)| key != name);
    env.push((format!("{name}_FILE"), path.to_owned()));
    env
}

#[tokio::test]
async fn a_secret_given_both_as_a_variable_and_as_a_file_is_refused_naming_both() {
    let setup = Setup::new().await;
    let runs = every_secret().map(|(binary, name)| {
        // The same value both ways: still refused, since which one wins would be a guess.
        let path = setup
            .files
            .echo(&format!("{binary}-{name}"), &setup.value(binary, name));
        let mut env = setup.env(binary);
        env.push((format!("{name}_FILE"), path));
        refusal(format!("{binary} {name}"), binary, env)
    });

    for (case, printed) in join_all(runs).await {
        let name = case.split(' ').nth(1).unwrap_or_default();
        assert!(
            printed.contains(&format!("{name} and {name}_FILE")),
            "{case}: the error names both variables:\n{printed}"
        );
    }
}

#[tokio::test]
async fn an_unreadable_secret_file_is_refused_naming_the_variable_and_the_path() {
    let setup = Setup::new().await;
    let missing = setup.files.0.join("no-such-file").display().to_string();
    let directory = setup.files.0.display().to_string();
    let runs = every_secret().flat_map(|(binary, name)| {
        [&missing, &directory].map(|path| {
            let env = with_file(&setup, binary, name, path);
            refusal(format!("{binary} {name} {path}"), binary, env)
        })
    });

    for (case, printed) in join_all(runs).await {
        let mut words = case.split(' ').skip(1);
        let (name, path) = (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        );
        assert!(
            printed.contains(&format!("{name}_FILE")) && printed.contains(path),
            "{case}: the error names the variable and the path:\n{printed}"
        );
        assert!(printed.contains("cannot read"), "{case}:\n{printed}");
    }
}

#[tokio::test]
async fn an_empty_secret_file_is_refused_naming_the_variable() {
    let setup = Setup::new().await;
    let empty = setup.files.write("empty", "");
    let newline_only = setup.files.write("newline-only", "\n");
    let runs = every_secret().flat_map(|(binary, name)| {
        [&empty, &newline_only].map(|path| {
            let env = with_file(&setup, binary, name, path);
            refusal(format!("{binary} {name} {path}"), binary, env)
        })
    });

    for (case, printed) in join_all(runs).await {
        let mut words = case.split(' ').skip(1);
        let (name, path) = (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        );
        assert!(
            printed.contains(&format!("{name}_FILE")) && printed.contains(path),
            "{case}: the error names the variable and the path:\n{printed}"
        );
        assert!(printed.contains("is empty"), "{case}:\n{printed}");
    }
}
