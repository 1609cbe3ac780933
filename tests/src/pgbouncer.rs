//! A real PgBouncer (Debian's `pgbouncer` package, which `scripts/test` installs when missing)
//! in transaction pooling mode in front of a PostgreSQL server, as managed PostgreSQL services
//! and CloudNativePG's `Pooler` put one: started on a free port of 127.0.0.1 with a generated
//! configuration, a small server pool, and its log captured.
//!
//! Each client transaction gets whichever server connection is free, and gives it back when it
//! ends: nothing a client leaves on a session (prepared statements, `SET`, advisory locks,
//! `LISTEN`) is there for its next transaction.

use std::{path::PathBuf, time::Duration};

use crate::{pg::free_port, process::Process, wait};

/// Debian's place for the binary (`/usr/sbin`, not on every PATH).
const PROGRAM: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer; killed, and its directory removed, when dropped.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    user: String,
    dir: PathBuf,
    process: Process,
}

impl PgBouncer {
    /// Starts PgBouncer in transaction mode in front of the server `server_url` names (any of its
    /// databases, as the connecting user), with at most `pool_size` server connections per
    /// database, and returns once it accepts connections.
    pub async fn start(server_url: &str, pool_size: u32) -> Self {
        let server = url::Url::parse(server_url).expect("the server URL parses");
        let host = server.host_str().expect("the server URL names a host");
        let port = server.port().unwrap_or(5432);
        let user = match server.username() {
            "" => "postgres".to_owned(),
            user => user.to_owned(),
        };
        let password = server.password().map(|p| format!(" password={p}"));

        let dir = std::env::temp_dir().join(format!(
            "identity-pgbouncer-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let listen_port = free_port().expect("a free port");
        let conf = dir.join("pgbouncer.ini");
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n"))
            .expect("writes the user list");
        std::fs::write(
            &conf,
            format!(
                "; Written by identity-tests (tests/src/pgbouncer.rs).
[databases]
* = host={host} port={port} user={user}{password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
admin_users = {user}
; The log goes to standard error, which the test captures.
logfile =
pidfile =
",
                password = password.unwrap_or_default(),
                userlist = dir.join("userlist.txt").display(),
            ),
        )
        .expect("writes the configuration");
        let conf = conf.display().to_string();
        // PgBouncer refuses to run as root; -u makes it switch to the postgres user.
        let mut args = vec![conf.as_str()];
        if crate::pg::is_root() {
            args.extend(["-u", "postgres"]);
            std::process::Command::new("chmod")
                .args(["-R", "a+rX"])
                .arg(&dir)
                .status()
                .expect("chmod runs");
        }
        let mut process = Process::spawn_program(PROGRAM, &args, &[]);
        process
            .wait_for_line("listening on", Duration::from_secs(30))
            .await;
        let addr = format!("127.0.0.1:{listen_port}");
        wait::until(
            "pgbouncer to accept connections",
            Duration::from_secs(30),
            async || tokio::net::TcpStream::connect(&addr).await.ok().map(drop),
        )
        .await;
        Self {
            port: listen_port,
            user,
            dir,
            process,
        }
    }

    /// A URL of `database` through PgBouncer (no TLS), with `query` (e.g. `?pool_mode=...`)
    /// appended as given.
    pub fn url(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}{query}",
            self.user, self.port
        )
    }

    /// What PgBouncer logged so far.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
