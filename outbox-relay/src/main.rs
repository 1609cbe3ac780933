//! outbox-relay: will drain the identity outbox to the email provider (SMTP) with retries and
//! dead-lettering. Until that lands it has no commands, so `scripts/dev` does not start it.

use clap::Parser;

/// Delivers the emails identity-server queues in the outbox table (not implemented yet: the
/// messages wait in the `outbox` table until the relay issue lands).
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("outbox-relay is not implemented yet; verification emails wait in the outbox table");
    std::process::exit(2);
}
