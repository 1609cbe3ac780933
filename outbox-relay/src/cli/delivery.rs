//! How emails are delivered, from the settings: over SMTP (with a sender and https links), or,
//! only when asked for, into files for development. Anything else is refused at start-up,
//! before the outbox is touched: a relay without SMTP_URL must not "deliver" the queue into a
//! local folder (a missing Secret in production).

use std::{path::PathBuf, time::Duration};

use clap::Args;
use identity_proto::secret;
use lettre::message::Mailbox;
use secrecy::SecretString;

use crate::{
    email::{LinkTemplate, Links},
    mailer::{Mailer, SmtpSettings},
};

/// The links of the development mode, to a web app on this machine.
const DEV_VERIFY_LINK: &str = "http://localhost:3000/verify-email?token={token}";
const DEV_RESET_LINK: &str = "http://localhost:3000/reset-password?token={token}";

/// The delivery settings of `outbox-relay serve`.
#[derive(Debug, Args)]
pub(super) struct DeliveryArgs {
    /// SMTP server in lettre's URL form: smtps://user:pass@host (implicit TLS),
    /// smtp://user:pass@host:587?tls=required (STARTTLS), smtp://host:port (plain text, local
    /// sinks only: credentials are refused without TLS). Exactly one of SMTP_URL (or
    /// SMTP_URL_FILE) and RELAY_DEV_MAIL_DIR must be set.
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = secret::parse)]
    smtp_url: Option<SecretString>,

    /// A file holding the SMTP URL, instead of SMTP_URL.
    #[arg(long, env = "SMTP_URL_FILE", value_name = "FILE")]
    smtp_url_file: Option<PathBuf>,

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

    /// Seconds opening an SMTP session, or sending one email, may take.
    #[arg(long, env = "RELAY_SMTP_TIMEOUT_SECS", default_value_t = 10)]
    smtp_timeout_secs: u64,

    /// Seconds a pooled SMTP session may stay unused before it is closed instead of reused
    /// (one unused for over a second is checked with NOOP first, so a session the server
    /// closed never costs an attempt).
    #[arg(long, env = "RELAY_SMTP_IDLE_SECS", default_value_t = 60)]
    smtp_idle_secs: u64,
}

/// Where emails go, once the settings are checked.
#[derive(Debug)]
enum Mode<'a> {
    Smtp(SecretString),
    Files(&'a PathBuf),
}

impl DeliveryArgs {
    /// The mailer, the sender and the links, as the settings say; `connections` SMTP sessions
    /// at most.
    pub(super) fn build(&self, connections: usize) -> anyhow::Result<(Mailer, Mailbox, Links)> {
        let mode = self.mode()?;
        let links = self.links(&mode)?;
        match mode {
            Mode::Smtp(url) => {
                let from = self
                    .email_from
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("EMAIL_FROM is required with SMTP_URL"))?;
                let mailer = Mailer::smtp(SmtpSettings {
                    url: &url,
                    ca_file: self.smtp_ca_file.as_deref(),
                    connections,
                    timeout: Duration::from_secs(self.smtp_timeout_secs),
                    idle_limit: Duration::from_secs(self.smtp_idle_secs),
                })?;
                Ok((mailer, from, links))
            }
            Mode::Files(dir) => {
                tracing::warn!(dir = %dir.display(), "development mode: writing emails to files, not sending them");
                let from = self
                    .email_from
                    .clone()
                    .unwrap_or_else(|| Mailbox::new(Some("Identity".into()), default_sender()));
                Ok((Mailer::files(dir.clone())?, from, links))
            }
        }
    }

    /// The limit on opening an SMTP session, and on sending one email.
    pub(super) fn smtp_timeout(&self) -> Duration {
        Duration::from_secs(self.smtp_timeout_secs)
    }

    /// Exactly one of SMTP_URL (or SMTP_URL_FILE, read here) and RELAY_DEV_MAIL_DIR.
    fn mode(&self) -> anyhow::Result<Mode<'_>> {
        let smtp_url = secret::resolve(
            "SMTP_URL",
            self.smtp_url.clone(),
            self.smtp_url_file.as_deref(),
        )?;
        match (smtp_url, &self.dev_mail_dir) {
            (Some(url), None) => Ok(Mode::Smtp(url)),
            (None, Some(dir)) => Ok(Mode::Files(dir)),
            (None, None) => anyhow::bail!(
                "no way to deliver email: set SMTP_URL (or SMTP_URL_FILE) to send it, or \
                 RELAY_DEV_MAIL_DIR (--dev-mail-dir) to write it to files in development"
            ),
            (Some(_), Some(_)) => anyhow::bail!(
                "SMTP_URL and RELAY_DEV_MAIL_DIR (--dev-mail-dir) are both set: choose one"
            ),
        }
    }

    /// With SMTP, both templates are required and https unless http links are allowed; in the
    /// development mode they default to localhost.
    fn links(&self, mode: &Mode<'_>) -> anyhow::Result<Links> {
        let smtp = matches!(mode, Mode::Smtp(_));
        let link = |template: &Option<LinkTemplate>, name: &str, default: &str| {
            let Some(template) = template.clone() else {
                anyhow::ensure!(
                    !smtp,
                    "{name} is required with SMTP_URL: an https URL with {{token}} in it"
                );
                return Ok(LinkTemplate::parse(default)?);
            };
            anyhow::ensure!(
                !smtp || template.is_https() || self.allow_http_links,
                "{name} must be an https URL with SMTP_URL; set RELAY_ALLOW_HTTP_LINKS=true \
                 (--allow-http-links) to send http links in development"
            );
            Ok(template)
        };
        Ok(Links {
            verify: link(
                &self.verify_url_template,
                "VERIFY_URL_TEMPLATE",
                DEV_VERIFY_LINK,
            )?,
            reset: link(
                &self.reset_url_template,
                "RESET_URL_TEMPLATE",
                DEV_RESET_LINK,
            )?,
        })
    }
}

