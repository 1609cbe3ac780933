//! Key rotation against the built `identity-server`: a key added with `keygen` is published
//! after SIGHUP, without a restart, and signs only after the activation delay.

use std::time::Duration;

use identity_proto::identity::v1::{self as pb, key_service_client::KeyServiceClient};
use identity_tests::{process, server::Server, wait};

const WAIT: Duration = Duration::from_secs(30);

async fn published_keys(server: &Server) -> Option<Vec<pb::PublicKey>> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .ok()?
        .connect()
        .await
        .ok()?;
    let answer = KeyServiceClient::new(channel)
        .list_public_keys(pb::ListPublicKeysRequest {})
        .await
        .ok()?;
    Some(answer.into_inner().keys)
}

#[tokio::test]
async fn a_key_added_with_keygen_is_published_after_sighup_without_a_restart() {
    // Periodic reloads far apart, so only the signal can explain the new key.
    let mut server = Server::start(&[
        ("IDENTITY_KEYS_RELOAD_SECS", "3600"),
        ("IDENTITY_KEY_ACTIVATION_DELAY_SECS", "3600"),
    ])
    .await;
    let before = published_keys(&server).await.expect("keys are listed");
    assert_eq!(before.len(), 1);
    let keys_dir = server.keys_dir.display().to_string();
    // Key files are named to the second: the server's own key may be from this very second.
    wait::until("keygen to write a second key", WAIT, async || {
        let keygen = process::run(
            "identity-server",
            &["keygen"],
            &[("IDENTITY_KEYS_DIR", keys_dir.as_str())],
        );
        keygen.status.success().then_some(())
    })
    .await;

    server.process.signal("HUP");

    let after = wait::until("ListPublicKeys to show two keys", WAIT, async || {
        published_keys(&server).await.filter(|keys| keys.len() == 2)
    })
    .await;
    assert_eq!(after[1].key_id, before[0].key_id, "newest first");
    assert!(
        !after[0].active && after[1].active,
        "the new key is published but the old one still signs: {after:?}"
    );
    server
        .process
        .wait_for_line("signing keys reloaded", WAIT)
        .await;
}
