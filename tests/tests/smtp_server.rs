//! The test SMTP server (`identity_tests::smtp`), driven by a raw SMTP dialogue over TCP (and
//! TLS).

mod support;

use std::{sync::Arc, time::Duration};

use identity_tests::smtp::{Reply, SmtpServer, Stage};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use support::TestCa;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf},
    net::TcpStream,
};

const WAIT: Duration = Duration::from_secs(5);

/// A byte stream a client speaks SMTP over: TCP or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// A hand-driven SMTP client: one command, one (possibly multi-line) reply.
struct Client {
    reader: BufReader<ReadHalf<Box<dyn Stream>>>,
    writer: WriteHalf<Box<dyn Stream>>,
}

impl Client {
    /// Connects, checks the 220 greeting and says EHLO; returns the EHLO reply's text too.
    async fn connect(port: u16) -> (Self, String) {
        Self::open(port).await.hello().await
    }

    /// Connects over TLS trusting `ca`, checks the greeting and says EHLO.
    async fn connect_tls(port: u16, ca: &TestCa) -> (Self, String) {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca.ca_file()).expect("the CA file") {
            roots
                .add(cert.expect("a CA certificate"))
                .expect("a usable CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the SMTP server");
        let name = ServerName::try_from("127.0.0.1").expect("an IP address name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("a TLS handshake with a certificate the CA signed");
        Self::wrap(Box::new(tls)).hello().await
    }

    /// Connects over TCP and reads nothing yet.
    async fn open(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the SMTP server");
        Self::wrap(Box::new(stream))
    }

    fn wrap(stream: Box<dyn Stream>) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Self {
            reader: BufReader::new(reader),
            writer,
        }
    }

    async fn hello(mut self) -> (Self, String) {
        let (code, _) = self.read_reply().await;
        assert_eq!(code, 220, "greeting");
        let (code, ehlo) = self.command("EHLO client.test").await;
        assert_eq!(code, 250, "EHLO: {ehlo}");
        (self, ehlo)
    }

    /// Sends `line` and returns the reply's code and its lines joined with newlines.
    async fn command(&mut self, line: &str) -> (u16, String) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write a command");
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .await
                .expect("read a reply");
            assert!(
                n > 0,
                "the server closed the connection mid-reply: {text:?}"
            );
            text.push_str(&line);
            // "250-more" continues a reply; "250 last" ends it.
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("not an SMTP reply: {line:?}"));
                return (code, text);
            }
        }
    }

    /// MAIL, RCPT for each recipient, DATA with `body` (CRLF lines, dot-stuffed here) and `.`.
    /// Returns the RCPT codes and the final code (the DATA reply if it is refused).
    async fn send(&mut self, from: &str, to: &[&str], body: &str) -> (Vec<u16>, u16) {
        let (code, text) = self.command(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(code, 250, "MAIL: {text}");
        let mut rcpt = Vec::new();
        for recipient in to {
            rcpt.push(self.command(&format!("RCPT TO:<{recipient}>")).await.0);
        }
        let (code, _) = self.command("DATA").await;
        if code != 354 {
            return (rcpt, code);
        }
        let mut data = String::new();
        for line in body.lines() {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.writer
            .write_all(data.as_bytes())
            .await
            .expect("write DATA");
        (rcpt, self.read_reply().await.0)
    }

    async fn quit(mut self) {
        assert_eq!(self.command("QUIT").await.0, 221);
    }

    /// Whether the server closed the connection (reads end of file).
    async fn is_closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.reader.read_line(&mut line).await, Ok(0) | Err(_))
    }
}

