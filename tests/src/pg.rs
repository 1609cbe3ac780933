//! PostgreSQL for tests.
//!
//! [`TestDb::create`] gives each test its own database, cloned from a template that holds the
//! migrated schema; cloning takes milliseconds, so tests stay independent and fast. The server
//! to use comes from `DATABASE_URL` (scripts/test starts a private cluster and sets it); the
//! role needs CREATEDB. [`Cluster`] starts a throwaway server of its own, for tests that stop
//! and restart the database.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use diesel::sql_types::{BigInt, Text};
use diesel_async::{
    AsyncConnection, AsyncPgConnection, RunQueryDsl,
    async_connection_wrapper::AsyncConnectionWrapper,
};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use sha2::{Digest, Sha256};

/// The migrations every test database gets.
fn migrations_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")
}

/// The admin URL tests create databases with.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: run the tests with scripts/test, which starts a private \
             PostgreSQL, or point DATABASE_URL at a server where you may CREATE DATABASE"
        )
    })
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database that belongs to one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// Creates a fresh, migrated database on the server `DATABASE_URL` names.
    pub async fn create() -> Self {
        Self::create_on(&admin_url())
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database: {e:#}"))
    }

    /// Same as [`TestDb::create`], on the server `admin_url` names.
    pub async fn create_on(admin_url: &str) -> anyhow::Result<Self> {
        let template = ensure_template(admin_url).await?;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AsyncPgConnection::establish(admin_url).await?;
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await?;
        Ok(Self {
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// Creates an empty database (no schema), for tests of the migrate command.
    pub async fn create_empty() -> Self {
        Self::create_empty_on(&admin_url())
            .await
            .unwrap_or_else(|e| panic!("cannot create an empty test database: {e:#}"))
    }

    /// Same as [`TestDb::create_empty`], on the server `admin_url` names.
    pub async fn create_empty_on(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AsyncPgConnection::establish(admin_url).await?;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        Ok(Self {
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// Drops this database on the server `admin_url` names, closing its connections (a
    /// benchmark's, which can hold gigabytes).
    pub async fn drop_on(self, admin_url: &str) -> anyhow::Result<()> {
        let mut admin = AsyncPgConnection::establish(admin_url).await?;
        diesel::sql_query(format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await?;
        Ok(())
    }

    /// A new connection to this database.
    pub async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name))
    }
}

/// Creates the template for the current migrations once per server; concurrent test processes
/// take turns on an advisory lock. The name carries a digest of the migration files, so an
/// edited migration gets a new template.
async fn ensure_template(admin_url: &str) -> anyhow::Result<String> {
    let digest = migrations_digest()?;
    let template = format!("tpl_{}", &digest[..16]);
    let lock_key = i64::from_str_radix(&digest[..15], 16)?;

    let mut admin = AsyncPgConnection::establish(admin_url).await?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(lock_key)
        .execute(&mut admin)
        .await?;
    let exists = diesel::sql_query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(&template)
        .execute(&mut admin)
        .await?
        == 1;
    if !exists {
        // Build under another name and rename at the end, so a crash halfway leaves nothing
        // that looks finished.
        let building = format!("{template}_building");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {building}"))
            .execute(&mut admin)
            .await?;
        diesel::sql_query(format!("CREATE DATABASE {building}"))
            .execute(&mut admin)
            .await?;
        migrate(&with_database(admin_url, &building)).await?;
        diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {template}"))
            .execute(&mut admin)
            .await?;
    }
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(lock_key)
        .execute(&mut admin)
        .await?;
    Ok(template)
}

/// Applies `migrations/` to the database at `url`.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)?;
        let migrations = FileBasedMigrations::from_path(migrations_dir())
            .map_err(|e| anyhow::anyhow!("reading migrations: {e}"))?;
        conn.run_pending_migrations(migrations)
            .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))?;
        Ok(())
    })
    .await?
}

