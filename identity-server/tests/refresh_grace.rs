//! RefreshSession retried: within the grace window the just-retired refresh token still gets a
//! fresh pair for its session (a lost answer, two tabs refreshing at once); later, or for an
//! older token of the session, reuse revokes the session as before.

mod support;

use support::{
    PASSWORD, TestApp, assert_error,
    calls::{active_user, login, refresh, session_id_of},
};
use time::Duration;
use tonic::Code;

/// The default grace window (IDENTITY_REFRESH_REUSE_GRACE_SECS).
const GRACE: Duration = Duration::seconds(20);

/// A server with an active user, logged in; returns the login's answer.
async fn logged_in() -> (TestApp, identity_proto::identity::v1::LoginResponse) {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    let session = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("logs in");
    (app, session)
}

#[track_caller]
fn assert_refused(answer: Result<impl std::fmt::Debug, tonic::Status>) {
    let status = answer.expect_err("refused");
    assert_error(&status, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
}

#[tokio::test]
async fn a_refresh_retried_within_the_grace_window_gets_a_fresh_pair_for_the_same_session() {
    let (app, session) = logged_in().await;
    let sid = session_id_of(&session.access_token);
    let lost = refresh(&app, &session.refresh_token)
        .await
        .expect("refreshes; the answer never reaches the client");

    app.clock.advance(GRACE - Duration::seconds(1));
    let retried = refresh(&app, &session.refresh_token)
        .await
        .expect("the retry is answered");

    assert_eq!(session_id_of(&retried.access_token), sid);
    assert_ne!(retried.refresh_token, lost.refresh_token, "a fresh token");
    assert_eq!(
        retried.refresh_token_expires_at, session.refresh_token_expires_at,
        "the session keeps its end"
    );
    let next = refresh(&app, &retried.refresh_token)
        .await
        .expect("the retry's token carries the session on");
    assert_eq!(session_id_of(&next.access_token), sid);
}

#[tokio::test]
async fn after_a_retry_either_answer_continues_the_session_and_then_the_other_is_only_just_retired()
{
    let (app, session) = logged_in().await;
    let first = refresh(&app, &session.refresh_token)
        .await
        .expect("refreshes");
    let second = refresh(&app, &session.refresh_token)
        .await
        .expect("retried within the window");

    // The first answer is used (the tab whose answer was stored last, say)...
    app.clock.advance(Duration::seconds(5));
    let carried_on = refresh(&app, &first.refresh_token)
        .await
        .expect("the first answer is live too");
    // ...which retires the second answer with it: just retired, so still good within the window,
    let sibling = refresh(&app, &second.refresh_token)
        .await
        .expect("its sibling, just retired, within the window");
    assert_eq!(
        session_id_of(&sibling.access_token),
        session_id_of(&carried_on.access_token)
    );

    // ...and reuse once the window has passed, which ends the session.
    app.clock.advance(GRACE);
    assert_refused(refresh(&app, &second.refresh_token).await);
    assert_refused(refresh(&app, &carried_on.refresh_token).await);
    assert_refused(refresh(&app, &sibling.refresh_token).await);
}

#[tokio::test]
async fn a_refresh_retried_after_the_grace_window_revokes_the_session() {
    let (app, session) = logged_in().await;
    let newest = refresh(&app, &session.refresh_token)
        .await
        .expect("refreshes");

    app.clock.advance(GRACE);
    assert_refused(refresh(&app, &session.refresh_token).await);

    assert_refused(refresh(&app, &newest.refresh_token).await);
}

#[tokio::test]
async fn an_older_token_of_the_session_revokes_it_even_within_the_grace_window() {
    let (app, session) = logged_in().await;
    let second = refresh(&app, &session.refresh_token)
        .await
        .expect("refreshes");
    app.clock.advance(Duration::seconds(1));
    let third = refresh(&app, &second.refresh_token)
        .await
        .expect("refreshes again");

    // The login's token was retired a second ago, but it is not the latest retired one.
    app.clock.advance(Duration::seconds(1));
    assert_refused(refresh(&app, &session.refresh_token).await);

    assert_refused(refresh(&app, &third.refresh_token).await);
}

#[tokio::test]
async fn two_concurrent_refreshes_of_one_token_both_succeed_for_the_same_session() {
    let (app, session) = logged_in().await;

    let (one, two) = tokio::join!(
        refresh(&app, &session.refresh_token),
        refresh(&app, &session.refresh_token)
    );

    let (one, two) = (
        one.expect("the first succeeds"),
        two.expect("so does the second"),
    );
    let sid = session_id_of(&session.access_token);
    assert_eq!(session_id_of(&one.access_token), sid);
    assert_eq!(session_id_of(&two.access_token), sid);
    assert_ne!(one.refresh_token, two.refresh_token);
    refresh(&app, &two.refresh_token)
        .await
        .expect("the session goes on");
}
