//! Helpers shared by rood's integration tests: an HTTP client, nodes in-process and as
//! processes, and waiting on conditions with a deadline.
#![allow(dead_code)]

pub mod browser;
pub mod pebble;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

pub const SECRET: &str = "test-cluster-secret";

/// A reply, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 client; `https://` URLs work with [`Http::tls`].
#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The scheme [`Http::cluster`] uses.
    scheme: &'static str,
}

impl Default for Http {
    fn default() -> Self {
        Http::with(tls_client(None, None), "http")
    }
}

impl Http {
    /// A client that trusts `ca` only and speaks `https` to nodes (with peer TLS on), showing
    /// `identity` (a certificate chain and key, PEM) when given.
    pub fn tls(ca: &TestCa, identity: Option<(&str, &str)>) -> Http {
        Http::with(tls_client(Some(ca), identity), "https")
    }

    fn with(config: rustls::ClientConfig, scheme: &'static str) -> Http {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Http {
            client: Client::builder(TokioExecutor::new()).build(connector),
            scheme,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let causes =
                    std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source());
                let causes: Vec<String> = causes.map(ToString::to_string).collect();
                format!("{method} {url}: {}", causes.join(": "))
            })?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .map_err(|_| format!("{method} {url}: no whole answer in 30s"))?
    }

    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.send("GET", url, &[], Bytes::new()).await
    }

    pub async fn put(&self, url: &str, body: impl Into<Bytes>) -> Result<Reply, String> {
        self.send("PUT", url, &[], body).await
    }

    pub async fn delete(&self, url: &str) -> Result<Reply, String> {
        self.send("DELETE", url, &[], Bytes::new()).await
    }

    /// `GET /roo/v1/cluster` of the node at `addr`.
    pub async fn cluster(&self, addr: &str) -> Result<Value, String> {
        let r = self
            .get(&format!("{}://{addr}/roo/v1/cluster", self.scheme))
            .await?;
        if r.status != 200 {
            return Err(format!("status {}", r.status));
        }
        Ok(r.json())
    }
}

/// A TLS client configuration trusting `ca` (nothing when None), with a client certificate
/// when `identity` (chain and key, PEM) is given.
pub fn tls_client(ca: Option<&TestCa>, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add(ca.der()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    }
}

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        TestCa { issuer }
    }

    /// A certificate for `names` signed by this CA: (certificate PEM, key PEM, certificate DER).
    pub fn leaf(&self, names: &[&str]) -> (String, String, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        // rustls refuses a CA certificate as a server's: say CA:FALSE explicitly.
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// A `com.roo.cert:` value for `names` signed by this CA, and its certificate's DER.
    pub fn stored(&self, names: &[&str]) -> (String, CertificateDer<'static>) {
        let (cert, key, der) = self.leaf(names);
        let json = serde_json::json!({"cert_pem": cert, "key_pem": key, "source": "manual"});
        (json.to_string(), der)
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }
}

