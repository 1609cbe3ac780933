use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    identity_server::cli::Cli::parse().run()
}
