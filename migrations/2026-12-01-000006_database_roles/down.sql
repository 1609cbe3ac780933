-- The roles stay (other databases of the cluster may use them); their grants here go.
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE ON SEQUENCES FROM identity_server;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM identity_server;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM identity_server, identity_relay;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM identity_server;
REVOKE USAGE ON SCHEMA public FROM identity_server, identity_relay;
