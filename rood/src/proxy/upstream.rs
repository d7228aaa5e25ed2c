//! Upstream addresses and connections: a backend's destinations resolved to socket addresses
//! (every address DNS returns: `tasks.<service>` gives one per task), taken round robin, with an
//! address that refused a connection left out for a while; pooled keep-alive connections for
//! plain HTTP/1.1 ([`super::pool`]), h2c, and TLS (verified by default).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use http::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::headers::Forwarded;
use super::health::Down;
use super::pool::{Http1Pool, PoolConfig, PoolError};
use super::{BodyError, BoxError, ProxyBody, ProxyError};
use crate::routes::middleware::FieldChange;
use crate::routes::{Backend, Destination};

/// How long an address that refused a connection is left out.
const EJECT_FOR: Duration = Duration::from_secs(10);
/// How long a connection to an upstream may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an upstream connection is kept idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type TlsClient = Client<HttpsConnector<HttpConnector<AddressDns>>, ProxyBody>;

/// Why the upstream clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream CA file {0}")]
    CaFile(String),
    #[error("upstream TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Resolution, round robin and ejection, shared by the request path and the TLS connector.
struct Addresses {
    resolver: TokioResolver,
    /// Addresses left out until the given time. A plain lock: held for a lookup, never across
    /// an await.
    ejected: Mutex<HashMap<SocketAddr, Instant, ahash::RandomState>>,
    /// Whether `ejected` may hold an address still left out: while not, a pick takes no lock.
    any_ejected: AtomicBool,
    next: AtomicUsize,
}

impl Addresses {
    async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, crate::dns::DnsError> {
        // An address is taken as it is by `dns::lookup` (a plain backend's does not come here:
        // `Destination::ip`). hickory caches answers for their TTL, so this is a lookup in
        // memory most times. Boxed: hickory's future is large, and every request's future would
        // otherwise carry its size.
        Box::pin(crate::dns::lookup(&self.resolver, host)).await
    }

    fn turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// The DNS of the TLS connector: the same resolver, the addresses rotated so that each new
/// connection starts at the next one (the connector tries the others in order if it fails).
#[derive(Clone)]
pub struct AddressDns(Arc<Addresses>);

impl tower_service::Service<Name> for AddressDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = crate::dns::DnsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let addrs = self.0.clone();
        Box::pin(async move {
            let mut ips = addrs.lookup(name.as_str()).await?;
            if !ips.is_empty() {
                let n = ips.len();
                ips.rotate_left(addrs.turn() % n);
            }
            // The connector puts the URI's port in.
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

/// Upstream connections and address choice, shared by every request.
pub struct Upstreams {
    addrs: Arc<Addresses>,
    /// Keep-alive HTTP/1.1 connections to plain addresses.
    http1: Arc<Http1Pool>,
    /// HTTP/2 over plain TCP (prior knowledge), for `h2c` backends: one multiplexed connection
    /// per address.
    h2c: Client<HttpConnector, ProxyBody>,
    /// HTTP/1.1 over TLS, the upstream's certificate verified against the system's roots and
    /// `--upstream-ca-file`; pooled per destination host.
    https: TlsClient,
    /// The same without certificate verification, for backends that opt out.
    https_unverified: TlsClient,
    /// How long an upstream may take to answer with headers.
    pub(super) timeout: Duration,
    /// Addresses failing their health checks.
    down: Arc<Down>,
}

/// The addresses of a backend's destinations (on the stack for the usual one or two).
pub type Addrs = smallvec::SmallVec<[SocketAddr; 2]>;

/// Why an upstream gave no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    Failed(String),
    /// The client's request body broke off on the way.
    ClientBody(BodyError),
}

fn tls_client(addrs: &Arc<Addresses>, config: rustls::ClientConfig) -> TlsClient {
    let mut http = HttpConnector::new_with_resolver(AddressDns(addrs.clone()));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(connector)
}

/// The system's roots and those of `extra_ca` (`--upstream-ca-file`): loaded once, for every
/// worker's [`Upstreams`].
pub fn upstream_roots(extra_ca: Option<&Path>) -> Result<rustls::RootCertStore, UpstreamError> {
    roo_acme::roots::system_and(extra_ca).map_err(UpstreamError::CaFile)
}

impl Upstreams {
    /// `roots`: what TLS upstreams' certificates are checked against (see [`upstream_roots`]).
    pub fn new(
        resolver: TokioResolver,
        timeout: Duration,
        roots: rustls::RootCertStore,
        down: Arc<Down>,
    ) -> Result<Self, UpstreamError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http1 = Http1Pool::new(PoolConfig {
            max_idle_per_addr: 256,
            idle_timeout: IDLE_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
        });
        let h2c = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .http2_only(true)
            .build(connector);
        let addrs = Arc::new(Addresses {
            resolver,
            ejected: Mutex::new(HashMap::default()),
            any_ejected: AtomicBool::new(false),
            next: AtomicUsize::new(0),
        });
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(danger::NoCertificateVerification(provider)))
            .with_no_client_auth();
        Ok(Upstreams {
            https: tls_client(&addrs, verified),
            https_unverified: tls_client(&addrs, unverified),
            addrs,
            http1,
            h2c,
            timeout,
            down,
        })
    }

