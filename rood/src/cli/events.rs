//! `rooctl events [--follow] [--type <prefix>] [--since <id>]` and `rooctl webhooks ls|add|rm`.

use std::io::Write as _;

use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use super::{done, removed_one, render, ApiClient, CliError};
use crate::webhooks::{Format, Webhook, WEBHOOK_PREFIX};

const COLUMNS: [&str; 6] = ["id", "time", "type", "subject", "source", "detail"];
/// The longest a detail is shown in a table.
const DETAIL_WIDTH: usize = 80;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only the events after this id.
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Only the events whose type starts with this (`route.`, `certificate.failed`).
    #[arg(long = "type", default_value = "")]
    kind: String,
    /// Keep printing events as they are written, until interrupted.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum Webhooks {
    /// Each webhook and how its deliveries stand.
    Ls,
    /// Delivers the events of `--events` types (every one without) to `url`.
    Add {
        name: String,
        url: String,
        /// Event type prefixes, comma-separated: `rollout.,certificate.`.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Signs each delivery with it (X-Roo-Signature).
        #[arg(long, env = "ROO_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// `json` (the event) or `slack` (`{"text": ...}`).
        #[arg(long, default_value = "json", value_parser = ["json", "slack"])]
        format: String,
    },
    Rm {
        name: String,
    },
}

pub(super) async fn events(
    api: &ApiClient,
    json_out: bool,
    args: EventsArgs,
) -> Result<String, CliError> {
    let kind = utf8_percent_encode(&args.kind, NON_ALPHANUMERIC);
    let path = format!("/roo/v1/events?since={}&type={kind}", args.since);
    if args.follow {
        return follow(api, json_out, &path).await;
    }
    let body = api.call("GET", &path, None).await?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| CliError::Api(e.to_string()))?;
    let events = v["events"].as_array().cloned().unwrap_or_default();
    if json_out {
        return Ok(Value::Array(events).to_string());
    }
    Ok(render(
        false,
        &COLUMNS,
        events.into_iter().map(row).collect(),
    ))
}

/// An event as a table row: its detail shortened to fit.
fn row(mut event: Value) -> Value {
    let detail = event["detail"].to_string();
    event["detail"] = match detail.char_indices().nth(DETAIL_WIDTH) {
        Some((at, _)) => format!("{}...", &detail[..at]).into(),
        None => detail.into(),
    };
    event
}

/// Prints the stream's events as they come: a line each (JSON, or the table's columns).
async fn follow(api: &ApiClient, json_out: bool, path: &str) -> Result<String, CliError> {
    let answer = api
        .send("GET", path, None, Some("text/event-stream"))
        .await?;
    let mut body = answer.into_body();
    let mut pending = Vec::new();
    let mut out = std::io::stdout();
    if !json_out {
        print_line(&mut out, &COLUMNS.map(str::to_uppercase).join("  "))?;
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| api.unreachable(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        // A message ends with an empty line.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let message: Vec<u8> = pending.drain(..end + 2).collect();
            let message = String::from_utf8_lossy(&message);
            let Some(data) = message.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let event: Value =
                serde_json::from_str(data).map_err(|e| CliError::Api(e.to_string()))?;
            if event["ok"] == false {
                return Err(CliError::Api(
                    event["error"].as_str().unwrap_or(data).into(),
                ));
            }
            let line = match json_out {
                true => event.to_string(),
                false => {
                    let event = row(event);
                    COLUMNS
                        .iter()
                        .map(|c| match &event[*c] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join("  ")
                }
            };
            print_line(&mut out, &line)?;
        }
    }
    Err(CliError::Api("the node closed the stream".into()))
}

pub(super) fn print_line(out: &mut std::io::Stdout, line: &str) -> Result<(), CliError> {
    let mut out = out.lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Usage(format!("writing the output: {e}")))
}

pub(super) async fn webhooks(
    api: &ApiClient,
    json_out: bool,
    command: Webhooks,
) -> Result<String, CliError> {
    match command {
        Webhooks::Ls => {
            let body = api.call("GET", "/roo/v1/webhooks", None).await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| CliError::Api(e.to_string()))?;
            let hooks = v["webhooks"].as_array().cloned().unwrap_or_default();
            if json_out {
                return Ok(Value::Array(hooks).to_string());
            }
            let rows = hooks
                .into_iter()
                .map(|mut h| {
                    let events = h["events"].as_array().map_or(String::new(), |e| {
                        e.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                    h["events"] = if events.is_empty() {
                        "*".into()
                    } else {
                        events.into()
                    };
                    h
                })
                .collect();
            let columns = [
                "name",
                "url",
                "events",
                "backlog",
                "delivered",
                "last_status",
                "last_error",
            ];
            Ok(render(false, &columns, rows))
        }
        Webhooks::Add {
            name,
            url,
            events,
            secret,
            format,
        } => {
            let key = format!("{WEBHOOK_PREFIX}{name}");
            let hook = Webhook {
                url,
                events,
                secret,
                format: match format.as_str() {
                    "slack" => Format::Slack,
                    _ => Format::Json,
                },
            };
            let value = serde_json::to_string(&hook).map_err(|e| CliError::Usage(e.to_string()))?;
            api.call("PUT", &format!("/roo/v1/kv/{key}"), Some(value))
                .await?;
            Ok(done(json_out, &key))
        }
        Webhooks::Rm { name } => {
            removed_one(api, json_out, &format!("{WEBHOOK_PREFIX}{name}"), "webhook").await
        }
    }
}
