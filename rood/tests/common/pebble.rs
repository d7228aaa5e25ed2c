//! Pebble (the ACME test server) with its own DNS, and a TLS client to check what nodes serve.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{free_port, wait_for, wait_for_cluster, Http, KillOnDrop, Proc};

/// A Pebble ACME server with its own DNS (pebble-challtestsrv).
pub struct Pebble {
    _dns: KillOnDrop,
    _pebble: KillOnDrop,
    /// The directory URL.
    pub directory: String,
    /// The CA of Pebble's own listener certificate: what nodes trust to talk to it.
    pub listener_ca: PathBuf,
    pub listener_ca_der: CertificateDer<'static>,
    pub management: String,
    pub dns_management: String,
    pub log: PathBuf,
    /// Where Pebble validates HTTP-01 and TLS-ALPN-01 (a node's proxy listens there).
    pub http_port: u16,
    pub tls_port: u16,
}

pub struct PebbleOptions {
    /// Where Pebble validates HTTP-01 and TLS-ALPN-01.
    pub http_port: u16,
    pub tls_port: u16,
    /// Lifetime of issued certificates, in seconds.
    pub validity: Option<u64>,
    /// Random validation delay up to this many seconds; None: no delay.
    pub va_sleep: Option<u64>,
}

impl PebbleOptions {
    /// Validating on these ports, default certificate lifetime, no validation delay.
    pub fn new(http_port: u16, tls_port: u16) -> PebbleOptions {
        PebbleOptions {
            http_port,
            tls_port,
            validity: None,
            va_sleep: None,
        }
    }
}

/// Writes a CA and a leaf for 127.0.0.1/localhost signed by it; returns the paths
/// (ca, cert, key) and the CA's DER.
fn listener_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, CertificateDer<'static>) {
    let ca = super::TestCa::new("pebble listener test CA");
    let (cert, key, _) = ca.leaf(&["localhost", "127.0.0.1"]);
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert).unwrap();
    std::fs::write(&paths.2, key).unwrap();
    (paths.0, paths.1, paths.2, ca.der())
}

impl Pebble {
    /// Starts Pebble and its DNS; None (the test is skipped) where Pebble is not installed and
    /// this is not CI.
    pub async fn start(dir: &Path, options: PebbleOptions) -> Option<Pebble> {
        let dns = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let dns_management = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let dns_server = super::challtestsrv(&dns, &dns_management)?;
        let (ca, cert, key, ca_der) = listener_certs(dir);
        let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let management = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let mut config = json!({"pebble": {
            "listenAddress": listen,
            "managementListenAddress": management,
            "certificate": cert,
            "privateKey": key,
            "httpPort": options.http_port,
            "tlsPort": options.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = options.validity {
            config["pebble"]["certificateValidityPeriod"] = json!(v);
        }
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(&dns)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null());
        match options.va_sleep {
            None => cmd.env("PEBBLE_VA_NOSLEEP", "1"),
            Some(s) => cmd.env("PEBBLE_VA_SLEEPTIME", s.to_string()),
        };
        let pebble = KillOnDrop(cmd.spawn().expect("pebble runs where challtestsrv does"));
        let pebble = Pebble {
            _dns: dns_server,
            _pebble: pebble,
            directory: format!("https://{listen}/dir"),
            listener_ca: ca,
            listener_ca_der: ca_der,
            management,
            dns_management,
            log,
            http_port: options.http_port,
            tls_port: options.tls_port,
        };
        wait_for("Pebble's directory", Duration::from_secs(20), || async {
            let (status, _) = pebble.https_get(&listen, "/dir").await.ok()?;
            (status == 200).then_some(())
        })
        .await;
        Some(pebble)
    }

    /// GET over TLS (trusting the listener CA); status and body.
    pub async fn https_get(&self, addr: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.listener_ca_der.clone()).unwrap();
        let (mut tls, _) = tls_connect(addr, "127.0.0.1", roots, &[b"http/1.1"]).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        parse_response(&raw)
    }

    /// Points `host` at `ip` in Pebble's DNS.
    pub async fn point(&self, host: &str, ip: &str) {
        let http = Http::default();
        let body = json!({"host": host, "addresses": [ip]}).to_string();
        let r = http
            .send(
                "POST",
                &format!("http://{}/add-a", self.dns_management),
                &[],
                body,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "add-a: {}", r.text());
    }

    /// The root Pebble issues under.
    pub async fn issuing_root(&self) -> CertificateDer<'static> {
        let (status, body) = self.https_get(&self.management, "/roots/0").await.unwrap();
        assert_eq!(status, 200);
        CertificateDer::from_pem_slice(&body).unwrap()
    }

    /// Lines of Pebble's log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines(needle).len()
    }

    /// The lines of Pebble's log containing `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        super::lines_containing(&self.log, needle)
    }

    /// One rood process on 127.0.0.1 that uses this Pebble, its proxy on the ports Pebble
    /// validates, with `extra` flags; returned with its API address once it leads its cluster.
    pub async fn node(&self, data_dir: &Path, extra: &[&str]) -> (Proc, String) {
        let mut args = self.node_args();
        args.extend([
            "--http-addr".into(),
            format!("127.0.0.1:{}", self.http_port),
            "--https-addr".into(),
            format!("127.0.0.1:{}", self.tls_port),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let api = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let node = Proc::start(&api, data_dir, &args);
        wait_for_cluster(&Http::default(), std::slice::from_ref(&api), 1).await;
        (node, api)
    }

    /// rood flags that use this Pebble.
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--acme".into(),
            "true".into(),
            "--acme-directory".into(),
            self.directory.clone(),
            "--acme-ca-file".into(),
            self.listener_ca.display().to_string(),
        ]
    }
}

pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = String::from_utf8_lossy(&raw[..text_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let mut body = raw[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// A TLS connection to `addr` with SNI `name`, trusting `roots`; the stream and the server's
/// certificate chain.
pub async fn tls_connect(
    addr: &str,
    name: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        Vec<CertificateDer<'static>>,
    ),
    String,
> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(Duration::from_secs(15), connector.connect(server_name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((tls, chain))
}

/// The leaf certificate `addr` serves for `host`, verified against `root`.
pub async fn served_leaf(
    addr: &str,
    host: &str,
    root: &CertificateDer<'static>,
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let (_, chain) = tls_connect(addr, host, roots, &[b"http/1.1"]).await?;
    chain
        .first()
        .map(|c| c.to_vec())
        .ok_or_else(|| "no certificate".to_string())
}
