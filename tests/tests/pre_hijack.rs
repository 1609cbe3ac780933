//! Pre-hijacking (issue 16, point 3): a stranger registers someone else's address first; whatever
//! the owner then does with their mailbox (Resend, any link, any code), the stranger's password
//! must never open the account, and the owner ends with an account their own password opens.
//! Through the built server and relay, a real PostgreSQL and a real SMTP server.

use std::time::Duration;

use identity_proto::identity::v1::{
    self as pb, registration_service_client::RegistrationServiceClient,
    session_service_client::SessionServiceClient,
};
use identity_tests::{
    relay,
    server::Server,
    smtp::{Received, SmtpServer, text_part, token_after},
};
use tonic::{Code, transport::Channel};

const WAIT: Duration = Duration::from_secs(60);
const VERIFY_URL: &str = "https://app.example.com/verify?token=";
const OWNER_PASSWORD: &str = "tangerine-kettle-orbit-42";
const STRANGER_PASSWORD: &str = "quartz-lantern-marmalade-8";

/// No resend cooldown and no rate limits: the owner presses Resend right after the stranger
/// registered, and each test makes more calls for one address than the limits allow. The
/// email budget (3 an hour) stays as configured by default.
const ENV: &[(&str, &str)] = &[
    ("IDENTITY_RESEND_COOLDOWN_SECS", "0"),
    ("IDENTITY_RATE_LIMITING", "false"),
];

fn register_request(email: &str, password: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        email: email.into(),
        password: password.into(),
        display_name: "Ada Lovelace".into(),
        locale: "en".into(),
        ..Default::default()
    }
}

/// A proof found in a verification email.
#[derive(Debug, Clone)]
enum Proof {
    Link(String),
    Code(String),
}

/// The link's token and the code of a verification email.
fn proofs_in(mail: &Received) -> [Proof; 2] {
    let text = text_part(&mail.data);
    let code = text
        .lines()
        .map(str::trim)
        .find(|line| line.len() == 6 && line.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in {text}"))
        .to_owned();
    [
        Proof::Link(token_after(&text, VERIFY_URL)),
        Proof::Code(code),
    ]
}

struct Setup {
    smtp: SmtpServer,
    _server: Server,
    _relay: identity_tests::process::Process,
    channel: Channel,
}

impl Setup {
    async fn start() -> Self {
        let smtp = SmtpServer::start();
        let server = Server::start(ENV).await;
        let relay = relay::start(&server.db.url, &smtp.url(), &[]).await;
        let channel = server.channel().await;
        Self {
            smtp,
            _server: server,
            _relay: relay,
            channel,
        }
    }

    fn registration(&self) -> RegistrationServiceClient<Channel> {
        RegistrationServiceClient::new(self.channel.clone())
    }

    async fn register(&self, email: &str, password: &str) {
        self.registration()
            .register(register_request(email, password))
            .await
            .unwrap_or_else(|e| panic!("Register of {email}: {e:?}"));
    }

    async fn resend(&self, email: &str) {
        self.registration()
            .resend_verification_email(pb::ResendVerificationEmailRequest {
                email: email.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("Resend for {email}: {e:?}"));
    }

    /// The owner verifies `email` with `proof`, typing their own password where asked.
    async fn owner_verifies(&self, email: &str, proof: &Proof) -> Result<(), tonic::Status> {
        let proof = match proof {
            Proof::Link(token) => pb::verify_email_request::Proof::Token(token.clone()),
            Proof::Code(code) => pb::verify_email_request::Proof::EmailCode(pb::EmailCode {
                email: email.into(),
                code: code.clone(),
            }),
        };
        self.registration()
            .verify_email(pb::VerifyEmailRequest {
                proof: Some(proof),
                password: OWNER_PASSWORD.into(),
            })
            .await
            .map(drop)
    }

    async fn login(&self, email: &str, password: &str) -> Code {
        match SessionServiceClient::new(self.channel.clone())
            .login(pb::LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
        {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }

    /// After the owner verified: the stranger's password does not open the account, the
    /// owner's does.
    async fn assert_the_owner_holds(&self, email: &str, how: &str) {
        assert_ne!(
            self.login(email, STRANGER_PASSWORD).await,
            Code::Ok,
            "{how}: the stranger's password opens the account"
        );
        assert_eq!(
            self.login(email, OWNER_PASSWORD).await,
            Code::Ok,
            "{how}: the owner's password does not open the account"
        );
    }
}

#[tokio::test]
async fn the_owner_presses_resend_after_a_stranger_registered_and_uses_the_newest_email() {
    let setup = Setup::start().await;
    let email = "victim@example.com";
    setup.register(email, OWNER_PASSWORD).await;
    setup.register(email, STRANGER_PASSWORD).await;
    setup.smtp.wait_for_messages(2, WAIT).await;

    setup.resend(email).await;
    let mails = setup.smtp.wait_for_messages(3, WAIT).await;
    let newest = mails.last().expect("the resent email");
    assert!(newest.is_for(email));
    let [link, _] = proofs_in(newest);
    setup
        .owner_verifies(email, &link)
        .await
        .expect("the owner verifies with the newest email");

    setup
        .assert_the_owner_holds(email, "Resend, then the newest link")
        .await;
}

#[tokio::test]
async fn strangers_spend_the_owners_budget_and_the_owner_uses_a_link_from_the_mailbox() {
    let setup = Setup::start().await;
    let email = "victim@example.com";
    for _ in 0..3 {
        setup.register(email, STRANGER_PASSWORD).await;
    }
    setup.smtp.wait_for_messages(3, WAIT).await;
    // The owner's own sign-up and resend come too late: the budget is spent.
    setup.register(email, OWNER_PASSWORD).await;
    setup.resend(email).await;

    let mails = setup.smtp.messages_to(email);
    assert_eq!(mails.len(), 3, "the budget allowed three emails");
    let [link, _] = proofs_in(&mails[1]);
    setup
        .owner_verifies(email, &link)
        .await
        .expect("the owner verifies with a link from the mailbox");

    setup
        .assert_the_owner_holds(email, "budget spent by strangers, then a stranger's link")
        .await;
}

#[tokio::test]
async fn whichever_link_or_code_of_the_mailbox_the_owner_uses_only_the_owner_holds_the_account() {
    let setup = Setup::start().await;
    // One address per case: a stranger registers, the owner registers, another stranger
    // registers; the mailbox holds three emails, and the owner uses one link or code of them.
    let mut cases = Vec::new();
    for email_index in 0..3 {
        for proof_index in 0..2 {
            let email = format!("victim{email_index}{proof_index}@example.com");
            setup.register(&email, STRANGER_PASSWORD).await;
            setup.register(&email, OWNER_PASSWORD).await;
            setup.register(&email, "other-stranger-pass-77").await;
            cases.push((email, email_index, proof_index));
        }
    }
    setup.smtp.wait_for_messages(cases.len() * 3, WAIT).await;

    for (email, email_index, proof_index) in cases {
        let mails = setup.smtp.messages_to(&email);
        assert_eq!(mails.len(), 3, "{email}");
        let proof = proofs_in(&mails[email_index])[proof_index].clone();
        let how = format!("email {email_index} of 3, {proof:?}");
        setup
            .owner_verifies(&email, &proof)
            .await
            .unwrap_or_else(|e| panic!("{how}: the owner cannot verify: {e:?}"));
        setup.assert_the_owner_holds(&email, &how).await;
    }
}
