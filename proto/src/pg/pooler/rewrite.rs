//! The messages of one connection, rewritten for a transaction pooler (see the parent module):
//! what the client sends ([`Rewriter::client_message`]) and what the server answers
//! ([`Rewriter::server_message`]), one whole protocol message at a time.
//!
//! - A named statement the client prepares (`Parse` of `s3`) goes to the server as the unnamed
//!   statement, and its text stays here; a `Bind` or `Describe` of `s3` is preceded by a new
//!   `Parse` of that text, in the same batch, unless the unnamed statement already holds it
//!   there; `Close` of `s3` forgets the text (and closes the unnamed statement).
//! - Each batch (the messages up to a `Sync`) that runs anything starts with
//!   `SELECT set_config('statement_timeout', …, true), set_config('lock_timeout', …, true)`:
//!   `SET LOCAL` for the batch's implicit transaction, or for the explicit one it belongs to.
//! - The server's answers to what was added here (`ParseComplete`, `BindComplete`, the row and
//!   the `CommandComplete` of that `SELECT`) never reach the client.

use std::collections::{HashMap, VecDeque};

use super::super::SessionTimeouts;

/// What the server will answer to one message sent to it, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The start-up, up to the first `ReadyForQuery` (authentication, parameters, key).
    Startup,
    /// `ParseComplete`.
    Parse,
    /// `BindComplete`.
    Bind,
    /// `ParameterDescription` (of a statement), then `RowDescription` or `NoData`.
    Describe,
    /// Rows, then `CommandComplete`, `EmptyQueryResponse` or `PortalSuspended`.
    Execute,
    /// `CloseComplete`.
    Close,
    /// `ReadyForQuery`: the end of a batch (`Sync`) or of a simple query.
    Ready,
}

#[derive(Debug)]
struct Expected {
    answer: Answer,
    /// The client did not send it: its answer is dropped.
    hidden: bool,
}

/// Rewrites one connection's messages; see the module documentation.
#[derive(Debug)]
pub(super) struct Rewriter {
    /// `Parse` bodies (statement name left out: query, then parameter types) by client name.
    statements: HashMap<Vec<u8>, Vec<u8>>,
    /// Which client statement the server's unnamed statement holds in the current batch.
    unnamed: Option<Vec<u8>>,
    /// The `Parse`/`Bind`/`Execute` that set the limits, or nothing when there are none.
    limits: Vec<u8>,
    /// Whether the current batch has set the limits.
    limits_set: bool,
    expected: VecDeque<Expected>,
    started: bool,
}

impl Rewriter {
    /// A rewriter for a connection that has sent nothing yet; `limits` apply to each batch.
    pub(super) fn new(limits: Option<SessionTimeouts>) -> Self {
        Self {
            statements: HashMap::new(),
            unnamed: None,
            limits: limits.map(set_limits).unwrap_or_default(),
            limits_set: false,
            expected: VecDeque::new(),
            started: false,
        }
    }

    /// Whether the next client message is the start-up message, which has no type byte.
    pub(super) fn awaits_startup(&self) -> bool {
        !self.started
    }

