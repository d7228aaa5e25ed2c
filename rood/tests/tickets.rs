//! TLS session resumption across the cluster, over real TLS: rustls and `openssl s_client`
//! clients take a session from one node and resume it on the others, across key rotation, a
//! restart and a leader change; the keys stay out of sight without the admin token.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, metric, wait_for, Http, Proc, TestCa};
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "t.test";
const ADMIN: &str = "tickets-admin-token";
const READER: &str = "tickets-read-token";

/// A rustls client for `version` whose sessions go in `cache`, trusting `ca`.
fn client(
    ca: &TestCa,
    version: &'static rustls::SupportedProtocolVersion,
    cache: &Arc<ClientSessionMemoryCache>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = Resumption::store(cache.clone());
    Arc::new(config)
}

/// One request over a new TLS connection to `addr`: how its handshake went. The answer is read
/// whole, so that the TLS 1.3 tickets the server sent after its handshake are in the cache.
async fn get(config: &Arc<rustls::ClientConfig>, addr: &str) -> HandshakeKind {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("handshake with {addr}: {e}"));
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{addr}: {answer}");
    assert!(answer.ends_with("tickets-upstream"), "{addr}: {answer}");
    kind
}

/// `openssl s_client` over `version` (`-tls1_2`, `-tls1_3`) to `addr`, one request: its session
/// read from `sess_in` when given, written to `sess_out`; true when the session was resumed.
fn openssl(ca: &Path, version: &str, addr: &str, sess_in: Option<&Path>, sess_out: &Path) -> bool {
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            addr,
            "-servername",
            HOST,
            version,
            "-ign_eof",
        ])
        .arg("-CAfile")
        .arg(ca)
        .arg("-sess_out")
        .arg(sess_out);
    if let Some(sess_in) = sess_in {
        command.arg("-sess_in").arg(sess_in);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl (apt-get install openssl)");
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), request.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)") && text.contains("tickets-upstream"),
        "openssl {version} {addr}:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = if version == "-tls1_3" {
        "TLSv1.3"
    } else {
        "TLSv1.2"
    };
    match (
        text.contains(&format!("Reused, {name}")),
        text.contains(&format!("New, {name}")),
    ) {
        (true, false) => true,
        (false, true) => false,
        _ => panic!("openssl {version} {addr}: neither new nor reused:\n{text}"),
    }
}

/// Puts the route and certificate of [`HOST`] through `api` with the `auth` header (if any)
/// and waits until every node in `https` serves it.
async fn serve(http: &Http, api: &str, auth: &[(&str, &str)], ca: &TestCa, https: &[String]) {
    let upstream = common::upstream("tickets-upstream").await;
    let (cert, _) = ca.stored(&[HOST]);
    for (key, value) in [
        (format!("com.roo.cert:{HOST}"), cert),
        (
            format!("com.roo.host:{HOST}:https"),
            format!("http://{upstream}"),
        ),
    ] {
        let r = http
            .send("PUT", &format!("http://{api}/roo/v1/kv/{key}"), auth, value)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for addr in https {
        served(ca, addr).await;
    }
}

/// Waits until the node whose TLS listener is `addr` completes a handshake for [`HOST`].
async fn served(ca: &TestCa, addr: &str) {
    let probe = client(
        ca,
        &rustls::version::TLS13,
        &Arc::new(ClientSessionMemoryCache::new(8)),
    );
    wait_for(
        &format!("{addr} to serve {HOST}"),
        Duration::from_secs(30),
        || {
            let (probe, addr) = (probe.clone(), addr.to_string());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
                let name = rustls::pki_types::ServerName::try_from(HOST).ok()?;
                tokio_rustls::TlsConnector::from(probe)
                    .connect(name, tcp)
                    .await
                    .ok()
            }
        },
    )
    .await;
}

/// The ticket keys as the admin token reads them: (key, created, not_after, secret), newest
/// first.
async fn keys(http: &Http, api: &str) -> Vec<(String, u64, u64, String)> {
    keys_as(http, api, &[("authorization", &format!("Bearer {ADMIN}"))]).await
}

