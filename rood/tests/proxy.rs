//! The proxy over real sockets: upstream servers started here, a node's HTTP and HTTPS
//! listeners, routes and certificates put in its KV, real TLS and HTTP/2 clients.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{echo, wait_for, Http, TestCa};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rood::node::Node;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// An upstream that answers every request with [`echo`], over TLS when `tls` is given.
async fn serve_upstream(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| echo(name, req));
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        http.serve_connection(TokioIo::new(stream), service).await
                    }
                };
            });
        }
    });
    addr
}

async fn upstream(name: &'static str) -> SocketAddr {
    serve_upstream(name, None).await
}

/// A port nothing listens on.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A node with `args` in a new data dir, once it leads its one-node cluster.
async fn node_with(args: &[&str]) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), args).await;
    (node, dir)
}

async fn node() -> (Node, tempfile::TempDir) {
    node_with(&[]).await
}

async fn put(node: &Node, key: &str, value: &str) {
    node.kv
        .put(key, value.as_bytes().to_vec(), None)
        .await
        .unwrap();
}

/// GET through the node's HTTP listener with a Host header.
async fn get(http: &Http, node: &Node, host: &str, path: &str) -> common::Reply {
    http.send(
        "GET",
        &format!("http://{}{path}", node.http_addr),
        &[("host", host)],
        Bytes::new(),
    )
    .await
    .unwrap()
}

/// Waits until `host` is routed (its route loaded from the KV).
async fn wait_routed(http: &Http, node: &Node, host: &str) {
    wait_for(
        &format!("a route for {host}"),
        Duration::from_secs(5),
        || async { (get(http, node, host, "/").await.status == 200).then_some(()) },
    )
    .await;
}

