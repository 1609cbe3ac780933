//! Domain events in the outbox (`IDENTITY_DOMAIN_EVENTS`), on a real PostgreSQL: each change
//! queues its event in its own transaction, in order per user, with no secret in it.

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use identity_proto::{
    identity::{
        events::v1 as events,
        v1::{self as pb, password_reset_service_client::PasswordResetServiceClient},
    },
    outbox::{DomainEvent, EmailPasswordResetV1, EventPayload},
};
use identity_server::{db::schema, startup::Settings};
use support::{
    PASSWORD, TestApp,
    calls::{login, refresh, sessions},
};

const ADDRESS: &str = "ada@example.com";
const NEW_PASSWORD: &str = "marmalade-lantern-quartz-9";

fn with_events(settings: &mut Settings) {
    let on = identity_server::db::outbox::Events { enabled: true };
    settings.registration.events = on;
    settings.sessions.events = on;
    settings.password_reset.events = on;
}

/// The event rows in the outbox, in the order they were written: (type, user id, bytes).
async fn queued_events(app: &TestApp) -> Vec<(String, String, Vec<u8>)> {
    use schema::outbox::dsl as o;
    let rows: Vec<(String, String, serde_json::Value)> = o::outbox
        .filter(o::kind.like("identity.%"))
        .order(o::seq.asc())
        .select((o::kind, o::aggregate_id, o::payload))
        .load(&mut app.conn().await)
        .await
        .expect("the outbox is readable");
    rows.into_iter()
        .map(|(kind, user, payload)| {
            let payload: EventPayload = serde_json::from_value(payload).expect("an event payload");
            (kind, user, payload.bytes().expect("base64"))
        })
        .collect()
}

fn decode<E: DomainEvent + Default>(event: &(String, String, Vec<u8>)) -> E {
    assert_eq!(event.0, E::TYPE);
    E::decode(event.2.as_slice()).expect("decodes with the generated type")
}

