//! rooctl: the operator's command line (see `rood::cli`).

use clap::Parser;
use rood::cli::{run, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(out) => {
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rooctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
