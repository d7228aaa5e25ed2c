//! A three-node cluster in one process, over real sockets on loopback: replication, forwarding,
//! compare-and-set, watches, and bad input.

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::{wait_for, wait_for_cluster, Http, SECRET};
use rood::config::Config;
use rood::node::Node;

struct Cluster {
    nodes: Vec<Node>,
    addrs: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.addrs[i], path)
    }

    /// Index of the leader and of the followers.
    async fn roles(&self, http: &Http) -> (usize, Vec<usize>) {
        let leader = wait_for_cluster(http, &self.addrs, self.nodes.len()).await;
        let li = self
            .nodes
            .iter()
            .position(|n| n.kv.node_id() == leader)
            .unwrap();
        (li, (0..self.nodes.len()).filter(|i| *i != li).collect())
    }
}

async fn start_node(dir: &std::path::Path, join: Option<&str>) -> Node {
    let listeners = common::listeners("127.0.0.1").await;
    let mut args = vec![
        "rood".to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--cluster-secret".into(),
        SECRET.into(),
        "--request-timeout-ms".into(),
        "2000".into(),
        "--acme".into(),
        "false".into(),
        "--swarm".into(),
        "off".into(),
    ];
    if let Some(j) = join {
        args.extend(["--join".into(), j.to_string()]);
    }
    Node::start_on(Config::try_parse_from(args).unwrap(), listeners)
        .await
        .unwrap()
}

async fn cluster(n: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let first = start_node(&dir.path().join("n0"), None).await;
    let seed = first.api_addr.to_string();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start_node(&dir.path().join(format!("n{i}")), Some(&seed)).await);
    }
    let addrs = nodes
        .iter()
        .map(|n| n.api_addr.to_string())
        .collect::<Vec<_>>();
    let c = Cluster {
        nodes,
        addrs,
        _dir: dir,
    };
    wait_for_cluster(&Http::default(), &c.addrs, n).await;
    c
}

