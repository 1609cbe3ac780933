-- Least privilege: two group roles, granted exactly what each binary's queries need. Deployments
-- give each binary a login role that is a member of one of them (or the role itself LOGIN with a
-- password; see the README's "Database roles"). The role that runs the migrations owns the
-- schema and needs CREATEROLE only if these roles do not exist yet (CloudNativePG's managed
-- roles, or the bootstrap script, create them beforehand).
--
-- Roles are shared by every database of the cluster: another database's migration may create
-- them at the same moment, so "already exists" is not an error.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'identity_server') THEN
        BEGIN
            CREATE ROLE identity_server NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'identity_relay') THEN
        BEGIN
            CREATE ROLE identity_relay NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
END
$$;

-- identity-server: reads and writes its tables, never their definitions. It reads the migration
-- ledger to refuse serving while migrations are pending.
GRANT USAGE ON SCHEMA public TO identity_server, identity_relay;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    users, verification_secrets, sessions, refresh_tokens, password_reset_tokens,
    login_throttle, rate_limits, challenge_solutions, email_sends, outbox_dead
    TO identity_server;
-- The outbox: the server only adds to it (the relay takes messages out).
GRANT INSERT ON outbox TO identity_server;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO identity_server;
GRANT SELECT ON __diesel_schema_migrations TO identity_server;
-- Tables later migrations create are the server's too, unless a migration says otherwise.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO identity_server;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE ON SEQUENCES TO identity_server;

-- outbox-relay: claims, settles and deletes outbox rows, and moves the undeliverable ones to
-- outbox_dead. Nothing else: no users, no password hashes, no sessions, no tokens.
GRANT SELECT, UPDATE, DELETE ON outbox TO identity_relay;
GRANT INSERT ON outbox_dead TO identity_relay;
