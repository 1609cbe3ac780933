//! Connections through a transaction pooler (`pool_mode=transaction` in `DATABASE_URL`):
//! PgBouncer in transaction mode, the usual pooler in front of managed PostgreSQL and
//! CloudNativePG's `Pooler`. Each transaction there runs on whichever server connection is
//! free, and a statement outside a transaction is a transaction of its own; nothing a client
//! leaves on a server session is there for its next transaction. Three things break:
//!
//! - **Start-up `options`**, where the session limits are set otherwise: PgBouncer refuses the
//!   connection (`unsupported startup parameter: options`), or drops them when told to ignore
//!   them. Here each batch of messages sets them for its transaction instead (`set_config(...,
//!   true)`, which is `SET LOCAL`), so they hold whichever server runs it.
//! - **Named prepared statements**: tokio-postgres prepares every statement under a name
//!   (`s0`, `s1`, …) in one round trip and runs it in the next, and diesel-async keeps them for
//!   reuse. Through the pooler the two round trips can reach different servers (`prepared
//!   statement "s3" does not exist`), and a statement left on a server meets another client's
//!   of the same name (`prepared statement "s22" already exists`). PgBouncer 1.21 can track
//!   them (`max_prepared_statements`); 1.18, Debian's, cannot. Here the statements stay on the
//!   client: each is sent as the unnamed statement, parsed again in the batch that runs it.
//! - **Session state**: `LISTEN`, session advisory locks (the migration lock), `SET`. Those
//!   callers need a direct connection: `identity-server migrate` refuses a pooler URL, the
//!   check `serve` makes takes a transaction-scoped lock, and the relay listens on
//!   `RELAY_LISTEN_DATABASE_URL` or polls.
//!
//! The cost: the server parses and plans each statement each time it runs (no cached plan), and
//! runs one small `SELECT` more per batch; no round trip is added (a cached statement runs in
//! one, as before). The rewriting is in [`rewrite`]; [`stream`] applies it to the bytes.
//!
//! tokio-postgres offers no hook on its messages, so this module opens the socket itself (each
//! host of the URL in turn, `hostaddr`, `connect_timeout`, TCP keep-alives), negotiates TLS as
//! `sslmode` says, wraps the stream, and hands it to tokio-postgres' `connect_raw`.
//! `target_session_attrs` and `load_balance_hosts` are not applied: a pooler is one address.

mod rewrite;
mod stream;

use std::{io, time::Duration};

use socket2::{SockRef, TcpKeepalive};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};
use tokio_postgres::{
    Client, Connection, NoTls,
    config::Host,
    tls::{MakeTlsConnect, NoTlsStream, TlsConnect},
};
use tokio_postgres_rustls::MakeRustlsConnect;

use self::{rewrite::Rewriter, stream::PoolerStream};
use super::{SessionTimeouts, SslMode};

/// A byte stream to the pooler: TCP, Unix socket, or TLS over either.
pub(super) trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// Connects as `config` says (TLS by `ssl_mode`), with `limits` set in every transaction.
pub(super) async fn connect(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    ssl_mode: SslMode,
    limits: Option<SessionTimeouts>,
) -> Result<
    (
        Client,
        Connection<PoolerStream<Box<dyn Socket>>, NoTlsStream>,
    ),
    String,
> {
    let (socket, hostname) = open(config).await?;
    let socket = negotiate_tls(socket, hostname, tls, ssl_mode).await?;
    let stream = PoolerStream::new(socket, Rewriter::new(limits));
    let mut config = config.clone();
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    config
        .connect_raw(stream, NoTls)
        .await
        .map_err(|e| super::error_chain(&e))
}

/// The first host of `config` that accepts a connection, and the name to check its
/// certificate against (none for a Unix socket).
async fn open(
    config: &tokio_postgres::Config,
) -> Result<(Box<dyn Socket>, Option<String>), String> {
    let ports = config.get_ports();
    let timeout = config.get_connect_timeout().copied();
    let mut failures = Vec::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let opened = match host {
            Host::Tcp(name) => {
                let target = config
                    .get_hostaddrs()
                    .get(i)
                    .map_or_else(|| name.clone(), ToString::to_string);
                within(timeout, TcpStream::connect((target.as_str(), port)))
                    .await
                    .and_then(|stream| tune(config, stream))
                    .map(|stream| (Box::new(stream) as Box<dyn Socket>, Some(name.clone())))
            }
            Host::Unix(dir) => within(
                timeout,
                UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))),
            )
            .await
            .map(|stream| (Box::new(stream) as Box<dyn Socket>, None)),
        };
        match opened {
            Ok(opened) => return Ok(opened),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(match failures.is_empty() {
        true => "the URL names no host".to_owned(),
        false => failures.join("; "),
    })
}

async fn within<T>(
    timeout: Option<Duration>,
    connect: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match timeout {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection timed out",
                ))
            }),
        None => connect.await,
    }
}

/// No Nagle delay (each batch is one write), and TCP keep-alives as the URL asks.
fn tune(config: &tokio_postgres::Config, stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    if config.get_keepalives() {
        let mut keepalive = TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    }
    Ok(stream)
}

/// PostgreSQL's TLS negotiation (an `SSLRequest`, answered `S` or `N`), then the handshake.
async fn negotiate_tls(
    mut socket: Box<dyn Socket>,
    hostname: Option<String>,
    tls: &MakeRustlsConnect,
    mode: SslMode,
) -> Result<Box<dyn Socket>, String> {
    if mode == SslMode::Disable {
        return Ok(socket);
    }
    let io = |e: io::Error| format!("TLS negotiation failed: {e}");
    // Length 8, then the SSLRequest code 1234.5679.
    socket
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(io)?;
    let answer = socket.read_u8().await.map_err(io)?;
    if answer != b'S' {
        return match mode {
            SslMode::Prefer => Ok(socket),
            _ => Err("the server does not support TLS".into()),
        };
    }
    let hostname = hostname.ok_or("no host name to check the certificate against")?;
    let Ok(connect) =
        MakeTlsConnect::<Box<dyn Socket>>::make_tls_connect(&mut tls.clone(), &hostname);
    let stream = TlsConnect::connect(connect, socket).await.map_err(|e| {
        let hint = super::tls::certificate_hint(&e)
            .map(|hint| format!(" ({hint})"))
            .unwrap_or_default();
        format!(
            "error performing TLS handshake: {}{hint}",
            super::error_chain(&e)
        )
    })?;
    Ok(Box::new(stream))
}
