//! `rooctl`: the operator's command line over a node's API.
//!
//! `rooctl routes ls|add|rm`, `rooctl certs ls|add|rm`, `rooctl cluster status|remove`,
//! `rooctl kv get|put|rm|ls`, `rooctl events [--follow]`, `rooctl webhooks ls|add|rm`
//! ([`events`]); `--server`/`ROO_SERVER`, `--token`/`ROO_TOKEN` (or
//! `--token-file`/`ROO_TOKEN_FILE`, a Docker secret); a table by default, `-o json` for scripts
//! on every command. An error from the API is one line on stderr and a non-zero exit.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::routes::{RouteKey, Scheme, ROUTE_PREFIX};

mod events;
mod load;
mod rollouts;

/// Talks to a roo node's API.
#[derive(Debug, Parser)]
#[command(name = "rooctl", version, about)]
pub struct Cli {
    /// The node's API.
    #[arg(
        long,
        env = "ROO_SERVER",
        default_value = "http://127.0.0.1:6299",
        global = true
    )]
    pub server: String,
    /// A CA certificate (PEM) to trust besides the system's, for an `https://` server (the peer
    /// CA when the nodes run with peer TLS).
    #[arg(long, env = "ROO_CACERT", global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// Bearer token (admin for changes; read or admin for certificates).
    #[arg(long, env = "ROO_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The token from a file (a Docker secret: `/run/secrets/roo_api_token`).
    #[arg(long, env = "ROO_TOKEN_FILE", global = true, conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
    /// Output: `table` or `json`.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"], global = true)]
    pub output: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Routes: `com.roo.host:<host>[:<port>]:<scheme>`.
    #[command(subcommand)]
    Routes(Routes),
    /// Certificates and their ACME state.
    #[command(subcommand)]
    Certs(Certs),
    /// Cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Raw keys.
    #[command(subcommand)]
    Kv(Kv),
    /// The activity stream: what changed, when, and who changed it.
    Events(events::EventsArgs),
    /// Webhooks the activity stream is delivered to.
    #[command(subcommand)]
    Webhooks(events::Webhooks),
    /// Stepped canaries: a backend's weight raised step by step while it does well.
    #[command(subcommand)]
    Rollout(rollouts::Rollout),
    /// Each backend's requests, success rate and latency across the cluster.
    Stats(rollouts::StatsArgs),
    /// Fake clients: requests through a proxy, and what each backend answered, second by second.
    Load(load::LoadArgs),
}

