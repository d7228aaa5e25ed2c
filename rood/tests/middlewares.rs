//! Route middlewares over real sockets: each one's allow and deny, and a refused request never
//! reaching the upstream.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{wait_for, Http, Reply};
use http_body_util::BodyExt;
use rood::node::Node;

/// An echo upstream that counts what reaches it and answers with a `Server` field of its own.
async fn counted_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let addr = common::http_server(move |req| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut resp = common::echo("up", req).await?;
            resp.headers_mut()
                .insert("server", http::HeaderValue::from_static("secret/1.0"));
            resp.headers_mut()
                .insert("x-upstream", http::HeaderValue::from_static("1"));
            Ok::<_, std::convert::Infallible>(resp)
        }
    })
    .await;
    (addr, hits)
}

/// A node with one route, `host` -> `up` with `middlewares`, live.
async fn routed(
    middlewares: serde_json::Value,
    host: &str,
) -> (Node, tempfile::TempDir, Arc<AtomicUsize>) {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let (up, hits) = counted_upstream().await;
    let route = serde_json::json!({
        "backends": [{"name": "app", "url": format!("http://{up}")}],
        "middlewares": middlewares,
    });
    put_route(&node, host, route).await;
    (node, dir, hits)
}

/// Puts `route` for `http://host` and waits until the node serves it.
async fn put_route(node: &Node, host: &str, route: serde_json::Value) {
    let r = Http::default()
        .put(
            &format!(
                "http://{}/roo/v1/kv/com.roo.host:{host}:http",
                node.api_addr
            ),
            route.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the route", Duration::from_secs(5), || async {
        (node
            .tables
            .routes
            .load()
            .lookup(host, rood::routes::Scheme::Http))
        .is_some()
        .then_some(())
    })
    .await;
}