/// A client's TLS connection.
pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS handshake with the listener at `addr` for `sni`, trusting `ca` and offering `alpn`.
pub async fn tls_handshake(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream, String> {
    let mut config = tls_client(Some(ca), None);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The certificate a TLS connection's server presented.
pub fn leaf_of(tls: &TlsStream) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// The activity stream of the node whose API is `api`, `query` (`?type=route.`) applied.
pub async fn events(http: &Http, api: &str, query: &str) -> Vec<Value> {
    let r = http
        .get(&format!("http://{api}/roo/v1/events{query}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["events"].as_array().unwrap().clone()
}

/// Route `name` as `GET /roo/v1/routes` of the node at `api` gives it; null when it has none.
pub async fn listed_route(http: &Http, api: &str, name: &str) -> Value {
    let all = http
        .get(&format!("http://{api}/roo/v1/routes"))
        .await
        .unwrap()
        .json();
    all["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The backends of a route as the routes list gives it ([`listed_route`]) and their weights, in
/// order; none for a route not listed.
pub fn backend_weights(route: &Value) -> Vec<(String, u64)> {
    route["value"]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let name = b["name"].as_str().unwrap_or_default().to_string();
            (name, b["weight"].as_u64().unwrap_or_default())
        })
        .collect()
}

/// A metric's value on the node whose API is `api`, by the start of its line (0 when absent).
pub async fn metric(http: &Http, api: &str, line: &str) -> f64 {
    let page = http
        .get(&format!("http://{api}/metrics"))
        .await
        .unwrap()
        .text();
    page.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0.0)
}
/// Waits until `check` returns Some, polling every 50 ms, or panics with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node in `addrs` reports the same leader and `voters` voters; returns the
/// leader's id.
pub async fn wait_for_cluster(http: &Http, addrs: &[String], voters: usize) -> u64 {
    wait_for(
        &format!("{voters} voters with one leader on {addrs:?}"),
        Duration::from_secs(60),
        || cluster_leader(http, addrs, voters),
    )
    .await
}

/// [`wait_for_cluster`], and where the leader is in `addrs`: (its id, its index).
pub async fn wait_for_leader_in(http: &Http, addrs: &[String], voters: usize) -> (u64, usize) {
    let leader = wait_for_cluster(http, addrs, voters).await;
    let status = http.cluster(&addrs[0]).await.unwrap();
    let addr = addr_of(&status, leader);
    (leader, addrs.iter().position(|a| *a == addr).unwrap())
}

/// The leader's id if every node in `addrs` reports the same one and `voters` voters.
async fn cluster_leader(http: &Http, addrs: &[String], voters: usize) -> Option<u64> {
    let mut leader = None;
    for addr in addrs {
        let s = http.cluster(addr).await.ok()?;
        if s["voters"].as_array()?.len() != voters {
            return None;
        }
        let l = s["leader_id"].as_u64()?;
        if leader.is_some_and(|x| x != l) {
            return None;
        }
        leader = Some(l);
    }
    leader
}

/// The API address of the node with raft id `id`, from a member's status.
pub fn addr_of(status: &Value, id: u64) -> String {
    status["members"][id.to_string()]
        .as_str()
        .unwrap()
        .to_string()
}

/// API, HTTP and HTTPS listeners on free ports of `ip`.
pub async fn listeners(ip: &str) -> rood::node::Listeners {
    let bind = || tokio::net::TcpListener::bind((ip.to_string(), 0));
    rood::node::Listeners {
        api: bind().await.unwrap(),
        http: bind().await.unwrap(),
        https: bind().await.unwrap(),
    }
}

/// Starts an in-process node on 127.0.0.1 with its data in `dir` and `args`, ACME and the
/// swarm watcher off.
pub async fn try_node(
    dir: &Path,
    args: &[&str],
) -> Result<rood::node::Node, rood::node::StartError> {
    use clap::Parser;
    let mut argv = vec![
        "rood",
        "--data-dir",
        dir.to_str().unwrap(),
        "--acme",
        "false",
        "--swarm",
        "off",
    ];
    argv.extend_from_slice(args);
    let config = rood::config::Config::try_parse_from(argv).unwrap();
    rood::node::Node::start_on(config, listeners("127.0.0.1").await).await
}

/// [`try_node`], once the node leads its one-node cluster.
pub async fn node(dir: &Path, args: &[&str]) -> rood::node::Node {
    let node = try_node(dir, args).await.unwrap();
    wait_for_cluster(&Http::default(), &[node.api_addr.to_string()], 1).await;
    node
}

/// An HTTP/1.1 server on a free loopback port, each request answered by `answer` (an error
/// closes the connection without an answer).
pub async fn http_server<F, Fut, E>(answer: F) -> std::net::SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<Full<Bytes>>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper::service::service_fn(answer),
                    )
                    .await;
            });
        }
    });
    addr
}

/// The answer of the test upstreams: JSON naming the upstream and what it received.
pub async fn echo(
    name: &'static str,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let headers: std::collections::BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let json = serde_json::json!({"name": name, "method": method, "uri": uri, "headers": headers, "body_len": body});
    Ok(http::Response::new(Full::new(Bytes::from(
        json.to_string(),
    ))))
}