#[derive(Debug, Subcommand)]
pub enum Routes {
    Ls,
    /// Routes `host[:port]` (on `--scheme`, https by default: with ACME on, a certificate is
    /// ordered for it) to `destination` (`http://127.0.0.1:8000`, `http://tasks.app_web:80`).
    Add {
        host: String,
        destination: String,
        #[arg(long, default_value = "https", value_parser = ["http", "https"])]
        scheme: String,
    },
    /// Removes the routes of `host[:port]`: on `--scheme` only, or on every scheme it has.
    Rm {
        host: String,
        #[arg(long, value_parser = ["http", "https"])]
        scheme: Option<String>,
    },
    /// The route's changes, newest first: revision, time, source, value.
    History {
        host: String,
        #[arg(long, default_value = "https", value_parser = ["http", "https"])]
        scheme: String,
    },
    /// Restores the value the route had at `--rev` (by default the one before the current), as
    /// a new revision.
    Rollback {
        host: String,
        #[arg(long)]
        rev: Option<u64>,
        #[arg(long, default_value = "https", value_parser = ["http", "https"])]
        scheme: String,
        /// Even if the route is frozen.
        #[arg(long)]
        force: bool,
    },
    /// Nobody but a forced admin request changes the route until it is unfrozen: not the swarm
    /// watcher, not a rollout.
    Freeze {
        host: String,
        #[arg(long, default_value = "https", value_parser = ["http", "https"])]
        scheme: String,
    },
    Unfreeze {
        host: String,
        #[arg(long, default_value = "https", value_parser = ["http", "https"])]
        scheme: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Certs {
    Ls,
    /// Stores a certificate for `host` (`*.example.com` for a wildcard) from PEM files: the
    /// chain (leaf first) and its private key.
    Add {
        host: String,
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
    },
    /// Removes the certificate stored for `host`.
    Rm {
        host: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    Status,
    /// Removes the member with this node id.
    Remove {
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum Kv {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Rm {
        key: String,
    },
    Ls {
        #[arg(default_value = "com.roo.")]
        prefix: String,
    },
}

/// What went wrong; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Api(String),
    #[error("{server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

struct ApiClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    server: String,
    token: Option<String>,
}

impl ApiClient {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, CliError> {
        self.exchange(method, path, body)
            .await
            .map(|(_, body)| body)
    }

    /// Like [`ApiClient::call`], with the answer's headers.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(http::HeaderMap, Bytes), CliError> {
        let sent = self.send(method, path, body, None).await?;
        let headers = sent.headers().clone();
        Ok((headers, self.read(sent).await?))
    }

    /// Sends a request; a success's head, with its body still to read. `accept`: the media type
    /// asked for.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        accept: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, CliError> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let mut req = http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(accept) = accept {
            req = req.header(http::header::ACCEPT, accept);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Usage(format!("{url}: {e}")))?;
        let sent = tokio::time::timeout(Duration::from_secs(15), self.http.request(req))
            .await
            .map_err(|_| self.unreachable("no answer in 15 s".into()))?
            .map_err(|e| self.unreachable(roo_kv::error::with_causes(&e)))?;
        let status = sent.status();
        if status.is_success() {
            return Ok(sent);
        }
        let body = self.read(sent).await?;
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(CliError::Api(format!("{} ({})", message, status.as_u16())))
    }

    /// An answer's whole body.
    async fn read(&self, answer: http::Response<hyper::body::Incoming>) -> Result<Bytes, CliError> {
        let body = answer.into_body().collect().await;
        Ok(body
            .map_err(|e| self.unreachable(e.to_string()))?
            .to_bytes())
    }

    fn unreachable(&self, reason: String) -> CliError {
        CliError::Unreachable {
            server: self.server.clone(),
            reason,
        }
    }

    /// Keys under `prefix` and their values.
    async fn scan(&self, prefix: &str) -> Result<BTreeMap<String, Vec<u8>>, CliError> {
        let body = self
            .call("GET", &format!("/roo/v1/kvs/{prefix}"), None)
            .await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| CliError::Api(e.to_string()))?;
        let mut out = BTreeMap::new();
        for (k, b64) in v["results"].as_object().into_iter().flatten() {
            let raw = STANDARD
                .decode(b64.as_str().unwrap_or_default())
                .map_err(|e| CliError::Api(format!("{k}: {e}")))?;
            out.insert(k.clone(), raw);
        }
        Ok(out)
    }
}

/// A stored route's or certificate's state: `ok`, or why no node serves it (each keeps what the
/// key held before it, if anything).
fn state(invalid: Option<String>) -> String {
    match invalid {
        None => "ok".into(),
        Some(why) => format!("invalid, not served: {why}"),
    }
}

/// Whether a certificate value came with its private key withheld (a read token).
fn redacted(value: &[u8]) -> bool {
    serde_json::from_slice::<roo_acme::StoredCert>(value)
        .is_ok_and(|c| c.key_pem.starts_with("redacted"))
}