/// Asks for a reset of `ADDRESS` and resets its password with the emailed token; returns the
/// token.
async fn reset_password(app: &TestApp) -> String {
    let resets = PasswordResetServiceClient::new(app.channel.clone());
    resets
        .clone()
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: ADDRESS.into(),
            ..Default::default()
        })
        .await
        .expect("OK");
    let token = {
        use schema::outbox::dsl as o;
        let payload: serde_json::Value = o::outbox
            .filter(o::kind.eq(EmailPasswordResetV1::KIND))
            .select(o::payload)
            .first(&mut app.conn().await)
            .await
            .expect("the reset email is queued");
        serde_json::from_value::<EmailPasswordResetV1>(payload)
            .expect("parses")
            .token
    };
    resets
        .clone()
        .reset_password(pb::ResetPasswordRequest {
            token: token.clone(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .expect("resets");
    token
}

#[tokio::test]
async fn a_user_keeps_at_most_fifty_live_sessions_so_a_reset_writes_a_bounded_number_of_events() {
    let app = TestApp::spawn_with(|settings| {
        with_events(settings);
        support::without_rate_limits(settings);
    })
    .await;
    app.register(ADDRESS).await.expect("registers");
    let email = app.email_to(ADDRESS).await;
    app.verify_code(ADDRESS, &email.code)
        .await
        .expect("verifies");
    for _ in 0..55 {
        login(&app, ADDRESS, PASSWORD).await.expect("logs in");
    }
    reset_password(&app).await;

    let reasons: Vec<events::RevocationReason> = queued_events(&app)
        .await
        .iter()
        .filter(|event| event.0 == events::SessionRevoked::TYPE)
        .map(|event| decode::<events::SessionRevoked>(event).reason())
        .collect();
    let count = |reason| reasons.iter().filter(|r| **r == reason).count();
    assert_eq!(
        (
            count(events::RevocationReason::SessionLimit),
            count(events::RevocationReason::PasswordReset)
        ),
        (5, 50),
        "55 logins end the 5 oldest sessions; the reset revokes (and writes) the 50 live ones"
    );
}

#[tokio::test]
async fn each_change_queues_its_event_in_order_and_none_holds_a_secret() {
    let app = TestApp::spawn_with(with_events).await;
    let user_id = app.register(ADDRESS).await.expect("registers").user_id;
    let email = app.email_to(ADDRESS).await;
    // The code is given with the address in another case: the event names it as registered.
    app.verify_code(&ADDRESS.to_uppercase(), &email.code)
        .await
        .expect("verifies");
    let first = login(&app, ADDRESS, PASSWORD).await.expect("logs in");
    // Two rotations, then the first token again: reuse revokes the session.
    let second = refresh(&app, &first.refresh_token).await.expect("rotates");
    refresh(&app, &second.refresh_token)
        .await
        .expect("rotates again");
    refresh(&app, &first.refresh_token)
        .await
        .expect_err("reuse is refused");
    // A second session, ended by logging out; a third, ended by the password reset.
    let out = login(&app, ADDRESS, PASSWORD).await.expect("logs in");
    sessions(&app)
        .revoke_session(pb::RevokeSessionRequest {
            refresh_token: out.refresh_token.clone(),
        })
        .await
        .expect("logs out");
    let last = login(&app, ADDRESS, PASSWORD).await.expect("logs in");
    let reset_token = reset_password(&app).await;

    let queued = queued_events(&app).await;
    let types: Vec<&str> = queued.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert_eq!(
        types,
        [
            "identity.user.registered.v1",
            "identity.user.verified.v1",
            "identity.user.logged_in.v1",
            "identity.session.revoked.v1",
            "identity.user.logged_in.v1",
            "identity.session.revoked.v1",
            "identity.user.logged_in.v1",
            "identity.user.password_changed.v1",
            "identity.session.revoked.v1",
        ]
    );
    assert!(queued.iter().all(|(_, user, _)| *user == user_id));

    let registered: events::UserRegistered = decode(&queued[0]);
    assert_eq!(registered.user_id, user_id);
    assert_eq!(registered.email, ADDRESS);
    assert_eq!(registered.display_name, "Ada Lovelace");
    assert!(registered.registered_at.is_some());
    let verified: events::UserVerified = decode(&queued[1]);
    assert_eq!(verified.proof(), events::VerificationProof::Code);
    assert_eq!(verified.email, ADDRESS);
    let logged_in: events::UserLoggedIn = decode(&queued[2]);
    assert!(!logged_in.session_id.is_empty());
    let reused: events::SessionRevoked = decode(&queued[3]);
    assert_eq!(reused.reason(), events::RevocationReason::RefreshTokenReuse);
    assert_eq!(reused.session_id, logged_in.session_id);
    let logout: events::SessionRevoked = decode(&queued[5]);
    assert_eq!(logout.reason(), events::RevocationReason::Logout);
    let last_login: events::UserLoggedIn = decode(&queued[6]);
    let changed: events::UserPasswordChanged = decode(&queued[7]);
    assert_eq!(changed.user_id, user_id);
    let by_reset: events::SessionRevoked = decode(&queued[8]);
    assert_eq!(by_reset.reason(), events::RevocationReason::PasswordReset);
    assert_eq!(by_reset.session_id, last_login.session_id);

    // No password, token or code, in the bytes or in any text they hold.
    let secrets = [
        PASSWORD,
        NEW_PASSWORD,
        email.token.as_str(),
        email.code.as_str(),
        reset_token.as_str(),
        first.refresh_token.as_str(),
        first.access_token.as_str(),
        last.refresh_token.as_str(),
    ];
    for (kind, _, bytes) in &queued {
        let text = String::from_utf8_lossy(bytes);
        for secret in secrets {
            assert!(!text.contains(secret), "{kind} holds {secret:?}");
        }
    }
}

/// Makes the commit of any transaction that inserted an outbox row of `channel` fail.
async fn refuse_at_commit(conn: &mut diesel_async::AsyncPgConnection, channel: &str) {
    diesel::sql_query(format!(
        "CREATE CONSTRAINT TRIGGER test_refuse_{channel} AFTER INSERT ON outbox
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.channel = '{channel}')
         EXECUTE FUNCTION test_refuse()"
    ))
    .execute(conn)
    .await
    .expect("the trigger is created");
}

#[tokio::test]
async fn a_register_that_rolls_back_queues_no_event_and_an_event_that_fails_undoes_the_register() {
    let app = TestApp::spawn_with(with_events).await;
    // Event rows fail at commit: the whole registration is undone with them.
    let mut conn = app.conn().await;
    diesel::sql_query(
        "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$",
    )
    .execute(&mut conn)
    .await
    .expect("the trigger function is created");
    refuse_at_commit(&mut conn, "event").await;

    let status = app.register(ADDRESS).await.expect_err("the commit fails");
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(app.count_users().await, 0, "no user");
    assert_eq!(app.count_outbox().await, 0, "no email and no event");

    // The other way round: the verification email fails, and no event is left either.
    diesel::sql_query("DROP TRIGGER test_refuse_event ON outbox")
        .execute(&mut conn)
        .await
        .expect("the trigger is dropped");
    refuse_at_commit(&mut conn, "email").await;
    app.register(ADDRESS).await.expect_err("the commit fails");
    assert_eq!(app.count_users().await, 0, "no user");
    assert!(queued_events(&app).await.is_empty(), "no event");
}

#[tokio::test]
async fn with_events_off_only_emails_are_queued() {
    let app = TestApp::spawn().await;
    app.register(ADDRESS).await.expect("registers");
    let email = app.email_to(ADDRESS).await;
    app.verify_token(&email.token).await.expect("verifies");
    login(&app, ADDRESS, PASSWORD).await.expect("logs in");
    assert!(queued_events(&app).await.is_empty());
    assert_eq!(app.count_outbox().await, 1, "the verification email");
}

/// Runs `sql` on `conn` (transaction control, here: diesel's transaction closure cannot stay
/// open while another connection acts).
async fn run(conn: &mut diesel_async::AsyncPgConnection, sql: &str) {
    diesel::sql_query(sql)
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The `seq` of each of `user`'s event rows committed so far, in order.
async fn committed_seqs(conn: &mut diesel_async::AsyncPgConnection, user: uuid::Uuid) -> Vec<i64> {
    use schema::outbox::dsl as o;
    o::outbox
        .filter(o::aggregate_id.eq(user.to_string()))
        .order(o::seq.asc())
        .select(o::seq)
        .load(conn)
        .await
        .expect("the outbox is readable")
}

#[tokio::test]
async fn a_users_next_event_waits_until_the_transaction_of_the_earlier_one_commits() {
    use identity_server::db::outbox::Events;
    let db = identity_tests::pg::TestDb::create().await;
    let events = Events { enabled: true };
    let user = uuid::Uuid::now_v7();
    let logged_in = move |session: u128| events::UserLoggedIn {
        user_id: user.to_string(),
        session_id: uuid::Uuid::from_u128(session).to_string(),
        logged_in_at: None,
    };

    // The first transaction writes its event and stays open.
    let mut first = db.connect().await;
    run(&mut first, "BEGIN").await;
    events
        .record(&mut first, user, &logged_in(1))
        .await
        .expect("the first event");

    // A second transaction of the same user: without turns it would take a later seq and
    // commit first, and the relay, seeing only it, would publish it before the first.
    let mut second = db.connect().await;
    let mut second_tx = tokio::spawn(async move {
        run(&mut second, "BEGIN").await;
        events
            .record(&mut second, user, &logged_in(2))
            .await
            .expect("the second event");
        run(&mut second, "COMMIT").await;
    });
    let mut observer = db.connect().await;
    let waiting = identity_tests::wait::until(
        "the second transaction to wait for the user's lock",
        std::time::Duration::from_secs(30),
        async || {
            let waiting = identity_tests::outbox::count(
                &mut observer,
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .await;
            (waiting > 0).then_some(())
        },
    );
    tokio::select! {
        finished = &mut second_tx => panic!(
            "the second transaction committed while the first was open ({finished:?}): its \
             event could be published before the first"
        ),
        () = waiting => {}
    }
    assert!(
        committed_seqs(&mut observer, user).await.is_empty(),
        "nothing of the user is visible yet, so nothing can be published"
    );

    run(&mut first, "COMMIT").await;
    second_tx.await.expect("the second transaction commits");
    let seqs = committed_seqs(&mut observer, user).await;
    assert_eq!(seqs.len(), 2);
    let sessions: Vec<String> = {
        use schema::outbox::dsl as o;
        let payloads: Vec<serde_json::Value> = o::outbox
            .filter(o::aggregate_id.eq(user.to_string()))
            .order(o::seq.asc())
            .select(o::payload)
            .load(&mut observer)
            .await
            .expect("the outbox is readable");
        payloads
            .into_iter()
            .map(|payload| {
                let payload: EventPayload = serde_json::from_value(payload).expect("an event");
                let bytes = payload.bytes().expect("base64");
                <events::UserLoggedIn as prost::Message>::decode(bytes.as_slice())
                    .expect("decodes")
                    .session_id
            })
            .collect()
    };
    assert_eq!(
        sessions,
        [
            uuid::Uuid::from_u128(1).to_string(),
            uuid::Uuid::from_u128(2).to_string()
        ],
        "seq follows commit order"
    );
}
