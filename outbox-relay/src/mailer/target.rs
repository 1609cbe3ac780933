//! `SMTP_URL`, parsed: where the SMTP server is, how the connection is secured, and our
//! credentials, which are refused unless TLS protects them. Errors never repeat the URL, which
//! may hold a password.

use lettre::transport::smtp::{authentication::Credentials, extension::ClientId};
use percent_encoding::percent_decode_str;
use url::{Host, Url};

/// How the connection is secured, from the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://host` with no `tls` parameter: plain text (local sinks only).
    Plain,
    /// `smtp://host?tls=required` or `?tls=opportunistic`: STARTTLS.
    StartTls { required: bool },
    /// `smtps://host`: TLS from the first byte.
    Implicit,
}

/// Where and how to connect, from lettre's URL form
/// `scheme://user:pass@host:port/ehlo-name?tls=...`.
pub struct Target {
    /// A domain name or an IP address (without brackets).
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<Credentials>,
    /// The name we give in EHLO.
    pub hello: ClientId,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("credentials", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parses `url`. Credentials are refused unless the connection is implicit TLS or
    /// `tls=required`: over plain text (or STARTTLS that may be skipped) anyone on the path
    /// would read them.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let url = Url::parse(url).map_err(|e| anyhow::anyhow!("not a URL ({e})"))?;
        let tls_param = url
            .query_pairs()
            .find(|(key, _)| key == "tls")
            .map(|(_, value)| value.into_owned());
        let security = match (url.scheme(), tls_param.as_deref()) {
            ("smtps", None) => Security::Implicit,
            ("smtp", None) => Security::Plain,
            ("smtp", Some("required")) => Security::StartTls { required: true },
            ("smtp", Some("opportunistic")) => Security::StartTls { required: false },
            (scheme, tls) => anyhow::bail!(
                "unsupported scheme {scheme:?} with tls={tls:?}: use smtps://, smtp://...?tls=required, or smtp:// (plain text)"
            ),
        };
        let host = match url.host() {
            Some(Host::Domain(domain)) => domain.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => anyhow::bail!("the URL names no host"),
        };
        let port = url.port().unwrap_or(match security {
            Security::Implicit => 465,
            _ => 587,
        });
        let credentials = if url.username().is_empty() {
            None
        } else {
            let protected = matches!(
                security,
                Security::Implicit | Security::StartTls { required: true }
            );
            anyhow::ensure!(
                protected,
                "the URL has credentials but the connection may be plain text, where anyone on \
                 the way could read them: use smtps://user:pass@host (implicit TLS) or \
                 smtp://user:pass@host:587?tls=required (STARTTLS)"
            );
            let decode = |raw: &str| percent_decode_str(raw).decode_utf8_lossy().into_owned();
            Some(Credentials::new(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            ))
        };
        let hello = match url.path().trim_start_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        Ok(Self {
            host,
            port,
            security,
            credentials,
            hello,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Target {
        Target::parse(url).expect("valid URL")
    }

    #[test]
    fn urls_choose_security_port_and_credentials_like_lettre() {
        let plain = parse("smtp://127.0.0.1:2525");
        assert_eq!((plain.security, plain.port), (Security::Plain, 2525));
        assert!(plain.credentials.is_none());

        let implicit = parse("smtps://user:p%40ss@mail.example.com");
        assert_eq!(
            (implicit.security, implicit.port),
            (Security::Implicit, 465)
        );
        assert_eq!(
            implicit.credentials,
            Some(Credentials::new("user".into(), "p@ss".into()))
        );

        let starttls = parse("smtp://u:p@mail.example.com/relay.example.com?tls=required");
        assert_eq!(starttls.security, Security::StartTls { required: true });
        assert_eq!(starttls.port, 587);
        assert!(starttls.credentials.is_some());
        assert_eq!(starttls.hello, ClientId::Domain("relay.example.com".into()));

        let opportunistic = parse("smtp://mail.example.com?tls=opportunistic");
        assert_eq!(
            opportunistic.security,
            Security::StartTls { required: false }
        );

        let ipv6 = parse("smtps://[::1]:2465");
        assert_eq!((ipv6.host.as_str(), ipv6.port), ("::1", 2465));
    }

    #[test]
    fn credentials_that_could_travel_in_clear_are_refused_without_echoing_them() {
        for url in [
            "smtp://user:secret@mail.example.com",
            "smtp://user:secret@mail.example.com:25?tls=opportunistic",
            "smtp://user@mail.example.com",
        ] {
            let error = Target::parse(url).expect_err(url).to_string();
            assert!(error.contains("tls=required"), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for url in [
            "http://user:secret@host",
            "smtps://user:secret@host?tls=none",
            "nonsense-secret",
        ] {
            let error = Target::parse(url).expect_err("refused").to_string();
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn debug_output_hides_credentials() {
        let target = parse("smtps://user:hunter2@mail.example.com");
        let debug = format!("{target:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("user"),
            "{debug}"
        );
    }
}