async fn send(
    node: &Node,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Reply {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    Http::default()
        .send(
            method,
            &format!("http://{}{path}", node.http_addr),
            &all,
            Bytes::from_static(body),
        )
        .await
        .unwrap()
}

/// An HTTP/2 client with prior knowledge, on the node's plain listener.
async fn h2_client(
    node: &Node,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    let (h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    h2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_auth_asks_for_and_checks_bcrypt_credentials() {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let (node, _dir, hits) = routed(
        serde_json::json!([{"basic_auth": {"users": [format!("alice:{hash}")], "realm": "app"}}]),
        "auth.test",
    )
    .await;
    use base64::Engine;
    let basic = |creds: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    };
    for creds in [None, Some("alice:wrong"), Some("bob:s3cret"), Some("alice")] {
        let auth = creds.map(basic);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = send(&node, "GET", "auth.test", "/", &headers, b"").await;
        assert_eq!(r.status, 401, "{creds:?}");
        assert_eq!(
            r.headers["www-authenticate"],
            "Basic realm=\"app\", charset=\"UTF-8\""
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // Right, twice (the second from the remembered check).
    for _ in 0..2 {
        let r = send(
            &node,
            "GET",
            "auth.test",
            "/",
            &[("authorization", &basic("alice:s3cret"))],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ip_allow_lets_in_only_its_blocks() {
    let (node, _dir, hits) = routed(
        serde_json::json!([{"ip_allow": {"cidrs": ["10.0.0.0/8", "fd00::/8"]}}]),
        "closed.test",
    )
    .await;
    let r = send(&node, "GET", "closed.test", "/", &[], b"").await;
    assert_eq!(r.status, 403);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let (node, _dir, hits) = routed(
        serde_json::json!([{"ip_allow": {"cidrs": ["10.0.0.0/8", "127.0.0.0/8"]}}]),
        "open.test",
    )
    .await;
    let r = send(&node, "GET", "open.test", "/", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_lets_the_burst_through_then_says_when_to_retry() {
    let (node, _dir, hits) = routed(
        serde_json::json!([{"rate_limit": {"average": 0.5, "burst": 3}}]),
        "limited.test",
    )
    .await;
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..5 {
        let r = send(&node, "GET", "limited.test", "/", &[], b"").await;
        statuses.push(r.status);
        if r.status == 429 {
            retry = r.headers.get("retry-after").cloned();
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // One token takes 2 s at half a request a second.
    assert_eq!(retry.unwrap(), "2");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headers_are_set_and_removed_both_ways_on_http1_and_http2() {
    let (node, _dir, _hits) = routed(
        serde_json::json!([{"headers": {
            "request_set": {"X-From": "roo"},
            "request_remove": ["X-Secret"],
            "response_set": {"X-Served-By": "roo"},
            "response_remove": ["Server"],
        }}]),
        "headers.test",
    )
    .await;
    let r = send(
        &node,
        "GET",
        "headers.test",
        "/",
        &[("x-secret", "1"), ("x-kept", "2")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-from"], "roo");
    assert_eq!(seen["x-kept"], "2");
    assert!(seen["x-secret"].is_null(), "{seen}");
    assert_eq!(r.headers["x-served-by"], "roo");
    assert_eq!(r.headers["x-upstream"], "1");
    assert!(r.headers.get("server").is_none(), "{:?}", r.headers);

    // HTTP/2 with prior knowledge on the plain listener: the same.
    let mut h2 = h2_client(&node).await;
    let req = http::Request::get("http://headers.test/")
        .header("x-secret", "1")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "roo");
    assert_eq!(resp.headers()["x-upstream"], "1");
    assert!(resp.headers().get("server").is_none());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["x-from"], "roo");
    assert!(seen["headers"]["x-secret"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_and_body_limits_answer_before_the_upstream() {
    let (node, _dir, hits) = routed(
        serde_json::json!([
            {"redirect": {"regex": "^/old/(.*)", "replacement": "/new/$1", "permanent": true}},
            {"max_body_bytes": 10},
        ]),
        "misc.test",
    )
    .await;
    let r = send(&node, "GET", "misc.test", "/old/page?x=1", &[], b"").await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "/new/page?x=1");
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // Too large by its length: refused without reading it.
    let r = send(
        &node,
        "POST",
        "misc.test",
        "/upload",
        &[],
        b"0123456789abcdef",
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let r = send(&node, "POST", "misc.test", "/upload", &[], b"0123456789").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 10);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Too large as it streams (chunked, no length): cut off at the limit.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: misc.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_middlewares_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    for (middlewares, field) in [
        (
            serde_json::json!([{"ip_allow": {"cidrs": ["10.0.0.0/33"]}}]),
            "middlewares[0].ip_allow.cidrs",
        ),
        (
            serde_json::json!([{"redirect": {"regex": "([", "replacement": "/"}}]),
            "middlewares[0].redirect.regex",
        ),
        (
            serde_json::json!([{"basic_auth": {"users": ["alice:plain"]}}]),
            "middlewares[0].basic_auth.users",
        ),
        (
            serde_json::json!([{"rate_limit": {"average": -1}}]),
            "middlewares[0].rate_limit.average",
        ),
        (
            serde_json::json!([{"gzip": {}}]),
            "middlewares[0]: unknown variant `gzip`",
        ),
        (
            serde_json::json!([{"compress": {"level": 9}}]),
            "middlewares[0].compress",
        ),
    ] {
        let route = serde_json::json!({
            "backends": [{"name": "app", "url": "http://127.0.0.1:9"}],
            "middlewares": middlewares,
        });
        let r = http
            .put(
                &format!(
                    "http://{}/roo/v1/kv/com.roo.host:bad.test:http",
                    node.api_addr
                ),
                route.to_string(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{route}");
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(field), "{route}: {error}");
    }
}

/// A page of text long enough to be worth compressing.
fn page() -> String {
    (0..2_000).map(|i| format!("<p>line {i}</p>\n")).collect()
}

fn decoded(coding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(body).unwrap(),
        other => panic!("coding {other}"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compress_codes_text_for_clients_that_take_it_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let up = common::http_server(|req: http::Request<hyper::body::Incoming>| async move {
        let (kind, body): (&str, Vec<u8>) = match req.uri().path() {
            "/png" => ("image/png", vec![7; 20_000]),
            "/small" => ("text/plain", b"short".to_vec()),
            "/gzipped" => ("text/plain", vec![1; 5_000]),
            _ => ("text/html; charset=utf-8", page().into_bytes()),
        };
        let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from(body)));
        let h = resp.headers_mut();
        h.insert("content-type", http::HeaderValue::from_static(kind));
        h.insert("etag", http::HeaderValue::from_static("\"v1\""));
        h.insert("vary", http::HeaderValue::from_static("origin"));
        if req.uri().path() == "/gzipped" {
            h.insert("content-encoding", http::HeaderValue::from_static("gzip"));
        }
        Ok::<_, std::convert::Infallible>(resp)
    })
    .await;
    put_route(
        &node,
        "zip.test",
        serde_json::json!({
            "backends": [{"name": "app", "url": format!("http://{up}")}],
            "middlewares": [{"compress": {}}],
        }),
    )
    .await;
    let page = page();
    // Over HTTP/1.1 (the pooled upstream's fields passed on as lines), each coding.
    for (accept, coding) in [
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip, br", "br"),
        ("gzip;q=1, br;q=0.1", "gzip"),
    ] {
        let r = send(
            &node,
            "GET",
            "zip.test",
            "/",
            &[("accept-encoding", accept)],
            b"",
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-encoding"], coding, "{accept}");
        assert!(r.headers.get("content-length").is_none());
        assert_eq!(r.headers["etag"], "W/\"v1\"");
        let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["origin", "accept-encoding"], "{accept}");
        assert!(r.body.len() < page.len() / 4, "{coding}: {}", r.body.len());
        assert_eq!(decoded(coding, &r.body), page.as_bytes(), "{coding}");
    }
    // Sent as they are: to a client without a coding of ours, images, short answers, answers
    // coded already, and HEAD.
    let plain = send(
        &node,
        "GET",
        "zip.test",
        "/",
        &[("accept-encoding", "deflate")],
        b"",
    )
    .await;
    assert!(plain.headers.get("content-encoding").is_none());
    assert_eq!(plain.headers["content-length"], page.len().to_string());
    assert_eq!(plain.headers["etag"], "\"v1\"");
    assert_eq!(plain.body, page.as_bytes());
    let gzip = [("accept-encoding", "gzip")];
    for (path, encoding) in [("/png", None), ("/small", None), ("/gzipped", Some("gzip"))] {
        let r = send(&node, "GET", "zip.test", path, &gzip, b"").await;
        assert_eq!(
            r.headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            encoding,
            "{path}"
        );
        assert_eq!(
            r.headers["content-length"],
            r.body.len().to_string(),
            "{path}"
        );
    }
    let r = send(&node, "HEAD", "zip.test", "/", &gzip, b"").await;
    assert!(r.headers.get("content-encoding").is_none());

    // Over HTTP/2 (the fields in the header map): the same.
    let mut h2 = h2_client(&node).await;
    let req = http::Request::get("http://zip.test/")
        .header("accept-encoding", "br")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "br");
    assert_eq!(resp.headers()["etag"], "W/\"v1\"");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(decoded("br", &body), page.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compressed_stream_reaches_the_client_as_it_is_written() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    // An event stream that sends its second event only once the test has read the first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (first_read, mut go_on) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap() == 0 {
                return;
            }
            head.push(b[0]);
        }
        let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
        let start = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{}",
            chunk("data: one\n\n")
        );
        s.write_all(start.as_bytes()).await.unwrap();
        go_on.recv().await;
        let rest = format!("{}0\r\n\r\n", chunk("data: two\n\n"));
        s.write_all(rest.as_bytes()).await.unwrap();
    });
    put_route(
        &node,
        "events.test",
        serde_json::json!({
            "backends": [{"name": "app", "url": "http://127.0.0.1:9"}],
            "paths": [{
                "prefix": "/events",
                "backends": [{"name": "events", "url": format!("http://{up}")}],
                "middlewares": [{"compress": {}}],
            }],
        }),
    )
    .await;
    let stream = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    let (mut h1, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/events")
        .header("host", "events.test")
        .header("accept-encoding", "gzip")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = h1.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut told = false;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event, compressed, before the second is written")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            std::io::Write::write_all(&mut decoder, &data).unwrap();
            std::io::Write::flush(&mut decoder).unwrap();
        }
        if !told && decoder.get_ref().as_slice() == b"data: one\n\n" {
            told = true;
            first_read.send(()).await.unwrap();
        }
    }
    assert!(told);
    assert_eq!(decoder.finish().unwrap(), b"data: one\n\ndata: two\n\n");
}
