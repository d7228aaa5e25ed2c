//! A property over generated and mutated HTTP/1.1 request streams (framings right and wrong,
//! pipelined, bytes flipped, cut or inserted), sent to a node in front of a recording upstream:
//! the upstream never sees more requests than the node answered, and every request the node
//! refused is the last thing on its connection.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that answers `ok` (with its length) once it has a request's whole body, and
/// counts the requests it had whole.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let whole = Arc::new(AtomicUsize::new(0));
    let count = whole.clone();
    let addr = common::http_server(move |req: http::Request<hyper::body::Incoming>| {
        let count = count.clone();
        async move {
            req.into_body().collect().await?;
            count.fetch_add(1, Ordering::SeqCst);
            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"ok"),
            )))
        }
    })
    .await;
    (addr, whole)
}

/// How one generated request frames its body.
#[derive(Debug, Clone)]
enum Framing {
    None,
    Length,
    WrongLength(u8),
    TwoLengths,
    Chunked { size_prefix: &'static str },
    ChunkedAndLength,
    NotChunkedLast,
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::None),
        Just(Framing::Length),
        (0u8..20).prop_map(Framing::WrongLength),
        Just(Framing::TwoLengths),
        prop::sample::select(vec!["", "0000", "+", " ", "0x", "-"])
            .prop_map(|size_prefix| Framing::Chunked { size_prefix }),
        Just(Framing::ChunkedAndLength),
        Just(Framing::NotChunkedLast),
    ]
}

fn one_request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
        prop::sample::select(vec!["/", "/a?b=c", "/%zz", "*", "http://p.test/abs"]),
        prop::sample::select(vec![
            "Host: p.test\r\n",
            "",
            "Host: p.test\r\nHost: q.test\r\n",
            "Host: p.test:80\r\n",
            "Host: p test\r\n",
            "Host: p.test\r\nX-Fold: a\r\n  b\r\n",
            "Host: p.test\r\nX-Nul: a\0b\r\n",
        ]),
        framing(),
        prop::collection::vec(b'a'..=b'z', 0..12),
        any::<bool>(),
    )
        .prop_map(|(method, path, host, framing, body, close)| {
            let mut out = format!("{method} {path} HTTP/1.1\r\n{host}").into_bytes();
            if close {
                out.extend_from_slice(b"Connection: close\r\n");
            }
            let n = body.len();
            let chunk = |prefix: &str| {
                let mut c = format!("{prefix}{n:x}\r\n").into_bytes();
                c.extend_from_slice(&body);
                c.extend_from_slice(b"\r\n0\r\n\r\n");
                c
            };
            let (headers, payload) = match framing {
                Framing::None => (String::new(), Vec::new()),
                Framing::Length => (format!("Content-Length: {n}\r\n"), body.clone()),
                Framing::WrongLength(k) => (format!("Content-Length: {k}\r\n"), body.clone()),
                Framing::TwoLengths => (
                    format!("Content-Length: {n}\r\nContent-Length: {}\r\n", n + 1),
                    body.clone(),
                ),
                Framing::Chunked { size_prefix } => {
                    ("Transfer-Encoding: chunked\r\n".into(), chunk(size_prefix))
                }
                Framing::ChunkedAndLength => (
                    format!("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"),
                    chunk(""),
                ),
                Framing::NotChunkedLast => {
                    ("Transfer-Encoding: chunked, gzip\r\n".into(), chunk(""))
                }
            };
            out.extend_from_slice(headers.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&payload);
            out
        })
}

/// A byte stream: one to three requests back to back, then maybe mutated.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(one_request(), 1..4),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 0..3),
    )
        .prop_map(|(requests, mutations)| {
            let mut bytes = requests.concat();
            for (at, kind, byte) in mutations {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    2 => {
                        bytes.remove(i);
                    }
                    _ => bytes.truncate(i),
                }
            }
            bytes
        })
}

/// The answers in `raw`, in order: each one's status, read by its length (the node's and the
/// upstream's answers all carry one).
fn statuses(mut raw: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = resp.parse(raw) else {
            return out;
        };
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        out.push(resp.code.unwrap_or(0));
        let Some(rest) = raw.get(head + length..) else {
            return out;
        };
        raw = rest;
    }
}

#[test]
fn the_upstream_never_sees_more_than_was_answered_and_refusals_close() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node, upstream, whole) = rt.block_on(async {
        let node = common::node(dir.path(), &[]).await;
        let (upstream, whole) = counting_upstream().await;
        node.kv
            .put(
                "com.roo.host:p.test:http",
                format!("http://{upstream}").into_bytes(),
                None,
            )
            .await
            .unwrap();
        (node, upstream, whole)
    });
    let addr = node.http_addr;
    rt.block_on(common::wait_for(
        "the route",
        Duration::from_secs(5),
        || async {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut got = Vec::new();
            tcp.read_to_end(&mut got).await.ok()?;
            (statuses(&got) == [200]).then_some(())
        },
    ));
    let _ = upstream;
    // Bounded for CI: each case waits at most a short moment for answers that do not come.
    let mut runner = TestRunner::new(Config {
        cases: 96,
        // Shrinking a failure runs many more cases, each up to a silent moment: kept short.
        max_shrink_iters: 200,
        max_shrink_time: 30_000,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&stream(), |bytes| {
        rt.block_on(async {
            let before = whole.load(Ordering::SeqCst);
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&bytes).await.unwrap();
            let mut got = Vec::new();
            // Until the node closes, or stays silent a moment (waiting for bytes that will not
            // come), and no longer than a few seconds or 64 KiB in all.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            let closed = loop {
                let mut buf = [0u8; 8192];
                let wait = deadline.min(tokio::time::Instant::now() + Duration::from_millis(250));
                match tokio::time::timeout_at(wait, tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(n)) if got.len() < 64 * 1024 => got.extend_from_slice(&buf[..n]),
                    Ok(Ok(_)) | Err(_) => break false,
                }
            };
            drop(tcp);
            let answers = statuses(&got);
            let upstream_saw = whole.load(Ordering::SeqCst) - before;
            let shown = String::from_utf8_lossy(&bytes);
            prop_assert!(
                upstream_saw <= answers.len(),
                "the upstream had {upstream_saw} requests, the client {} answers {answers:?} to {shown:?}",
                answers.len()
            );
            // A refusal (not a missing route) ends the connection.
            if let Some(at) = answers.iter().position(|s| *s >= 400 && *s != 404) {
                prop_assert!(
                    at == answers.len() - 1 && closed,
                    "answers {answers:?} (closed: {closed}) to {shown:?}"
                );
            }
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    rt.block_on(node.stop());
}
