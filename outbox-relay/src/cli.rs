//! The command line: `outbox-relay serve`. Every option can also come from the environment
//! variable named in `--help`.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use lettre::message::Mailbox;
use secrecy::SecretString;

use crate::{
    backoff::RetryPolicy,
    email::{LinkTemplate, Links, Renderer},
    mailer::{Mailer, SmtpSettings},
    relay::{Relay, RelayConfig},
    store,
    telemetry::{self, LogFormat},
};

/// Delivers the emails identity-server queues in the outbox table: claims batches under short
/// leases (any number of replicas may run), sends over SMTP with retries and backoff, moves
/// undeliverable messages to outbox_dead, and loses nothing when it crashes.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log line format.
    #[arg(
        long,
        env = "RELAY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay outbox messages until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// PostgreSQL URL of the identity database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    database_url: SecretString,

    /// SMTP server in lettre's URL form: smtps://user:pass@host (implicit TLS),
    /// smtp://user:pass@host:587?tls=required (STARTTLS), smtp://host:port (plain text, local
    /// sinks only: credentials are refused without TLS). Exactly one of SMTP_URL and
    /// RELAY_DEV_MAIL_DIR must be set.
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = parse_secret)]
    smtp_url: Option<SecretString>,

    /// A PEM file of CA certificates trusted for the SMTP server's certificate besides the
    /// public web PKI roots, for a server with a private CA.
    #[arg(long, env = "RELAY_SMTP_CA_FILE", value_name = "FILE")]
    smtp_ca_file: Option<PathBuf>,

    /// Development only: write each email as an .eml file into this folder, and log its link
    /// and code, instead of sending it. Exactly one of SMTP_URL and RELAY_DEV_MAIL_DIR must be
    /// set: without either the relay refuses to start.
    #[arg(long, env = "RELAY_DEV_MAIL_DIR", value_name = "DIR")]
    dev_mail_dir: Option<PathBuf>,

    /// Sender of every email, e.g. "Example <no-reply@example.com>". Required with SMTP_URL.
    #[arg(long, env = "EMAIL_FROM")]
    email_from: Option<Mailbox>,

    /// The link in verification emails: a URL where {token} is replaced by the token.
    /// Required with SMTP_URL, and https unless RELAY_ALLOW_HTTP_LINKS; with
    /// RELAY_DEV_MAIL_DIR it defaults to http://localhost:3000/verify-email?token={token}.
    #[arg(long, env = "VERIFY_URL_TEMPLATE")]
    verify_url_template: Option<LinkTemplate>,

    /// The link in password-reset emails: a URL where {token} is replaced by the token.
    /// Required with SMTP_URL, and https unless RELAY_ALLOW_HTTP_LINKS; with
    /// RELAY_DEV_MAIL_DIR it defaults to http://localhost:3000/reset-password?token={token}.
    #[arg(long, env = "RESET_URL_TEMPLATE")]
    reset_url_template: Option<LinkTemplate>,

    /// Development only: allow http:// links in emails sent over SMTP (to a local web app).
    #[arg(
        long,
        env = "RELAY_ALLOW_HTTP_LINKS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    allow_http_links: bool,

    /// Messages claimed at once.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 64)]
    batch_size: i64,

    /// Emails sent at once (also the SMTP connection pool size).
    #[arg(long, env = "RELAY_CONCURRENCY", default_value_t = 16)]
    concurrency: u32,

    /// Seconds a claim lasts; a crashed relay's messages are retried after this.
    #[arg(long, env = "RELAY_LEASE_SECS", default_value_t = 30)]
    lease_secs: u64,

    /// Milliseconds between looks at the outbox when no notification arrives.
    #[arg(long, env = "RELAY_POLL_INTERVAL_MS", default_value_t = 5000)]
    poll_interval_ms: u64,

    /// Milliseconds: the ceiling of the first retry's delay (full jitter below it).
    #[arg(long, env = "RELAY_RETRY_BASE_MS", default_value_t = 1000)]
    retry_base_ms: u64,

    /// Growth of the retry ceiling per failure.
    #[arg(long, env = "RELAY_RETRY_FACTOR", default_value_t = 2.0)]
    retry_factor: f64,

    /// Seconds: the largest retry ceiling.
    #[arg(long, env = "RELAY_RETRY_CAP_SECS", default_value_t = 900)]
    retry_cap_secs: u64,

    /// Failed deliveries after which a message is dead-lettered. With the default backoff that
    /// is about a day of retrying; a verification or password-reset email whose link expired is
    /// dead-lettered rather than sent.
    #[arg(long, env = "RELAY_MAX_ATTEMPTS", default_value_t = 100)]
    max_attempts: i32,

    /// Seconds to pause sending after the SMTP server refused us rather than a message: a 5xx
    /// to the greeting, EHLO, STARTTLS, AUTH, MAIL FROM or DATA, or an untrusted certificate.
    /// No attempt is counted; sending resumes by itself when the server accepts again.
    #[arg(long, env = "RELAY_REFUSED_PAUSE_SECS", default_value_t = 60)]
    refused_pause_secs: u64,

    /// Seconds opening an SMTP session, or sending one email, may take.
    #[arg(long, env = "RELAY_SMTP_TIMEOUT_SECS", default_value_t = 10)]
    smtp_timeout_secs: u64,

    /// Seconds a pooled SMTP session may stay unused before it is closed instead of reused
    /// (one unused for over a second is checked with NOOP first, so a session the server
    /// closed never costs an attempt).
    #[arg(long, env = "RELAY_SMTP_IDLE_SECS", default_value_t = 60)]
    smtp_idle_secs: u64,

    /// Seconds in-flight sends may take to finish at shutdown.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
}

