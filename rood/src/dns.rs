//! The DNS resolver for peers (and upstreams): `--resolver` or the system configuration.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::Name;
use hickory_resolver::TokioResolver;

/// Why a resolver could not be built or a name not resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("building resolver: {0}")]
    Build(String),
    #[error("resolving {name}: {reason}")]
    Lookup { name: String, reason: String },
}

/// A resolver that asks `server`, or the system's servers when None. Answers are cached for at
/// most `max_ttl`, so that peers and upstreams that come and go are seen soon.
pub fn resolver(server: Option<SocketAddr>, max_ttl: Duration) -> Result<TokioResolver, DnsError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            )
        }
        None => TokioResolver::builder(provider).map_err(|e| DnsError::Build(e.to_string()))?,
    };
    let opts = builder.options_mut();
    opts.positive_max_ttl = Some(max_ttl);
    opts.negative_max_ttl = Some(max_ttl);
    opts.timeout = Duration::from_secs(2);
    builder.build().map_err(|e| DnsError::Build(e.to_string()))
}

/// Every address `name` resolves to, sorted. The name is taken as plain ASCII, so that swarm's
/// service names with underscores (`tasks.roo_roo`, `app_web`) resolve: the default (IDNA)
/// reading refuses them.
pub async fn lookup(resolver: &TokioResolver, name: &str) -> Result<Vec<IpAddr>, DnsError> {
    let lookup_error = |reason: String| DnsError::Lookup {
        name: name.to_string(),
        reason,
    };
    let parsed = match name.parse::<IpAddr>() {
        Ok(ip) => return Ok(vec![ip]),
        Err(_) => Name::from_ascii(name).map_err(|e| lookup_error(e.to_string()))?,
    };
    let answer = resolver
        .lookup_ip(parsed)
        .await
        .map_err(|e| DnsError::Lookup {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
    let mut ips: Vec<IpAddr> = answer.iter().collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}
