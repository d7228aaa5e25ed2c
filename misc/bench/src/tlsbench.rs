//! TLS handshakes against an HTTPS proxy: N clients, each one request at a time on a new
//! connection (`Connection: close`), each its own session cache, so that with `--resume` every
//! connection after a client's first offers the ticket its last one got, as a returning
//! browser does; without it, every handshake is a full one. Prints one JSON line: requests/s,
//! latency percentiles, and how many handshakes were resumed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// The proxy's TLS listener, host:port.
    #[arg(long)]
    addr: String,
    /// The SNI name and Host header.
    #[arg(long)]
    host: String,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offer each client's last ticket.
    #[arg(long)]
    resume: bool,
    /// `1.3`, `1.2`.
    #[arg(long, default_value = "1.3")]
    tls: String,
    /// The key exchange offered: `x25519` (what OpenSSL 3.0's servers know, so that every proxy
    /// does the same work) or `default` (rustls' own list, X25519MLKEM768 first).
    #[arg(long, default_value = "x25519")]
    groups: String,
}

/// Takes any certificate, checking only that the handshake's signatures are the key's, as wrk
/// does (no verification) plus the signature work every real client does.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// One request on a new connection: its latency and whether its handshake was resumed.
async fn request(
    connector: &tokio_rustls::TlsConnector,
    args: &Args,
    name: &ServerName<'static>,
) -> anyhow::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(&args.addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name.clone(), tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.host
    );
    tls.write_all(req.as_bytes()).await?;
    let mut answer = Vec::with_capacity(512);
    // A peer may close without close_notify after its answer: what was read counts.
    let _ = tls.read_to_end(&mut answer).await;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!("answer: {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(resumed)
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let version = match args.tls.as_str() {
        "1.3" => &rustls::version::TLS13,
        "1.2" => &rustls::version::TLS12,
        v => bail!("--tls {v}: use 1.3 or 1.2"),
    };
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    match args.groups.as_str() {
        "x25519" => provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        "default" => {}
        g => bail!("--groups {g}: use x25519 or default"),
    }
    let provider = Arc::new(provider);
    let name = ServerName::try_from(args.host.clone()).context("--host")?;
    // Two threads, as wrk -t2.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[version])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider.clone())))
                .with_no_client_auth();
            config.resumption = match args.resume {
                true => Resumption::store(Arc::new(ClientSessionMemoryCache::new(4))),
                false => Resumption::disabled(),
            };
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let (args, name) = (args.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                let (mut latencies, mut resumed, mut errors) = (Vec::new(), 0u64, 0u64);
                let mut last_error = None;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match request(&connector, &args, &name).await {
                        Ok(r) => {
                            latencies.push(t.elapsed());
                            resumed += u64::from(r);
                        }
                        Err(e) => {
                            errors += 1;
                            last_error = Some(e.to_string());
                        }
                    }
                }
                (latencies, resumed, errors, last_error)
            }));
        }
        let (mut all, mut resumed, mut errors, mut last_error) = (Vec::new(), 0, 0, None);
        for t in tasks {
            let (l, r, e, le) = t.await?;
            all.extend(l);
            resumed += r;
            errors += e;
            last_error = last_error.or(le);
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        let pct = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{}",
            serde_json::json!({
                "requests": all.len(),
                "requests_per_sec": all.len() as f64 / elapsed,
                "resumed": resumed,
                "errors": errors,
                "last_error": last_error,
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
            })
        );
        Ok(())
    })
}