fn parse_secret(raw: &str) -> Result<SecretString, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(raw))
}

impl Cli {
    /// Runs the chosen command; errors are logged and turn into a failing exit code.
    pub fn run(self) -> ExitCode {
        telemetry::init(self.log_format);
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error.message = %e, "cannot start the async runtime");
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(async {
            match self.command {
                Command::Serve(args) => serve(*args).await,
            }
        });
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error.message = %e, error.cause_chain = ?e, "outbox-relay failed");
                ExitCode::FAILURE
            }
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "the batch size must be positive");
    anyhow::ensure!(args.concurrency > 0, "the concurrency must be positive");
    anyhow::ensure!(args.max_attempts > 0, "the attempt limit must be positive");
    let concurrency = usize::try_from(args.concurrency)?;
    let (mailer, from, links) = delivery(&args, concurrency)?;
    let renderer = Renderer::new(links)?;
    let pool = store::pool(&args.database_url, concurrency + 2, Duration::from_secs(5))?;
    let config = RelayConfig {
        batch_size: args.batch_size,
        concurrency,
        lease: Duration::from_secs(args.lease_secs.max(1)),
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
        retry: RetryPolicy {
            base: Duration::from_millis(args.retry_base_ms),
            factor: args.retry_factor.max(1.0),
            cap: Duration::from_secs(args.retry_cap_secs),
            max_attempts: args.max_attempts,
        },
        refused_pause: Duration::from_secs(args.refused_pause_secs),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
    };
    tracing::info!(
        batch_size = config.batch_size,
        concurrency = config.concurrency,
        lease = ?config.lease,
        from = %from,
        "outbox-relay started"
    );
    let relay = Arc::new(Relay::new(
        pool,
        args.database_url,
        mailer,
        renderer,
        from,
        config,
    ));
    relay.run(shutdown_signal()).await
}

/// How emails are delivered, as the settings say: over SMTP (with a sender and https links),
/// or, only when asked for, into files for development. Refuses anything else, before the
/// outbox is touched.
fn delivery(args: &ServeArgs, concurrency: usize) -> anyhow::Result<(Mailer, Mailbox, Links)> {
    match (&args.smtp_url, &args.dev_mail_dir) {
        (None, None) => anyhow::bail!(
            "no way to deliver email: set SMTP_URL to send it, or RELAY_DEV_MAIL_DIR \
             (--dev-mail-dir) to write it to files in development"
        ),
        (Some(_), Some(_)) => anyhow::bail!(
            "SMTP_URL and RELAY_DEV_MAIL_DIR (--dev-mail-dir) are both set: choose one"
        ),
        (Some(url), None) => {
            let from = args
                .email_from
                .clone()
                .ok_or_else(|| anyhow::anyhow!("EMAIL_FROM is required with SMTP_URL"))?;
            let links = Links {
                verify: smtp_link(&args.verify_url_template, "VERIFY_URL_TEMPLATE", args)?,
                reset: smtp_link(&args.reset_url_template, "RESET_URL_TEMPLATE", args)?,
            };
            let mailer = Mailer::smtp(SmtpSettings {
                url,
                ca_file: args.smtp_ca_file.as_deref(),
                connections: concurrency,
                timeout: Duration::from_secs(args.smtp_timeout_secs),
                idle_limit: Duration::from_secs(args.smtp_idle_secs),
            })?;
            Ok((mailer, from, links))
        }
        (None, Some(dir)) => {
            tracing::warn!(dir = %dir.display(), "development mode: writing emails to files, not sending them");
            let from = args
                .email_from
                .clone()
                .unwrap_or_else(|| Mailbox::new(Some("Identity".into()), default_sender()));
            let links = Links {
                verify: dev_link(&args.verify_url_template, DEV_VERIFY_LINK)?,
                reset: dev_link(&args.reset_url_template, DEV_RESET_LINK)?,
            };
            Ok((Mailer::files(dir.clone())?, from, links))
        }
    }
}

/// The development links, to a web app on this machine.
const DEV_VERIFY_LINK: &str = "http://localhost:3000/verify-email?token={token}";
const DEV_RESET_LINK: &str = "http://localhost:3000/reset-password?token={token}";

/// A link for emails sent over SMTP: required, and https unless http links are allowed.
fn smtp_link(
    template: &Option<LinkTemplate>,
    name: &str,
    args: &ServeArgs,
) -> anyhow::Result<LinkTemplate> {
    let template = template.clone().ok_or_else(|| {
        anyhow::anyhow!("{name} is required with SMTP_URL: an https URL with {{token}} in it")
    })?;
    anyhow::ensure!(
        template.is_https() || args.allow_http_links,
        "{name} must be an https URL with SMTP_URL; set RELAY_ALLOW_HTTP_LINKS=true \
         (--allow-http-links) to send http links in development"
    );
    Ok(template)
}

fn dev_link(template: &Option<LinkTemplate>, default: &str) -> anyhow::Result<LinkTemplate> {
    match template {
        Some(template) => Ok(template.clone()),
        None => Ok(LinkTemplate::parse(default)?),
    }
}

fn default_sender() -> lettre::Address {
    // A literal that always parses: "no-reply" and "localhost" are valid parts.
    lettre::Address::new("no-reply", "localhost")
        .unwrap_or_else(|_| unreachable!("a valid literal address"))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
