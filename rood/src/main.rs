use anyhow::Context;
use rood::config::{Config, ConfigError};
use rood::node::Node;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options: sample allocations (every 2 MiB on average) so that
/// `/debug/pprof/heap` has a profile to give; and give freed pages back to the system within
/// about a second, from a background thread, so that a burst (thousands of connections opened
/// at once, then idle) does not leave the node holding its peak: 9000 connections opened in
/// bursts and left idle kept 645 bytes each without it, 129 with it, requests/s unchanged.
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8] = b"prof:true,prof_active:true,lg_prof_sample:21,\
background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One binary, two commands: called as `rooctl` (the image's /rooctl links here), it is the
    // operator's command line.
    let called = std::env::args_os().next().map(std::path::PathBuf::from);
    if called.as_deref().and_then(|p| p.file_stem()) == Some("rooctl".as_ref()) {
        std::process::exit(match rood::cli::main().await {
            code if code == std::process::ExitCode::SUCCESS => 0,
            _ => 1,
        });
    }
    let config = match Config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Invalid(e)) => e.exit(),
        Err(ConfigError::File(e)) => {
            eprintln!("rood: {e}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid ROO_LOG filter {:?}", config.log))?;
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }

    let node = Node::start(config).await.context("starting rood")?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    node.stop().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
