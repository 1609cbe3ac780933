//! Key rotation while the server runs, with a clock the test moves: a new key is published as
//! soon as the directory is reloaded, signs only after the activation delay, and tokens of the
//! old key keep verifying; a malformed file keeps the keys in use.

mod support;

use std::{sync::Arc, time::Duration as StdDuration};

use identity_server::tokens::{KeyDirectory, KeyError, KeyRing, Reloaded, Rotation};
use identity_tests::wait;
use support::{
    PASSWORD, TestApp,
    calls::{active_user, current_user, kid_of, login, published_keys},
};
use time::{Duration, OffsetDateTime};

const EMAIL: &str = "ada@example.com";
const ACCESS_TTL: Duration = Duration::minutes(15);

/// A server with an active user, serving keys with `rotation`, and its key directory.
async fn app_with(rotation: Rotation) -> (TestApp, Arc<KeyDirectory>) {
    let mut keys = None;
    let app = TestApp::spawn_with(|settings| {
        let dir = settings.keys.dir().to_owned();
        // The test clock starts at the system's time, when the one key was made.
        let reopened = KeyDirectory::open(&dir, rotation, OffsetDateTime::now_utc());
        let reopened = Arc::new(reopened.expect("the key loads"));
        settings.keys = Arc::clone(&reopened);
        keys = Some(reopened);
    })
    .await;
    active_user(&app, EMAIL).await;
    (app, keys.expect("the closure ran"))
}

async fn access_token(app: &TestApp) -> String {
    login(app, EMAIL, PASSWORD)
        .await
        .expect("logs in")
        .access_token
}

/// Adds a key made at the server clock's time (a minute after the first, so the file names
/// differ) and returns when it was made, as its file name says.
fn add_key(app: &TestApp) -> OffsetDateTime {
    app.clock.advance(Duration::minutes(1));
    KeyRing::generate(&app.keys_dir, app.now()).expect("a second key");
    app.now().replace_nanosecond(0).expect("valid")
}

#[tokio::test]
async fn a_new_key_is_published_at_once_but_signs_only_after_the_activation_delay() {
    let rotation = Rotation::default();
    let delay = rotation.activation_delay;
    let (app, keys) = app_with(rotation).await;
    let old_kid = kid_of(&access_token(&app).await);
    let made = add_key(&app);

    let reloaded = keys.reload(app.now()).expect("reloads");

    assert_eq!(reloaded, Reloaded::Changed);
    let published = published_keys(&app).await;
    assert_eq!(published.len(), 2, "{published:?}");
    let new_kid = published[0].key_id.clone();
    assert_eq!(published[1].key_id, old_kid);
    assert!(!published[0].active && published[0].not_after.is_none());
    assert!(published[1].active && published[1].not_after.is_none());
    assert_eq!(
        kid_of(&access_token(&app).await),
        old_kid,
        "not signing yet"
    );

    // Just before the delay has passed, the old key still signs...
    app.clock
        .advance(made + delay - Duration::seconds(1) - app.now());
    let last_old = access_token(&app).await;
    assert_eq!(kid_of(&last_old), old_kid);

    // ...and then the new one does.
    app.clock.advance(Duration::seconds(1));
    assert_eq!(kid_of(&access_token(&app).await), new_kid);
    let published = published_keys(&app).await;
    assert!(published[0].active && published[0].not_after.is_none());
    assert!(!published[1].active);
    let not_after = published[1].not_after.expect("a replaced key has an end");
    assert_eq!(
        not_after.seconds,
        (made + delay + ACCESS_TTL).unix_timestamp(),
        "the new key's activation plus the access-token lifetime"
    );

    // Tokens of the old key keep verifying: here, and elsewhere with the published key.
    current_user(&app, &last_old)
        .await
        .expect("the old key's token is accepted");
    assert!(published.iter().any(|key| key.key_id == old_kid));
}

#[tokio::test]
async fn a_malformed_key_file_keeps_the_keys_in_use() {
    let (app, keys) = app_with(Rotation::default()).await;
    let before = published_keys(&app).await;
    let bad = app.keys_dir.join("29991231T000000Z.k4.secret");
    std::fs::write(&bad, "k4.secret.not-a-key").expect("written");

    let error = keys.reload(app.now()).expect_err("malformed");

    assert!(matches!(error, KeyError::Malformed { path, .. } if path == bad));
    assert_eq!(published_keys(&app).await, before);
    let token = access_token(&app).await;
    assert_eq!(kid_of(&token), before[0].key_id);
    current_user(&app, &token).await.expect("still accepted");
}

#[tokio::test]
async fn the_key_directory_is_checked_again_at_the_reload_interval() {
    let (app, _keys) = app_with(Rotation {
        reload_interval: StdDuration::from_millis(50),
        ..Rotation::default()
    })
    .await;

    add_key(&app);

    let published = wait::until(
        "ListPublicKeys to show the new key",
        StdDuration::from_secs(10),
        async || Some(published_keys(&app).await).filter(|keys| keys.len() == 2),
    )
    .await;
    assert!(!published[0].active && published[1].active);
}
