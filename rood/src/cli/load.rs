//! `rooctl load <url> --host H --rate R --duration D [--concurrency C]`: fake clients (the CoreOS
//! update service's `updatectl fakeclients`) that drive real requests through a proxy and print,
//! each second, requests, errors and latency per backend, as the answers' `X-Roo-Backend` names
//! it (a route with `"expose_backend": true`), so a rollout can be watched as it happens.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::{ApiClient, CliError};
use crate::stats::Tally;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Where to send the requests: a node's proxy, e.g. `http://127.0.0.1:8080/`.
    url: String,
    /// The Host the requests name (by default the URL's).
    #[arg(long)]
    host: Option<String>,
    /// Requests a second, all clients together.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// For how many seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Clients sending at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
}

/// What the clients saw: by second, then by backend (`-` where the answer named none, or none
/// came).
type Seen = BTreeMap<u64, BTreeMap<String, Tally>>;

pub(super) async fn load(
    api: &ApiClient,
    json_out: bool,
    args: LoadArgs,
) -> Result<String, CliError> {
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.url)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(CliError::Usage(format!(
            "{}: an http:// or https:// URL",
            args.url
        )));
    }
    if args.rate == 0 || args.concurrency == 0 || args.duration == 0 {
        return Err(CliError::Usage(
            "--rate, --concurrency and --duration: at least 1".into(),
        ));
    }
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    // Each client sends at its share of the rate.
    let every = Duration::from_secs_f64(f64::from(args.concurrency) / f64::from(args.rate));
    let clients: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let (http, uri, host, seen) = (
                api.http.clone(),
                uri.clone(),
                args.host.clone(),
                seen.clone(),
            );
            tokio::spawn(async move {
                // Spread over the first interval, so the clients do not send together.
                let offset = every.mul_f64(f64::from(i) / f64::from(args.concurrency));
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::from_std(start) + offset, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    if Instant::now() >= end {
                        return;
                    }
                    let sent = Instant::now();
                    let mut req = http::Request::get(uri.clone());
                    if let Some(h) = &host {
                        req = req.header(http::header::HOST, h.as_str());
                    }
                    let Ok(req) = req.body(Full::new(Bytes::new())) else {
                        return;
                    };
                    let (status, backend) = match http.request(req).await {
                        Ok(resp) => {
                            let backend = resp
                                .headers()
                                .get("x-roo-backend")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string();
                            let status = resp.status().as_u16();
                            // Read to the end: the connection goes back to the pool.
                            let _ = resp.into_body().collect().await;
                            (status, backend)
                        }
                        // No answer counts as a failure of nobody's.
                        Err(_) => (599, "-".to_string()),
                    };
                    let second = sent.duration_since(start).as_secs();
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    let tally = seen.entry(second).or_default().entry(backend).or_default();
                    tally.count(status, sent.elapsed().as_secs_f64());
                }
            })
        })
        .collect();
    let mut out = std::io::stdout();
    if !json_out {
        super::events::print_line(
            &mut out,
            "SECOND  BACKEND  REQUESTS  ERRORS  P50_MS  P99_MS",
        )?;
    }
    // A second is printed once it is over (and its last answers had a moment to come).
    let mut next = 0;
    while next < args.duration {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            start + Duration::from_millis((next + 1) * 1000 + 200),
        ))
        .await;
        let row = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&next)
            .unwrap_or_default();
        for (backend, t) in row {
            let ms = |q| {
                t.quantile_ms(q)
                    .map_or("-".to_string(), |ms| format!("{ms:.1}"))
            };
            let line = match json_out {
                true => json!({"second": next, "backend": backend, "requests": t.requests,
                    "errors": t.failures, "p50_ms": t.quantile_ms(0.5), "p99_ms": t.quantile_ms(0.99)})
                .to_string(),
                false => format!(
                    "{next:<6}  {backend:<7}  {:<8}  {:<6}  {:<6}  {}",
                    t.requests,
                    t.failures,
                    ms(0.5),
                    ms(0.99)
                ),
            };
            super::events::print_line(&mut out, &line)?;
        }
        next += 1;
    }
    for c in clients {
        let _ = c.await;
    }
    Ok(String::new())
}