#[tokio::test]
async fn an_accepted_message_is_recorded_with_its_envelope_and_data() {
    let server = SmtpServer::start();
    let (mut client, ehlo) = Client::connect(server.port()).await;
    assert!(ehlo.contains("8BITMIME"), "{ehlo}");
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH offered without being required: {ehlo}"
    );

    let body = "Subject: Hi\n\nline one\n.starts with a dot\n";
    let (rcpt, done) = client
        .send(
            "noreply@id.test",
            &["Alice@Example.com", "bob@example.com"],
            body,
        )
        .await;
    client.quit().await;

    assert_eq!((rcpt, done), (vec![250, 250], 250));
    let messages = server.wait_for_messages(1, WAIT).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.from, "noreply@id.test");
    assert_eq!(message.to, ["Alice@Example.com", "bob@example.com"]);
    assert_eq!(
        message.data,
        "Subject: Hi\r\n\r\nline one\r\n.starts with a dot\r\n"
    );
    assert_eq!(message.authenticated_as, None);
    assert_eq!(server.messages_to("alice@example.com").len(), 1);
    assert!(server.messages_to("carol@example.com").is_empty());
    assert_eq!(server.attempts("ALICE@example.com"), 1);
    assert_eq!(server.url(), format!("smtp://127.0.0.1:{}", server.port()));
}

#[tokio::test]
async fn a_transient_reply_twice_is_followed_by_acceptance() {
    let server = SmtpServer::start();
    server.reply_to(
        "Bob@Example.com",
        Reply::TransientTimes {
            code: 451,
            times: 2,
        },
    );

    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let (mut client, _) = Client::connect(server.port()).await;
        outcomes.push(client.send("a@id.test", &["bob@example.com"], "hi").await);
        client.quit().await;
    }

    assert_eq!(
        outcomes,
        [(vec![451], 503), (vec![451], 503), (vec![250], 250)],
        "RCPT and final codes per attempt (mailin answers DATA without an accepted recipient with 503)"
    );
    assert_eq!(server.attempts("bob@example.com"), 3);
    let message = server.wait_for_message_to("bob@example.com", WAIT).await;
    assert_eq!(message.data, "hi\r\n");
}

#[tokio::test]
async fn a_permanent_reply_refuses_every_attempt_and_records_nothing() {
    let server = SmtpServer::start();
    server.reply_to("gone@example.com", Reply::Permanent(550));

    let (mut client, _) = Client::connect(server.port()).await;
    let first = client.send("a@id.test", &["gone@example.com"], "x").await;
    assert_eq!(client.command("RSET").await.0, 250);
    let second = client.send("a@id.test", &["gone@example.com"], "x").await;
    assert_eq!(client.command("RSET").await.0, 250);
    let mixed = client
        .send("a@id.test", &["gone@example.com", "here@example.com"], "x")
        .await;
    client.quit().await;

    assert_eq!(first, (vec![550], 503));
    assert_eq!(second, (vec![550], 503));
    assert_eq!(mixed, (vec![550, 250], 250));
    assert_eq!(server.attempts("gone@example.com"), 3);
    let messages = server.wait_for_messages(1, WAIT).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to, ["here@example.com"]);
}

#[tokio::test]
async fn a_421_reply_closes_the_connection() {
    let server = SmtpServer::start();
    server.reply_to_everyone(Reply::Transient(421));

    let (mut client, _) = Client::connect(server.port()).await;
    assert_eq!(client.command("MAIL FROM:<a@id.test>").await.0, 250);
    assert_eq!(client.command("RCPT TO:<x@example.com>").await.0, 421);

    assert!(client.is_closed().await);
}

#[tokio::test]
async fn a_stopped_server_frees_its_port_for_a_new_one() {
    let mut server = SmtpServer::start();
    let port = server.port();
    let (mut open, _) = Client::connect(port).await;

    server.stop();

    assert!(!server.is_running());
    assert!(open.is_closed().await, "open sessions are closed on stop");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "nothing listens after stop"
    );
    let server = SmtpServer::start_on(port);
    let (mut client, _) = Client::connect(port).await;
    let sent = client.send("a@id.test", &["back@example.com"], "x").await;
    client.quit().await;
    assert_eq!(sent, (vec![250], 250));
    server.wait_for_message_to("back@example.com", WAIT).await;
}

