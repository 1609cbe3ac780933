//! A real nginx (Debian's `nginx` package, which `scripts/drill` and `scripts/test` install when
//! missing) load-balancing gRPC over cleartext HTTP/2 across identity-server replicas, as an
//! ingress does: `grpc_pass` round-robin, `x-forwarded-for` appended, upstream failures answered
//! as gRPC `UNAVAILABLE`, and an access log naming the upstream(s) of each call.

use std::{path::PathBuf, time::Duration};

use tonic::transport::Channel;

use crate::{pg::free_port, process::Process, wait};

/// Debian's place for the binary (`/usr/sbin`, not on every PATH).
const PROGRAM: &str = "/usr/sbin/nginx";

/// A running nginx; killed, and its prefix directory removed, when dropped.
#[derive(Debug)]
pub struct Nginx {
    addr: String,
    dir: PathBuf,
    process: Process,
}

/// One line of the access log: one call, as nginx passed it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The `x-forwarded-for` the client sent (before nginx appended its peer), or "".
    pub forwarded_for: String,
    /// The upstreams tried, in order (`host:port`); more than one when nginx passed the call on
    /// to the next upstream.
    pub upstreams: Vec<String>,
    /// The HTTP status of each upstream's answer (`502` where nginx got none), in order.
    pub upstream_statuses: Vec<String>,
    /// The HTTP status nginx answered the client with (gRPC answers with 200; the error page
    /// that turns a failed upstream into `UNAVAILABLE` answers with 204).
    pub status: u16,
    /// The upstream's `grpc-status` (a header in a trailers-only answer, else a trailer); empty
    /// when no upstream answered.
    pub grpc_status: String,
}

impl Nginx {
    /// Starts nginx in front of `upstreams` (each `host:port`, plaintext gRPC), listening with
    /// cleartext HTTP/2 on a free port of 127.0.0.1, and returns once it accepts connections.
    pub async fn start(upstreams: &[&str]) -> Self {
        assert!(!upstreams.is_empty(), "at least one upstream");
        let dir =
            std::env::temp_dir().join(format!("identity-nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("tmp")).expect("a temporary directory");
        let port = free_port().expect("a free port");
        let addr = format!("127.0.0.1:{port}");
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(&addr, upstreams)).expect("writes the configuration");
        let prefix = format!("{}/", dir.display());
        let conf = conf.display().to_string();
        let args = ["-p", prefix.as_str(), "-c", conf.as_str(), "-e", "stderr"];

        // `-t` first: a configuration nginx refuses fails here, with nginx's reason.
        let test = std::process::Command::new(PROGRAM)
            .args(["-t", "-q"])
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {PROGRAM} (scripts/drill installs Debian's nginx): {e}")
            });
        assert!(
            test.status.success(),
            "nginx refuses the configuration:\n{}",
            String::from_utf8_lossy(&test.stderr)
        );
        let mut process = Process::spawn_program(PROGRAM, &args, &[]);
        // nginx logs its version once its listening socket is bound (a failed bind exits first,
        // and wait_for_line panics with what it printed).
        process
            .wait_for_line("nginx/", Duration::from_secs(30))
            .await;
        wait::until(
            "nginx to accept connections",
            Duration::from_secs(30),
            async || tokio::net::TcpStream::connect(&addr).await.ok().map(drop),
        )
        .await;
        Self { addr, dir, process }
    }

    /// Where it listens (`127.0.0.1:PORT`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A connected channel (one HTTP/2 connection; calls are multiplexed on it).
    pub async fn channel(&self) -> Channel {
        crate::server::channel_from(&self.addr, None).await
    }

    /// Every call nginx finished so far, in the order it finished them. nginx writes a call's
    /// line when it closes the call's stream, which can be just after the client got the
    /// answer: [`Self::wait_for_calls`] waits for the lines a test expects.
    pub fn access_log(&self) -> Vec<Access> {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        log.lines().map(parse_access).collect()
    }

    /// Waits until the access log holds at least `count` calls, then returns them all.
    pub async fn wait_for_calls(&self, count: usize, timeout: Duration) -> Vec<Access> {
        wait::until(
            &format!("{count} calls in nginx's access log"),
            timeout,
            || {
                let log = self.access_log();
                std::future::ready((log.len() >= count).then_some(log))
            },
        )
        .await
    }

