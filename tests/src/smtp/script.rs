//! What a test tells the SMTP server to answer: a [`Reply`] per [`Stage`] of the dialogue (per
//! recipient where the stage concerns one), and the attempts those replies are counted against.

use std::{collections::HashMap, fmt, time::Duration};

/// A point in the SMTP dialogue whose reply a test can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The 220 greeting when a client connects. A 5xx greeting is followed by 503 to every
    /// command but QUIT (RFC 5321, 3.1); a 421 greeting closes the connection.
    Greeting,
    /// The reply to EHLO (or HELO).
    Ehlo,
    /// The reply to `MAIL FROM`.
    MailFrom,
    /// The reply to `RCPT TO`, per recipient.
    RcptTo,
    /// The reply to the `DATA` command itself (354 when accepted).
    Data,
    /// The reply after the end of the message data (`.`), per recipient of the message: the
    /// first recipient with a script of its own decides. A refused message is not recorded.
    DataEnd,
}

impl Stage {
    /// Whether a script may name a recipient for this stage.
    pub fn is_per_recipient(self) -> bool {
        matches!(self, Self::RcptTo | Self::DataEnd)
    }
}

/// How the server answers at a [`Stage`]. Each time the stage is reached is one attempt;
/// attempts are counted per stage (and recipient) across connections and restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reply {
    /// The stage's usual positive reply (220, 250 or 354).
    #[default]
    Accept,
    /// `code` (4xx) for the first `times` attempts, then accept.
    TransientTimes {
        /// A 4xx reply code, such as 451. 421 also closes the connection, as RFC 5321 says.
        code: u16,
        /// How many attempts are refused before the first is accepted.
        times: usize,
    },
    /// This 4xx code for every attempt.
    Transient(u16),
    /// This 5xx code (such as 550) for every attempt.
    Permanent(u16),
}

impl Reply {
    /// Panics when the code does not belong to the kind of reply, so a typo fails loudly.
    pub(super) fn check(self) {
        let (code, range) = match self {
            Self::Accept => return,
            Self::TransientTimes { code, .. } | Self::Transient(code) => (code, 400..500),
            Self::Permanent(code) => (code, 500..600),
        };
        assert!(
            range.contains(&code),
            "{self:?}: the reply code must be in {range:?}"
        );
    }

    /// The refusing code for the `attempt`-th attempt (from 1), or `None` to accept.
    pub(super) fn code_for(self, attempt: usize) -> Option<u16> {
        match self {
            Self::Accept => None,
            Self::TransientTimes { code, times } => (attempt <= times).then_some(code),
            Self::Transient(code) | Self::Permanent(code) => Some(code),
        }
    }
}

/// The test's instructions to the server, and the attempts they are counted against.
#[derive(Debug, Default)]
pub(super) struct Script {
    /// Per recipient (lower-cased), for the stages that have one.
    for_recipient: HashMap<(Stage, String), Reply>,
    /// For everyone (and for recipients without a script of their own).
    for_everyone: HashMap<Stage, Reply>,
    /// Attempts per stage and lower-cased recipient ("" for stages without one).
    attempts: HashMap<(Stage, String), usize>,
    pub(super) auth: Option<Credentials>,
    pub(super) auth_failures: usize,
    /// Sessions silent for this long are closed with 421.
    pub(super) idle_timeout: Option<Duration>,
    /// How long the reply to the end of an accepted message's data is held back.
    pub(super) data_end_delay: Duration,
}

impl Script {
    pub(super) fn set(&mut self, stage: Stage, recipient: Option<&str>, reply: Reply) {
        reply.check();
        match recipient {
            Some(recipient) => {
                assert!(
                    stage.is_per_recipient(),
                    "{stage:?} is not scripted per recipient"
                );
                self.for_recipient
                    .insert((stage, recipient.to_ascii_lowercase()), reply);
            }
            None => {
                self.for_everyone.insert(stage, reply);
            }
        }
    }

    /// Counts an attempt at `stage` for each of `recipients` (or one attempt for a stage without
    /// recipients) and returns the refusing code the script gives, if any: the script of the
    /// first recipient that has one of its own, else the script for everyone.
    pub(super) fn attempt(&mut self, stage: Stage, recipients: &[&str]) -> Option<u16> {
        let keys: Vec<String> = if recipients.is_empty() {
            vec![String::new()]
        } else {
            recipients.iter().map(|r| r.to_ascii_lowercase()).collect()
        };
        let counted: Vec<(String, usize)> = keys
            .into_iter()
            .map(|key| {
                let attempts = self.attempts.entry((stage, key.clone())).or_default();
                *attempts += 1;
                (key, *attempts)
            })
            .collect();
        let (reply, attempt) = counted
            .iter()
            .find_map(|(key, attempt)| {
                self.for_recipient
                    .get(&(stage, key.clone()))
                    .map(|reply| (*reply, *attempt))
            })
            .unwrap_or_else(|| {
                let everyone = self.for_everyone.get(&stage).copied().unwrap_or_default();
                (everyone, counted[0].1)
            });
        reply.code_for(attempt)
    }

    /// Attempts at `stage` for `recipient` (lower-cased), or for everyone with `None`.
    pub(super) fn attempts(&self, stage: Stage, recipient: Option<&str>) -> usize {
        match recipient {
            Some(recipient) => self
                .attempts
                .get(&(stage, recipient.to_ascii_lowercase()))
                .copied()
                .unwrap_or(0),
            None => self
                .attempts
                .iter()
                .filter(|((s, _), _)| *s == stage)
                .map(|(_, n)| n)
                .sum(),
        }
    }
}

/// The one user the server accepts when AUTH is required.
pub(super) struct Credentials {
    pub(super) user: String,
    pub(super) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_times_refuses_then_accepts() {
        let reply = Reply::TransientTimes {
            code: 451,
            times: 2,
        };
        let codes: Vec<_> = (1..=4).map(|attempt| reply.code_for(attempt)).collect();
        assert_eq!(codes, [Some(451), Some(451), None, None]);
    }

    #[test]
    #[should_panic(expected = "must be in 500..600")]
    fn a_permanent_reply_with_a_transient_code_is_refused() {
        Reply::Permanent(451).check();
    }

    #[test]
    fn a_recipient_script_wins_over_the_script_for_everyone() {
        let mut script = Script::default();
        script.set(Stage::DataEnd, None, Reply::Permanent(554));
        script.set(Stage::DataEnd, Some("Ok@Example.com"), Reply::Accept);

        assert_eq!(script.attempt(Stage::DataEnd, &["ok@example.com"]), None);
        assert_eq!(
            script.attempt(Stage::DataEnd, &["other@example.com"]),
            Some(554)
        );
        assert_eq!(script.attempts(Stage::DataEnd, None), 2);
        assert_eq!(script.attempts(Stage::DataEnd, Some("OK@example.com")), 1);
    }

    #[test]
    fn stages_without_a_recipient_count_attempts_once_per_session() {
        let mut script = Script::default();
        script.set(
            Stage::MailFrom,
            None,
            Reply::TransientTimes {
                code: 421,
                times: 1,
            },
        );
        assert_eq!(script.attempt(Stage::MailFrom, &[]), Some(421));
        assert_eq!(script.attempt(Stage::MailFrom, &[]), None);
        assert_eq!(script.attempts(Stage::MailFrom, None), 2);
    }

    #[test]
    #[should_panic(expected = "not scripted per recipient")]
    fn a_greeting_cannot_be_scripted_per_recipient() {
        Script::default().set(Stage::Greeting, Some("a@example.com"), Reply::Accept);
    }
}