    /// Every address of every destination, in a stable order.
    pub async fn resolve(&self, destinations: &[Destination]) -> Result<Addrs, ProxyError> {
        let mut addrs = Addrs::new();
        let mut last_error = None;
        for d in destinations {
            if let Some(ip) = d.ip {
                addrs.push(SocketAddr::new(ip, d.port));
                continue;
            }
            match self.addrs.lookup(&d.host).await {
                Ok(ips) => addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, d.port))),
                Err(e) => last_error = Some(e),
            }
        }
        if addrs.is_empty() {
            let host = destinations
                .first()
                .map(|d| d.host.clone())
                .unwrap_or_default();
            return Err(ProxyError::Resolve {
                host,
                reason: last_error.map_or_else(|| "no address".to_string(), |e| e.to_string()),
            });
        }
        Ok(addrs)
    }

    /// The next destination of a TLS backend, round robin (its addresses rotate in the connector).
    pub fn pick_destination<'a>(&self, destinations: &'a [Destination]) -> Option<&'a Destination> {
        (!destinations.is_empty()).then(|| &destinations[self.addrs.turn() % destinations.len()])
    }

    /// The address of `addrs` a sticky cookie names by `token`, unless it is ejected.
    pub fn pick_bound(&self, addrs: &[SocketAddr], token: u64) -> Option<SocketAddr> {
        let addr = *addrs
            .iter()
            .find(|a| crate::routes::model::address_token(**a) == token)?;
        if self.down.contains(&addr) {
            return None;
        }
        if self.addrs.any_ejected.load(Ordering::Relaxed) {
            let ejected = self.addrs.ejected.lock().unwrap_or_else(|p| p.into_inner());
            if ejected
                .get(&addr)
                .is_some_and(|until| *until > Instant::now())
            {
                return None;
            }
        }
        Some(addr)
    }

    /// The next address round robin, skipping ejected ones, those failing health checks and
    /// `not` (when others remain).
    pub fn pick(&self, addrs: &[SocketAddr], not: Option<SocketAddr>) -> Option<SocketAddr> {
        // Most times nothing is left out and a backend has one address: no lock, no turn.
        if not.is_none() && !self.addrs.any_ejected.load(Ordering::Relaxed) && !self.down.any() {
            return match addrs {
                [] => None,
                [only] => Some(*only),
                _ => Some(addrs[self.addrs.turn() % addrs.len()]),
            };
        }
        let mut ejected = self.addrs.ejected.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ejected.retain(|_, until| *until > now);
        if ejected.is_empty() {
            self.addrs.any_ejected.store(false, Ordering::Relaxed);
        }
        let other = |a: &&SocketAddr| Some(**a) != not;
        let usable =
            |a: &&SocketAddr| other(a) && !ejected.contains_key(*a) && !self.down.contains(a);
        let turn = self.addrs.turn();
        let nth = |count: usize, keep: &dyn Fn(&&SocketAddr) -> bool| {
            (count > 0).then(|| addrs.iter().filter(keep).nth(turn % count).copied())
        };
        match addrs.iter().filter(usable).count() {
            // Everything is ejected: better to try one than to fail without trying.
            0 => nth(addrs.iter().filter(other).count(), &other).flatten(),
            n => nth(n, &usable).flatten(),
        }
    }

    /// Sends `req` to `backend` with the `forwarded` fields: to `addr` for a plain backend (its
    /// URI in origin form), else to the host its absolute URI names. `started`: when it came.
    /// A pooled answer comes with `answer_changes` made in its lines; hyper's answers without.
    pub async fn send(
        &self,
        backend: &Backend,
        addr: Option<SocketAddr>,
        mut req: Request<ProxyBody>,
        forwarded: &Forwarded<'_>,
        answer_changes: &[FieldChange],
        started: Instant,
    ) -> Result<Response<ProxyBody>, SendError> {
        use http_body_util::BodyExt;
        if backend.tls() || backend.h2c {
            forwarded.apply(req.headers_mut());
        }
        let legacy = match (backend.tls(), backend.h2c, addr) {
            (true, _, _) if backend.tls_verify => self.https.request(req),
            (true, _, _) => self.https_unverified.request(req),
            (false, true, _) => self.h2c.request(req),
            (false, false, Some(addr)) => {
                return match self
                    .http1
                    .send(addr, req, Some(forwarded), answer_changes, started)
                    .await
                {
                    Ok(resp) => Ok(resp.map(|b| b.boxed())),
                    Err(PoolError::Connect(reason)) => Err(SendError::Connect(reason)),
                    Err(PoolError::Request(reason)) => Err(SendError::Failed(reason)),
                    Err(PoolError::ClientBody(e)) => Err(SendError::ClientBody(e)),
                };
            }
            (false, false, None) => return Err(SendError::Failed("no address".into())),
        };
        match legacy.await {
            Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed())),
            Err(e) if e.is_connect() => Err(SendError::Connect(roo_kv::error::with_causes(&e))),
            Err(e) => match BodyError::within(&e) {
                Some(body) => Err(SendError::ClientBody(body.clone())),
                None => Err(SendError::Failed(roo_kv::error::with_causes(&e))),
            },
        }
    }

    /// Leaves `addr` out for a while after a failed connect.
    pub fn eject(&self, addr: SocketAddr) {
        tracing::warn!(%addr, secs = EJECT_FOR.as_secs(), "upstream refused a connection; ejecting it");
        let mut ejected = self.addrs.ejected.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ejected.retain(|_, until| *until > now);
        ejected.insert(addr, now + EJECT_FOR);
        self.addrs.any_ejected.store(true, Ordering::Relaxed);
    }
}

