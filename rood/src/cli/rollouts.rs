//! `rooctl rollout start|status|pause|resume|promote|abort HOST` and `rooctl stats HOST`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{render, route_name, ApiClient, CliError};

#[derive(Debug, Subcommand)]
pub enum Rollout {
    /// Moves the canary backend's weight through `--steps`, checking it after each interval.
    Start {
        host: String,
        /// The backend that gets the steps' weights.
        #[arg(long)]
        canary: String,
        /// The backend that gets the rest (by default the route's other one).
        #[arg(long)]
        stable: Option<String>,
        /// Canary weights, rising, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,25,50,100")]
        steps: Vec<u32>,
        #[arg(long, default_value_t = 60_000)]
        interval_ms: u64,
        #[arg(long, default_value_t = 0.99)]
        min_success_rate: f64,
        #[arg(long, default_value_t = 500.0)]
        max_p99_ms: f64,
        #[arg(long, default_value_t = 2)]
        failure_limit: u32,
        #[arg(long, default_value_t = 20)]
        min_requests: u64,
        #[arg(long, default_value = "https", value_parser = ["http", "https"])]
        scheme: String,
    },
    /// The rollout's state and its checks.
    Status(Named),
    Pause(Named),
    Resume(Named),
    /// Straight to 100%: the canary becomes the stable backend.
    Promote(Named),
    /// The canary back to weight 0.
    Abort(Named),
}

#[derive(Debug, Args)]
pub struct Named {
    host: String,
    #[arg(long, default_value = "https", value_parser = ["http", "https"])]
    scheme: String,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    host: String,
    #[arg(long, default_value = "https", value_parser = ["http", "https"])]
    scheme: String,
    /// Over the last this many seconds.
    #[arg(long, default_value_t = 60)]
    window_s: u64,
}

fn parse(body: &[u8]) -> Result<Value, CliError> {
    serde_json::from_slice(body).map_err(|e| CliError::Api(e.to_string()))
}

/// The rollout's state in a line, then its checks.
fn show(json_out: bool, r: &Value) -> String {
    if json_out {
        return r.to_string();
    }
    let head = format!(
        "{}: {} at step {} (canary {} at {}%, {} failed checks)",
        r["route"].as_str().unwrap_or_default(),
        r["state"].as_str().unwrap_or_default(),
        r["step"],
        r["canary"].as_str().unwrap_or_default(),
        r["weight"],
        r["failures"],
    );
    let checks = r["checks"].as_array().cloned().unwrap_or_default();
    let columns = [
        "time",
        "step",
        "weight",
        "requests",
        "success_rate",
        "p99_ms",
        "verdict",
    ];
    format!("{head}\n{}", render(false, &columns, checks))
}

pub(super) async fn rollout(
    api: &ApiClient,
    json_out: bool,
    command: Rollout,
) -> Result<String, CliError> {
    let (named, action) = match command {
        Rollout::Start {
            host,
            canary,
            stable,
            steps,
            interval_ms,
            min_success_rate,
            max_p99_ms,
            failure_limit,
            min_requests,
            scheme,
        } => {
            let name = route_name(&host, &scheme)?;
            let mut plan = json!({
                "canary": canary, "steps": steps, "interval_ms": interval_ms,
                "min_success_rate": min_success_rate, "max_p99_ms": max_p99_ms,
                "failure_limit": failure_limit, "min_requests": min_requests,
            });
            if let Some(stable) = stable {
                plan["stable"] = stable.into();
            }
            let path = format!("/roo/v1/rollouts/{name}");
            let answer = parse(&api.call("PUT", &path, Some(plan.to_string())).await?)?;
            return Ok(show(json_out, &answer["rollout"]));
        }
        Rollout::Status(n) => {
            let name = route_name(&n.host, &n.scheme)?;
            let answer = parse(
                &api.call("GET", &format!("/roo/v1/rollouts/{name}"), None)
                    .await?,
            )?;
            return Ok(show(json_out, &answer));
        }
        Rollout::Pause(n) => (n, "pause"),
        Rollout::Resume(n) => (n, "resume"),
        Rollout::Promote(n) => (n, "promote"),
        Rollout::Abort(n) => (n, "abort"),
    };
    let name = route_name(&named.host, &named.scheme)?;
    let path = format!("/roo/v1/rollouts/{name}/{action}");
    let answer = parse(&api.call("POST", &path, None).await?)?;
    Ok(show(json_out, &answer["rollout"]))
}

pub(super) async fn stats(
    api: &ApiClient,
    json_out: bool,
    args: StatsArgs,
) -> Result<String, CliError> {
    let name = route_name(&args.host, &args.scheme)?;
    let path = format!("/roo/v1/stats/{name}?window_s={}", args.window_s);
    let answer = parse(&api.call("GET", &path, None).await?)?;
    if json_out {
        return Ok(answer.to_string());
    }
    let rows = answer["backends"]
        .as_object()
        .map(|b| {
            b.iter()
                .map(|(name, s)| {
                    let mut row = s.clone();
                    row["backend"] = name.clone().into();
                    row
                })
                .collect()
        })
        .unwrap_or_default();
    let columns = [
        "backend",
        "requests",
        "rps",
        "success_rate",
        "p50_ms",
        "p99_ms",
    ];
    let mut out = render(false, &columns, rows);
    if let Some(missing) = answer["nodes"]["missing"]
        .as_object()
        .filter(|m| !m.is_empty())
    {
        let names: Vec<&String> = missing.keys().collect();
        out.push_str(&format!("\nnot counted: nodes {names:?} did not answer"));
    }
    Ok(out)
}
