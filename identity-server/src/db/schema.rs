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
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        status -> Text,
        password_hash -> Text,
        display_name -> Text,
        locale -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        verified_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    verification_secrets (id) {
        id -> Uuid,
        user_id -> Uuid,
        token_hash -> Bytea,
        code_mac -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        failed_code_attempts -> Int4,
        consumed_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(verification_secrets -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(outbox, users, verification_secrets,);
