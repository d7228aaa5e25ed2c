//! Every setting of a node, in one struct: a flag, its `ROO_*` environment variable, an optional
//! TOML file (`--config`), and a default, in that order of precedence. `rood --help` lists them
//! all with their defaults.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

/// `--events-kept`: 0, or 10 to a million.
fn events_kept(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n == 0 || (10..=1_000_000).contains(&n) => Ok(n),
        _ => Err("0 (no activity stream) or 10 to 1000000".into()),
    }
}

/// A roo node: raft-replicated KV store and admin API.
#[derive(Debug, Clone, Parser)]
#[command(name = "rood", version, about, args_override_self = true)]
pub struct Config {
    /// A TOML file of settings, named as the flags are (`api_addr = "0.0.0.0:6299"` or
    /// `api-addr`); flags and environment variables win over it.
    #[arg(long, env = "ROO_CONFIG")]
    pub config: Option<PathBuf>,

    /// Raft node id (u64). Default: generated once and kept in the data dir.
    #[arg(long, env = "ROO_NODE_ID")]
    pub node_id: Option<u64>,

    /// Data dir: sled database and node identity.
    #[arg(long, env = "ROO_DATA_DIR", default_value = "./roo-data")]
    pub data_dir: PathBuf,

    /// Address of the KV/admin API; raft RPCs between nodes share it.
    #[arg(long, env = "ROO_API_ADDR", default_value = "0.0.0.0:6299")]
    pub api_addr: SocketAddr,

    /// Plain HTTP listener (ACME HTTP-01, redirects to https, http routes).
    #[arg(long, env = "ROO_HTTP_ADDR", default_value = "0.0.0.0:80")]
    pub http_addr: SocketAddr,

    /// TLS listener (h2 and http/1.1 by ALPN).
    #[arg(long, env = "ROO_HTTPS_ADDR", default_value = "0.0.0.0:443")]
    pub https_addr: SocketAddr,

    /// How long an upstream may take to answer a request's headers before the client gets 504,
    /// in ms.
    #[arg(long, env = "ROO_UPSTREAM_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_timeout_ms: u64,

    /// More CA certificates (PEM) to trust for TLS upstreams, besides the system's.
    #[arg(long, env = "ROO_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Proxy worker threads, each serving its share of the client connections with its own
    /// upstream connections. 0: one per CPU.
    #[arg(long, env = "ROO_PROXY_WORKERS", default_value_t = 0)]
    pub proxy_workers: u16,

    /// `auto`: each proxy worker stays on one CPU of those rood may run on, worker i on the
    /// i-th (round robin when there are more workers), as nginx's `worker_cpu_affinity auto`:
    /// two workers never share a CPU, for fewer switches and a shorter latency tail, but a
    /// worker cannot leave a CPU that another program keeps busy. `off`: the kernel places them.
    #[arg(long, env = "ROO_PROXY_CPU_AFFINITY", default_value = "off", value_parser = ["auto", "off"])]
    pub proxy_cpu_affinity: String,

    /// Most client connections open at once on the proxy listeners; more get 503.
    #[arg(long, env = "ROO_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// How long a client may take to send a request's headers once begun, and to begin its
    /// first request, in ms; then the connection closes (slowloris). At most an hour.
    #[arg(long, env = "ROO_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub header_timeout_ms: u64,

    /// How long a keep-alive client connection may wait for its next request, in ms. At most a
    /// day.
    #[arg(long, env = "ROO_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub idle_timeout_ms: u64,

    /// The port clients reach the HTTPS listener on, for the redirects of http requests to
    /// https routes (default: the listener's own port; a container's published port differs).
    #[arg(long, env = "ROO_HTTPS_PUBLIC_PORT")]
    pub https_public_port: Option<u16>,

    /// How long a client may send nothing in the middle of a request body, in ms; then 408 and
    /// the connection closes (nginx's client_body_timeout). At most a day.
    #[arg(long, env = "ROO_BODY_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub body_timeout_ms: u64,

    /// Largest request header section accepted, in bytes (more: 431). At least 8192.
    #[arg(long, env = "ROO_MAX_HEADER_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_header_bytes: u32,

    /// Address peers use to reach this node's API. Default: the API address if it names an IP,
    /// else this host's first non-loopback IP with the API port.
    #[arg(long, env = "ROO_ADVERTISE")]
    pub advertise: Option<String>,

    /// API addresses of existing members to join through (comma separated).
    #[arg(long, env = "ROO_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,

