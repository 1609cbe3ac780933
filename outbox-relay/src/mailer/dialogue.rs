//! The SMTP dialogue, stage by stage, and what a failure at each stage means.
//!
//! lettre's `send()` reports a 5xx without saying which command drew it, but the stage decides
//! what the relay must do: a 5xx to `RCPT TO` or after the message data refuses *this message*
//! (dead-letter it), while a 5xx to the greeting, EHLO, STARTTLS, AUTH, `MAIL FROM` or the
//! `DATA` command refuses *us* (our configuration, sender or reputation): dead-lettering would
//! empty the whole queue into `outbox_dead`, which keeps no secrets, so the relay pauses
//! instead. So the relay drives MAIL, RCPT and DATA itself with lettre's public
//! `AsyncSmtpConnection::command()` and `message()`.

use lettre::{
    address::Envelope,
    transport::smtp::{
        Error,
        client::AsyncSmtpConnection,
        commands::{Data, Mail, Rcpt},
        extension::{Extension, MailBodyParameter, MailParameter},
    },
};

use super::SendError;

/// Reply codes about our authentication (RFC 4954: 530 authentication required, 534 mechanism
/// too weak, 535 credentials invalid, 538 encryption required): whatever command draws them,
/// `RCPT TO` included, they refuse us, not the message.
const AUTHENTICATION_CODES: [u16; 4] = [530, 534, 535, 538];

/// A step of the dialogue, to say where a reply came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The server's greeting and our EHLO.
    Session,
    /// The upgrade to TLS: STARTTLS, or the handshake of implicit TLS.
    Tls,
    /// AUTH with our credentials.
    Auth,
    /// `MAIL FROM` with our sender.
    MailFrom,
    /// `RCPT TO` with the message's recipient.
    RcptTo,
    /// The `DATA` command, before any of the message is sent.
    Data,
    /// The reply after the end of the message data.
    DataEnd,
}

impl Stage {
    /// Whether a 5xx at this stage concerns the message rather than us.
    fn is_about_the_message(self) -> bool {
        matches!(self, Self::RcptTo | Self::DataEnd)
    }

    /// What the server turns down when it refuses at this stage, and where.
    fn refused(self) -> &'static str {
        match self {
            Self::Session => "the session (greeting or EHLO)",
            Self::Tls => "TLS (STARTTLS or the handshake)",
            Self::Auth => "our credentials (AUTH)",
            Self::MailFrom => "our sender (MAIL FROM)",
            Self::RcptTo => "the recipient (RCPT TO)",
            Self::Data => "the DATA command",
            Self::DataEnd => "the message (reply to its data)",
        }
    }

    /// Sorts lettre's error at this stage by what the relay should do about it.
    pub fn classify(self, error: &Error) -> SendError {
        let code = error.status().map(u16::from);
        self.verdict(code, error.is_client(), &error.to_string())
    }

    /// [`Self::classify`] on the error's parts: its reply code, if any; whether it is a client
    /// error (no common AUTH mechanism, say); its text.
    fn verdict(self, code: Option<u16>, client_error: bool, text: &str) -> SendError {
        let text = &redact_addresses(text);
        // A client error will not go better by itself either.
        let permanent = code.map_or(client_error, |code| code >= 500);
        let refused = || format!("the SMTP server refused {}: {text}", self.refused());
        if code.is_some_and(|code| AUTHENTICATION_CODES.contains(&code)) {
            return SendError::ChannelRefused(refused());
        }
        match (permanent, self.is_about_the_message()) {
            (true, true) => SendError::Permanent(refused()),
            (true, false) => SendError::ChannelRefused(refused()),
            // 4xx replies, connection and TLS failures, timeouts: try again later.
            (false, _) => SendError::Transient(format!("at {}: {text}", self.refused())),
        }
    }
}

/// `text` with every word that holds an `@` replaced by `[address]`. Providers echo the
/// recipient in their replies ("550 5.1.1 <ada@example.com>: Recipient address rejected"), and
/// the reason goes to the log, the traces and the outbox row, none of which may hold an address.
fn redact_addresses(text: &str) -> String {
    let is_delimiter = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | ',' | ';' | '"' | '\'' | '(' | ')' | '[' | ']'
            )
    };
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let (word, tail) = rest.split_at(rest.find(is_delimiter).unwrap_or(rest.len()));
        redacted.push_str(if word.contains('@') {
            "[address]"
        } else {
            word
        });
        let delimiter = tail.chars().next().map_or(0, char::len_utf8);
        redacted.push_str(&tail[..delimiter]);
        rest = &tail[delimiter..];
    }
    redacted
}