const ROUTE: &str = "/roo/v1/kv/com.roo.host:example.com:https";
/// Route values (the API refuses a route key whose value no node could serve).
const ORIGINAL: &str = "http://original.test:80";
const KEPT: &str = "http://kept.test:80";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_on_follower_reads_on_all() {
    let c = cluster(3).await;
    let http = Http::default();
    let (leader, followers) = c.roles(&http).await;

    let r = http
        .put(&c.url(followers[0], ROUTE), "http://tasks.app_web:80")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ok"], true);

    // Linearizable reads on every node see it at once, the followers' through a read index.
    for i in [leader, followers[0], followers[1]] {
        let r = http.get(&c.url(i, ROUTE)).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "http://tasks.app_web:80");
    }
    // Stale reads see it once applied locally.
    for i in 0..3 {
        let url = c.url(i, &format!("{ROUTE}?consistency=stale"));
        wait_for("stale read to catch up", Duration::from_secs(5), || async {
            let r = http.get(&url).await.ok()?;
            (r.status == 200 && r.text() == "http://tasks.app_web:80").then_some(())
        })
        .await;
    }
    // Roo's scan shape: base64 values by key, and the query.
    let r = http
        .get(&c.url(followers[1], "/roo/v1/kvs/com.roo.host:"))
        .await
        .unwrap();
    let v = r.json();
    assert_eq!(v["query"], "com.roo.host:");
    assert_eq!(
        v["results"]["com.roo.host:example.com:https"],
        "aHR0cDovL3Rhc2tzLmFwcF93ZWI6ODA="
    );
    let all = http
        .get(&c.url(leader, "/roo/v1/kvs"))
        .await
        .unwrap()
        .json();
    // The route, its first history record (its event too) and its owner (routes' one write
    // path), beside the cluster's events (the leader's) and the leader's TLS ticket key.
    let (events, keys): (Vec<&String>, Vec<&String>) = all["results"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.starts_with("com.roo.tls.ticket_key:"))
        .partition(|k| k.starts_with("com.roo.event:"));
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(!events.is_empty());
    assert_eq!(keys[0], "com.roo.host:example.com:https");
    assert!(
        keys[1].starts_with("com.roo.route.history:example.com:https:"),
        "{keys:?}"
    );
    assert_eq!(keys[2], "com.roo.route.owner:example.com:https");

    // Delete through a follower removes it everywhere.
    let r = http.delete(&c.url(followers[1], ROUTE)).await.unwrap();
    assert_eq!(r.json()["deleted"], 1);
    for i in 0..3 {
        let r = http.get(&c.url(i, ROUTE)).await.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["ok"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_on_revision() {
    let c = cluster(3).await;
    let http = Http::default();
    let (_, followers) = c.roles(&http).await;
    let f = followers[0];
    let key = "/roo/v1/kv/com.roo.lock";

    let created = http
        .put(&c.url(f, &format!("{key}?prev_rev=0")), "a")
        .await
        .unwrap();
    assert_eq!(created.status, 200);
    let rev = created.json()["rev"].as_u64().unwrap();

    // Creating again fails: the key exists.
    let again = http
        .put(&c.url(f, &format!("{key}?prev_rev=0")), "b")
        .await
        .unwrap();
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["ok"], false);
    // A stale revision fails and leaves the value.
    let stale = http
        .put(
            &c.url(followers[1], &format!("{key}?prev_rev={}", rev - 1)),
            "c",
        )
        .await
        .unwrap();
    assert_eq!(stale.status, 409, "{}", stale.text());
    let r = http.get(&c.url(f, key)).await.unwrap();
    assert_eq!(r.text(), "a");
    assert_eq!(
        r.headers["x-roo-revision"].to_str().unwrap(),
        rev.to_string()
    );

    // The right revision wins, exactly once among concurrent writers.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (http, url) = (http.clone(), c.url(i % 3, &format!("{key}?prev_rev={rev}")));
        tasks.push(tokio::spawn(async move {
            http.put(&url, format!("w{i}")).await.unwrap().status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        5,
        "{statuses:?}"
    );

    // Guarded delete.
    let r = http
        .delete(&c.url(f, &format!("{key}?prev_rev={rev}")))
        .await
        .unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(http.get(&c.url(f, key)).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_delivers_every_change_in_order() {
    let c = cluster(3).await;
    let http = Http::default();
    let (leader, followers) = c.roles(&http).await;
    let start = c.nodes[leader].kv.revision();

    // Writers on every node, interleaved, plus keys outside the watched prefix.
    let mut tasks = Vec::new();
    for w in 0..3 {
        let (http, base) = (http.clone(), c.url(w, "/roo/v1/kv/"));
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..20 {
                let r = http
                    .put(&format!("{base}w.{w}.{i}"), format!("{w}-{i}"))
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                revs.push(r.json()["rev"].as_u64().unwrap());
                http.put(&format!("{base}other.{w}.{i}"), "x")
                    .await
                    .unwrap();
            }
            revs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort();
    http.delete(&c.url(leader, "/roo/v1/kv/w.0.0"))
        .await
        .unwrap();

    // The in-process API, from the revision before the writes, on a follower.
    let mut watch = c.nodes[followers[0]].kv.watch("w.", Some(start)).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 61 {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap();
        assert!(ev.key.starts_with("w."), "{ev:?}");
        seen.push(ev);
    }
    let revs: Vec<u64> = seen.iter().map(|e| e.rev).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {revs:?}"
    );
    assert_eq!(revs[..60], acked[..]);
    assert_eq!(seen[60].kind, roo_kv::EventKind::Delete);
    assert_eq!(seen[60].key, "w.0.0");

    // The HTTP stream, on the other follower, from the revision of the 30th write.
    let from = acked[29];
    let url = c.url(followers[1], &format!("/roo/v1/watch/w.?rev={from}"));
    let mut stream = watch_stream(&url).await;
    let mut lines = Vec::new();
    while lines.len() < 31 {
        lines.push(stream.next_line().await);
    }
    let revs: Vec<u64> = lines.iter().map(|l| l["rev"].as_u64().unwrap()).collect();
    assert_eq!(revs[..30], acked[30..]);
    assert_eq!(lines[30]["type"], "delete");
    assert_eq!(lines[0]["type"], "put");

    // Live changes keep coming on the open stream.
    http.put(&c.url(leader, "/roo/v1/kv/w.live"), "now")
        .await
        .unwrap();
    let live = stream.next_line().await;
    assert_eq!(live["key"], "w.live");
    assert_eq!(live["value"], "bm93");
}

/// A reader of a JSON-lines stream.
struct LineStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl LineStream {
    async fn next_line(&mut self) -> serde_json::Value {
        use http_body_util::BodyExt;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("watch line within 10s")
                .expect("stream open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

async fn watch_stream(url: &str) -> LineStream {
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(uri.path_and_query().unwrap().as_str())
        .header("host", uri.authority().unwrap().as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    LineStream {
        body: resp.into_body(),
        buf: Vec::new(),
    }
}

/// Method, path, body, headers, expected status.
type Case<'a> = (&'a str, &'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = cluster(3).await;
    let http = Http::default();
    let (leader, followers) = c.roles(&http).await;
    let f = followers[0];
    assert_eq!(
        http.put(&c.url(f, ROUTE), ORIGINAL).await.unwrap().status,
        200
    );
    let before = http
        .get(&c.url(leader, "/roo/v1/kvs"))
        .await
        .unwrap()
        .json()["results"]
        .clone();

    let long_key = format!("/roo/v1/kv/{}", "k".repeat(1025));
    let ok_key = format!("/roo/v1/kv/{}", "k".repeat(1024));
    let big = vec![b'v'; 1024 * 1024 + 1];
    let route_prev_abc = format!("{ROUTE}?prev_rev=abc");
    let cases: Vec<Case<'_>> = vec![
        ("PUT", long_key.as_str(), b"x".to_vec(), vec![], 400),
        ("GET", long_key.as_str(), vec![], vec![], 400),
        ("PUT", "/roo/v1/kv/bad%ff%fekey", b"x".to_vec(), vec![], 400),
        ("PUT", "/roo/v1/kv/", b"x".to_vec(), vec![], 400),
        ("PUT", "/roo/v1/kv/ctl%00key", b"x".to_vec(), vec![], 400),
        ("PUT", ROUTE, big.clone(), vec![], 413),
        ("PUT", route_prev_abc.as_str(), b"x".to_vec(), vec![], 400),
        (
            "GET",
            "/roo/v1/kv/x?consistency=sometimes",
            vec![],
            vec![],
            400,
        ),
        ("GET", "/roo/v2/kv/x", vec![], vec![], 404),
        ("GET", "/", vec![], vec![], 404),
        ("POST", ROUTE, b"x".to_vec(), vec![], 405),
        ("PUT", "/roo/v1/kvs/com", b"x".to_vec(), vec![], 405),
        ("DELETE", "/roo/v1/cluster", vec![], vec![], 405),
        ("GET", "/roo/v1/raft/append", vec![], vec![], 405),
        ("POST", "/roo/v1/raft/nope", b"{}".to_vec(), vec![], 404),
        // Raft RPCs: no secret, wrong secret, malformed JSON.
        ("POST", "/roo/v1/raft/append", b"{}".to_vec(), vec![], 401),
        (
            "POST",
            "/roo/v1/raft/vote",
            b"{}".to_vec(),
            vec![("x-roo-cluster-secret", "wrong")],
            401,
        ),
        (
            "POST",
            "/roo/v1/raft/append",
            b"{not json".to_vec(),
            vec![("x-roo-cluster-secret", SECRET)],
            400,
        ),
        (
            "POST",
            "/roo/v1/raft/vote",
            br#"{"vote":1}"#.to_vec(),
            vec![("x-roo-cluster-secret", SECRET)],
            400,
        ),
        (
            "POST",
            "/roo/v1/raft/write",
            br#"[{"ops":[{"op":"put","key":"","value":""}]}]"#.to_vec(),
            vec![("x-roo-cluster-secret", SECRET)],
            200,
        ),
        (
            "POST",
            "/roo/v1/cluster/join",
            br#"{"node_id":9,"addr":"127.0.0.9:1"}"#.to_vec(),
            vec![],
            401,
        ),
        (
            "POST",
            "/roo/v1/cluster/join",
            b"garbage".to_vec(),
            vec![("x-roo-cluster-secret", SECRET)],
            400,
        ),
        (
            "DELETE",
            "/roo/v1/cluster/members/abc",
            vec![],
            vec![("x-roo-cluster-secret", SECRET)],
            400,
        ),
        (
            "DELETE",
            "/roo/v1/cluster/members/12345",
            vec![],
            vec![("x-roo-cluster-secret", SECRET)],
            400,
        ),
        ("GET", "/roo/v1/watch/x?rev=notanumber", vec![], vec![], 400),
    ];
    for (method, path, body, headers, want) in cases {
        for node in [leader, f] {
            let r = http
                .send(method, &c.url(node, path), &headers, body.clone())
                .await
                .unwrap();
            assert_eq!(
                r.status,
                want,
                "{method} {path} on node {node}: {}",
                r.text()
            );
            if want != 200 {
                let v = r.json();
                assert_eq!(v["ok"], false, "{method} {path}");
                assert!(
                    v["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{method} {path}"
                );
            }
        }
    }
    // Over the limit from a slow client, announced or chunked: the body is read (and dropped)
    // before the 413, so the client gets the answer and the connection stays usable.
    for chunked in [false, true] {
        assert_eq!(oversized_put(&c.addrs[f], chunked).await, (413, 200));
    }
    // The leader refuses an invalid forwarded write inside a 200 RPC answer, applying nothing.
    let r = http
        .send(
            "POST",
            &c.url(leader, "/roo/v1/raft/write"),
            &[("x-roo-cluster-secret", SECRET)],
            r#"[{"ops":[{"op":"put","key":"","value":""}]}]"#,
        )
        .await
        .unwrap();
    assert!(r.json()["Err"].is_object(), "{}", r.text());
    // A 1 KiB key is fine.
    assert_eq!(
        http.put(&c.url(f, &ok_key), "edge").await.unwrap().status,
        200
    );
    http.delete(&c.url(f, &ok_key)).await.unwrap();

    let after = http.get(&c.url(f, "/roo/v1/kvs")).await.unwrap().json()["results"].clone();
    assert_eq!(before, after, "bad input changed stored data");
    assert_eq!(
        http.get(&c.url(leader, ROUTE)).await.unwrap().text(),
        ORIGINAL
    );
    assert_eq!(
        http.cluster(&c.addrs[leader]).await.unwrap()["voters"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// Sends a PUT of 1 MiB + 1 byte to the route (with Content-Length, or chunked), pausing half
/// way as a slow client would, then a GET on the same connection: the two statuses. A server that
/// answers 413 before the body is in and closes leaves the client writing into a closed socket.
async fn oversized_put(addr: &str, chunked: bool) -> (u16, u16) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", 16 * 64 * 1024 + 1)
    };
    let head = format!("PUT {ROUTE} HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n");
    write.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'v'; 64 * 1024];
    for i in 0..16 {
        if i == 8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if chunked {
            write.write_all(b"10000\r\n").await.unwrap();
        }
        write.write_all(&chunk).await.unwrap();
        if chunked {
            write.write_all(b"\r\n").await.unwrap();
        }
    }
    let tail: &[u8] = if chunked {
        b"1\r\nv\r\n0\r\n\r\n"
    } else {
        b"v"
    };
    write.write_all(tail).await.unwrap();
    write
        .write_all(b"GET /roo/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        read.read_line(&mut line).await.unwrap();
        statuses.push(
            line.split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        );
        let mut len = 0;
        loop {
            let mut header = String::new();
            read.read_line(&mut header).await.unwrap();
            if header == "\r\n" || header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; len];
        read.read_exact(&mut body).await.unwrap();
    }
    (statuses[0], statuses[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_quorum_gets_503_not_a_hang() {
    let mut c = cluster(3).await;
    let http = Http::default();
    let (_, followers) = c.roles(&http).await;
    assert_eq!(
        http.put(&c.url(followers[0], ROUTE), KEPT)
            .await
            .unwrap()
            .status,
        200
    );
    // Stop two nodes; the one left has no quorum.
    let keep = followers[0];
    let mut others: Vec<Node> = Vec::new();
    for i in (0..3).rev() {
        if i != keep {
            others.push(c.nodes.remove(i));
        }
    }
    let keep_url = |p: &str| format!("http://{}{}", c.addrs[keep], p);
    for n in others {
        n.stop().await;
    }
    for (method, path) in [
        ("PUT", ROUTE),
        ("GET", ROUTE),
        ("GET", "/roo/v1/kvs"),
        ("DELETE", ROUTE),
    ] {
        let started = Instant::now();
        let r = http
            .send(method, &keep_url(path), &[], "http://new.test:80")
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{method} {path}: {}", r.text());
        assert!(r.headers.contains_key("retry-after"), "{method} {path}");
        assert_eq!(r.json()["ok"], false);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{method} {path} took {:?}",
            started.elapsed()
        );
    }
    // The local copy still answers stale reads, unchanged.
    let r = http
        .get(&keep_url(&format!("{ROUTE}?consistency=stale")))
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, KEPT.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_member_leaves_and_the_rest_keep_working() {
    let mut c = cluster(3).await;
    let http = Http::default();
    let (leader, followers) = c.roles(&http).await;
    let gone = followers[1];
    let gone_id = c.nodes[gone].kv.node_id();
    let url = c.url(followers[0], &format!("/roo/v1/cluster/members/{gone_id}"));

    // Without the cluster secret: refused, nothing changes.
    let r = http.delete(&url).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        http.cluster(&c.addrs[leader]).await.unwrap()["voters"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Through a follower, with the secret.
    let r = http
        .send("DELETE", &url, &[("x-roo-cluster-secret", SECRET)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let rest = vec![c.addrs[leader].clone(), c.addrs[followers[0]].clone()];
    wait_for_cluster(&http, &rest, 2).await;
    let status = http.cluster(&rest[0]).await.unwrap();
    assert!(
        status["members"].get(gone_id.to_string()).is_none(),
        "{status}"
    );
    c.nodes.remove(gone).stop().await;

    // Two of two voters: writes still commit.
    let r = http
        .put(
            &format!("http://{}{ROUTE}", rest[1]),
            "http://after-removal.test:80",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http
        .get(&format!("http://{}{ROUTE}", rest[0]))
        .await
        .unwrap();
    assert_eq!(r.text(), "http://after-removal.test:80");
    // The last voter cannot be removed.
    let leader_id = c
        .nodes
        .iter()
        .find(|n| n.api_addr.to_string() == rest[0])
        .unwrap()
        .kv
        .node_id();
    let follower_id = c
        .nodes
        .iter()
        .find(|n| n.api_addr.to_string() == rest[1])
        .unwrap()
        .kv
        .node_id();
    let r = http
        .send(
            "DELETE",
            &format!("http://{}/roo/v1/cluster/members/{follower_id}", rest[0]),
            &[("x-roo-cluster-secret", SECRET)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http
        .send(
            "DELETE",
            &format!("http://{}/roo/v1/cluster/members/{leader_id}", rest[0]),
            &[("x-roo-cluster-secret", SECRET)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
}