/// Certificate checks turned off, for backends that ask for it (`"tls_verify": false`).
mod danger {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Accepts any certificate; the handshake signature is still checked.
    #[derive(Debug)]
    pub struct NoCertificateVerification(pub Arc<CryptoProvider>);

    impl ServerCertVerifier for NoCertificateVerification {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams() -> Upstreams {
        // A resolver pointed at the loopback discard port: these tests never resolve a name.
        let resolver =
            crate::dns::resolver(Some(([127, 0, 0, 1], 9).into()), Duration::from_secs(1)).unwrap();
        Upstreams::new(
            resolver,
            Duration::from_secs(1),
            upstream_roots(None).unwrap(),
            Arc::default(),
        )
        .unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn pick_goes_round_robin_around_ejected_addresses() {
        let u = upstreams();
        let addrs = [addr(1), addr(2), addr(3)];
        let mut seen: Vec<_> = (0..3).filter_map(|_| u.pick(&addrs, None)).collect();
        seen.sort();
        assert_eq!(seen, addrs);

        u.eject(addr(2));
        for _ in 0..6 {
            assert_ne!(u.pick(&addrs, None), Some(addr(2)));
        }
        // `not` is skipped too; with everything else out, an ejected address is still tried.
        assert_eq!(u.pick(&addrs, Some(addr(1))), Some(addr(3)));
        u.eject(addr(1));
        u.eject(addr(3));
        assert!(u.pick(&addrs, Some(addr(1))).is_some_and(|a| a != addr(1)));
        assert_eq!(u.pick(&[addr(1)], Some(addr(1))), None);
        assert_eq!(u.pick(&[], None), None);
    }
}
