//! The message a domain event becomes on JetStream: CloudEvents 1.0 in binary content mode (the
//! NATS protocol binding): the event's protobuf bytes are the message body, and its attributes
//! are `ce-` headers.
//!
//! | header             | value                                                        |
//! |--------------------|--------------------------------------------------------------|
//! | `Nats-Msg-Id`      | the outbox id (JetStream drops a republished duplicate)      |
//! | `ce-specversion`   | `1.0`                                                        |
//! | `ce-id`            | the outbox id, a UUID v7                                     |
//! | `ce-source`        | `RELAY_EVENTS_SOURCE`                                        |
//! | `ce-type`          | the event type, e.g. `identity.user.registered.v1`           |
//! | `ce-subject`       | the user id                                                  |
//! | `ce-time`          | when the change was written (RFC 3339)                       |
//! | `content-type`     | `application/protobuf` (the CloudEvents `datacontenttype`)   |
//! | `ce-dataschema`    | the protobuf message's full name, e.g. `identity.events.v1.UserRegistered` |
//! | `ce-traceparent`, `ce-tracestate` | the W3C trace context of the change (CloudEvents' distributed tracing extension) |
//!
//! The NATS subject is the type followed by the user id, e.g.
//! `identity.user.registered.v1.0193…`: consumers filter by type (`identity.user.>`) and one
//! user's events share a subject suffix.

use async_nats::{HeaderMap, header::NATS_MESSAGE_ID, jetstream::message::PublishMessage};
use identity_proto::outbox::EventPayload;
use time::format_description::well_known::Rfc3339;

use crate::store::Claimed;

/// The media type of every event's data.
pub const CONTENT_TYPE: &str = "application/protobuf";

/// A domain event ready to publish.
#[derive(Debug)]
pub struct Envelope {
    pub subject: String,
    pub headers: HeaderMap,
    /// The event's protobuf bytes.
    pub data: bytes::Bytes,
}

impl Envelope {
    /// The JetStream publication of the envelope.
    pub fn publication(self) -> (String, PublishMessage) {
        let publish = PublishMessage::build()
            .headers(self.headers)
            .payload(self.data);
        (self.subject, publish)
    }
}

/// Builds the envelope of `event` from `source`. The error is why the row can never be
/// published (a payload that is not an event, or a user id that cannot be part of a subject):
/// it is dead-lettered with that reason.
pub fn envelope(event: &Claimed, source: &str) -> Result<Envelope, String> {
    let data = serde_json::from_value::<EventPayload>(event.payload.clone())
        .map_err(|e| format!("the payload is not an event: {e}"))?
        .bytes()
        .map_err(|e| format!("the event's data is not base64: {e}"))?;
    let subject_safe = |token: &str| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !subject_safe(&event.aggregate_id) {
        return Err("the user id cannot be part of a NATS subject".to_owned());
    }
    if !event.kind.split('.').all(subject_safe) {
        return Err("the event type cannot be a NATS subject".to_owned());
    }
    let id = event.id.to_string();
    let time = event
        .created_at
        .format(&Rfc3339)
        .map_err(|e| format!("cannot format the event's time: {e}"))?;
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, id.as_str());
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id.as_str());
    headers.insert("ce-source", source);
    headers.insert("ce-type", event.kind.as_str());
    headers.insert("ce-subject", event.aggregate_id.as_str());
    headers.insert("ce-time", time);
    headers.insert("content-type", CONTENT_TYPE);
    if let Some(message) = identity_proto::outbox::message_of(&event.kind) {
        headers.insert("ce-dataschema", message);
    }
    if let Some(traceparent) = &event.traceparent {
        headers.insert("ce-traceparent", traceparent.as_str());
    }
    // Capped as the server caps what it stores (a row written before the cap may hold more).
    if let Some(tracestate) = event
        .tracestate
        .as_deref()
        .and_then(identity_proto::telemetry::TraceContext::capped_tracestate)
    {
        headers.insert("ce-tracestate", tracestate.as_str());
    }
    Ok(Envelope {
        subject: format!("{}.{}", event.kind, event.aggregate_id),
        headers,
        data: data.into(),
    })
}

#[cfg(test)]
mod tests {
    use identity_proto::{identity::events::v1::UserLoggedIn, outbox::DomainEvent};
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;

    fn claimed(event: &impl DomainEvent, user: &str) -> Claimed {
        Claimed {
            id: Uuid::now_v7(),
            aggregate_id: user.to_owned(),
            kind: event_type(event).to_owned(),
            payload: serde_json::to_value(EventPayload::of(event)).expect("json"),
            attempts: 0,
            created_at: datetime!(2026-12-01 08:00:00.25 UTC),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
            claimed_at: datetime!(2026-12-01 08:00:01 UTC),
        }
    }

    fn event_type<E: DomainEvent>(_: &E) -> &'static str {
        E::TYPE
    }

    #[test]
    fn an_event_becomes_a_binary_mode_cloudevent_on_a_per_user_subject() {
        let user = Uuid::now_v7().to_string();
        let event = UserLoggedIn {
            user_id: user.clone(),
            session_id: Uuid::now_v7().to_string(),
            logged_in_at: None,
        };
        let row = claimed(&event, &user);
        let envelope = envelope(&row, "/identity").expect("an envelope");
        assert_eq!(
            envelope.subject,
            format!("identity.user.logged_in.v1.{user}")
        );
        let header = |name: &str| envelope.headers.get(name).map(|v| v.as_str().to_owned());
        let id = row.id.to_string();
        assert_eq!(header("Nats-Msg-Id"), Some(id.clone()));
        assert_eq!(header("ce-id"), Some(id));
        assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(header("ce-source").as_deref(), Some("/identity"));
        assert_eq!(header("ce-type").as_deref(), Some(UserLoggedIn::TYPE));
        assert_eq!(header("ce-subject"), Some(user));
        assert_eq!(
            header("ce-time").as_deref(),
            Some("2026-12-01T08:00:00.25Z")
        );
        assert_eq!(header("content-type").as_deref(), Some(CONTENT_TYPE));
        assert_eq!(
            header("ce-dataschema").as_deref(),
            Some(UserLoggedIn::MESSAGE)
        );
        assert_eq!(header("ce-traceparent"), row.traceparent);
        let decoded = <UserLoggedIn as prost::Message>::decode(envelope.data.as_ref())
            .expect("the body is the protobuf event");
        assert_eq!(decoded, event);
    }

    #[test]
    fn the_tracestate_header_is_capped_at_member_boundaries() {
        let event = UserLoggedIn::default();
        let mut row = claimed(&event, "u1");
        let long = (0..30).map(|i| format!("k{i:02}={}", "v".repeat(250)));
        row.tracestate = Some(
            std::iter::once("congo=t61rcWkgMzE".to_owned())
                .chain(long)
                .collect::<Vec<_>>()
                .join(","),
        );
        let envelope = envelope(&row, "/identity").expect("an envelope");
        assert_eq!(
            envelope.headers.get("ce-tracestate").map(|v| v.as_str()),
            Some("congo=t61rcWkgMzE")
        );
    }

    #[test]
    fn a_row_that_cannot_be_an_event_is_refused_with_its_reason() {
        let event = UserLoggedIn::default();
        let mut row = claimed(&event, "user.with.dots");
        let error = envelope(&row, "/identity").expect_err("refused");
        assert!(error.contains("subject"), "{error}");

        row.aggregate_id = "u1".into();
        row.payload = serde_json::json!({ "recipient": "ada@example.com" });
        let error = envelope(&row, "/identity").expect_err("refused");
        assert!(error.contains("not an event"), "{error}");
    }
}
