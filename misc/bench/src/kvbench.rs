//! Write load against a KV cluster: roo's `PUT /roo/v1/kv/{key}` or etcd's v3 JSON gateway
//! (`POST /v3/kv/put`). N clients, each one request at a time on its own keep-alive connection,
//! spread over the given endpoints; prints one JSON line with throughput and latency percentiles.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Parser)]
struct Args {
    /// `roo` or `etcd`.
    #[arg(long)]
    target: String,
    /// Endpoints (host:port), comma separated; client i uses endpoint i mod n.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Stop after this many writes in all (0: run for --seconds).
    #[arg(long, default_value_t = 0)]
    total: u64,
    /// Key prefix.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Write routes (`com.roo.host:<prefix>-<client>-<i>.bench:http`, through roo's route write
    /// path: the route, its owner, history and event) instead of plain keys.
    #[arg(long)]
    routes: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.endpoints.is_empty() {
        bail!("--endpoints is empty");
    }
    let etcd = match args.target.as_str() {
        "roo" => false,
        "etcd" => true,
        t => bail!("--target {t}: use roo or etcd"),
    };
    if args.routes && etcd {
        bail!("--routes is for roo");
    }
    let value = match args.routes {
        true => "http://127.0.0.1:9".to_string(),
        false => "v".repeat(args.value_size),
    };
    let routes = args.routes;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let per_client = if args.total > 0 {
        args.total.div_ceil(args.clients as u64)
    } else {
        u64::MAX
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let endpoint = args.endpoints[c % args.endpoints.len()].clone();
        let (value, prefix) = (value.clone(), args.prefix.clone());
        tasks.push(tokio::spawn(async move {
            // One connection per client, like one etcd client or one curl loop each.
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http::<Full<Bytes>>();
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline && i < per_client {
                let key = match routes {
                    true => format!("com.roo.host:{prefix}-{c}-{i}.bench:http"),
                    false => format!("{prefix}/{c}/{i}"),
                };
                let req = if etcd {
                    let body = serde_json::json!({"key": STANDARD.encode(&key), "value": STANDARD.encode(&value)});
                    http::Request::post(format!("http://{endpoint}/v3/kv/put"))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                } else {
                    http::Request::put(format!("http://{endpoint}/roo/v1/kv/{key}"))
                        .body(Full::new(Bytes::from(value.clone())))
                }
                .context("building request")?;
                let t = Instant::now();
                match client.request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            latencies.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx].as_secs_f64() * 1000.0
    };
    println!(
        "{}",
        serde_json::json!({
            "target": args.target,
            "clients": args.clients,
            "writes": latencies.len(),
            "errors": errors,
            "seconds": elapsed.as_secs_f64(),
            "writes_per_sec": latencies.len() as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    );
    Ok(())
}