/// rooctl's `main`: parses the command line, runs the command, prints what it gave (a table or
/// JSON) or its error as one line, and says how it went.
pub async fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    use std::io::Write as _;
    match run(Cli::parse()).await {
        // Printed as it came (`rooctl events --follow`).
        Ok(out) if out.is_empty() => std::process::ExitCode::SUCCESS,
        // A reader that went away (`rooctl kv ls | head`) is no error of rooctl's.
        Ok(out) => match writeln!(std::io::stdout().lock(), "{out}") {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("rooctl: writing the output: {e}");
                std::process::ExitCode::FAILURE
            }
            _ => std::process::ExitCode::SUCCESS,
        },
        Err(e) => {
            eprintln!("rooctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one command; returns what to print.
pub async fn run(cli: Cli) -> Result<String, CliError> {
    let roots = roo_acme::roots::system_and(cli.cacert.as_deref())
        .map_err(|e| CliError::Usage(format!("--cacert {e}")))?;
    let tls =
        roo_acme::roots::client_config(roots).map_err(|e| CliError::Usage(format!("TLS: {e}")))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let token = match &cli.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("--token-file {}: {e}", path.display())))?;
            Some(text.trim().to_string())
        }
        None => cli.token.clone(),
    };
    let api = ApiClient {
        http: Client::builder(TokioExecutor::new()).build(connector),
        server: cli.server.clone(),
        token,
    };
    let json_out = cli.output == "json";
    match cli.command {
        Command::Routes(Routes::Ls) => {
            let mut rows = Vec::new();
            for (key, value) in api.scan(ROUTE_PREFIX).await? {
                let Ok(k) = RouteKey::parse(&key) else {
                    continue;
                };
                rows.push(json!({
                    "host": k.host,
                    "port": k.port,
                    "scheme": k.scheme.to_string(),
                    "destination": String::from_utf8_lossy(&value),
                    "state": state(crate::feed::change_from_kv(&key, Some(&value)).and_then(Result::err)),
                }));
            }
            Ok(render(
                json_out,
                &["host", "port", "scheme", "destination", "state"],
                rows,
            ))
        }
        Command::Routes(Routes::Add {
            host,
            destination,
            scheme,
        }) => {
            let key = route_key(&host, &scheme)?;
            api.call("PUT", &format!("/roo/v1/kv/{key}"), Some(destination))
                .await?;
            Ok(done(json_out, &key))
        }
        Command::Routes(Routes::Rm { host, scheme }) => {
            let schemes = match &scheme {
                Some(s) => vec![s.as_str()],
                None => vec!["http", "https"],
            };
            let mut removed = Vec::new();
            for scheme in schemes {
                let key = route_key(&host, scheme)?;
                let body = api
                    .call("DELETE", &format!("/roo/v1/kv/{key}"), None)
                    .await?;
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                if v["deleted"] == 1 {
                    removed.push(key);
                }
            }
            if removed.is_empty() {
                let on = scheme.map_or("any scheme".to_string(), |s| s.to_string());
                return Err(CliError::Api(format!("no route for {host} on {on}")));
            }
            Ok(done(json_out, &removed.join(", ")))
        }
        Command::Certs(Certs::Add { host, cert, key }) => {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
            };
            let record =
                json!({"cert_pem": read(&cert)?, "key_pem": read(&key)?, "source": "manual"});
            let key = format!("{}{host}", roo_acme::store::CERT_PREFIX);
            api.call(
                "PUT",
                &format!("/roo/v1/kv/{key}"),
                Some(record.to_string()),
            )
            .await?;
            Ok(done(json_out, &key))
        }
        Command::Certs(Certs::Rm { host }) => {
            let key = format!("{}{host}", roo_acme::store::CERT_PREFIX);
            removed_one(&api, json_out, &key, "certificate").await
        }
        Command::Certs(Certs::Ls) => {
            let certs = api.scan(roo_acme::store::CERT_PREFIX).await?;
            let statuses = api.scan(roo_acme::store::STATUS_PREFIX).await?;
            let mut hosts: BTreeMap<String, Value> = BTreeMap::new();
            for (key, value) in certs {
                let host = key
                    .trim_start_matches(roo_acme::store::CERT_PREFIX)
                    .to_string();
                let stored: Option<roo_acme::StoredCert> = serde_json::from_slice(&value).ok();
                let info = stored
                    .as_ref()
                    .and_then(|c| roo_acme::CertInfo::from_pem(&c.cert_pem).ok());
                // Its key is checked too where the token shows it.
                let invalid = match crate::feed::change_from_kv(&key, Some(&value)) {
                    Some(Err(e)) if !redacted(&value) => Some(e),
                    _ => crate::certs::check_without_key(&host, &value)
                        .err()
                        .map(|e| e.to_string()),
                };
                hosts.insert(
                    host.clone(),
                    json!({
                        "host": host,
                        "issuer": info.as_ref().map(|i| i.issuer.clone()),
                        "expires": info.as_ref().map(|i| roo_acme::cert::rfc3339(i.not_after)),
                        "source": stored.and_then(|c| c.source),
                        "state": state(invalid),
                        "last_error": null,
                    }),
                );
            }
            for (key, value) in statuses {
                let host = key
                    .trim_start_matches(roo_acme::store::STATUS_PREFIX)
                    .to_string();
                let status: Value = serde_json::from_slice(&value).unwrap_or_default();
                let row = hosts
                    .entry(host.clone())
                    .or_insert_with(|| json!({"host": host}));
                row["last_error"] = status["last_error"].clone();
                row["failures"] = status["failures"].clone();
            }
            let rows = hosts.into_values().collect();
            Ok(render(
                json_out,
                &["host", "issuer", "expires", "source", "state", "last_error"],
                rows,
            ))
        }
        Command::Cluster(ClusterCmd::Status) => {
            let body = api.call("GET", "/roo/v1/cluster", None).await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| CliError::Api(e.to_string()))?;
            if json_out {
                return Ok(v.to_string());
            }
            let leader = v["leader_id"].as_u64();
            let voters: Vec<u64> = v["voters"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let rows = v["members"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(id, addr)| {
                    let n: u64 = id.parse().unwrap_or(0);
                    let role = if Some(n) == leader {
                        "leader"
                    } else if voters.contains(&n) {
                        "voter"
                    } else {
                        "learner"
                    };
                    // As the leader sees it; unknown without a leader.
                    let health = &v["health"][id];
                    let reachable = match health["reachable"].as_bool() {
                        Some(true) => "yes".to_string(),
                        Some(false) => format!("no ({} failed)", health["failures"]),
                        None => "?".to_string(),
                    };
                    let lag = health["lag"].as_u64().map_or("?".into(), |l| l.to_string());
                    json!({"id": id, "address": addr, "role": role, "reachable": reachable, "lag": lag})
                })
                .collect();
            let mut out = render(false, &["id", "address", "role", "reachable", "lag"], rows);
            if let Some(why) = v["health_error"].as_str() {
                let _ = write!(out, "\nno leader to ask for reachability: {why}");
            }
            let _ = write!(
                out,
                "\nterm {}, revision {}, this node {}",
                v["term"], v["revision"], v["node_id"]
            );
            Ok(out)
        }
        Command::Cluster(ClusterCmd::Remove { id }) => {
            api.call("DELETE", &format!("/roo/v1/cluster/members/{id}"), None)
                .await?;
            Ok(done(json_out, &format!("member {id}")))
        }
        Command::Kv(Kv::Get { key }) => {
            let (headers, body) = api
                .exchange("GET", &format!("/roo/v1/kv/{key}"), None)
                .await?;
            if !json_out {
                return Ok(String::from_utf8_lossy(&body).into_owned());
            }
            let rev = headers
                .get("x-roo-revision")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            // Text as it is; other bytes as base64, as the API's scans give them.
            let value = match std::str::from_utf8(&body) {
                Ok(text) => json!({"value": text}),
                Err(_) => json!({"value_base64": STANDARD.encode(&body)}),
            };
            let mut out = json!({"key": key, "rev": rev});
            if let (Some(out), Value::Object(v)) = (out.as_object_mut(), value) {
                out.extend(v);
            }
            Ok(out.to_string())
        }
        Command::Kv(Kv::Rm { key }) => removed_one(&api, json_out, &key, "key").await,
        Command::Kv(Kv::Put { key, value }) => {
            api.call("PUT", &format!("/roo/v1/kv/{key}"), Some(value))
                .await?;
            Ok(done(json_out, &key))
        }
        Command::Routes(Routes::History { host, scheme }) => {
            let name = route_name(&host, &scheme)?;
            let body = api
                .call("GET", &format!("/roo/v1/routes/{name}/history"), None)
                .await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| CliError::Api(e.to_string()))?;
            let rows: Vec<Value> = v["history"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut h| {
                    let ms = h["time"].as_u64().unwrap_or(0);
                    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
                    h["time"] = roo_acme::cert::rfc3339(at).into();
                    h["value"] = match &h["value"] {
                        Value::Null => "(removed)".into(),
                        v => v.to_string().into(),
                    };
                    h
                })
                .collect();
            if json_out {
                return Ok(Value::Array(rows).to_string());
            }
            Ok(render(false, &["rev", "time", "source", "value"], rows))
        }
        Command::Routes(Routes::Rollback {
            host,
            rev,
            scheme,
            force,
        }) => {
            let name = route_name(&host, &scheme)?;
            let body = rev.map(|rev| json!({"rev": rev}).to_string());
            let path = format!("/roo/v1/routes/{name}/rollback?force={force}");
            let answer = api.call("POST", &path, body).await?;
            let v: Value =
                serde_json::from_slice(&answer).map_err(|e| CliError::Api(e.to_string()))?;
            if json_out {
                return Ok(v.to_string());
            }
            Ok(format!(
                "ok: {name} has the value of revision {} again (revision {})",
                v["restored"], v["rev"]
            ))
        }
        Command::Routes(Routes::Freeze { host, scheme }) => {
            let name = route_name(&host, &scheme)?;
            api.call("POST", &format!("/roo/v1/routes/{name}/freeze"), None)
                .await?;
            Ok(done(json_out, &name))
        }
        Command::Routes(Routes::Unfreeze { host, scheme }) => {
            let name = route_name(&host, &scheme)?;
            api.call("POST", &format!("/roo/v1/routes/{name}/unfreeze"), None)
                .await?;
            Ok(done(json_out, &name))
        }
        Command::Events(args) => events::events(&api, json_out, args).await,
        Command::Webhooks(command) => events::webhooks(&api, json_out, command).await,
        Command::Rollout(command) => rollouts::rollout(&api, json_out, command).await,
        Command::Stats(args) => rollouts::stats(&api, json_out, args).await,
        Command::Load(args) => load::load(&api, json_out, args).await,
        Command::Kv(Kv::Ls { prefix }) => {
            let rows = api
                .scan(&prefix)
                .await?
                .into_iter()
                .map(|(k, v)| json!({"key": k, "value": String::from_utf8_lossy(&v)}))
                .collect();
            Ok(render(json_out, &["key", "value"], rows))
        }
    }
}