/// Sends one message on an open session: `MAIL FROM`, `RCPT TO` for each recipient, `DATA`,
/// then the data. lettre's `message()` dot-stuffs the data and ends it.
pub async fn send(
    conn: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    email: &[u8],
) -> Result<(), SendError> {
    let mut options = Vec::new();
    let non_ascii_address = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|address| !AsRef::<str>::as_ref(address).is_ascii());
    if non_ascii_address {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(SendError::Permanent(
                "an address is not ASCII and the server does not offer SMTPUTF8".into(),
            ));
        }
        options.push(MailParameter::SmtpUtfEight);
    }
    if !email.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(SendError::Permanent(
                "the message is not ASCII and the server does not offer 8BITMIME".into(),
            ));
        }
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let stage = |stage: Stage| move |e: Error| stage.classify(&e);
    conn.command(Mail::new(envelope.from().cloned(), options))
        .await
        .map_err(stage(Stage::MailFrom))?;
    for recipient in envelope.to() {
        conn.command(Rcpt::new(recipient.clone(), Vec::new()))
            .await
            .map_err(stage(Stage::RcptTo))?;
    }
    conn.command(Data).await.map_err(stage(Stage::Data))?;
    conn.message(email).await.map_err(stage(Stage::DataEnd))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_echoed_in_a_reply_are_redacted() {
        let reason = |error: SendError| match error {
            SendError::Transient(reason)
            | SendError::Permanent(reason)
            | SendError::ChannelRefused(reason)
            | SendError::Unreachable(reason) => reason,
        };
        let rejected = Stage::RcptTo.verdict(
            Some(550),
            false,
            "permanent error (550): 5.1.1 <ada@example.com>: Recipient address rejected",
        );
        assert_eq!(
            reason(rejected),
            "the SMTP server refused the recipient (RCPT TO): permanent error (550): 5.1.1 \
             <[address]>: Recipient address rejected"
        );
        let greylisted = Stage::RcptTo.verdict(
            Some(451),
            false,
            "transient error (451): greylisted: grace.hopper@example.org, try later",
        );
        assert_eq!(
            reason(greylisted),
            "at the recipient (RCPT TO): transient error (451): greylisted: [address], try later"
        );
    }

    fn reply(stage: Stage, code: u16) -> SendError {
        stage.verdict(
            Some(code),
            false,
            &format!("permanent error ({code}): scripted"),
        )
    }

    #[test]
    fn a_5xx_refuses_the_message_only_at_rcpt_to_and_after_the_data() {
        for stage in [Stage::RcptTo, Stage::DataEnd] {
            assert!(
                matches!(reply(stage, 550), SendError::Permanent(_)),
                "{stage:?}"
            );
        }
        for stage in [
            Stage::Session,
            Stage::Tls,
            Stage::Auth,
            Stage::MailFrom,
            Stage::Data,
        ] {
            assert!(
                matches!(reply(stage, 554), SendError::ChannelRefused(_)),
                "{stage:?}"
            );
        }
    }

    #[test]
    fn authentication_replies_refuse_us_at_every_stage() {
        for stage in [Stage::Auth, Stage::MailFrom, Stage::RcptTo, Stage::DataEnd] {
            for code in AUTHENTICATION_CODES {
                assert!(
                    matches!(reply(stage, code), SendError::ChannelRefused(_)),
                    "{stage:?} {code}"
                );
            }
        }
    }

    #[test]
    fn a_4xx_or_a_lost_connection_is_transient_at_every_stage() {
        for stage in [Stage::Session, Stage::Auth, Stage::MailFrom, Stage::RcptTo] {
            assert!(
                matches!(reply(stage, 451), SendError::Transient(_)),
                "{stage:?}"
            );
            assert!(
                matches!(
                    stage.verdict(None, false, "network error"),
                    SendError::Transient(_)
                ),
                "{stage:?}"
            );
        }
    }

    #[test]
    fn a_client_error_refuses_us_or_the_message_by_stage() {
        let no_mechanism = Stage::Auth.verdict(None, true, "no compatible mechanism");
        assert!(matches!(no_mechanism, SendError::ChannelRefused(_)));
        let data = Stage::DataEnd.verdict(None, true, "cannot send");
        assert!(matches!(data, SendError::Permanent(_)));
    }

    #[test]
    fn the_error_says_what_was_refused_and_the_reply() {
        let text = reply(Stage::MailFrom, 550).to_string();
        assert!(text.contains("refused our sender (MAIL FROM)"), "{text}");
        assert!(text.contains("550"), "{text}");
    }
}
