// @generated automatically by Diesel CLI.

diesel::table! {
    outbox (id) {
        id -> Uuid,
        aggregate_type -> Text,
        aggregate_id -> Text,
        kind -> Text,
        payload -> Jsonb,
        traceparent -> Nullable<Text>,
        created_at -> Timestamptz,
        available_at -> Timestamptz,
        attempts -> Int4,
        lease_token -> Nullable<Uuid>,
        leased_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        tracestate -> Nullable<Text>,
        channel -> Text,
        seq -> Int8,
        head -> Bool,
    }
}

diesel::table! {
    outbox_dead (id) {
        id -> Uuid,
        aggregate_type -> Text,
        aggregate_id -> Text,
        kind -> Text,
        payload -> Jsonb,
        traceparent -> Nullable<Text>,
        created_at -> Timestamptz,
        attempts -> Int4,
        reason -> Text,
        dead_at -> Timestamptz,
        tracestate -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(outbox, outbox_dead,);
