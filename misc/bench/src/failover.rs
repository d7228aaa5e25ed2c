//! Paced writes through a KV cluster while something else (misc/bench/failover.sh) kills or
//! freezes its leader: writes offered at `--rate` a second through the endpoints in turn, each on
//! its own (one that hangs does not hold back the next). Prints one JSON line: the longest gap
//! between two acknowledged writes (the failover, when one happened; the end of the run counts
//! as an acknowledgement, so an outage lasting to the end is measured too), when it began, and
//! the counts.

use std::sync::{Arc, Mutex};
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
    /// Endpoints (host:port), comma separated, taking the writes in turn.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Writes offered a second.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// How long one write may take before it counts as failed, in ms.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Key prefix.
    #[arg(long, default_value = "failover")]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.endpoints.is_empty() || args.rate == 0 {
        bail!("--endpoints and --rate must not be empty or zero");
    }
    let etcd = match args.target.as_str() {
        "roo" => false,
        "etcd" => true,
        t => bail!("--target {t}: use roo or etcd"),
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let period = Duration::from_micros(1_000_000 / args.rate);
    let timeout = Duration::from_millis(args.timeout_ms);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let acks: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut writes = Vec::new();
    let mut next = started;
    for i in 0usize.. {
        if next >= deadline {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        next += period;
        let endpoint = &args.endpoints[i % args.endpoints.len()];
        let key = format!("{}/{i}", args.prefix);
        let req = if etcd {
            let body =
                serde_json::json!({"key": STANDARD.encode(&key), "value": STANDARD.encode("v")});
            http::Request::post(format!("http://{endpoint}/v3/kv/put"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
        } else {
            http::Request::put(format!("http://{endpoint}/roo/v1/kv/{key}"))
                .body(Full::new(Bytes::from_static(b"v")))
        }
        .context("building request")?;
        let (client, acks) = (client.clone(), acks.clone());
        writes.push(tokio::spawn(async move {
            let answer = tokio::time::timeout(timeout, async {
                let resp = client.request(req).await.ok()?;
                let ok = resp.status().is_success();
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                // etcd's gateway answers some failures with 200 and an error body.
                (ok && !body.starts_with(b"{\"error\"")).then_some(())
            })
            .await;
            let acked = matches!(answer, Ok(Some(())));
            if acked {
                acks.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(started.elapsed());
            }
            anyhow::Ok(acked)
        }));
    }
    let mut errors = 0;
    for w in writes {
        if !w.await?? {
            errors += 1;
        }
    }
    let mut acks = acks
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let acked = acks.len();
    acks.push(deadline - started);
    acks.sort();
    let (gap, at) = acks
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "target": args.target,
            "acked": acked,
            "errors": errors,
            "max_gap_ms": gap.as_secs_f64() * 1000.0,
            "gap_began_ms": at.as_secs_f64() * 1000.0,
        })
    );
    Ok(())
}
