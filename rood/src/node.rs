//! A running node: store, API server, proxy listeners, route feed and cluster formation, wired
//! from a [`Config`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use roo_kv::{Kv, KvConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use roo_acme::Issuer;

use crate::acme::{self, KvStore};
use crate::api::{self, Api};
use crate::certs;
use crate::cluster::{self, Formation};
use crate::config::Config;
use crate::feed;
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstreams;
use crate::proxy::{self, ProxyState};
use crate::tables::Tables;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kv(#[from] roo_kv::KvError),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error(transparent)]
    Upstream(#[from] crate::proxy::upstream::UpstreamError),
    #[error(transparent)]
    Acme(#[from] roo_acme::AcmeError),
}

/// The bound sockets of a node.
pub struct Listeners {
    pub api: TcpListener,
    pub http: TcpListener,
    pub https: TcpListener,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

impl Listeners {
    /// Binds the three addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        Ok(Listeners {
            api: bind(config.api_addr).await?,
            http: bind(config.http_addr).await?,
            https: bind(config.https_addr).await?,
        })
    }
}

/// A started node.
pub struct Node {
    pub kv: Kv,
    pub api_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub https_addr: SocketAddr,
    /// The routes and certificates the proxy serves.
    pub tables: Arc<Tables>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Binds the listeners, opens the store, starts serving, and joins the cluster in the
    /// background.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let listeners = Listeners::bind(&config).await?;
        Node::start_on(config, listeners).await
    }

    /// Like [`Node::start`], on listeners already bound (tests bind port 0).
    pub async fn start_on(mut config: Config, listeners: Listeners) -> Result<Node, StartError> {
        let api_addr = local(&listeners.api)?;
        let http_addr = local(&listeners.http)?;
        let https_addr = local(&listeners.https)?;
        config.api_addr = api_addr;
        config.load_secret_files().map_err(StartError::Config)?;
        let advertise = config.advertise_addr().map_err(StartError::Config)?;
        let peer_tls = config.peer_tls().map_err(StartError::Config)?;
        if config.cluster_secret.is_none() && peer_tls.is_none() {
            // Without either, a node cannot tell its peers from anyone who reaches the API port.
            if !config.join.is_empty() || config.dns.is_some() {
                return Err(StartError::Config(
                    "--join and --dns need ROO_CLUSTER_SECRET (or peer TLS): nodes take no raft messages or joins without it".into(),
                ));
            }
            tracing::warn!("ROO_CLUSTER_SECRET is not set: this node runs alone and refuses raft messages and joins; to form a cluster, start every node with the same ROO_CLUSTER_SECRET");
        }
        let formation = if !config.join.is_empty() {
            Formation::Join(config.join.clone())
        } else if let Some(name) = &config.dns {
            Formation::Dns {
                name: name.clone(),
                resolver: Box::new(crate::dns::resolver(
                    config.resolver,
                    Duration::from_secs(1),
                )?),
                port: api_addr.port(),
            }
        } else {
            Formation::Bootstrap
        };
        let kv = Kv::open(KvConfig {
            node_id: config.node_id,
            data_dir: config.data_dir.clone(),
            advertise,
            cluster_secret: config.cluster_secret.clone(),
            peer_tls: peer_tls.clone(),
            snapshot_every: config.snapshot_every,
            request_timeout: config.request_timeout(),
            election_timeout: config.election_timeout(),
        })
        .await?;

        let shutdown = CancellationToken::new();
        let tables = Arc::new(Tables::default());
        let ticket_rotation = Duration::from_secs(config.tls_ticket_rotate_s);
        let ticketer: Option<Arc<dyn rustls::server::ProducesTickets>> = match config.tls_tickets {
            true => Some(Arc::new(
                crate::tickets::Ticketer::new(tables.tickets.clone(), 2 * ticket_rotation)
                    .map_err(|e| StartError::Config(format!("TLS tickets: {e}")))?,
            )),
            false => None,
        };
        let tls = certs::server_config(tables.certs.clone(), ticketer)
            .map_err(|e| StartError::Config(format!("TLS: {e}")))?;
        let acme = config.acme_config();
        let issuer = match acme {
            Some(acme) => {
                tracing::info!(directory = %acme.directory, challenge = ?acme.challenge, "ACME on: https routes get certificates from this CA, ordered by the raft leader (--acme false turns it off)");
                Some(Issuer::new(KvStore(kv.clone()), acme)?)
            }
            None => None,
        };
        let acme_wake = Arc::new(tokio::sync::Notify::new());
        let metrics = Arc::new(Metrics::new());
        let stats = Arc::new(crate::stats::Stats::new({
            let metrics = metrics.clone();
            Box::new(move |route: Option<&str>| metrics.backend_totals(route))
        }));
        // One state per proxy worker: each has its own upstream connections.
        let roots = crate::proxy::upstream::upstream_roots(config.upstream_ca_file.as_deref())?;
        let down = Arc::new(crate::proxy::health::Down::default());
        let mut workers = Vec::new();
        for _ in 0..config.proxy_workers() {
            workers.push(ProxyState {
                tables: tables.clone(),
                upstreams: Upstreams::new(
                    crate::dns::resolver(config.resolver, Duration::from_secs(30))?,
                    Duration::from_millis(config.upstream_timeout_ms),
                    roots.clone(),
                    down.clone(),
                )?,
                limits: proxy::Limits {
                    max_connections: config.max_connections as usize,
                    max_header_bytes: config.max_header_bytes as usize,
                    header_timeout: Duration::from_millis(config.header_timeout_ms),
                    idle_timeout: Duration::from_millis(config.idle_timeout_ms),
                    body_timeout: Duration::from_millis(config.body_timeout_ms),
                },
                https_port: Some(config.https_public_port.unwrap_or(https_addr.port()))
                    .filter(|p| *p != 443),
                cert_wait: match issuer {
                    Some(_) => Duration::from_millis(config.acme_handshake_wait_ms),
                    None => Duration::ZERO,
                },
                acme_wake: acme_wake.clone(),
                report: metrics.worker_report(),
            });
        }
        if config.api_token.is_none() {
            tracing::warn!("ROO_API_TOKEN is not set: anyone who reaches the API port can change routes (private keys stay hidden)");
        }
        let api = Api {
            kv: kv.clone(),
            tokens: api::auth::Tokens {
                admin: config.api_token.clone(),
                read: config.api_read_token.clone(),
            },
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
            tables: tables.clone(),
            acme: issuer.clone(),
            stats: stats.clone(),
            down: down.clone(),
            ui: Arc::new(crate::ui::Dashboard::new(Duration::from_secs(
                config.ui_session_s,
            ))),
            tls: peer_tls.is_some(),
        };
        let (form_kv, form_shutdown) = (kv.clone(), shutdown.clone());
        let mut tasks = vec![
            tokio::spawn(api::serve(
                listeners.api,
                peer_tls.map(|t| t.server_config()),
                api,
                Duration::from_secs(10),
            )),
            tokio::spawn(feed::run(kv.clone(), tables.clone(), shutdown.clone())),
            tokio::spawn(stats.clone().run(shutdown.clone())),
            tokio::spawn(crate::rollout::run(
                kv.clone(),
                stats.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(proxy::health::run(
                tables.clone(),
                crate::dns::resolver(config.resolver, Duration::from_secs(30))?,
                down,
                shutdown.clone(),
            )),
            tokio::spawn(async move { cluster::form(&form_kv, formation, &form_shutdown).await }),
        ];
        tasks.extend(
            proxy::spawn_workers(
                workers,
                listeners.http,
                listeners.https,
                Arc::new(tls),
                config.proxy_cpu_affinity == "auto",
                shutdown.clone(),
            )
            .map_err(|e| StartError::Config(format!("starting the proxy workers: {e}")))?,
        );
        if config.swarm != "off" {
            tasks.push(tokio::spawn(crate::swarm::run(
                kv.clone(),
                config.swarm == "on",
                metrics.clone(),
                shutdown.clone(),
            )));
        }
        if let Some(issuer) = issuer {
            tasks.push(tokio::spawn(acme::run(
                kv.clone(),
                tables.clone(),
                issuer,
                acme_wake,
                shutdown.clone(),
            )));
        }
        let max_age = Duration::from_secs(config.events_max_age_s);
        crate::events::keep(config.events_kept, max_age);
        tasks.push(tokio::spawn(crate::events::run(
            kv.clone(),
            config.events_kept as usize,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(crate::tickets::run(
            kv.clone(),
            ticket_rotation,
            config.tls_tickets,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(crate::leader::run(
            kv.clone(),
            shutdown.clone(),
        )));
        let webhooks = crate::webhooks::client(roots)
            .map_err(|e| StartError::Config(format!("the webhook client: {e}")))?;
        tasks.push(tokio::spawn(crate::webhooks::run(
            kv.clone(),
            webhooks,
            shutdown.clone(),
        )));
        tracing::info!(api = %api_addr, http = %http_addr, https = %https_addr, data_dir = %config.data_dir.display(), node_id = kv.node_id(), "rood started");
        Ok(Node {
            kv,
            api_addr,
            http_addr,
            https_addr,
            tables,
            shutdown,
            tasks,
        })
    }

    /// Stops serving, drains connections and stops the store.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.kv.shutdown().await;
    }
}
