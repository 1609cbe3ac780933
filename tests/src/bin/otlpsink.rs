//! otlpsink: an OTLP/gRPC trace receiver that only counts spans, for benchmarks of the trace
//! export (`scripts/bench observability`). It prints `listening on ADDR` once ready and the
//! number of spans received when it gets SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use clap::Parser;
use identity_tests::otlp::Collector;

/// Receive OTLP/gRPC traces on ADDR and count the spans.
#[derive(Debug, Parser)]
struct Args {
    /// Where to listen (point OTEL_EXPORTER_OTLP_ENDPOINT at http://ADDR).
    #[arg(long, default_value = "127.0.0.1:4317")]
    addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let collector = Collector::counting(args.addr).await;
    println!("otlpsink: listening on {}", collector.endpoint());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("otlpsink: {} spans received", collector.count());
    Ok(())
}
