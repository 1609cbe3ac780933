use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    outbox_relay::cli::Cli::parse().run()
}