fn default_sender() -> lettre::Address {
    // A literal that always parses: "no-reply" and "localhost" are valid parts.
    lettre::Address::new("no-reply", "localhost")
        .unwrap_or_else(|_| unreachable!("a valid literal address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(raw: &str) -> Option<LinkTemplate> {
        Some(LinkTemplate::parse(raw).expect("a valid template"))
    }

    /// SMTP with https links, as production runs.
    fn smtp() -> DeliveryArgs {
        DeliveryArgs {
            smtp_url: Some(SecretString::from("smtps://mail.example.com")),
            smtp_url_file: None,
            smtp_ca_file: None,
            dev_mail_dir: None,
            email_from: None,
            verify_url_template: template("https://app.example.com/verify?t={token}"),
            reset_url_template: template("https://app.example.com/reset?t={token}"),
            allow_http_links: false,
            smtp_timeout_secs: 10,
            smtp_idle_secs: 60,
        }
    }

    fn links(args: &DeliveryArgs) -> anyhow::Result<Links> {
        args.links(&args.mode()?)
    }

    fn error(args: &DeliveryArgs) -> String {
        links(args).expect_err("refused").to_string()
    }

    #[test]
    fn neither_smtp_nor_a_dev_mail_dir_is_refused_naming_both() {
        let args = DeliveryArgs {
            smtp_url: None,
            ..smtp()
        };
        let error = error(&args);
        assert!(
            error.contains("SMTP_URL") && error.contains("RELAY_DEV_MAIL_DIR"),
            "{error}"
        );
    }

    #[test]
    fn smtp_and_a_dev_mail_dir_together_are_refused() {
        let args = DeliveryArgs {
            dev_mail_dir: Some(PathBuf::from("mail")),
            ..smtp()
        };
        assert!(error(&args).contains("both"), "{}", error(&args));
    }

    #[test]
    fn with_smtp_each_link_template_is_required() {
        let args = DeliveryArgs {
            verify_url_template: None,
            ..smtp()
        };
        assert!(error(&args).contains("VERIFY_URL_TEMPLATE is required"));
        let args = DeliveryArgs {
            reset_url_template: None,
            ..smtp()
        };
        assert!(error(&args).contains("RESET_URL_TEMPLATE is required"));
    }

    #[test]
    fn with_smtp_http_links_need_the_development_flag() {
        let http = DeliveryArgs {
            reset_url_template: template("http://localhost:3000/reset?t={token}"),
            ..smtp()
        };
        assert!(
            error(&http).contains("RELAY_ALLOW_HTTP_LINKS"),
            "{}",
            error(&http)
        );

        let allowed = DeliveryArgs {
            allow_http_links: true,
            ..http
        };
        let links = links(&allowed).expect("allowed");
        assert_eq!(
            links.reset.as_ref(),
            "http://localhost:3000/reset?t={token}"
        );
    }

    #[test]
    fn the_development_mode_defaults_to_localhost_links() {
        let args = DeliveryArgs {
            smtp_url: None,
            dev_mail_dir: Some(PathBuf::from("mail")),
            verify_url_template: None,
            reset_url_template: None,
            ..smtp()
        };
        let links = links(&args).expect("defaults");
        assert_eq!(links.verify.as_ref(), DEV_VERIFY_LINK);
        assert_eq!(links.reset.as_ref(), DEV_RESET_LINK);
    }
}
