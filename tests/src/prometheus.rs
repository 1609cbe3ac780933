//! A real Prometheus server (Debian's `prometheus`, which `scripts/test` installs when missing)
//! on a free port, scraping the given targets every second from a temporary configuration and
//! storage, and queried through its HTTP API.

use std::{path::PathBuf, time::Duration};

use crate::{http, pg::free_port, process::Process, wait};

/// A running Prometheus; stopped, and its files removed, when dropped.
#[derive(Debug)]
pub struct Prometheus {
    pub addr: String,
    process: Process,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of each of `targets` (host:port) every second, and
    /// returns once it is ready.
    pub async fn start(targets: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "identity-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: identity\n    static_configs:\n      - targets: [{targets}]\n"
            ),
        )
        .expect("writes the configuration");
        let addr = format!("127.0.0.1:{}", free_port().expect("a free port"));
        let config_arg = format!("--config.file={}", config.display());
        let storage_arg = format!("--storage.tsdb.path={}", dir.join("data").display());
        let listen_arg = format!("--web.listen-address={addr}");
        let process = Process::spawn_program(
            "prometheus",
            &[&config_arg, &storage_arg, &listen_arg, "--log.level=warn"],
            &[],
        );
        wait::until(
            "Prometheus to be ready",
            Duration::from_secs(60),
            async || {
                let listening = tokio::net::TcpStream::connect(&addr).await.is_ok();
                (listening && http::get(&addr, "/-/ready").await.0 == 200).then_some(())
            },
        )
        .await;
        Self { addr, process, dir }
    }

    /// The values of an instant PromQL query, one per series.
    pub async fn query(&self, promql: &str) -> Vec<f64> {
        let path = format!("/api/v1/query?query={}", http::encode(promql));
        let (status, body) = http::get(&self.addr, &path).await;
        assert_eq!(status, 200, "{promql}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        answer["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|series| {
                series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("a sample value")
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