    /// What nginx printed so far (its error log: failed upstreams, retries, start-up).
    pub fn output(&self) -> String {
        self.process.output()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (master_process off): the kill leaves no worker behind.
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The configuration: everything nginx writes stays inside the prefix directory.
fn config(addr: &str, upstreams: &[&str]) -> String {
    let servers: String = upstreams
        .iter()
        // After one failed attempt (a refused connection, a reset, a timeout) an upstream gets
        // no calls for a second; then one call tries it again (and, refused, goes on to the next
        // upstream).
        .map(|upstream| format!("        server {upstream} max_fails=1 fail_timeout=1s;\n"))
        .collect();
    format!(
        r#"# Written by identity-tests (tests/src/nginx.rs).
daemon off;
# One process, no workers: a kill of it (on drop, or a crashed test) leaves nothing behind,
# and nothing switches users (a master started as root would run workers as `nobody`).
master_process off;
worker_processes 1;
pid nginx.pid;
lock_file nginx.lock;
error_log stderr notice;

events {{
    worker_connections 1024;
}}

http {{
    log_format calls '$http_x_forwarded_for|$upstream_addr|$upstream_status|$status|$upstream_http_grpc_status|$upstream_trailer_grpc_status';
    access_log access.log calls;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    # One client connection carries every call of a test; nginx 1.22 closes it after 1000.
    keepalive_requests 1000000;

    upstream identity {{
{servers}    }}

    server {{
        # nginx 1.22 syntax (`http2 on;` is 1.25.1+): cleartext HTTP/2, as gRPC clients speak.
        listen {addr} http2;

        location / {{
            grpc_pass grpc://identity;
            # Append the peer (the client, here 127.0.0.1) to the client's x-forwarded-for;
            # identity-server trusts 127.0.0.1 and takes the hop to its left as the client.
            grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # When to pass a call on to the next upstream: `error timeout` (nginx's default),
            # without `non_idempotent`. Every gRPC call is a POST, and nginx passes a POST on
            # only if it could not send it (the connection was refused, or failed before the
            # request went out), which is always safe: that is how calls meant for a dead
            # replica reach the live one. `non_idempotent` would also replay a call the dead
            # upstream had received, and perhaps committed (a Register would then create a
            # second pending registration, and email, that the client never hears of). For
            # gRPC nginx 1.22 does not do that even with it (grpc_pass streams the request body
            # unbuffered, and nginx never replays a request whose body it sent; the drill saw
            # it answer 502 either way), but nothing is gained by asking: such a call is
            # answered UNAVAILABLE, and the client, which knows what it sent, decides whether
            # to retry. (There is no `unavailable` value; http_502/503/504 act on an upstream's
            # own HTTP answers, which identity-server never gives.)
            grpc_next_upstream error timeout;
            # nginx answers a failed upstream with an HTML 502 page, which a gRPC client cannot
            # read (tonic reports INTERNAL: "invalid compression flag: 60"); answer it as gRPC
            # UNAVAILABLE (14) instead, as a gRPC client maps 502, 503 and 504.
            error_page 502 503 504 = @unavailable;
        }}

        location @unavailable {{
            default_type application/grpc;
            add_header grpc-status 14 always;
            add_header grpc-message "upstream unavailable" always;
            return 204;
        }}
    }}
}}
"#
    )
}

fn parse_access(line: &str) -> Access {
    let fields: Vec<&str> = line.split('|').collect();
    let field = |i: usize| -> &str {
        match fields.get(i).copied() {
            Some("-") | None => "",
            Some(value) => value,
        }
    };
    let list = |i: usize| -> Vec<String> {
        field(i)
            .split(", ")
            .filter(|part| !part.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Access {
        forwarded_for: field(0).to_owned(),
        upstreams: list(1),
        upstream_statuses: list(2),
        status: field(3).parse().unwrap_or_default(),
        // A header in a trailers-only answer, else a trailer; nginx logs "-" for the other.
        grpc_status: format!("{}{}", field(4), field(5)),
    }
}

#[cfg(test)]
mod tests {
    use super::{Access, parse_access};

    #[test]
    fn access_lines_name_every_upstream_tried() {
        assert_eq!(
            parse_access("203.0.113.7|127.0.0.1:2, 127.0.0.1:1|502, 200|200|-|0"),
            Access {
                forwarded_for: "203.0.113.7".into(),
                upstreams: vec!["127.0.0.1:2".into(), "127.0.0.1:1".into()],
                upstream_statuses: vec!["502".into(), "200".into()],
                status: 200,
                grpc_status: "0".into(),
            }
        );
        assert_eq!(parse_access("-|127.0.0.1:1|200|200|8|-").grpc_status, "8");
        let failed = parse_access("-|127.0.0.1:2|502|204|-|-");
        assert_eq!(
            (
                failed.forwarded_for.as_str(),
                failed.status,
                failed.grpc_status.as_str()
            ),
            ("", 204, "")
        );
    }
}