/// An upstream answering every request with `body`.
pub async fn upstream(body: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::io::AsyncWriteExt::write_all(&mut s, resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// A port of `ip` free for TCP and UDP, for a server a test starts later (a rood process,
/// Pebble, a DNS server), kept from every other test until this test process ends.
///
/// A port the kernel hands out for port 0 can be handed out again, to another test's outgoing
/// connection, before the server binds it. So the port comes from below the kernel's ephemeral
/// range (`ip_local_port_range` starts at 32768), where nothing is handed out, and a lock on a
/// file named after it keeps the other test processes from taking it too.
pub fn free_port(ip: &str) -> u16 {
    const PORTS: std::ops::Range<u32> = 20_000..32_000;
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("roo-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    let span = PORTS.end - PORTS.start;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let start = std::process::id().wrapping_mul(7919).wrapping_add(nanos);
    for i in 0..span {
        let port = (PORTS.start + start.wrapping_add(i) % span) as u16;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .unwrap();
        if lock.try_lock().is_err()
            || std::net::TcpListener::bind((ip, port)).is_err()
            || std::net::UdpSocket::bind((ip, port)).is_err()
        {
            continue;
        }
        HELD.lock().unwrap().push(lock);
        return port;
    }
    panic!("no free port on {ip} in {PORTS:?}");
}

/// A rood process.
pub struct Proc {
    pub addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts rood on `addr` with its data in `data_dir` and the extra `args` (later flags win
    /// over the defaults set here).
    pub fn start(addr: &str, data_dir: &Path, args: &[&str]) -> Proc {
        Proc::start_with_env(addr, data_dir, args, &[])
    }

    /// Like [`Proc::start`], with `env` added to its environment (an empty value: left out, even
    /// where the harness would set it).
    pub fn start_with_env(
        addr: &str,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut p = Proc {
            addr: addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            log: data_dir.with_extension("log"),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let ip = self
            .addr
            .rsplit_once(':')
            .map_or("127.0.0.1", |(ip, _)| ip)
            .to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rood"));
        command
            .arg("--api-addr")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--http-addr",
                &format!("{ip}:0"),
                "--https-addr",
                &format!("{ip}:0"),
            ])
            // `{ip}` in an argument stands for the node's own address.
            .args(self.args.iter().map(|a| a.replace("{ip}", &ip)))
            .env("ROO_CLUSTER_SECRET", SECRET)
            // Never Let's Encrypt from a test; ACME tests pass --acme true and a directory.
            .env("ROO_ACME", "false")
            // Nor the swarm watcher, except where a test asks for it.
            .env("ROO_SWARM", "off")
            .env("ROO_LOG", "info,openraft=error,openraft::replication=off");
        for (k, v) in &self.env {
            // An empty value leaves the variable out altogether.
            match v.is_empty() {
                true => command.env_remove(k),
                false => command.env(k, v),
            };
        }
        let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .ok()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGSTOP: a frozen node (a long pause, a stuck disk) keeps its sockets open, so peers see
    /// timeouts, not refusals.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Proc::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("process running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {}", child.id());
    }

    /// Starts it again with the same address, data dir and flags.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How it ended, if it was started and has exited since.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok()?
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The lines of its log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        lines_containing(&self.log, needle)
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The lines of the text file at `path` that contain `needle` (none if it cannot be read).
pub fn lines_containing(path: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `n` rood processes on 127.0.0.1..n, the first bootstrapping and the others joining it,
/// and waits for the cluster to form.
pub async fn process_cluster(dir: &Path, n: usize, extra: &[&str]) -> Vec<Proc> {
    let port = free_port("127.0.0.1");
    let addrs: Vec<String> = (1..=n).map(|i| format!("127.0.0.{i}:{port}")).collect();
    let mut procs = vec![Proc::start(&addrs[0], &dir.join("n1"), extra)];
    let http = Http::default();
    wait_for_processes(&http, &mut procs, 1).await;
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        let mut args = vec!["--join", addrs[0].as_str()];
        args.extend_from_slice(extra);
        procs.push(Proc::start(addr, &dir.join(format!("n{}", i + 1)), &args));
    }
    wait_for_processes(&http, &mut procs, n).await;
    procs
}

/// Like [`wait_for_cluster`] over `procs`, but a node that exits meanwhile fails at once, with
/// the end of its log.
async fn wait_for_processes(http: &Http, procs: &mut [Proc], voters: usize) -> u64 {
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(leader) = cluster_leader(http, &addrs, voters).await {
            return leader;
        }
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                panic!("{} exited ({status}):\n{}", p.addr, p.log_tail());
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("{}:\n{}", p.addr, p.log_tail()))
                .collect();
            panic!(
                "timed out after 60s waiting for {voters} voters with one leader on {addrs:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts pebble-challtestsrv as a DNS server on `dns`, with its own challenge servers off.
pub fn challtestsrv(dns: &str, management: &str) -> Option<KillOnDrop> {
    let found = std::process::Command::new("pebble-challtestsrv")
        .args([
            "-dns01",
            dns,
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv6",
            "",
            "-defaultIPv4",
            "",
            "-management",
            management,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match found {
        Ok(child) => Some(KillOnDrop(child)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: pebble-challtestsrv not runnable here ({e}); `apt-get install pebble` (.ci/run does)");
            None
        }
        Err(e) => panic!("pebble-challtestsrv is needed in CI: {e}"),
    }
}

/// A child process killed when dropped.
pub struct KillOnDrop(pub std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