    /// Writes to `out` what the server gets for the client's whole `message` (type byte,
    /// length, body; the start-up message without type byte).
    pub(super) fn client_message(&mut self, message: &[u8], out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.expect(Answer::Startup, false);
            out.extend_from_slice(message);
            return;
        }
        let body = &message[5..];
        match message[0] {
            b'P' => {
                self.set_limits(out);
                let (name, rest) = split_cstr(body);
                if name.is_empty() {
                    self.unnamed = None;
                } else {
                    self.statements.insert(name.to_vec(), rest.to_vec());
                    self.unnamed = Some(name.to_vec());
                }
                push_message(out, b'P', &[&[0], rest]);
                self.expect(Answer::Parse, false);
            }
            b'B' => {
                self.set_limits(out);
                let (portal, rest) = split_cstr(body);
                let (statement, rest) = split_cstr(rest);
                let statement = self.hold(statement, out);
                push_message(out, b'B', &[portal, &[0], statement, &[0], rest]);
                self.expect(Answer::Bind, false);
            }
            b'D' if body.first() == Some(&b'S') => {
                self.set_limits(out);
                let (name, _) = split_cstr(&body[1..]);
                let name = self.hold(name, out);
                push_message(out, b'D', &[b"S", name, &[0]]);
                self.expect(Answer::Describe, false);
            }
            b'D' => {
                self.set_limits(out);
                out.extend_from_slice(message);
                self.expect(Answer::Describe, false);
            }
            b'E' => {
                self.set_limits(out);
                out.extend_from_slice(message);
                self.expect(Answer::Execute, false);
            }
            b'C' if body.first() == Some(&b'S') => {
                let (name, _) = split_cstr(&body[1..]);
                self.statements.remove(name);
                // Closing the unnamed statement answers CloseComplete whatever it holds.
                self.unnamed = None;
                push_message(out, b'C', &[b"S", &[0]]);
                self.expect(Answer::Close, false);
            }
            b'C' => {
                out.extend_from_slice(message);
                self.expect(Answer::Close, false);
            }
            // Sync ends the batch; a simple query is a batch of its own.
            b'S' | b'Q' => {
                out.extend_from_slice(message);
                self.expect(Answer::Ready, false);
                self.unnamed = None;
                self.limits_set = false;
            }
            // Flush, Terminate, password and SASL messages: nothing to change or expect.
            _ => out.extend_from_slice(message),
        }
    }

    /// Whether the server's whole `message` goes on to the client.
    pub(super) fn server_message(&mut self, message: &[u8]) -> bool {
        let Some(front) = self.expected.front() else {
            return true;
        };
        let (answer, hidden) = (front.answer, front.hidden);
        match (message[0], answer) {
            // Notices, parameter changes and notifications come at any time.
            (b'N' | b'S' | b'A', _) => true,
            // The server skips the rest of the batch up to its Sync.
            (b'E', _) => {
                while self
                    .expected
                    .front()
                    .is_some_and(|e| !matches!(e.answer, Answer::Ready | Answer::Startup))
                {
                    self.expected.pop_front();
                }
                true
            }
            (b'Z', _) => {
                while let Some(e) = self.expected.pop_front() {
                    if matches!(e.answer, Answer::Ready | Answer::Startup) {
                        break;
                    }
                }
                true
            }
            (b'1', Answer::Parse)
            | (b'2', Answer::Bind)
            | (b'3', Answer::Close)
            | (b'T' | b'n', Answer::Describe)
            | (b'C' | b'I' | b's', Answer::Execute) => {
                self.expected.pop_front();
                !hidden
            }
            (b't', Answer::Describe) | (b'D', Answer::Execute) => !hidden,
            // Start-up answers, simple-query answers, anything unforeseen: passed on.
            _ => true,
        }
    }

    fn expect(&mut self, answer: Answer, hidden: bool) {
        self.expected.push_back(Expected { answer, hidden });
    }

    /// Starts the batch with the limits, once.
    fn set_limits(&mut self, out: &mut Vec<u8>) {
        if self.limits_set || self.limits.is_empty() {
            return;
        }
        self.limits_set = true;
        out.extend_from_slice(&self.limits);
        self.unnamed = None;
        for answer in [Answer::Parse, Answer::Bind, Answer::Execute] {
            self.expect(answer, true);
        }
    }

    /// Makes the server's unnamed statement hold the client's statement `name` (parsing it
    /// again if needed) and returns the name to send instead: empty, or `name` itself when it is
    /// empty or unknown (the server then reports it as it would).
    fn hold<'a>(&mut self, name: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        if name.is_empty() {
            return name;
        }
        if self.unnamed.as_deref() != Some(name) {
            let Some(parse) = self.statements.get(name) else {
                return name;
            };
            push_message(out, b'P', &[&[0], parse]);
            self.expect(Answer::Parse, true);
            self.unnamed = Some(name.to_vec());
        }
        &[]
    }
}

