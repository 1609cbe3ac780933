//! Calls and helpers for the session tests: signing up an active user, Login, RefreshSession,
//! GetCurrentUser, ListPublicKeys, and reading tokens as another service would.

use identity_proto::identity::v1::{
    self as pb, key_service_client::KeyServiceClient, session_service_client::SessionServiceClient,
    user_service_client::UserServiceClient,
};
use pasetors::{
    Public, claims::ClaimsValidationRules, footer::Footer, keys::AsymmetricPublicKey, public,
    token::UntrustedToken, version4::V4,
};
use tonic::{Request, Status, transport::Channel};

use super::TestApp;

/// Registers and verifies `email`, as a user would.
pub async fn active_user(app: &TestApp, email: &str) {
    app.register(email).await.expect("registers");
    let email_message = app.email_to(email).await;
    app.verify_token(&email_message.token)
        .await
        .expect("verifies");
}

pub fn sessions(app: &TestApp) -> SessionServiceClient<Channel> {
    SessionServiceClient::new(app.channel.clone())
}

pub async fn login(
    app: &TestApp,
    email: &str,
    password: &str,
) -> Result<pb::LoginResponse, Status> {
    sessions(app)
        .login(pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn refresh(app: &TestApp, token: &str) -> Result<pb::RefreshSessionResponse, Status> {
    sessions(app)
        .refresh_session(pb::RefreshSessionRequest {
            refresh_token: token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn current_user(app: &TestApp, access_token: &str) -> Result<pb::User, Status> {
    let mut request = Request::new(pb::GetCurrentUserRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {access_token}").parse().expect("ASCII"),
    );
    UserServiceClient::new(app.channel.clone())
        .get_current_user(request)
        .await
        .map(|r| r.into_inner().user.expect("a user"))
}

pub async fn published_keys(app: &TestApp) -> Vec<pb::PublicKey> {
    KeyServiceClient::new(app.channel.clone())
        .list_public_keys(pb::ListPublicKeysRequest {})
        .await
        .expect("keys are listed")
        .into_inner()
        .keys
}

/// Verifies `token` as another service would: nothing but pasetors and the published keys.
pub fn verify_offline(
    keys: &[pb::PublicKey],
    token: &str,
    audience: &str,
) -> Result<serde_json::Value, String> {
    let untrusted =
        UntrustedToken::<Public, V4>::try_from(token).map_err(|e| format!("parse: {e:?}"))?;
    let mut footer = Footer::new();
    footer
        .parse_bytes(untrusted.untrusted_footer())
        .map_err(|e| format!("footer: {e:?}"))?;
    let kid = footer
        .get_claim("kid")
        .and_then(|v| v.as_str())
        .ok_or("no kid")?
        .to_owned();
    let published = keys.iter().find(|k| k.key_id == kid).ok_or("unknown key")?;
    let key = AsymmetricPublicKey::<V4>::try_from(published.public_key.as_str())
        .map_err(|e| format!("key: {e:?}"))?;
    let mut rules = ClaimsValidationRules::new();
    rules.validate_issuer_with("identity");
    rules.validate_audience_with(audience);
    let trusted = public::verify(&key, &untrusted, &rules, None, None)
        .map_err(|e| format!("verify: {e:?}"))?;
    let claims = trusted.payload_claims().ok_or("no claims")?;
    serde_json::from_str(&claims.to_string().map_err(|e| format!("{e:?}"))?)
        .map_err(|e| e.to_string())
}

/// The key id in a token's footer (not verified).
pub fn kid_of(token: &str) -> String {
    let untrusted = UntrustedToken::<Public, V4>::try_from(token).expect("a token");
    let mut footer = Footer::new();
    footer
        .parse_bytes(untrusted.untrusted_footer())
        .expect("a footer");
    footer
        .get_claim("kid")
        .and_then(|v| v.as_str())
        .expect("a kid")
        .to_owned()
}

/// The session id (`sid`) in an access token's payload (not verified).
pub fn session_id_of(access_token: &str) -> String {
    let untrusted = UntrustedToken::<Public, V4>::try_from(access_token).expect("a token");
    let claims: serde_json::Value =
        serde_json::from_slice(untrusted.untrusted_payload()).expect("a JSON payload");
    claims["sid"].as_str().expect("a sid").to_owned()
}