#[tokio::test]
async fn a_restarted_server_keeps_its_records_and_script() {
    let mut server = SmtpServer::start();
    server.reply_to(
        "slow@example.com",
        Reply::TransientTimes {
            code: 451,
            times: 1,
        },
    );
    let (mut client, _) = Client::connect(server.port()).await;
    assert_eq!(
        client.send("a@id.test", &["slow@example.com"], "x").await.0,
        [451]
    );
    assert_eq!(client.command("RSET").await.0, 250);
    assert_eq!(
        client.send("a@id.test", &["b@example.com"], "x").await.1,
        250
    );
    client.quit().await;

    server.restart();

    let (mut client, _) = Client::connect(server.port()).await;
    assert_eq!(
        client.send("a@id.test", &["slow@example.com"], "x").await.1,
        250
    );
    client.quit().await;
    assert_eq!(server.attempts("slow@example.com"), 2);
    assert_eq!(server.wait_for_messages(2, WAIT).await.len(), 2);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn wrong_credentials_get_535_and_right_ones_allow_mail() {
    let server = SmtpServer::start();
    server.require_auth("relay", "s3cret");
    let (mut client, ehlo) = Client::connect(server.port()).await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");

    let before_auth = client.command("MAIL FROM:<a@id.test>").await.0;
    // base64("\0relay\0wrong")
    let wrong_plain = client.command("AUTH PLAIN AHJlbGF5AHdyb25n").await.0;
    let login = client.command("AUTH LOGIN").await;
    let user = client.command("cmVsYXk=").await; // base64("relay")
    let password = client.command("czNjcmV0").await; // base64("s3cret")
    let sent = client.send("a@id.test", &["c@example.com"], "x").await;
    client.quit().await;

    // mailin refuses MAIL before AUTH as a bad sequence of commands.
    assert_eq!(before_auth, 503);
    assert_eq!(wrong_plain, 535);
    assert_eq!(login.0, 334);
    assert_eq!(login.1.trim_end(), "334 VXNlcm5hbWU6");
    assert_eq!(user.1.trim_end(), "334 UGFzc3dvcmQ6");
    assert_eq!(password.0, 235);
    assert_eq!(sent, (vec![250], 250));
    assert_eq!(server.auth_failures(), 1);
    let message = server.wait_for_message_to("c@example.com", WAIT).await;
    assert_eq!(message.authenticated_as.as_deref(), Some("relay"));
    assert_eq!(
        server.url_with_credentials("relay", "s3cret"),
        format!("smtp://relay:s3cret@127.0.0.1:{}", server.port())
    );
}

#[tokio::test]
async fn auth_plain_with_a_challenge_accepts_the_right_credentials() {
    let server = SmtpServer::start();
    server.require_auth("relay", "s3cret");
    let (mut client, _) = Client::connect(server.port()).await;

    let challenge = client.command("AUTH PLAIN").await.0;
    let answer = client.command("AHJlbGF5AHMzY3JldA==").await.0; // "\0relay\0s3cret"

    assert_eq!((challenge, answer), (334, 235));
    client.quit().await;
}

#[tokio::test]
async fn a_sink_counts_and_timestamps_messages_without_their_data() {
    let server = SmtpServer::start_sink();
    let (mut client, _) = Client::connect(server.port()).await;
    let started = std::time::Instant::now();
    for i in 0..3 {
        let to = format!("user{i}@example.com");
        assert_eq!(client.send("a@id.test", &[&to], "body").await.1, 250);
    }
    client.quit().await;

    let messages = server.wait_for_messages(3, WAIT).await;
    assert_eq!(server.message_count(), 3);
    assert!(messages.iter().all(|m| m.data.is_empty()));
    assert!(messages.iter().all(|m| m.accepted_at >= started));
    assert!(
        messages
            .windows(2)
            .all(|w| w[0].accepted_at <= w[1].accepted_at)
    );
    assert_eq!(messages[2].to, ["user2@example.com"]);
}

#[tokio::test]
#[should_panic(expected = "timed out after 50ms waiting for 1 messages")]
async fn waiting_for_messages_that_never_come_panics_at_the_deadline() {
    let server = SmtpServer::start();
    server.wait_for_messages(1, Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_refusing_greeting_is_followed_by_503_until_quit_and_can_be_lifted() {
    let server = SmtpServer::start();
    server.script(Stage::Greeting, Reply::Permanent(554));

    let mut refused = Client::open(server.port()).await;
    let (greeting, _) = refused.read_reply().await;
    let ehlo = refused.command("EHLO client.test").await.0;
    let mail = refused.command("MAIL FROM:<a@id.test>").await.0;
    refused.quit().await;
    server.script(Stage::Greeting, Reply::Accept);
    let (client, _) = Client::connect(server.port()).await;
    client.quit().await;

    assert_eq!((greeting, ehlo, mail), (554, 503, 503));
    assert_eq!(server.attempts_at(Stage::Greeting), 2);
    assert_eq!(
        server.attempts_at(Stage::Ehlo),
        1,
        "only the accepted session's"
    );
}

#[tokio::test]
async fn ehlo_and_mail_from_answer_as_scripted_and_the_script_changes_mid_session() {
    let server = SmtpServer::start();
    server.script(Stage::Ehlo, Reply::Permanent(550));
    server.script(Stage::MailFrom, Reply::Permanent(550));

    let mut client = Client::open(server.port()).await;
    assert_eq!(client.read_reply().await.0, 220);
    let refused_ehlo = client.command("EHLO client.test").await.0;
    server.script(Stage::Ehlo, Reply::Accept);
    let accepted_ehlo = client.command("EHLO client.test").await.0;
    let refused_mail = client.command("MAIL FROM:<a@id.test>").await.0;
    server.script(Stage::MailFrom, Reply::Accept);
    let sent = client.send("a@id.test", &["b@example.com"], "x").await;
    client.quit().await;

    assert_eq!((refused_ehlo, accepted_ehlo, refused_mail), (550, 250, 550));
    assert_eq!(sent, (vec![250], 250));
    assert_eq!(server.attempts_at(Stage::MailFrom), 2);
    assert_eq!(server.wait_for_messages(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn the_end_of_the_data_is_refused_per_recipient_and_a_refused_message_is_not_recorded() {
    let server = SmtpServer::start();
    server.script_for(Stage::DataEnd, "Spam@Example.com", Reply::Permanent(554));

    let (mut client, _) = Client::connect(server.port()).await;
    let refused = client.send("a@id.test", &["spam@example.com"], "x").await;
    let accepted = client.send("a@id.test", &["ham@example.com"], "x").await;
    client.quit().await;

    assert_eq!(refused, (vec![250], 554), "RCPT accepted, the data refused");
    assert_eq!(accepted, (vec![250], 250));
    let messages = server.wait_for_messages(1, WAIT).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to, ["ham@example.com"]);
    assert_eq!(server.attempts_at(Stage::DataEnd), 2);
}

#[tokio::test]
async fn the_data_command_itself_can_be_refused() {
    let server = SmtpServer::start();
    server.script(Stage::Data, Reply::Permanent(554));

    let (mut client, _) = Client::connect(server.port()).await;
    let sent = client.send("a@id.test", &["b@example.com"], "x").await;
    client.quit().await;

    assert_eq!(sent, (vec![250], 554));
    assert_eq!(server.message_count(), 0);
}

#[tokio::test]
async fn an_idle_session_is_closed_with_421_and_counted() {
    let server = SmtpServer::start();
    server.close_idle_sessions_after(Duration::from_millis(100));

    let (mut client, _) = Client::connect(server.port()).await;
    let (code, text) = client.read_reply().await;

    assert_eq!(code, 421, "{text}");
    assert!(client.is_closed().await);
    assert_eq!(server.idle_closures(), 1);
}

#[tokio::test]
async fn over_implicit_tls_a_client_trusting_the_test_ca_authenticates_and_sends() {
    let ca = TestCa::new();
    let server = SmtpServer::start_tls(&ca.identity);
    server.require_auth("relay", "s3cret");

    let (mut client, ehlo) = Client::connect_tls(server.port(), &ca).await;
    let plain = client.command("AUTH PLAIN AHJlbGF5AHMzY3JldA==").await.0; // "\0relay\0s3cret"
    let sent = client.send("a@id.test", &["tls@example.com"], "x").await;
    client.quit().await;

    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!((plain, sent), (235, (vec![250], 250)));
    let message = server.wait_for_message_to("tls@example.com", WAIT).await;
    assert_eq!(message.authenticated_as.as_deref(), Some("relay"));
    assert_eq!(
        server.url_with_credentials("relay", "s3cret"),
        format!("smtps://relay:s3cret@127.0.0.1:{}", server.port())
    );
}
