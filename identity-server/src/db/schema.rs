// @generated automatically by Diesel CLI.

diesel::table! {
    challenge_solutions (challenge) {
        challenge -> Bytea,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    email_sends (id) {
        id -> Uuid,
        address_key -> Text,
        kind -> Text,
        sent_at -> Timestamptz,
    }
}

diesel::table! {
    login_throttle (email_key) {
        email_key -> Text,
        failures -> Int4,
        last_failed_at -> Timestamptz,
        blocked_until -> Timestamptz,
        refused_attempts -> Int4,
    }
}

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
    password_reset_tokens (id) {
        id -> Uuid,
        user_id -> Uuid,
        token_hash -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        consumed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Uuid,
        created_at -> Timestamptz,
        retired_at -> Nullable<Timestamptz>,
        generation -> Int8,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
        generation -> Int8,
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
        failed_code_attempts -> Int4,
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

diesel::joinable!(password_reset_tokens -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(verification_secrets -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    challenge_solutions,
    email_sends,
    login_throttle,
    outbox,
    password_reset_tokens,
    refresh_tokens,
    sessions,
    users,
    verification_secrets,
);
