//! A routing table of many routes on one node: how long N route PUTs take to be all live, how
//! long one change takes to be live at that size, and what the node's memory and CPU grew by.
//!
//! Routes `r<i>.scale.test:http` go to an upstream served here that answers `a`; once they are
//! all live (the last one put answers through the proxy: the feed applies changes in order),
//! single routes are moved to a second upstream answering `b`, one at a time, and the time from
//! the PUT's answer (committed) to the proxy's first `b` is taken. Prints one JSON line.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
struct Args {
    /// The node's API (host:port).
    #[arg(long)]
    api: String,
    /// The node's HTTP listener (host:port).
    #[arg(long)]
    http: String,
    /// The node's pid, for its memory and CPU time.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 100_000)]
    routes: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Single changes timed once the table is full.
    #[arg(long, default_value_t = 50)]
    changes: usize,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// An upstream answering `body` to everything.
async fn serve(body: &'static str) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(body.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn put(
    client: &HttpClient,
    api: &str,
    route: usize,
    to: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let req = http::Request::put(format!(
        "http://{api}/roo/v1/kv/com.roo.host:r{route}.scale.test:http"
    ))
    .body(Full::new(Bytes::from(format!("http://{to}"))))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("PUT r{route}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// The proxy's answer for route `route` (None: not routed yet).
async fn through(client: &HttpClient, http: &str, route: usize) -> anyhow::Result<Option<Bytes>> {
    let req = http::Request::get(format!("http://{http}/"))
        .header("host", format!("r{route}.scale.test"))
        .body(Full::new(Bytes::new()))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status == 200).then_some(body))
}

/// Resident memory (bytes) and CPU time (user + system) of a process.
fn usage(pid: u32) -> anyhow::Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok((rss_kb * 1024, Duration::from_millis(ticks * 10)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (a, b) = (serve("a").await?, serve("b").await?);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (rss_before, cpu_before) = usage(args.pid)?;

    let started = Instant::now();
    let mut writers = Vec::new();
    for c in 0..args.clients {
        let (client, api, n, clients) =
            (client.clone(), args.api.clone(), args.routes, args.clients);
        writers.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                put(&client, &api, i, a).await?;
                i += clients;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let acknowledged = started.elapsed();
    // The feed applies changes in revision order: the last one live means all are.
    let mut last = None;
    for i in (0..args.routes).rev().take(args.clients) {
        put(&client, &args.api, i, a).await?;
        last = Some(i);
    }
    let last = last.context("no routes")?;
    while through(&client, &args.http, last).await?.is_none() {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the last route was not live after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_live = started.elapsed();
    let (rss_after, cpu_after) = usage(args.pid)?;
    let cpu = cpu_after.saturating_sub(cpu_before);

    // Single changes at full size: PUT's answer to the proxy's first new answer.
    let mut lags = Vec::new();
    for k in 0..args.changes {
        let route = (k * 7919) % args.routes;
        let to = if k % 2 == 0 { b } else { a };
        let want: &[u8] = if k % 2 == 0 { b"b" } else { b"a" };
        put(&client, &args.api, route, to).await?;
        let committed = Instant::now();
        loop {
            if through(&client, &args.http, route).await?.as_deref() == Some(want) {
                break;
            }
            if committed.elapsed() > Duration::from_secs(30) {
                bail!("route r{route} did not change in 30 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(committed.elapsed());
    }
    lags.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    let out = serde_json::json!({
        "routes": args.routes,
        "puts_acknowledged_s": (acknowledged.as_secs_f64() * 100.0).round() / 100.0,
        "all_live_s": (all_live.as_secs_f64() * 100.0).round() / 100.0,
        "puts_per_s": (args.routes as f64 / all_live.as_secs_f64()).round(),
        "node_cpu_ms_per_route_put": (cpu.as_secs_f64() * 1e3 / args.routes as f64 * 1000.0).round() / 1000.0,
        "change_live_ms_p50": ms(lags[lags.len() / 2]),
        "change_live_ms_max": ms(lags[lags.len() - 1]),
        "rss_growth_bytes_per_route": (rss_after.saturating_sub(rss_before)) / args.routes as u64,
    });
    println!("{out}");
    Ok(())
}