    /// Discover peers by resolving this name (e.g. tasks.roo_roo); they listen on our API port.
    #[arg(long, env = "ROO_DNS")]
    pub dns: Option<String>,

    /// DNS server for peers and upstreams, `IP` or `IP:PORT` (swarm: 127.0.0.11). Default: the
    /// system's.
    #[arg(long, env = "ROO_RESOLVER", value_parser = parse_resolver)]
    pub resolver: Option<SocketAddr>,

    /// Shared secret that every raft RPC and join request carries. Unset: peers are not
    /// authenticated (a warning is logged).
    #[arg(long, env = "ROO_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Admin bearer token of the API: writes, membership changes, secret keys with private
    /// keys. Unset: the API is open (a warning is logged), private keys still hidden.
    #[arg(long, env = "ROO_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// A file holding the admin token (a Docker secret), read when `--api-token` is not given.
    #[arg(long, env = "ROO_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Read-only bearer token: reads secret keys without their private keys.
    #[arg(long, env = "ROO_API_READ_TOKEN", hide_env_values = true)]
    pub api_read_token: Option<String>,

    /// A file holding the read-only token.
    #[arg(long, env = "ROO_API_READ_TOKEN_FILE")]
    pub api_read_token_file: Option<PathBuf>,

    /// A file holding the cluster secret (a Docker secret), read at start when
    /// `--cluster-secret` is not given.
    #[arg(long, env = "ROO_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// This node's certificate chain (PEM) for mutual TLS between nodes. With `--peer-key` and
    /// `--peer-ca`, the API port speaks TLS only and every raft RPC and join needs a client
    /// certificate signed by the peer CA (a CA for this cluster alone: names are not checked).
    #[arg(long, env = "ROO_PEER_CERT")]
    pub peer_cert: Option<PathBuf>,

    /// The private key (PEM) of `--peer-cert`.
    #[arg(long, env = "ROO_PEER_KEY")]
    pub peer_key: Option<PathBuf>,

    /// The cluster CA (PEM) that signs every node's peer certificate.
    #[arg(long, env = "ROO_PEER_CA")]
    pub peer_ca: Option<PathBuf>,

    /// Build a raft snapshot and purge the log before it after this many entries.
    #[arg(long, env = "ROO_SNAPSHOT_EVERY", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,

    /// How long a request may wait for a leader and a quorum before it gets 503, in ms.
    #[arg(long, env = "ROO_REQUEST_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub request_timeout_ms: u64,

    /// The shortest raft election timeout, in ms (the longest is twice it, heartbeats go every
    /// third of it): a new leader is in office 3 to 4 times this after the old one's last
    /// heartbeat. Raise it where the network or disks stall longer than this now and then.
    #[arg(long, env = "ROO_ELECTION_TIMEOUT_MS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(30..=60_000))]
    pub election_timeout_ms: u64,

    /// How long a dashboard login lasts, in seconds.
    #[arg(long, env = "ROO_UI_SESSION_S", default_value_t = 12 * 3600, value_parser = clap::value_parser!(u64).range(1..=30 * 24 * 3600))]
    pub ui_session_s: u64,

    /// Events the activity stream keeps (`GET /roo/v1/events`); the leader deletes older ones.
    /// 0: no activity stream (nor webhook deliveries), on every node alike.
    #[arg(long, env = "ROO_EVENTS_KEPT", default_value_t = crate::events::KEPT_DEFAULT, value_parser = events_kept)]
    pub events_kept: u64,

    /// The age past which an event leaves the activity stream, in seconds (30 days unless
    /// told); the leader deletes older event keys.
    #[arg(long, env = "ROO_EVENTS_MAX_AGE_S", default_value_t = crate::events::MAX_AGE_DEFAULT_S, value_parser = clap::value_parser!(u64).range(1..=3_650 * 86_400))]
    pub events_max_age_s: u64,

    /// Get certificates for https routes from an ACME CA (Let's Encrypt by default).
    #[arg(long, env = "ROO_ACME", default_value_t = true, action = clap::ArgAction::Set)]
    pub acme: bool,

    /// ACME directory URL. Default: Let's Encrypt production (staging with --acme-staging).
    #[arg(long, env = "ROO_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,

    /// Use Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
    #[arg(long, env = "ROO_ACME_STAGING", default_value_t = false, action = clap::ArgAction::Set)]
    pub acme_staging: bool,

    /// Contact address for the ACME account.
    #[arg(long, env = "ROO_ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// An extra root (PEM) to trust for the ACME server's own TLS certificate.
    #[arg(long, env = "ROO_ACME_CA_FILE")]
    pub acme_ca_file: Option<PathBuf>,

