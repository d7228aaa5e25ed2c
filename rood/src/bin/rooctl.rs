//! rooctl: the operator's command line (see `rood::cli`).

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    rood::cli::main().await
}