/// Deletes `key`; an error naming `what` when there was none.
async fn removed_one(
    api: &ApiClient,
    json_out: bool,
    key: &str,
    what: &str,
) -> Result<String, CliError> {
    let body = api
        .call("DELETE", &format!("/roo/v1/kv/{key}"), None)
        .await?;
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    if v["deleted"] == 0 {
        return Err(CliError::Api(format!("no {what} {key}")));
    }
    Ok(done(json_out, key))
}

/// `<host>[:<port>]:<scheme>`, the route's name in the API.
fn route_name(host: &str, scheme: &str) -> Result<String, CliError> {
    let key = route_key(host, scheme)?;
    Ok(key.trim_start_matches(ROUTE_PREFIX).to_string())
}

fn route_key(host: &str, scheme: &str) -> Result<String, CliError> {
    let (name, port) = crate::routes::split_host_port(host)
        .ok_or_else(|| CliError::Usage(format!("{host:?} is not host[:port]")))?;
    let scheme =
        Scheme::parse(scheme).ok_or_else(|| CliError::Usage(format!("bad scheme {scheme:?}")))?;
    let host = crate::routes::normalize_host(name).map_err(|e| CliError::Usage(e.to_string()))?;
    let key = RouteKey {
        host,
        port: port.filter(|p| *p != scheme.default_port()),
        scheme,
    };
    Ok(key.to_string())
}

fn done(json_out: bool, what: &str) -> String {
    if json_out {
        json!({"ok": true, "key": what}).to_string()
    } else {
        format!("ok: {what}")
    }
}

/// Rows as aligned columns (or a JSON array).
fn render(json_out: bool, columns: &[&str], rows: Vec<Value>) -> String {
    if json_out {
        return Value::Array(rows).to_string();
    }
    let cell = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            table
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out.push_str(&line(columns.iter().map(|c| c.to_uppercase()).collect()));
    for row in table {
        out.push('\n');
        out.push_str(&line(row));
    }
    out
}