    /// Challenge to answer: `http-01` (on the HTTP listener) or `tls-alpn-01` (on the HTTPS one).
    #[arg(long, env = "ROO_ACME_CHALLENGE", default_value = "http-01", value_parser = ["http-01", "tls-alpn-01"])]
    pub acme_challenge: String,

    /// Wait after a host's first failed order, in seconds; doubles with each further failure,
    /// up to a day.
    #[arg(long, env = "ROO_ACME_RETRY_BASE_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub acme_retry_base_s: u64,

    /// TLS session tickets sealed with keys the cluster shares, so that a client resumes its
    /// session on any node (TLS 1.3 and 1.2). false: no tickets, for forward secrecy per
    /// connection; a client then resumes only on the node it met, from that node's session cache.
    #[arg(long, env = "ROO_TLS_TICKETS", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_tickets: bool,

    /// How often the leader makes a new TLS ticket key, in seconds; each key opens tickets for
    /// twice this (a week at most, TLS 1.3's limit).
    #[arg(long, env = "ROO_TLS_TICKET_ROTATE_S", default_value_t = 12 * 3600, value_parser = clap::value_parser!(u64).range(1..=302_400))]
    pub tls_ticket_rotate_s: u64,

    /// How long a TLS handshake for a routed host without a certificate waits for one, in ms.
    #[arg(long, env = "ROO_ACME_HANDSHAKE_WAIT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=9_000))]
    pub acme_handshake_wait_ms: u64,

    /// Swarm watcher: `auto` runs it where a Docker swarm manager API is reachable (DOCKER_HOST
    /// or /var/run/docker.sock), `on` keeps looking for one, `off` never.
    #[arg(long, env = "ROO_SWARM", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub swarm: String,

    /// Log filter (tracing EnvFilter syntax), e.g. `info,roo_kv=debug`.
    // openraft's replication warns at every failed RPC to a member that is down; roo-kv says
    // it once per interval instead (`roo_kv::network::peers`).
    #[arg(
        long,
        env = "ROO_LOG",
        default_value = "info,openraft=error,openraft::replication=off"
    )]
    pub log: String,

    /// Log format: `text` or `json`.
    #[arg(long, env = "ROO_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is neither an IP nor IP:PORT"))
}

/// A TOML value as a flag's text.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad flag, variable or file value (clap's message names the setting).
    #[error(transparent)]
    Invalid(#[from] clap::Error),
    #[error("{0}")]
    File(String),
}