/// The same, read with the `auth` header (if any); a secret not shown is its redaction.
async fn keys_as(http: &Http, api: &str, auth: &[(&str, &str)]) -> Vec<(String, u64, u64, String)> {
    let r = http
        .send(
            "GET",
            &format!("http://{api}/roo/v1/kvs/com.roo.tls.ticket_key:"),
            auth,
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mut out: Vec<_> = r.json()["results"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            let secret = v["key"].as_str().unwrap().to_string();
            (
                k.clone(),
                v["created"].as_u64().unwrap(),
                v["not_after"].as_u64().unwrap(),
                secret,
            )
        })
        .collect();
    out.sort_by_key(|k| std::cmp::Reverse(k.1));
    out
}

/// A CA for the routes' certificates, and its PEM in `dir` for `openssl -CAfile`.
fn ca_in(dir: &Path) -> (TestCa, PathBuf) {
    let ca = TestCa::new("tickets CA");
    let file = dir.join("ca.pem");
    std::fs::write(&file, ca.pem()).unwrap();
    (ca, file)
}

fn https_of(procs: &[Proc], port: u16) -> Vec<String> {
    procs
        .iter()
        .map(|p| format!("{}:{port}", p.addr.rsplit_once(':').unwrap().0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_one_node_resumes_on_every_node_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_file) = ca_in(dir.path());
    let port = free_port("127.0.0.1");
    let https_flag = format!("{{ip}}:{port}");
    let mut procs = common::process_cluster(dir.path(), 3, &["--https-addr", &https_flag]).await;
    let http = Http::default();
    let apis: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let https = https_of(&procs, port);
    serve(&http, &apis[0], &[], &ca, &https).await;
    // The leader made one key, and every node holds it.
    for api in &apis {
        wait_for(
            &format!("{api} to hold a ticket key"),
            Duration::from_secs(20),
            || async { (metric(&http, api, "roo_tls_ticket_keys").await >= 1.0).then_some(()) },
        )
        .await;
    }

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cache = Arc::new(ClientSessionMemoryCache::new(32));
        let config = client(&ca, version, &cache);
        assert_eq!(
            get(&config, &https[0]).await,
            HandshakeKind::Full,
            "{version:?}"
        );
        for addr in &https[1..] {
            assert_eq!(
                get(&config, addr).await,
                HandshakeKind::Resumed,
                "{version:?} on {addr}"
            );
        }
    }
    // The same with OpenSSL's client, from its session file.
    for version in ["-tls1_3", "-tls1_2"] {
        let (first, again) = (dir.path().join("first.pem"), dir.path().join("again.pem"));
        assert!(!openssl(&ca_file, version, &https[0], None, &first));
        for addr in &https[1..] {
            assert!(
                openssl(&ca_file, version, addr, Some(&first), &again),
                "{version} on {addr}"
            );
        }
    }
    let resumed = r#"roo_tls_handshakes_total{kind="resumed"}"#;
    for api in &apis[1..] {
        assert!(
            metric(&http, api, resumed).await >= 4.0,
            "{api} counts its resumptions"
        );
    }
    assert!(metric(&http, &apis[0], r#"roo_tls_handshakes_total{kind="full"}"#).await >= 4.0);

    // Sessions begun on node 2 before its restart resume on it after.
    let cache = Arc::new(ClientSessionMemoryCache::new(32));
    let tls13 = client(&ca, &rustls::version::TLS13, &cache);
    assert_eq!(get(&tls13, &https[1]).await, HandshakeKind::Full);
    let before = dir.path().join("before.pem");
    assert!(!openssl(&ca_file, "-tls1_2", &https[1], None, &before));
    procs[1].restart();
    served(&ca, &https[1]).await;
    let after = dir.path().join("after.pem");
    assert!(openssl(
        &ca_file,
        "-tls1_2",
        &https[1],
        Some(&before),
        &after
    ));
    assert_eq!(get(&tls13, &https[1]).await, HandshakeKind::Resumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_keeps_the_keys_and_rotates_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("tickets CA");
    let port = free_port("127.0.0.1");
    let https_flag = format!("{{ip}}:{port}");
    // A new key every 10 s, each opening tickets for 20 s: a session outlives the election.
    let flags = ["--https-addr", &https_flag, "--tls-ticket-rotate-s", "10"];
    let mut procs = common::process_cluster(dir.path(), 3, &flags).await;
    let http = Http::default();
    let apis: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let https = https_of(&procs, port);
    let (leader, at) = common::wait_for_leader_in(&http, &apis, 3).await;
    let (f1, f2) = ((at + 1) % 3, (at + 2) % 3);
    serve(&http, &apis[f1], &[], &ca, &https).await;
    // Every node holds what the KV has.
    let holds_all = |i: usize| {
        let (http, api) = (&http, &apis[i]);
        async move {
            let stored = keys_as(http, api, &[]).await;
            let held = metric(http, api, "roo_tls_ticket_keys").await as usize;
            (!stored.is_empty() && held == stored.len()).then_some(stored)
        }
    };
    for i in [f1, f2] {
        wait_for(
            "the followers to hold the keys",
            Duration::from_secs(20),
            || holds_all(i),
        )
        .await;
    }

    let cache = Arc::new(ClientSessionMemoryCache::new(32));
    let before = client(&ca, &rustls::version::TLS13, &cache);
    assert_eq!(get(&before, &https[f1]).await, HandshakeKind::Full);
    procs[at].kill();
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rest = [apis[f1].clone(), apis[f2].clone()];
    let new_leader = common::wait_for_cluster(&http, &rest, 3).await;
    assert_ne!(new_leader, leader);
    // The old leader's key still opens on the other follower.
    assert_eq!(get(&before, &https[f2]).await, HandshakeKind::Resumed);

    // The new leader goes on rotating: a key made after the kill, held by both nodes, seals and
    // opens across them.
    for i in [f1, f2] {
        wait_for(
            "a key of the new leader's",
            Duration::from_secs(30),
            || async {
                let stored = holds_all(i).await?;
                (stored[0].1 > killed).then_some(())
            },
        )
        .await;
    }
    let cache = Arc::new(ClientSessionMemoryCache::new(32));
    let after = client(&ca, &rustls::version::TLS12, &cache);
    assert_eq!(get(&after, &https[f2]).await, HandshakeKind::Full);
    assert_eq!(get(&after, &https[f1]).await, HandshakeKind::Resumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tickets_resume_within_the_window_and_not_after_and_keys_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_file) = ca_in(dir.path());
    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let https = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    // A new key every 3 s, each opening tickets for 6 s.
    let node = Proc::start_with_env(
        &addr,
        &dir.path().join("n1"),
        &["--https-addr", &https, "--tls-ticket-rotate-s", "3"],
        &[("ROO_API_TOKEN", ADMIN), ("ROO_API_READ_TOKEN", READER)],
    );
    let http = Http::default();
    wait_for("the node to lead", Duration::from_secs(30), || async {
        let c = http.cluster(&addr).await.ok()?;
        (c["leader_id"] == c["node_id"]).then_some(())
    })
    .await;
    let admin = format!("Bearer {ADMIN}");
    serve(
        &http,
        &addr,
        &[("authorization", &admin)],
        &ca,
        std::slice::from_ref(&https),
    )
    .await;

    // Sessions sealed with one key, known by its id: the keys did not change around them.
    let (first, cache, tls12, tls13, sealed_by) = loop {
        let before = keys(&http, &addr).await;
        let cache = Arc::new(ClientSessionMemoryCache::new(32));
        let tls13 = client(&ca, &rustls::version::TLS13, &cache);
        let tls12 = dir.path().join("tls12.pem");
        let tls13_file = dir.path().join("tls13.pem");
        assert_eq!(get(&tls13, &https).await, HandshakeKind::Full);
        assert!(!openssl(&ca_file, "-tls1_2", &https, None, &tls12));
        assert!(!openssl(&ca_file, "-tls1_3", &https, None, &tls13_file));
        let after = keys(&http, &addr).await;
        if !before.is_empty() && before == after {
            break (tls13_file, cache, tls12, tls13, before[0].0.clone());
        }
    };
    // A newer key seals now; the old one still opens.
    wait_for("a new ticket key", Duration::from_secs(10), || async {
        let now = keys(&http, &addr).await;
        (now[0].0 != sealed_by && now.iter().any(|k| k.0 == sealed_by)).then_some(())
    })
    .await;
    let scratch = dir.path().join("scratch.pem");
    assert!(openssl(&ca_file, "-tls1_2", &https, Some(&tls12), &scratch));
    assert!(openssl(&ca_file, "-tls1_3", &https, Some(&first), &scratch));
    assert_eq!(get(&tls13, &https).await, HandshakeKind::Resumed);
    drop(cache);
    // Once the old key is gone, its tickets open nowhere. OpenSSL offers a TLS 1.2 ticket
    // whatever its lifetime: the node is what refuses it.
    wait_for(
        "the old key to be deleted",
        Duration::from_secs(15),
        || async { (!keys(&http, &addr).await.iter().any(|k| k.0 == sealed_by)).then_some(()) },
    )
    .await;
    assert!(!openssl(
        &ca_file,
        "-tls1_2",
        &https,
        Some(&tls12),
        &scratch
    ));
    assert!(!openssl(
        &ca_file,
        "-tls1_3",
        &https,
        Some(&first),
        &scratch
    ));

    // The keys: their times for the read token, nothing anonymous, never in metrics or logs.
    let all = keys(&http, &addr).await;
    assert!(!all.is_empty() && all.len() <= 3, "{all:?}");
    for (_, created, not_after, _) in &all {
        assert_eq!(not_after - created, 6);
    }
    let url = format!("http://{addr}/roo/v1/kvs/com.roo.tls.ticket_key:");
    assert_eq!(http.get(&url).await.unwrap().status, 401);
    let read = http
        .send(
            "GET",
            &url,
            &[("authorization", &format!("Bearer {READER}"))],
            "",
        )
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    let metrics = http
        .get(&format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text();
    let log = std::fs::read_to_string(dir.path().join("n1.log")).unwrap();
    for (_, _, _, secret) in &all {
        assert!(!metrics.contains(secret.as_str()) && !log.contains(secret.as_str()));
    }
    let shown = read.json()["results"].as_object().unwrap().clone();
    assert_eq!(shown.len(), all.len());
    for (key, value) in shown {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(value["key"], "redacted: needs the admin token", "{key}");
        assert!(value["not_after"].as_u64().is_some(), "{key}: {value}");
    }

    // A bad key is refused and replaces nothing.
    let name = &all[0].0;
    for (key, value) in [
        (
            name.as_str(),
            r#"{"key":"c2hvcnQ=","created":1,"not_after":2}"#,
        ),
        (name.as_str(), "not json"),
        (
            "com.roo.tls.ticket_key:nothex",
            r#"{"key":"","created":1,"not_after":2}"#,
        ),
    ] {
        let r = http
            .send(
                "PUT",
                &format!("http://{addr}/roo/v1/kv/{key}"),
                &[("authorization", &admin)],
                value.to_string(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{key}: {}", r.text());
        assert_eq!(r.json()["ok"], false);
    }
    assert!(keys(&http, &addr).await.iter().any(|k| k == &all[0]));
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tickets_off_there_are_no_tickets_and_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_file) = ca_in(dir.path());
    let port = free_port("127.0.0.1");
    let https_flag = format!("{{ip}}:{port}");
    let procs = common::process_cluster(
        dir.path(),
        2,
        &["--https-addr", &https_flag, "--tls-tickets", "false"],
    )
    .await;
    let http = Http::default();
    let https = https_of(&procs, port);
    serve(&http, &procs[0].addr, &[], &ca, &https).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cache = Arc::new(ClientSessionMemoryCache::new(32));
        let config = client(&ca, version, &cache);
        assert_eq!(get(&config, &https[0]).await, HandshakeKind::Full);
        // The node's own session cache, and nothing the other node can open.
        assert_eq!(
            get(&config, &https[0]).await,
            HandshakeKind::Resumed,
            "{version:?}"
        );
        assert_eq!(
            get(&config, &https[1]).await,
            HandshakeKind::Full,
            "{version:?}"
        );
    }
    let first = dir.path().join("first.pem");
    assert!(!openssl(&ca_file, "-tls1_2", &https[0], None, &first));
    assert!(!openssl(
        &ca_file,
        "-tls1_2",
        &https[1],
        Some(&first),
        &first
    ));
    let r = http
        .get(&format!(
            "http://{}/roo/v1/kvs/com.roo.tls.ticket_key:",
            procs[0].addr
        ))
        .await
        .unwrap();
    assert_eq!(r.json()["results"], serde_json::json!({}), "{}", r.text());
}
