//! A running node: store, API server and cluster formation, wired from a [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use roo_kv::{Kv, KvConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Api};
use crate::cluster::{self, Formation};
use crate::config::Config;

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
}

/// A started node.
pub struct Node {
    pub kv: Kv,
    pub api_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Binds the API, opens the store and starts joining the cluster in the background.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let listener =
            TcpListener::bind(config.api_addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.api_addr,
                    source,
                })?;
        Node::start_on(config, listener).await
    }

    /// Like [`Node::start`], on an API listener already bound (tests bind port 0).
    pub async fn start_on(config: Config, listener: TcpListener) -> Result<Node, StartError> {
        let api_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.api_addr,
            source,
        })?;
        let mut config = config;
        config.api_addr = api_addr;
        let advertise = config.advertise_addr().map_err(StartError::Config)?;
        if config.cluster_secret.is_none() {
            tracing::warn!("ROO_CLUSTER_SECRET is not set: any host that reaches the API port can join the cluster and send raft messages");
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
            snapshot_every: config.snapshot_every,
            request_timeout: config.request_timeout(),
        })
        .await?;

        let shutdown = CancellationToken::new();
        let api = Api {
            kv: kv.clone(),
            shutdown: shutdown.clone(),
        };
        let mut tasks = vec![tokio::spawn(api::serve(
            listener,
            api,
            Duration::from_secs(10),
        ))];
        let (form_kv, form_shutdown) = (kv.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            cluster::form(&form_kv, formation, &form_shutdown).await;
        }));
        tracing::info!(api = %api_addr, node_id = kv.node_id(), "rood started");
        Ok(Node {
            kv,
            api_addr,
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