impl Config {
    /// Reads the settings from `args`, the environment and the file `--config` names: a flag
    /// wins over its variable, which wins over the file, which wins over the default.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let first = Config::try_parse_from(&args)?;
        let Some(path) = first.config else {
            return Ok(first);
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::File(format!("config file {shown}: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| ConfigError::File(format!("config file {shown}: {e}")))?;
        let mut command = Config::command();
        for (key, value) in table {
            let id = key.replace('-', "_");
            if id == "config" || !command.get_arguments().any(|a| a.get_id() == id.as_str()) {
                return Err(ConfigError::File(format!(
                    "config file {shown}: unknown setting {key:?}"
                )));
            }
            let text = match &value {
                toml::Value::Array(items) => items
                    .iter()
                    .map(scalar)
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.join(",")),
                v => scalar(v),
            };
            let Some(text) = text else {
                return Err(ConfigError::File(format!(
                    "config file {shown}: {key} is a {}: use a string, number, boolean or list",
                    value.type_str()
                )));
            };
            // The file's value becomes the default: flags and variables still win, and clap
            // checks it like any other value.
            command = command.mut_arg(id, |arg| arg.default_value(text));
        }
        let matches = command.try_get_matches_from(&args)?;
        Ok(Config::from_arg_matches(&matches)?)
    }

    /// Reads the settings kept in files (Docker secrets) into the config, a value given directly
    /// winning over its file, and checks the tokens.
    pub fn load_secret_files(&mut self) -> Result<(), String> {
        for (value, file, name) in [
            (
                &mut self.cluster_secret,
                &self.cluster_secret_file,
                "ROO_CLUSTER_SECRET_FILE",
            ),
            (
                &mut self.api_token,
                &self.api_token_file,
                "ROO_API_TOKEN_FILE",
            ),
            (
                &mut self.api_read_token,
                &self.api_read_token_file,
                "ROO_API_READ_TOKEN_FILE",
            ),
        ] {
            if let (None, Some(path)) = (&*value, file) {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{name} {}: {e}", path.display()))?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(format!("{name} {} is empty", path.display()));
                }
                *value = Some(text.to_string());
            }
        }
        // An empty secret would be one every request carries without saying so.
        if self
            .cluster_secret
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err("ROO_CLUSTER_SECRET is empty".into());
        }
        for (value, name) in [
            (&self.api_token, "ROO_API_TOKEN"),
            (&self.api_read_token, "ROO_API_READ_TOKEN"),
        ] {
            if value.as_ref().is_some_and(|t| t.len() < 16) {
                return Err(format!("{name} is shorter than 16 characters"));
            }
        }
        if self.api_read_token.is_some() && self.api_read_token == self.api_token {
            return Err("ROO_API_READ_TOKEN must differ from ROO_API_TOKEN".into());
        }
        Ok(())
    }

    /// The mutual TLS settings between nodes, or None when they talk plain HTTP.
    pub fn peer_tls(&self) -> Result<Option<roo_kv::network::tls::PeerTls>, String> {
        match (&self.peer_cert, &self.peer_key, &self.peer_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => roo_kv::network::tls::PeerTls::load(cert, key, ca)
                .map(Some)
                .map_err(|e| e.to_string()),
            _ => Err(
                "ROO_PEER_CERT, ROO_PEER_KEY and ROO_PEER_CA go together: set all three or none"
                    .into(),
            ),
        }
    }

    /// The ACME settings, or None when ACME is off.
    pub fn acme_config(&self) -> Option<roo_acme::AcmeConfig> {
        if !self.acme {
            return None;
        }
        let directory = match (&self.acme_directory, self.acme_staging) {
            (Some(d), _) => d.clone(),
            (None, true) => roo_acme::issuer::LETS_ENCRYPT_STAGING.to_string(),
            (None, false) => roo_acme::issuer::LETS_ENCRYPT.to_string(),
        };
        let mut config = roo_acme::AcmeConfig::new(directory);
        config.email = self.acme_email.clone();
        config.ca_file = self.acme_ca_file.clone();
        config.challenge = if self.acme_challenge == "tls-alpn-01" {
            roo_acme::ChallengeKind::TlsAlpn01
        } else {
            roo_acme::ChallengeKind::Http01
        };
        config.retry_base = Duration::from_secs(self.acme_retry_base_s);
        Some(config)
    }

    /// How many proxy workers to run.
    pub fn proxy_workers(&self) -> usize {
        match self.proxy_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => usize::from(n),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    /// The address peers reach this node at.
    pub fn advertise_addr(&self) -> Result<String, String> {
        if let Some(a) = &self.advertise {
            return Ok(a.clone());
        }
        let api = self.api_addr;
        if !api.ip().is_unspecified() {
            return Ok(api.to_string());
        }
        let ip = if_addrs::get_if_addrs()
            .map_err(|e| format!("listing network interfaces: {e}"))?
            .into_iter()
            .map(|i| i.ip())
            .find(|ip| !ip.is_loopback() && ip.is_ipv4())
            .ok_or("no non-loopback IPv4 address found: set --advertise")?;
        Ok(SocketAddr::new(ip, api.port()).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_takes_ip_or_ip_port() {
        assert_eq!(
            parse_resolver("127.0.0.11").unwrap(),
            "127.0.0.11:53".parse().unwrap()
        );
        assert_eq!(
            parse_resolver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert!(parse_resolver("dns.example").is_err());
    }

    #[test]
    fn defaults_and_bad_values() {
        let c = Config::try_parse_from(["rood"]).unwrap();
        assert_eq!(c.api_addr, "0.0.0.0:6299".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./roo-data"));
        let c =
            Config::try_parse_from(["rood", "--join", "a:1,b:2", "--api-addr", "127.0.0.2:7000"])
                .unwrap();
        assert_eq!(c.join, vec!["a:1", "b:2"]);
        assert_eq!(c.advertise_addr().unwrap(), "127.0.0.2:7000");
        let err = Config::try_parse_from(["rood", "--api-addr", "nope"]).unwrap_err();
        assert!(err.to_string().contains("--api-addr"), "{err}");
        assert!(Config::try_parse_from(["rood", "--snapshot-every", "0"]).is_err());
        // A repeated flag: the last one counts.
        let c = Config::try_parse_from([
            "rood",
            "--http-addr",
            "127.0.0.1:1",
            "--http-addr",
            "127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(c.http_addr.port(), 2);
    }

    #[test]
    fn acme_settings() {
        let c = Config::try_parse_from(["rood"]).unwrap();
        let acme = c.acme_config().unwrap();
        assert_eq!(acme.directory, roo_acme::issuer::LETS_ENCRYPT);
        assert_eq!(acme.challenge, roo_acme::ChallengeKind::Http01);
        let c = Config::try_parse_from([
            "rood",
            "--acme-staging",
            "true",
            "--acme-challenge",
            "tls-alpn-01",
        ])
        .unwrap();
        let acme = c.acme_config().unwrap();
        assert_eq!(acme.directory, roo_acme::issuer::LETS_ENCRYPT_STAGING);
        assert_eq!(acme.challenge, roo_acme::ChallengeKind::TlsAlpn01);
        let c = Config::try_parse_from(["rood", "--acme", "false"]).unwrap();
        assert!(c.acme_config().is_none());
        assert!(Config::try_parse_from(["rood", "--acme-challenge", "dns-01"]).is_err());
    }
}

#[cfg(test)]
mod secret_file_tests {
    use super::*;

    #[test]
    fn tokens_and_secrets_load_from_files() {
        let dir = std::env::temp_dir().join(format!("roo-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "admin-token-0123456789\n").unwrap();
        let mut c =
            Config::try_parse_from(["rood", "--api-token-file", file.to_str().unwrap()]).unwrap();
        c.load_secret_files().unwrap();
        assert_eq!(c.api_token.as_deref(), Some("admin-token-0123456789"));
        let mut c = Config::try_parse_from([
            "rood",
            "--cluster-secret-file",
            file.to_str().unwrap(),
            "--cluster-secret",
            "given",
        ])
        .unwrap();
        c.load_secret_files().unwrap();
        assert_eq!(
            c.cluster_secret.as_deref(),
            Some("given"),
            "a value given directly wins"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("roo-cfgfile-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roo.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let path = write(
            "precedence",
            "api_addr = \"127.0.0.9:7000\"\nsnapshot-every = 500\nrequest_timeout_ms = 700\njoin = [\"a:1\", \"b:2\"]\nacme = false\n",
        );
        let file = path.to_str().unwrap();
        // The file over the defaults.
        let c = Config::load(["rood", "--config", file]).unwrap();
        assert_eq!(c.api_addr, "127.0.0.9:7000".parse().unwrap());
        assert_eq!(c.snapshot_every, 500);
        assert_eq!(c.join, vec!["a:1", "b:2"]);
        assert!(!c.acme);
        assert_eq!(c.max_connections, 10_000, "a default the file leaves alone");
        // The environment over the file; a flag over both.
        std::env::set_var("ROO_REQUEST_TIMEOUT_MS", "800");
        std::env::set_var("ROO_SNAPSHOT_EVERY", "600");
        let c = Config::load(["rood", "--config", file, "--snapshot-every", "900"]).unwrap();
        std::env::remove_var("ROO_REQUEST_TIMEOUT_MS");
        std::env::remove_var("ROO_SNAPSHOT_EVERY");
        assert_eq!(c.request_timeout_ms, 800);
        assert_eq!(c.snapshot_every, 900);
    }

    #[test]
    fn bad_files_and_values_name_the_setting() {
        let unknown = write("unknown", "api_adr = \"x\"\n");
        let err = Config::load(["rood", "--config", unknown.to_str().unwrap()]).unwrap_err();
        assert!(
            err.to_string().contains("unknown setting \"api_adr\""),
            "{err}"
        );
        let bad = write("bad", "snapshot_every = 0\n");
        let err = Config::load(["rood", "--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("--snapshot-every"), "{err}");
        let table = write("table", "[acme]\nemail = \"x\"\n");
        let err = Config::load(["rood", "--config", table.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("acme is a table"), "{err}");
        let broken = write("broken", "api_addr = \n");
        assert!(Config::load(["rood", "--config", broken.to_str().unwrap()]).is_err());
        let err = Config::load(["rood", "--config", "/nonexistent/roo.toml"]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/roo.toml"), "{err}");
    }

    #[test]
    fn help_lists_every_setting_with_its_variable() {
        let help = Config::command().render_long_help().to_string();
        for arg in Config::command().get_arguments() {
            if let Some(env) = arg.get_env() {
                assert!(
                    help.contains(env.to_str().unwrap()),
                    "{env:?} missing from --help"
                );
            }
        }
        assert!(help.contains("[default: 0.0.0.0:6299]"), "defaults shown");
    }
}