fn migrations_digest() -> anyhow::Result<String> {
    let mut files = Vec::new();
    for entry in walk(&migrations_dir())? {
        files.push((entry.clone(), std::fs::read(&entry)?));
    }
    files.sort();
    let mut hasher = Sha256::new();
    for (path, contents) in files {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(&contents);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// A PostgreSQL server of a test's own, in a temporary directory, that the test may stop and
/// start. Removed when dropped. Uses the binaries in `PG_BINDIR` (or the newest
/// `/usr/lib/postgresql/*/bin`); as root it runs them as the `postgres` user, since PostgreSQL
/// refuses to run as root.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The server certificate (with its chain) and private key of a TLS-only [`Cluster`], in PEM.
#[derive(Debug)]
pub struct ServerTls {
    /// The server certificate, optionally followed by intermediates.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl Cluster {
    /// Creates and starts a cluster on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let cluster = Self::init()?;
        cluster.resume()?;
        Ok(cluster)
    }

    /// Creates and starts a cluster with `settings` (lines of `postgresql.conf`, e.g.
    /// `lc_messages = 'de_DE.UTF-8'`) added to its configuration.
    pub fn start_with(settings: &str) -> anyhow::Result<Self> {
        let cluster = Self::init()?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(cluster.data().join("postgresql.conf"))?;
        std::io::Write::write_all(&mut conf, format!("\n{settings}\n").as_bytes())?;
        cluster.resume()?;
        Ok(cluster)
    }

    /// Creates and starts a cluster that speaks TLS with `tls` and, over TCP, accepts TLS
    /// connections only (`hostssl` in pg_hba.conf), as managed PostgreSQL services do. Its Unix
    /// socket ([`Cluster::socket_url`]) stays open without TLS, for the test's own set-up.
    pub fn start_tls(tls: &ServerTls) -> anyhow::Result<Self> {
        let cluster = Self::init()?;
        let data = cluster.data();
        write_private(&data.join("server.crt"), &tls.cert_pem)?;
        write_private(&data.join("server.key"), &tls.key_pem)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )?;
        if cluster.as_postgres {
            run(Command::new("chown").arg("-R").arg("postgres").arg(&data))?;
        }
        cluster.resume()?;
        Ok(cluster)
    }

    /// Creates the data directory (initdb) on a free port, without starting the server.
    fn init() -> anyhow::Result<Self> {
        let bindir = pg_bindir()?;
        let dir =
            std::env::temp_dir().join(format!("identity-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres").arg(&dir))?;
        }
        let cluster = Self {
            dir,
            bindir,
            port: free_port()?,
            as_postgres,
        };
        cluster.pg(&format!(
            "initdb -D {} -U postgres --auth=trust --no-sync -E UTF8 >/dev/null",
            cluster.data().display()
        ))?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// URL of the `postgres` database, over TCP.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// URL of the `postgres` database over the Unix socket (no TLS needed there).
    pub fn socket_url(&self) -> String {
        // The socket directory, percent-encoded, stands where a host name would.
        let dir = self.dir.display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{dir}:{}/postgres", self.port)
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg(&format!(
            "pg_ctl -D {} -m fast -w stop >/dev/null",
            self.data().display()
        ))
    }

    /// Starts the server again on the same port, and waits until it accepts connections.
    pub fn resume(&self) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        self.pg(&format!(
            "pg_ctl -D {} -o '{options}' -l {}/log -w -t 30 start >/dev/null",
            self.data().display(),
            self.dir.display()
        ))
    }

    fn pg(&self, command: &str) -> anyhow::Result<()> {
        let command = format!("PATH={}:$PATH {command}", self.bindir.display());
        if self.as_postgres {
            run(Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &command]))
        } else {
            run(Command::new("sh").args(["-c", &command]))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg(&format!(
            "pg_ctl -D {} -m immediate stop >/dev/null 2>&1",
            self.data().display()
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `contents` to a new file only its owner may read (PostgreSQL insists on it for keys).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    Ok(())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Ok(dir.into());
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.retain(|dir| dir.join("initdb").exists());
    candidates.sort();
    candidates.pop().context(
        "no PostgreSQL server binaries: set PG_BINDIR or run scripts/test, which installs them",
    )
}

/// Whether the tests run as root (then servers that refuse root run as `postgres`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One line of an `EXPLAIN`'s output, as `sql_query("EXPLAIN ...").load(conn)` reads it.
#[derive(Debug, diesel::QueryableByName)]
pub struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    pub line: String,
}

/// The most rows one scan of `table` read in the lines of an `EXPLAIN (ANALYZE)`: the rows it
/// returned and those its filter removed, over all its loops. A test that a statement's cost
/// does not grow with a table bounds this.
pub fn most_rows_read(plan: &[String], table: &str) -> i64 {
    let number_after = |line: &str, label: &str| -> Option<i64> {
        let digits = line.split(label).nth(1)?;
        digits
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let scans = format!(" on {table}");
    let mut most = 0;
    for (i, line) in plan.iter().enumerate() {
        if !(line.contains("Scan") && line.contains(&scans)) {
            continue;
        }
        let returned = number_after(line, "actual rows=").unwrap_or_default();
        let loops = number_after(line, "loops=").unwrap_or(1);
        // The scan's details follow it, up to the next node.
        let removed: i64 = plan[i + 1..]
            .iter()
            .take_while(|l| !l.contains("->"))
            .filter_map(|l| number_after(l, "Rows Removed by Filter: "))
            .sum();
        most = most.max((returned + removed) * loops);
    }
    most
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "t1"),
            "postgres://u:p@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
    }
}