/// `Parse`, `Bind` and `Execute` of the unnamed statement that sets both limits for the
/// current transaction.
fn set_limits(limits: SessionTimeouts) -> Vec<u8> {
    let query = format!(
        "SELECT set_config('statement_timeout', '{}', true), set_config('lock_timeout', '{}', true)",
        limits.statement.as_millis(),
        limits.lock.as_millis()
    );
    let mut out = Vec::new();
    // Parse: unnamed, the query, no parameter types.
    push_message(&mut out, b'P', &[&[0], query.as_bytes(), &[0], &[0, 0]]);
    // Bind: unnamed portal and statement, no formats, no parameters, no result formats.
    push_message(&mut out, b'B', &[&[0], &[0], &[0, 0], &[0, 0], &[0, 0]]);
    // Execute: unnamed portal, all rows.
    push_message(&mut out, b'E', &[&[0], &[0, 0, 0, 0]]);
    out
}

/// Appends a message of type `tag` whose body is `parts`, one after the other.
fn push_message(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
    let length = 4 + parts.iter().map(|part| part.len()).sum::<usize>();
    out.push(tag);
    // A message we build is far below 2 GiB: its parts come from a message that fitted.
    out.extend_from_slice(&u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// The C string at the start of `bytes` (without its NUL) and what follows the NUL.
fn split_cstr(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == 0) {
        Some(end) => (&bytes[..end], &bytes[end + 1..]),
        None => (bytes, &[]),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        push_message(&mut out, tag, parts);
        out
    }

    fn parse(name: &str, query: &str) -> Vec<u8> {
        message(
            b'P',
            &[name.as_bytes(), &[0], query.as_bytes(), &[0], &[0, 0]],
        )
    }

    fn bind(statement: &str) -> Vec<u8> {
        message(
            b'B',
            &[&[0], statement.as_bytes(), &[0], &[0, 0], &[0, 0], &[0, 0]],
        )
    }

    fn sync() -> Vec<u8> {
        message(b'S', &[])
    }

    /// The type bytes of the messages in `bytes`.
    fn tags(bytes: &[u8]) -> String {
        let mut tags = String::new();
        let mut rest = bytes;
        while rest.len() >= 5 {
            let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            tags.push(char::from(rest[0]));
            rest = &rest[1 + length..];
        }
        tags
    }

    fn started(limits: Option<SessionTimeouts>) -> Rewriter {
        let mut rewriter = Rewriter::new(limits);
        let mut out = Vec::new();
        rewriter.client_message(&[0, 0, 0, 8, 0, 3, 0, 0], &mut out);
        assert!(rewriter.server_message(&message(b'Z', &[b"I"])));
        rewriter
    }

    fn send(rewriter: &mut Rewriter, messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            rewriter.client_message(m, &mut out);
        }
        out
    }

    /// Which of the server's `answers` (type bytes) reach the client.
    fn answer(rewriter: &mut Rewriter, answers: &str) -> String {
        answers
            .bytes()
            .filter(|&tag| rewriter.server_message(&message(tag, &[])))
            .map(char::from)
            .collect()
    }

    #[test]
    fn a_named_statement_is_prepared_unnamed_and_parsed_again_in_the_batch_that_binds_it() {
        let mut rewriter = started(None);
        let prepare = send(
            &mut rewriter,
            &[
                parse("s3", "SELECT $1"),
                message(b'D', &[b"S", b"s3", &[0]]),
                sync(),
            ],
        );
        assert_eq!(tags(&prepare), "PDS");
        assert_eq!(
            prepare,
            [parse("", "SELECT $1"), message(b'D', &[b"S", &[0]]), sync()].concat()
        );
        assert_eq!(answer(&mut rewriter, "1tTZ"), "1tTZ");

        let run = send(
            &mut rewriter,
            &[bind("s3"), message(b'E', &[&[0], &[0; 4]]), sync()],
        );
        assert_eq!(
            run,
            [
                parse("", "SELECT $1"),
                bind(""),
                message(b'E', &[&[0], &[0; 4]]),
                sync()
            ]
            .concat()
        );
        // The added Parse's ParseComplete is the client's only surprise, and it is dropped.
        assert_eq!(answer(&mut rewriter, "12DCZ"), "2DCZ");
    }

    #[test]
    fn a_statement_bound_twice_in_one_batch_is_parsed_once() {
        let mut rewriter = started(None);
        send(&mut rewriter, &[parse("s1", "SELECT 1"), sync()]);
        answer(&mut rewriter, "1Z");
        let run = send(&mut rewriter, &[bind("s1"), bind("s1"), sync()]);
        assert_eq!(tags(&run), "PBBS");
        assert_eq!(answer(&mut rewriter, "122Z"), "22Z");
    }

    #[test]
    fn closing_a_statement_forgets_it_and_closes_the_unnamed_one() {
        let mut rewriter = started(None);
        send(&mut rewriter, &[parse("s1", "SELECT 1"), sync()]);
        answer(&mut rewriter, "1Z");
        let close = send(
            &mut rewriter,
            &[message(b'C', &[b"S", b"s1", &[0]]), sync()],
        );
        assert_eq!(close, [message(b'C', &[b"S", &[0]]), sync()].concat());
        assert_eq!(answer(&mut rewriter, "3Z"), "3Z");
        // Unknown now: sent as named, so the server reports it as it would.
        let run = send(&mut rewriter, &[bind("s1"), sync()]);
        assert_eq!(run, [bind("s1"), sync()].concat());
    }

    #[test]
    fn each_batch_that_runs_anything_starts_with_the_limits_and_their_answers_are_dropped() {
        let limits = SessionTimeouts {
            statement: Duration::from_millis(5000),
            lock: Duration::from_millis(2000),
        };
        let mut rewriter = started(Some(limits));
        let run = send(
            &mut rewriter,
            &[
                parse("", "SELECT 1"),
                bind(""),
                message(b'E', &[&[0], &[0; 4]]),
                sync(),
            ],
        );
        assert_eq!(tags(&run), "PBEPBES");
        assert!(
            String::from_utf8_lossy(&run).contains(
                "set_config('statement_timeout', '5000', true), set_config('lock_timeout', '2000', true)"
            )
        );
        assert_eq!(answer(&mut rewriter, "12DC12DCZ"), "12DCZ");

        // A simple query (BEGIN, COMMIT) and a batch that only closes run nothing: no limits.
        let quiet = send(&mut rewriter, &[message(b'Q', &[b"BEGIN", &[0]])]);
        assert_eq!(tags(&quiet), "Q");
        let quiet = send(
            &mut rewriter,
            &[message(b'C', &[b"S", b"s9", &[0]]), sync()],
        );
        assert_eq!(tags(&quiet), "CS");
    }

    #[test]
    fn an_error_drops_what_the_server_skips_and_the_next_batch_starts_clean() {
        let limits = SessionTimeouts::default();
        let mut rewriter = started(Some(limits));
        send(&mut rewriter, &[parse("s1", "SELECT 1"), sync()]);
        answer(&mut rewriter, "12DC1Z");
        send(
            &mut rewriter,
            &[bind("s1"), message(b'E', &[&[0], &[0; 4]]), sync()],
        );
        // The added SELECT fails (say, in an aborted transaction): the error reaches the
        // client, which takes it as its Bind's.
        assert_eq!(answer(&mut rewriter, "EZ"), "EZ");
        send(&mut rewriter, &[bind("s1"), sync()]);
        assert_eq!(answer(&mut rewriter, "12DC12Z"), "2Z");
    }

    #[test]
    fn notices_and_notifications_pass_at_any_time() {
        let mut rewriter = started(Some(SessionTimeouts::default()));
        send(&mut rewriter, &[parse("s1", "SELECT 1"), sync()]);
        assert_eq!(answer(&mut rewriter, "1N2ADSC1Z"), "NAS1Z");
    }
}