fn served_by(r: &common::Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["name"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_by_host_wildcard_and_port_and_follows_the_kv() {
    let (node, _dir) = node().await;
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let http = Http::default();
    put(&node, "com.roo.host:a.test:http", &format!("http://{a}")).await;
    put(
        &node,
        "com.roo.host:*.wild.test:http",
        &format!("http://{b}"),
    )
    .await;
    put(
        &node,
        "com.roo.host:a.test:8080:http",
        &format!("http://{c}"),
    )
    .await;
    wait_routed(&http, &node, "a.test").await;

    assert_eq!(served_by(&get(&http, &node, "A.Test", "/x").await), "a");
    assert_eq!(served_by(&get(&http, &node, "a.test:80", "/").await), "a");
    assert_eq!(served_by(&get(&http, &node, "a.test:8080", "/").await), "c");
    assert_eq!(served_by(&get(&http, &node, "a.test:9999", "/").await), "a");
    assert_eq!(served_by(&get(&http, &node, "x.wild.test", "/").await), "b");
    for unknown in [
        "wild.test",
        "y.x.wild.test",
        "a.tes",
        "a.test.evil.net",
        "b.test",
    ] {
        let r = get(&http, &node, unknown, "/").await;
        assert_eq!(r.status, 404, "{unknown}");
        assert_eq!(r.text().lines().count(), 1, "{unknown}: {}", r.text());
    }
    // Path and query reach the upstream as sent.
    let r = get(&http, &node, "a.test", "/some/path?q=1&r=%20").await;
    assert_eq!(r.json()["uri"], "/some/path?q=1&r=%20");

    // A route change is live without a restart; a delete removes it.
    let started = Instant::now();
    put(&node, "com.roo.host:a.test:http", &format!("http://{b}")).await;
    wait_for("the route change", Duration::from_secs(1), || async {
        (served_by(&get(&http, &node, "a.test", "/").await) == "b").then_some(())
    })
    .await;
    eprintln!("route change live after {:?}", started.elapsed());
    node.kv
        .delete("com.roo.host:a.test:http", None)
        .await
        .unwrap();
    wait_for("the route removal", Duration::from_secs(1), || async {
        (get(&http, &node, "a.test", "/").await.status == 404).then_some(())
    })
    .await;
    // A bad route value is refused and does not break the others.
    put(&node, "com.roo.host:bad.test:http", "not a url").await;
    put(
        &node,
        "com.roo.host:after.test:http",
        &format!("http://{c}"),
    )
    .await;
    wait_for("the next route", Duration::from_secs(1), || async {
        (get(&http, &node, "after.test", "/").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(get(&http, &node, "bad.test", "/").await.status, 404);
    assert_eq!(served_by(&get(&http, &node, "x.wild.test", "/").await), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_only_hosts_redirect_and_headers_are_forwarded() {
    let (node, _dir) = node().await;
    let a = upstream("a").await;
    let http = Http::default();
    put(
        &node,
        "com.roo.host:secure.test:https",
        &format!("http://{a}"),
    )
    .await;
    put(
        &node,
        "com.roo.host:plain.test:http",
        &format!("http://{a}"),
    )
    .await;
    wait_routed(&http, &node, "plain.test").await;

    // To the port the HTTPS listener is on (not 443 here), path and query kept.
    let r = get(&http, &node, "secure.test", "/a/b?c=d").await;
    assert_eq!(r.status, 308);
    let port = node.https_addr.port();
    assert_eq!(
        r.headers["location"],
        format!("https://secure.test:{port}/a/b?c=d").as_str()
    );
    // Published on 443 (a container's port mapping): no port in the location.
    let (public, _public_dir) = node_with(&["--https-public-port", "443"]).await;
    put(
        &public,
        "com.roo.host:secure.test:https",
        &format!("http://{a}"),
    )
    .await;
    let location = wait_for("the redirect", Duration::from_secs(5), || async {
        let r = get(&http, &public, "secure.test", "/a").await;
        (r.status == 308).then(|| r.headers["location"].clone())
    })
    .await;
    assert_eq!(location, "https://secure.test/a");

    let r = http
        .send(
            "GET",
            &format!("http://{}/h", node.http_addr),
            &[
                ("host", "plain.test"),
                ("x-forwarded-for", "203.0.113.7"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("x-keep-me", "1"),
            ],
            Bytes::new(),
        )
        .await
        .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["host"], "plain.test");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "plain.test");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-keep-me"], "1");
    assert!(h.get("x-drop-me").is_none(), "{h}");

    // Bad Host headers never reach an upstream.
    for bad in ["bad host", "a.test:port", ""] {
        let r = get(&http, &node, bad, "/").await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_upstreams_give_502_quickly_and_safe_requests_retry_elsewhere() {
    let (node, _dir) = node().await;
    let live = upstream("live").await;
    let dead = dead_port();
    let http = Http::default();
    put(
        &node,
        "com.roo.host:dead.test:http",
        &format!("http://{dead}"),
    )
    .await;
    put(
        &node,
        "com.roo.host:two.test:http",
        &format!(r#"{{"destinations":["http://{dead}","http://{live}"]}}"#),
    )
    .await;
    wait_routed(&http, &node, "two.test").await;

    let started = Instant::now();
    let r = get(&http, &node, "dead.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "502 took {:?}",
        started.elapsed()
    );

    // Every GET succeeds: a refused connection is retried on the other address, and the dead one
    // is ejected for a while.
    for _ in 0..20 {
        assert_eq!(served_by(&get(&http, &node, "two.test", "/").await), "live");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_picks_the_certificate_by_sni_and_serves_h2_and_replacements() {
    let (node, _dir) = node().await;
    let a = upstream("a").await;
    let ca = TestCa::new("proxy test CA");
    let (a_json, a_der) = ca.stored(&["a.test"]);
    let (w_json, w_der) = ca.stored(&["*.wild.test"]);
    put(&node, "com.roo.cert:a.test", &a_json).await;
    put(&node, "com.roo.cert:*.wild.test", &w_json).await;
    put(&node, "com.roo.host:a.test:https", &format!("http://{a}")).await;
    put(
        &node,
        "com.roo.host:x.wild.test:https",
        &format!("http://{a}"),
    )
    .await;
    // A broken certificate value is refused without touching the others.
    put(
        &node,
        "com.roo.cert:broken.test",
        r#"{"cert_pem":"nope","key_pem":"nope"}"#,
    )
    .await;
    let addr = node.https_addr;
    wait_for("certificates to load", Duration::from_secs(5), || async {
        common::tls_handshake(&ca, addr, "x.wild.test", &[])
            .await
            .ok()
    })
    .await;

    let tls = common::tls_handshake(&ca, addr, "a.test", &[])
        .await
        .unwrap();
    assert_eq!(common::leaf_of(&tls), a_der);
    assert_eq!(
        common::leaf_of(
            &common::tls_handshake(&ca, addr, "x.wild.test", &[])
                .await
                .unwrap()
        ),
        w_der
    );
    for unknown in ["unknown.test", "wild.test", "broken.test"] {
        assert!(
            common::tls_handshake(&ca, addr, unknown, &[])
                .await
                .is_err(),
            "{unknown}"
        );
    }

    // HTTP/2 by ALPN, routed by :authority.
    let tls = common::tls_handshake(&ca, addr, "a.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.test/over-h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["uri"], "/over-h2");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(body["headers"]["host"], "a.test");

    // HTTP/1.1 over TLS too.
    let tls = common::tls_handshake(&ca, addr, "a.test", &[b"http/1.1"])
        .await
        .unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/over-h1")
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h1.send_request(req).await.unwrap().status(), 200);

    // A certificate replaced in the KV is served on the next handshake.
    let (a2_json, a2_der) = ca.stored(&["a.test"]);
    assert_ne!(a2_der, a_der);
    put(&node, "com.roo.cert:a.test", &a2_json).await;
    wait_for("the new certificate", Duration::from_secs(1), || async {
        let tls = common::tls_handshake(&ca, addr, "a.test", &[]).await.ok()?;
        (common::leaf_of(&tls) == a2_der).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_flips_under_load_fail_no_request() {
    let (node, _dir) = node().await;
    let (a, b) = (upstream("a").await, upstream("b").await);
    let http = Http::default();
    put(&node, "com.roo.host:load.test:http", &format!("http://{a}")).await;
    wait_routed(&http, &node, "load.test").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = format!("http://{}/", node.http_addr);
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut names) = (0, Vec::new(), std::collections::HashSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http
                    .send("GET", &url, &[("host", "load.test")], Bytes::new())
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        names.insert(r.json()["name"].as_str().unwrap().to_string());
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed, names)
        }));
    }
    for i in 0..10 {
        let to = if i % 2 == 0 { b } else { a };
        put(
            &node,
            "com.roo.host:load.test:http",
            &format!("http://{to}"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut total, mut seen) = (0, std::collections::HashSet::new());
    for c in clients {
        let (ok, failed, names) = c.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
        seen.extend(names);
    }
    assert!(total > 100, "only {total} requests");
    assert_eq!(seen.len(), 2, "both upstreams served: {seen:?}");
}

/// A WebSocket upstream that echoes every message, prefixed with its name.
async fn ws_upstream(name: &'static str) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("{name}:{}", msg.to_text().unwrap_or_default());
                        if ws
                            .send(tokio_tungstenite::tungstenite::Message::text(reply))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websockets_pass_through_and_survive_route_changes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (node, _dir) = node().await;
    let (a, b) = (ws_upstream("a").await, ws_upstream("b").await);
    put(&node, "com.roo.host:ws.test:http", &format!("http://{a}")).await;
    let proxy = node.http_addr;
    let connect = || async move {
        let tcp = tokio::net::TcpStream::connect(proxy).await.ok()?;
        let (ws, resp) = tokio_tungstenite::client_async("ws://ws.test/chat", tcp)
            .await
            .ok()?;
        (resp.status() == 101).then_some(ws)
    };
    let mut ws = wait_for(
        "a websocket through the proxy",
        Duration::from_secs(5),
        connect,
    )
    .await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().to_text().unwrap(),
        "a:hello"
    );

    // The route moves; the open socket stays with its upstream, new ones go to the new one.
    put(&node, "com.roo.host:ws.test:http", &format!("http://{b}")).await;
    let mut fresh = wait_for(
        "a websocket to the new upstream",
        Duration::from_secs(2),
        || async {
            let mut ws = connect().await?;
            ws.send(Message::text("x")).await.ok()?;
            let reply = ws.next().await?.ok()?;
            (reply.to_text().ok()? == "b:x").then_some(ws)
        },
    )
    .await;
    for i in 0..20 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().to_text().unwrap(),
            format!("a:m{i}")
        );
    }
    fresh.send(Message::text("y")).await.unwrap();
    assert_eq!(
        fresh.next().await.unwrap().unwrap().to_text().unwrap(),
        "b:y"
    );
}

/// Sends raw bytes on a new connection and reads the answer's status line.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("an answer within 5s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_never_reach_an_upstream() {
    let (node, _dir) = node().await;
    let a = upstream("a").await;
    put(&node, "com.roo.host:a.test:http", &format!("http://{a}")).await;
    let http = Http::default();
    wait_routed(&http, &node, "a.test").await;
    let addr = node.http_addr;
    let ok = raw_status(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    let cases: Vec<(&[u8], &str)> = vec![
        (b"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "400"),
        (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a test\r\n\r\n", "400"),
        (b"NOT HTTP AT ALL\r\n\r\n", "400"),
        (big.as_bytes(), "431"),
    ];
    // Content-Length with Transfer-Encoding: the length is dropped (RFC 9112 6.1) and the
    // request goes on re-framed, so no conflicting framing reaches the upstream.
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = b"POST / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        tcp.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(json["headers"].get("content-length").is_none(), "{json}");
    assert_eq!(json["body_len"], 5);
    for (req, want) in cases {
        let status = raw_status(addr, req).await;
        assert!(
            status.starts_with(&format!("HTTP/1.1 {want}")),
            "{:?} -> {status}",
            String::from_utf8_lossy(&req[..req.len().min(80)])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_limit_get_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (node, _dir) = node_with(&["--max-connections", "2"]).await;
    let a = upstream("a").await;
    put(&node, "com.roo.host:a.test:http", &format!("http://{a}")).await;
    let addr = node.http_addr;
    // Two keep-alive connections that stay open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = wait_for(
            "a routed keep-alive connection",
            Duration::from_secs(5),
            || async {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                    .await
                    .ok()?;
                let mut buf = vec![0; 4096];
                let n = tcp.read(&mut buf).await.ok()?;
                String::from_utf8_lossy(&buf[..n])
                    .starts_with("HTTP/1.1 200")
                    .then_some(tcp)
            },
        )
        .await;
        tcp.write_all(b"").await.unwrap();
        held.push(tcp);
    }
    let status = raw_status(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    drop(held.pop());
    wait_for("a free slot", Duration::from_secs(5), || async {
        raw_status(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
            .then_some(())
    })
    .await;
}

/// An h2c (HTTP/2, no TLS) upstream answering like a gRPC server: the request body echoed, then
/// a `grpc-status` trailer.
async fn h2c_upstream() -> SocketAddr {
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let te = req
                        .headers()
                        .get("te")
                        .map(|v| v.to_str().unwrap_or("").to_string());
                    let version = format!("{:?}", req.version());
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    trailers.insert(
                        "x-upstream-version",
                        http::HeaderValue::from_str(&version).unwrap(),
                    );
                    if let Some(te) = te {
                        trailers.insert("x-seen-te", http::HeaderValue::from_str(&te).unwrap());
                    }
                    let frames = futures_util::stream::iter(vec![
                        Ok::<_, std::convert::Infallible>(Frame::data(body)),
                        Ok(Frame::trailers(trailers)),
                    ]);
                    let mut resp = http::Response::new(http_body_util::StreamBody::new(frames));
                    resp.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_style_h2_requests_reach_an_h2c_upstream_with_trailers() {
    let (node, _dir) = node().await;
    let grpc = h2c_upstream().await;
    let ca = TestCa::new("proxy test CA");
    let (cert, _) = ca.stored(&["grpc.test"]);
    put(&node, "com.roo.cert:grpc.test", &cert).await;
    put(
        &node,
        "com.roo.host:grpc.test:https",
        &format!(r#"{{"destinations":["http://{grpc}"],"protocol":"h2c"}}"#),
    )
    .await;
    let addr = node.https_addr;
    let tls = wait_for("the certificate", Duration::from_secs(5), || async {
        common::tls_handshake(&ca, addr, "grpc.test", &[b"h2"])
            .await
            .ok()
    })
    .await;
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    for _ in 0..3 {
        let req = http::Request::post("https://grpc.test/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(message.clone()))
            .unwrap();
        let resp = wait_for("the h2c route", Duration::from_secs(5), || {
            let mut h2 = h2.clone();
            let req = req.clone();
            async move {
                let resp = h2.send_request(req).await.ok()?;
                (resp.status() == 200).then_some(resp)
            }
        })
        .await;
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-upstream-version"], "HTTP/2.0");
        assert_eq!(trailers["x-seen-te"], "trailers");
        assert_eq!(collected.to_bytes(), message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_upstreams_are_verified_unless_the_route_opts_out() {
    let ca = TestCa::new("proxy test CA");
    let (cert, key, _) = ca.leaf(&["127.0.0.1"]);
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let secure = serve_upstream(
        "secure",
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))),
    )
    .await;

    // A node that trusts the test CA (--upstream-ca-file) and one that does not.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_path = ca_file.to_str().unwrap();
    let (trusting, _dir1) = node_with(&["--upstream-ca-file", ca_path]).await;
    let (plain, _dir2) = node().await;
    let http = Http::default();

    for n in [&trusting, &plain] {
        put(
            n,
            "com.roo.host:tls.test:http",
            &format!("https://{secure}"),
        )
        .await;
        put(
            n,
            "com.roo.host:skip.test:http",
            &format!(r#"{{"destinations":["https://{secure}"],"tls_verify":false}}"#),
        )
        .await;
    }
    wait_routed(&http, &trusting, "tls.test").await;
    let r = get(&http, &trusting, "tls.test", "/v").await;
    assert_eq!(served_by(&r), "secure");
    assert_eq!(r.json()["headers"]["host"], "tls.test");

    // Not trusted: 502 naming the certificate problem; opting out of verification works.
    wait_routed(&http, &plain, "skip.test").await;
    let r = get(&http, &plain, "tls.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().to_lowercase().contains("certificate"),
        "{}",
        r.text()
    );
    assert_eq!(
        served_by(&get(&http, &plain, "skip.test", "/").await),
        "secure"
    );
    // A bad CA file stops start-up with a clear error.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    let err = common::try_node(&dir.path().join("bad"), &["--upstream-ca-file", ca_path])
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

/// The upstream of the HTTP/1 wire tests: `/echo` streams the request body back as it comes
/// (no length: the proxy chunks it), `/slow` answers after 500 ms, anything else is [`echo`]
/// with `X-Upstream: wire` and a field its `Connection` names (`X-Hop`).
async fn wire_upstream() -> SocketAddr {
    use http_body_util::combinators::BoxBody;
    type Answer = http::Response<BoxBody<Bytes, hyper::Error>>;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let answer: Answer = match req.uri().path() {
                    "/echo" => http::Response::new(req.into_body().boxed()),
                    path if path.starts_with("/sleep/") => {
                        let ms = path["/sleep/".len()..].parse().unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        http::Response::new(
                            Full::new(Bytes::from("slept"))
                                .map_err(|never| match never {})
                                .boxed(),
                        )
                    }
                    "/slow" => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        http::Response::new(
                            Full::new(Bytes::from("slow"))
                                .map_err(|never| match never {})
                                .boxed(),
                        )
                    }
                    _ => {
                        let mut answer = echo("wire", req).await?;
                        // One field for the client, one for this connection alone.
                        let headers = answer.headers_mut();
                        headers.insert("x-upstream", "wire".parse().unwrap());
                        headers.insert("x-hop", "1".parse().unwrap());
                        headers.insert("connection", "X-Hop".parse().unwrap());
                        answer.map(|b| b.map_err(|never| match never {}).boxed())
                    }
                };
                Ok::<_, std::convert::Infallible>(answer)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A node routing `wire.test` to [`wire_upstream`], once the route is live.
async fn wire_node() -> (Node, tempfile::TempDir) {
    wire_node_with(&[]).await
}

async fn wire_node_with(args: &[&str]) -> (Node, tempfile::TempDir) {
    let (node, dir) = node_with(args).await;
    let up = wire_upstream().await;
    put(
        &node,
        "com.roo.host:wire.test:http",
        &format!("http://{up}"),
    )
    .await;
    wait_routed(&Http::default(), &node, "wire.test").await;
    (node, dir)
}

/// Reads one answer from `tcp` into (head, body): the body by its Content-Length, none when
/// `head_only`. `pending` keeps what was read past it.
async fn read_answer<T: tokio::io::AsyncRead + Unpin>(
    tcp: &mut T,
    pending: &mut Vec<u8>,
    head_only: bool,
) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let len = match head_only {
                true => 0,
                false => head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0),
            };
            if pending.len() >= end + 4 + len {
                let body = pending[end + 4..end + 4 + len].to_vec();
                pending.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("an answer within 5s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name` in an answer's head.
fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_bodies_stream_both_ways_on_one_kept_connection() {
    use futures_util::StreamExt;
    use hyper::body::Frame;
    let (node, _dir) = wire_node().await;
    let tcp = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
    let post = |path: &str, body: ReqBody| {
        http::Request::post(path)
            .header("host", "wire.test")
            .body(body)
            .unwrap()
    };

    // 1 MiB with a Content-Length, echoed back as it streams.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let resp = client
        .send_request(post("/echo", Full::new(Bytes::from(big.clone())).boxed()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), big);

    // A chunked request body of unknown length: the first piece comes back before the client
    // sends the second, so neither side was buffered whole.
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok(Frame::data(data)), rx))
    });
    let resp = client
        .send_request(post(
            "/echo",
            BodyExt::boxed(http_body_util::StreamBody::new(frames)),
        ))
        .await;
    tx.send(Bytes::from_static(b"ping")).await.unwrap();
    let resp = resp.unwrap();
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first piece back while the request is open")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "ping");
    tx.send(Bytes::from_static(b"pong")).await.unwrap();
    drop(tx);
    assert_eq!(body.collect().await.unwrap().to_bytes(), "pong");

    // The upstream sees a chunked body's length as sent, and the connection is still the same.
    client.ready().await.unwrap();
    let pieces = futures_util::stream::iter([&b"abc"[..], &b"defgh"[..]])
        .map(|p| Ok(Frame::data(Bytes::from_static(p))));
    let resp = client
        .send_request(post(
            "/",
            BodyExt::boxed(http_body_util::StreamBody::new(pieces)),
        ))
        .await
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["body_len"], 8, "{json}");
    assert_eq!(json["method"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_pipelining_head_expect_continue_and_http10() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (node, _dir) = wire_node().await;
    let mut tcp = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    let mut pending = Vec::new();

    // Two requests in one write: two answers, in order.
    tcp.write_all(
        b"GET /a HTTP/1.1\r\nHost: wire.test\r\n\r\nGET /b?x=1 HTTP/1.1\r\nHost: wire.test\r\n\r\n",
    )
    .await
    .unwrap();
    for path in ["/a", "/b?x=1"] {
        let (head, body) = read_answer(&mut tcp, &mut pending, false).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        // The upstream's fields but those of its connection, and one Date, one length.
        assert_eq!(header_of(&head, "x-upstream"), Some("wire"), "{head}");
        assert_eq!(header_of(&head, "x-hop"), None, "{head}");
        assert_eq!(header_of(&head, "connection"), None, "{head}");
        for name in ["date", "content-length"] {
            let n = head
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with(name))
                .count();
            assert_eq!(n, 1, "{name}: {head}");
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["uri"], path);
    }

    // HEAD: the length of what GET would send, no body; the connection goes on.
    tcp.write_all(b"HEAD / HTTP/1.1\r\nHost: wire.test\r\n\r\nGET /after-head HTTP/1.1\r\nHost: wire.test\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_answer(&mut tcp, &mut pending, true).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(header_of(&head, "content-length").is_some(), "{head}");
    let (_, body) = read_answer(&mut tcp, &mut pending, false).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["uri"], "/after-head");

    // Expect: 100-continue gets its interim answer before the body is sent.
    tcp.write_all(
        b"POST / HTTP/1.1\r\nHost: wire.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_answer(&mut tcp, &mut pending, true).await;
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    tcp.write_all(b"hello").await.unwrap();
    let (head, body) = read_answer(&mut tcp, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["body_len"], 5);

    // A body nobody reads (no route: 404 at once) is skipped, and the next request is read.
    let unread = format!(
        "POST / HTTP/1.1\r\nHost: nobody.test\r\nContent-Length: 20000\r\n\r\n{}GET /next HTTP/1.1\r\nHost: wire.test\r\n\r\n",
        "x".repeat(20_000)
    );
    tcp.write_all(unread.as_bytes()).await.unwrap();
    let (head, _) = read_answer(&mut tcp, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, body) = read_answer(&mut tcp, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["uri"],
        "/next"
    );

    // HTTP/1.0 keeps the connection only when asked, and hears that it did.
    tcp.write_all(b"GET /10 HTTP/1.0\r\nHost: wire.test\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_answer(&mut tcp, &mut pending, false).await;
    assert_eq!(header_of(&head, "connection"), Some("keep-alive"), "{head}");
    // An answer of unknown length to HTTP/1.0 ends with the connection.
    tcp.write_all(b"POST /echo HTTP/1.0\r\nHost: wire.test\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let mut rest = std::mem::take(&mut pending);
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("the connection closed")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(header_of(&rest, "transfer-encoding").is_none(), "{rest}");
    assert!(rest.ends_with("\r\n\r\nabc"), "{rest}");
}

/// An HTTP/2 client of the node's plain listener, by prior knowledge.
async fn h2_client(node: &Node) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    h2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_with_prior_knowledge_on_the_plain_listener() {
    let (node, _dir) = wire_node().await;
    let mut h2 = h2_client(&node).await;
    let resp = h2
        .send_request(
            http::Request::get("http://wire.test/h2")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-upstream"], "wire");
    assert!(!resp.headers().contains_key("x-hop"));
    let json: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["uri"], "/h2");
    assert_eq!(json["headers"]["x-forwarded-proto"], "http");
}

/// GET `path` for wire.test on a kept connection: the answer's head and body, and how long it
/// took.
async fn ask(
    tcp: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
    path: &str,
) -> (String, String, Duration) {
    use tokio::io::AsyncWriteExt;
    let request = format!("GET {path} HTTP/1.1\r\nHost: wire.test\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let (head, body) = read_answer(tcp, pending, false).await;
    (
        head,
        String::from_utf8_lossy(&body).to_string(),
        sent.elapsed(),
    )
}

/// An upstream slower than `--upstream-timeout-ms` gets the client a 504 at the timeout, over
/// HTTP/1.1 (whose wait runs on its connection's own timer, set earlier for the wait between
/// requests) and HTTP/2; one slower than that earlier setting but within the timeout is
/// answered, and a kept connection goes on after a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstreams_slower_than_the_timeout_get_504() {
    let timeout = Duration::from_millis(1500);
    let (node, _dir) = wire_node_with(&["--upstream-timeout-ms", "1500"]).await;
    let mut tcp = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    let mut pending = Vec::new();
    // The first wait, for the head, is the longer header timeout's: the timer moves earlier.
    let (head, _, _) = ask(&mut tcp, &mut pending, "/first").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Then longer than the parking delay the connection's timer is set for between requests.
    let (head, body, _) = ask(&mut tcp, &mut pending, "/sleep/800").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "slept");
    let (head, body, took) = ask(&mut tcp, &mut pending, "/sleep/4000").await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}\n{body}");
    assert!(body.contains("no answer within"), "{body}");
    assert!(took >= timeout, "504 after {took:?}, before the timeout");
    let (head, _, _) = ask(&mut tcp, &mut pending, "/after").await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the connection goes on: {head}"
    );

    let mut h2 = h2_client(&node).await;
    for (path, status) in [("/sleep/800", 200), ("/sleep/4000", 504)] {
        let sent = Instant::now();
        let resp = h2
            .send_request(
                http::Request::get(format!("http://wire.test{path}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path} over HTTP/2");
        if status == 504 {
            assert!(sent.elapsed() >= timeout, "504 after {:?}", sent.elapsed());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (node, _dir) = wire_node().await;
    let addr = node.http_addr;
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: wire.test\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut idle, &mut pending, false).await;
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: wire.test\r\n\r\n")
        .await
        .unwrap();
    // The slow request is at the upstream; stop the node under it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let stopped = tokio::spawn(node.stop());
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the idle connection closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection got {:?}", &buf[..n]);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut answer))
        .await
        .expect("the request in flight answered, then its connection closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(header_of(&answer, "connection"), Some("close"), "{answer}");
    assert!(answer.ends_with("slow"), "{answer}");
    tokio::time::timeout(Duration::from_secs(8), stopped)
        .await
        .expect("the node stopped without waiting for the drain limit")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_idle_past_the_parking_delay_still_serve_and_close_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (node, _dir) = wire_node().await;
    let addr = node.http_addr;
    let mut pending = Vec::new();
    let mut parked = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut parked_again = tokio::net::TcpStream::connect(addr).await.unwrap();
    for conn in [&mut parked, &mut parked_again] {
        conn.write_all(b"GET /first HTTP/1.1\r\nHost: wire.test\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_answer(conn, &mut pending, false).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // Idle for longer than the parking delay (0.5 s): out of its task, into the worker's lot.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    parked
        .write_all(b"GET /after-parking HTTP/1.1\r\nHost: wire.test\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_answer(&mut parked, &mut pending, false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["uri"], "/after-parking");
    // A request split across the wake-up arrives whole.
    parked.write_all(b"GET /split HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    parked.write_all(b"Host: wire.test\r\n\r\n").await.unwrap();
    let (_, body) = read_answer(&mut parked, &mut pending, false).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["uri"],
        "/split"
    );

    // Shutdown closes the parked connections at once.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stopped = tokio::spawn(node.stop());
    let mut buf = [0u8; 64];
    for conn in [&mut parked, &mut parked_again] {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the parked connection closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "got {:?}", &buf[..n]);
    }
    tokio::time::timeout(Duration::from_secs(8), stopped)
        .await
        .expect("the node stopped")
        .unwrap();
}

/// How long after `since` the peer closed `conn` (its end or a reset), sending nothing; panics
/// if it is still open after 5 s.
async fn closed_after<T: tokio::io::AsyncRead + Unpin>(conn: &mut T, since: Instant) -> Duration {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the connection closed within 5 s");
    if let Ok(n) = read {
        assert_eq!(n, 0, "got {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_heads_and_idle_connections_are_closed_in_time() {
    use tokio::io::AsyncWriteExt;
    let (header, idle) = (Duration::from_millis(400), Duration::from_millis(1500));
    let (node, _dir) =
        wire_node_with(&["--header-timeout-ms", "400", "--idle-timeout-ms", "1500"]).await;
    let addr = node.http_addr;

    // A connection that never sends a request.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(closed_after(&mut silent, Instant::now()).await >= header);

    // A head sent a byte at a time, never finished (slowloris): the bytes do not keep it open.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: wire.test\r\nX-Slow: ")
        .await
        .unwrap();
    let began = Instant::now();
    let (mut read, mut write) = slow.into_split();
    let dribble = tokio::spawn(async move {
        while write.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(closed_after(&mut read, began).await >= header);
    dribble.abort();

    // A keep-alive connection, plain (parked after 0.5 s, then closed from the lot) and over
    // TLS (closed by its task), after a request.
    let ca = TestCa::new("idle test CA");
    let (cert, _) = ca.stored(&["wire.test"]);
    put(&node, "com.roo.cert:wire.test", &cert).await;
    let up = wire_upstream().await;
    put(
        &node,
        "com.roo.host:wire.test:https",
        &format!("http://{up}"),
    )
    .await;
    let https = node.https_addr;
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: wire.test\r\n\r\n");
    let (mut tls, sent) = wait_for(
        "the certificate and route",
        Duration::from_secs(5),
        || async {
            let mut tls = common::tls_handshake(&ca, https, "wire.test", &[b"http/1.1"])
                .await
                .ok()?;
            // The idle time starts after the answer, so after this.
            let sent = Instant::now();
            tls.write_all(request("/tls").as_bytes()).await.ok()?;
            let (head, _) = read_answer(&mut tls, &mut Vec::new(), false).await;
            head.starts_with("HTTP/1.1 200").then_some((tls, sent))
        },
    )
    .await;
    assert!(closed_after(&mut tls, sent).await >= idle);
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    plain.write_all(request("/plain").as_bytes()).await.unwrap();
    let (head, _) = read_answer(&mut plain, &mut Vec::new(), false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(closed_after(&mut plain, sent).await >= idle);
}

/// The CPUs each thread of this process whose name starts with `prefix` may run on (Linux's
/// `Cpus_allowed_list`, e.g. `0-3,6`), by thread name.
fn cpus_of_threads(prefix: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        // A thread may end between the listing and the read.
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        if let Some(name) = comm.trim().strip_prefix(prefix) {
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim();
            found.push((name.to_string(), cpus.to_string()));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_workers_keep_a_cpu_each_and_serve() {
    let (pinned, _dir) = node_with(&["--proxy-workers", "2", "--proxy-cpu-affinity", "auto"]).await;
    let (unpinned, _dir2) = node_with(&["--proxy-workers", "2"]).await;
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let ours = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    // The CPUs this test may run on, in order.
    let allowed: Vec<String> = ours
        .split(',')
        .flat_map(|range| match range.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                (a..=b).map(|c| c.to_string()).collect()
            }
            None => vec![range.to_string()],
        })
        .collect();

    let threads = cpus_of_threads("rood-proxy-");
    for (worker, want) in [("0", &allowed[0]), ("1", &allowed[1 % allowed.len()])] {
        let cpus: Vec<&String> = threads
            .iter()
            .filter(|(name, _)| name == worker)
            .map(|(_, cpus)| cpus)
            .collect();
        // One worker of that number in each node: the pinned one on its CPU alone, the other
        // anywhere this test may run.
        assert!(cpus.contains(&want), "worker {worker}: {threads:?}");
        assert!(cpus.contains(&&ours), "worker {worker}: {threads:?}");
    }

    // Both pinned workers serve: of two connections open at once, each worker has one.
    let a = upstream("a").await;
    let http = Http::default();
    for node in [&pinned, &unpinned] {
        put(node, "com.roo.host:a.test:http", &format!("http://{a}")).await;
        wait_routed(&http, node, "a.test").await;
    }
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(
            tokio::net::TcpStream::connect(pinned.http_addr)
                .await
                .unwrap(),
        );
    }
    for _ in 0..3 {
        for tcp in &mut conns {
            use tokio::io::AsyncWriteExt;
            tcp.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
                .await
                .unwrap();
            let (head, body) = read_answer(tcp, &mut Vec::new(), false).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(String::from_utf8_lossy(&body).contains("\"a\""), "{body:?}");
        }
    }
}
