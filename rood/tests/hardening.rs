//! What an attacker or a broken client tries, over real sockets: request bodies that stall,
//! raft messages and joins without a cluster secret, chunk sizes read loosely, CONNECT over
//! HTTP/2, a TLS connection used for another host, values that no node could serve, a routed
//! host without a certificate; and a property test over generated and mutated requests.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{metric, wait_for, Http, Proc, TestCa, SECRET};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rood::node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn node_with(args: &[&str]) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), args).await;
    (node, dir)
}

async fn put(node: &Node, key: &str, value: &str) {
    node.kv
        .put(key, value.as_bytes().to_vec(), None)
        .await
        .unwrap();
}

/// What a recording upstream received: (method, path, body) of each whole request.
type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// An upstream that answers `ok` once it has a request's whole body, and records it.
async fn recording_upstream() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let log = received.clone();
    let addr = common::http_server(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let (method, path) = (req.method().to_string(), req.uri().to_string());
            let body = req.into_body().collect().await?.to_bytes();
            log.lock().unwrap().push((method, path, body));
            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"ok"),
            )))
        }
    })
    .await;
    (addr, received)
}

/// An upstream that reads whatever comes and never answers, counting its open connections.
async fn silent_upstream() -> (SocketAddr, Arc<AtomicI64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicI64::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// Writes `request` on a new connection to `addr` and reads until the connection closes
/// (within `limit`): what came back, and whether it closed.
async fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> (String, bool) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, tcp.read_to_end(&mut got))
        .await
        .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_request_bodies_are_cut_off_and_hold_no_connection() {
    let (silent, upstream_open) = silent_upstream().await;
    let (ok_upstream, _) = recording_upstream().await;
    // A stall shorter than the upstream timeout gets 408; a longer one the upstream's 504, and
    // the connection closes after it all the same (the rest of the body never comes).
    for (body_ms, upstream_ms, expected, rounds) in
        [("1000", "20000", 408, 4), ("30000", "1000", 504, 2)]
    {
        let (node, _dir) = node_with(&[
            "--max-connections",
            "50",
            "--body-timeout-ms",
            body_ms,
            "--upstream-timeout-ms",
            upstream_ms,
        ])
        .await;
        put(
            &node,
            "com.roo.host:stall.test:http",
            &format!("http://{silent}"),
        )
        .await;
        put(
            &node,
            "com.roo.host:ok.test:http",
            &format!("http://{ok_upstream}"),
        )
        .await;
        let (addr, api, http) = (node.http_addr, node.api_addr.to_string(), Http::default());
        for round in 0..rounds {
            let started = Instant::now();
            let clients: Vec<_> = (0..50)
                .map(|_| {
                    tokio::spawn(exchange(
                        addr,
                        b"POST /stall HTTP/1.1\r\nHost: stall.test\r\nContent-Length: 1000\r\n\r\nx",
                        Duration::from_secs(20),
                    ))
                })
                .collect();
            for c in clients {
                let (answer, closed) = c.await.unwrap();
                assert_eq!(status_of(&answer), expected, "round {round}: {answer}");
                assert!(closed, "round {round}: the connection stayed open");
            }
            eprintln!("{body_ms}/{upstream_ms} ms round {round}: 50 answered {expected} and closed in {:?}", started.elapsed());
            // The proxy gave every slot back (it counts a connection until its task is over,
            // a moment after the client saw it close), and nothing kept the upstream's side open.
            wait_for(
                "the proxy's connections to close",
                Duration::from_secs(10),
                || async {
                    let open = metric(&http, &api, r#"roo_open_connections{scheme="http"}"#).await;
                    (open == 0.0).then_some(())
                },
            )
            .await;
            wait_for(
                "the upstream connections to close",
                Duration::from_secs(10),
                || async { (upstream_open.load(Ordering::SeqCst) == 0).then_some(()) },
            )
            .await;
        }
        // Every slot came back: the limit still lets a client in.
        let (answer, _) = exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: ok.test\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_messages_and_joins_need_a_cluster_secret() {
    let admin = "admin-token-0123456789";
    let (node, dir) = node_with(&["--api-token", admin]).await;
    let http = Http::default();
    let api = |path: &str| format!("http://{}{path}", node.api_addr);
    // A write straight into raft, around the token-protected API.
    let value = "aHR0cDovL2V2aWwudGVzdDo4MA=="; // http://evil.test:80
    let write = format!(
        r#"[{{"ops":[{{"op":"put","key":"com.roo.host:evil.test:http","value":"{value}"}}]}}]"#
    );
    let r = http
        .send("POST", &api("/roo/v1/raft/write"), &[], write)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("ROO_CLUSTER_SECRET"), "{}", r.text());
    let r = http
        .get(&api("/roo/v1/kv/com.roo.host:evil.test:http"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "nothing stored");
    // A rogue member: refused, and the cluster stays one voter.
    let join = r#"{"node_id":4242,"addr":"127.0.0.1:1"}"#;
    let r = http
        .send("POST", &api("/roo/v1/cluster/join"), &[], join)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let status = http.cluster(&node.api_addr.to_string()).await.unwrap();
    assert_eq!(status["voters"].as_array().unwrap().len(), 1, "{status}");
    // Every raft RPC alike.
    for rpc in [
        "append",
        "vote",
        "snapshot",
        "read-index",
        "add-member",
        "members",
    ] {
        let r = http
            .send("POST", &api(&format!("/roo/v1/raft/{rpc}")), &[], "{}")
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{rpc}: {}", r.text());
    }
    node.stop().await;

    // Asked to join or discover a cluster without one, a node does not start.
    for formation in [["--join", "127.0.0.1:1"], ["--dns", "tasks.roo_roo"]] {
        let err = common::try_node(&dir.path().join("joiner"), &formation)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("ROO_CLUSTER_SECRET"), "{err}");
    }
    // And says how to form a cluster when it starts alone.
    let port = common::free_port("127.0.0.1");
    let alone = Proc::start_with_env(
        &format!("127.0.0.1:{port}"),
        &dir.path().join("alone"),
        &[],
        &[("ROO_CLUSTER_SECRET", "")],
    );
    wait_for("the start-up line", Duration::from_secs(20), || async {
        let line = alone.log_lines("ROO_CLUSTER_SECRET is not set").pop()?;
        line.contains("to form a cluster").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_sizes_are_read_strictly_and_a_broken_body_closes_the_connection() {
    let (node, _dir) = node_with(&[]).await;
    let (upstream, received) = recording_upstream().await;
    put(
        &node,
        "com.roo.host:c.test:http",
        &format!("http://{upstream}"),
    )
    .await;
    let addr = node.http_addr;
    let head = "POST /chunked HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    wait_for("the route", Duration::from_secs(5), || async {
        let (answer, _) = exchange(
            addr,
            format!("{head}0\r\n\r\n").as_bytes(),
            Duration::from_millis(300),
        )
        .await;
        (status_of(&answer) == 200).then_some(())
    })
    .await;
    received.lock().unwrap().clear();

    // Leading zeros, 17 digits in all: valid, the whole body passed on.
    let (answer, _) = exchange(
        addr,
        format!("{head}00000000000000005\r\nhello\r\n0\r\n\r\n").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(received.lock().unwrap().pop().unwrap().2, "hello");

    // Loose sizes and broken framing, each followed by a request smuggled in the same bytes:
    // 400, the connection closed, and the smuggled request never reaches the upstream.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: c.test\r\n\r\n";
    for body in [
        "+5\r\nhello\r\n0\r\n\r\n",
        " 5 \r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX\r\n0\r\n\r\n",
        "zz\r\nhello\r\n0\r\n\r\n",
        "100000000000000000\r\nhello\r\n0\r\n\r\n",
    ] {
        let (answer, closed) = exchange(
            addr,
            format!("{head}{body}{smuggled}").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&answer), 400, "{body:?}: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{body:?}: {answer}");
        assert!(closed, "{body:?}: the connection stayed open");
    }
    let seen = received.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(_, path, _)| path != "/smuggled"),
        "{seen:?}"
    );
    assert!(
        seen.is_empty(),
        "no broken body was passed on whole: {seen:?}"
    );
    // Counted as client errors, not upstream ones.
    let page = Http::default()
        .get(&format!("http://{}/metrics", node.api_addr))
        .await
        .unwrap()
        .text();
    let requests = |class: &str| {
        page.lines().any(|l| {
            l.starts_with("roo_requests_total") && l.contains(&format!("status=\"{class}\""))
        })
    };
    assert!(requests("4xx") && !requests("5xx"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_over_http2_gets_405() {
    let (node, _dir) = node_with(&[]).await;
    let (upstream, received) = recording_upstream().await;
    put(
        &node,
        "com.roo.host:b.test:http",
        &format!("http://{upstream}"),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("b.test:80")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    let page = Http::default()
        .get(&format!("http://{}/metrics", node.api_addr))
        .await
        .unwrap()
        .text();
    assert!(
        page.lines()
            .any(|l| l.starts_with("roo_requests_total") && l.contains("status=\"4xx\"")),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_connection_serves_only_the_names_of_its_certificate() {
    let (node, _dir) = node_with(&[]).await;
    let (upstream, _) = recording_upstream().await;
    let ca = TestCa::new("fronting test CA");
    // a.test and alias.test share a certificate; b.test has its own; c.test none.
    let (shared, _) = ca.stored(&["a.test", "alias.test"]);
    let (b_cert, _) = ca.stored(&["b.test"]);
    put(&node, "com.roo.cert:a.test", &shared).await;
    put(&node, "com.roo.cert:alias.test", &shared).await;
    put(&node, "com.roo.cert:b.test", &b_cert).await;
    for host in ["a.test", "alias.test", "b.test", "c.test"] {
        put(
            &node,
            &format!("com.roo.host:{host}:https"),
            &format!("http://{upstream}"),
        )
        .await;
    }
    let addr = node.https_addr;
    wait_for("the certificates", Duration::from_secs(5), || async {
        common::tls_handshake(&ca, addr, "b.test", &[]).await.ok()
    })
    .await;

    // HTTP/1.1: the Host decides, within the certificate's names.
    for (host, status) in [
        ("a.test", 200),
        ("alias.test", 200),
        ("b.test", 421),
        ("c.test", 421),
    ] {
        let tls = common::tls_handshake(&ca, addr, "a.test", &[b"http/1.1"])
            .await
            .unwrap();
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            h1.send_request(req).await.unwrap().status(),
            status,
            "{host} over a.test"
        );
    }
    // HTTP/2: one connection reused for another name of its certificate, not for others.
    let tls = common::tls_handshake(&ca, addr, "a.test", &[b"h2"])
        .await
        .unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (host, status) in [
        ("a.test", 200),
        ("alias.test", 200),
        ("b.test", 421),
        ("c.test", 421),
    ] {
        let req = http::Request::get(format!("https://{host}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            h2.send_request(req).await.unwrap().status(),
            status,
            "{host} over h2 to a.test"
        );
    }
}

/// The JSON of a certificate record.
fn cert_json(cert_pem: &str, key_pem: &str) -> String {
    serde_json::json!({"cert_pem": cert_pem, "key_pem": key_pem, "source": "manual"}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_no_node_could_serve_are_refused_and_stored_ones_do_not_replace_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (node, proxy_addr, https_addr) = process_node(dir.path()).await;
    let node = &node;
    let http = Http::default();
    let (upstream, _) = recording_upstream().await;
    let ca = TestCa::new("values test CA");
    let (good_cert, good_key, good_der) = ca.leaf(&["app.test"]);
    let (other_cert, other_key, _) = ca.leaf(&["other.test"]);
    let good = cert_json(&good_cert, &good_key);
    let route_key = node.url("/roo/v1/kv/com.roo.host:app.test:http");
    let cert_key = node.url("/roo/v1/kv/com.roo.cert:app.test");
    let route = format!("http://{upstream}");
    assert_eq!(
        http.put(&route_key, route.clone()).await.unwrap().status,
        200
    );
    assert_eq!(http.put(&cert_key, good.clone()).await.unwrap().status, 200);

    let (_, wrong_key, _) = ca.leaf(&["app.test"]);
    for (url, bad, why) in [
        (&route_key, "notaurl".to_string(), "destination"),
        (&route_key, r#"{"destinations":[]}"#.to_string(), ""),
        (&cert_key, r#"{"cert_pem":"garbage""#.to_string(), "JSON"),
        (&cert_key, cert_json("garbage", &good_key), "certificate"),
        (
            &cert_key,
            cert_json(&other_cert, &other_key),
            "does not name app.test",
        ),
        (&cert_key, cert_json(&good_cert, &wrong_key), "key"),
        (
            &cert_key,
            cert_json(&format!("{good_cert}{good_key}"), &good_key),
            "private key",
        ),
    ] {
        let r = http.put(url, bad.clone()).await.unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains(why),
            "{why}: {}",
            r.text()
        );
    }
    assert_eq!(
        http.get(&route_key).await.unwrap().text(),
        route,
        "the route unchanged"
    );
    // (An open API shows no private key: the chain tells the record.)
    assert_eq!(
        http.get(&cert_key).await.unwrap().json()["cert_pem"],
        good_cert.as_str(),
        "the certificate unchanged"
    );

    // Written anyway, as an older version would have (straight into raft): the node keeps
    // serving what it had, and rooctl says the stored values are not served.
    let raft_put = |key: &str, value: &str| {
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD.encode(value);
        format!(r#"[{{"ops":[{{"op":"put","key":"{key}","value":"{value}"}}]}}]"#)
    };
    let rpc = node.url("/roo/v1/raft/write");
    let secret = [("x-roo-cluster-secret", SECRET)];
    for (key, value) in [
        ("com.roo.host:app.test:http", "notaurl".to_string()),
        ("com.roo.cert:app.test", cert_json(&other_cert, &other_key)),
    ] {
        let r = http
            .send("POST", &rpc, &secret, raft_put(key, &value))
            .await
            .unwrap();
        assert!(r.json()["Ok"].is_array(), "{}", r.text());
    }
    let (answer, _) = exchange(
        proxy_addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "still routed: {answer}");
    let tls = common::tls_handshake(&ca, https_addr, "app.test", &[])
        .await
        .unwrap();
    assert_eq!(
        common::leaf_of(&tls),
        good_der,
        "the good certificate still served"
    );
    assert!(!node.log_lines("serving what the key had before").is_empty());
    for (what, row) in [("routes", "app.test"), ("certs", "app.test")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rooctl"))
            .env("ROO_SERVER", format!("http://{}", node.addr))
            .args([what, "ls"])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.lines()
                .any(|l| l.contains(row) && l.contains("invalid, not served")),
            "{what}: {out}"
        );
    }
}

/// One rood process, its proxy listeners on ports of its own: (the process, HTTP, HTTPS).
async fn process_node(dir: &std::path::Path) -> (Proc, SocketAddr, SocketAddr) {
    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (http, https) = (
        addr(common::free_port("127.0.0.1")),
        addr(common::free_port("127.0.0.1")),
    );
    let (h, s) = (http.to_string(), https.to_string());
    let mut procs = common::process_cluster(dir, 1, &["--http-addr", &h, "--https-addr", &s]).await;
    (procs.remove(0), http, https)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_routed_host_without_a_certificate_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _, addr) = process_node(dir.path()).await;
    let http = Http::default();
    let r = http
        .put(
            &node.url("/roo/v1/kv/com.roo.host:nocert.test:https"),
            "http://127.0.0.1:1",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let ca = TestCa::new("unused CA");
    for _ in 0..20 {
        assert!(common::tls_handshake(&ca, addr, "nocert.test", &[])
            .await
            .is_err());
    }
    let lines = wait_for("the warning", Duration::from_secs(5), || async {
        let lines = node.log_lines("TLS handshake failed for a routed host");
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("nocert.test") && lines[0].contains("ACME is off"),
        "{}",
        lines[0]
    );
}
