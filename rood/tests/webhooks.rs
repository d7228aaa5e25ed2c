//! Webhooks over sockets: a receiver started here checks each delivery's signature (HMAC-SHA256
//! computed here, not by roo's code); deliveries come in the stream's order, each event once;
//! a receiver that is down gets every event afterwards, across a leader kill too; the state
//! shows in the API and the metrics; secrets stay with the admin token.

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{events, wait_for, Http};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SECRET: &str = "s3cret-for-the-test";

/// HMAC-SHA256 (RFC 2104), as a receiver would check it.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// One delivery as received.
#[derive(Debug, Clone)]
struct Delivery {
    event: String,
    id: u64,
    signed: bool,
    body: Value,
}

/// A webhook receiver on loopback: answers with `status` (200 unless set), keeps what it got
/// while answering 2xx.
#[derive(Clone)]
struct Receiver {
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Delivery>>>,
    attempts: Arc<Mutex<u64>>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let r = Receiver {
            status: Arc::new(AtomicU16::new(200)),
            got: Arc::default(),
            attempts: Arc::default(),
        };
        let keep = r.clone();
        let addr = common::http_server(move |req: http::Request<hyper::body::Incoming>| {
            let r = keep.clone();
            async move {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let (event, id, signature) = (
                    header("x-roo-event"),
                    header("x-roo-delivery"),
                    header("x-roo-signature"),
                );
                let body = req.into_body().collect().await?.to_bytes();
                *r.attempts.lock().unwrap() += 1;
                let status = r.status.load(Ordering::SeqCst);
                if (200..300).contains(&status) {
                    let expected = format!("sha256={}", hmac_sha256(SECRET.as_bytes(), &body));
                    r.got.lock().unwrap().push(Delivery {
                        event,
                        id: id.parse().unwrap_or(0),
                        signed: signature == expected,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                }
                let mut rsp = http::Response::new(Full::new(Bytes::new()));
                *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, hyper::Error>(rsp)
            }
        })
        .await;
        (r, format!("http://{addr}/hook"))
    }

    fn got(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until it has `n` deliveries.
    async fn wait(&self, n: usize) -> Vec<Delivery> {
        wait_for(
            &format!("{n} deliveries"),
            Duration::from_secs(60),
            || async {
                let got = self.got();
                (got.len() >= n).then_some(got)
            },
        )
        .await
    }
}

async fn put(http: &Http, api: &str, key: &str, value: &str) -> common::Reply {
    http.put(&format!("http://{api}/roo/v1/kv/{key}"), value.to_string())
        .await
        .unwrap()
}

async fn webhook_state(http: &Http, api: &str, name: &str) -> Value {
    let all = http
        .get(&format!("http://{api}/roo/v1/webhooks"))
        .await
        .unwrap()
        .json();
    all["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_writes_are_delivered_signed_in_order_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    let (all, all_url) = Receiver::start().await;
    let (removals, removals_url) = Receiver::start().await;
    let (chat, chat_url) = Receiver::start().await;
    // Before the webhooks: not delivered to them.
    assert_eq!(
        put(
            &http,
            &api,
            "com.roo.host:before.test:http",
            "http://127.0.0.1:9"
        )
        .await
        .status,
        200
    );

    let hook = |url: &str, events: &str| {
        format!(r#"{{"url":"{url}","events":{events},"secret":"{SECRET}"}}"#)
    };
    assert_eq!(
        put(&http, &api, "com.roo.webhook:all", &hook(&all_url, "[]"))
            .await
            .status,
        200
    );
    assert_eq!(
        put(
            &http,
            &api,
            "com.roo.webhook:removals",
            &hook(&removals_url, r#"["route.removed"]"#)
        )
        .await
        .status,
        200
    );
    let slack = format!(r#"{{"url":"{chat_url}","events":["route."],"format":"slack"}}"#);
    assert_eq!(
        put(&http, &api, "com.roo.webhook:chat", &slack)
            .await
            .status,
        200
    );

    let key = "com.roo.host:hook.test:http";
    assert_eq!(
        put(&http, &api, key, "http://127.0.0.1:9").await.status,
        200
    );
    assert_eq!(
        put(&http, &api, key, "http://127.0.0.1:10").await.status,
        200
    );
    assert_eq!(
        http.delete(&format!("http://{api}/roo/v1/kv/{key}"))
            .await
            .unwrap()
            .status,
        200
    );

    let got = all.wait(3).await;
    let stream = events(&http, &api, "?type=route.").await;
    let ids: Vec<u64> = stream[1..]
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), ids, "{got:?}");
    let kinds: Vec<&str> = got.iter().map(|d| d.event.as_str()).collect();
    assert_eq!(kinds, ["route.added", "route.changed", "route.removed"]);
    for (d, e) in got.iter().zip(&stream[1..]) {
        assert!(d.signed, "bad signature: {d:?}");
        assert_eq!(&d.body, e, "the body is the event");
    }
    let removed = removals.wait(1).await;
    assert_eq!(removed[0].event, "route.removed");
    assert_eq!(removed[0].id, ids[2]);
    let lines = chat.wait(3).await;
    let text = lines[2].body["text"].as_str().unwrap();
    assert!(
        text.contains("route.removed") && text.contains("hook.test:http"),
        "{text}"
    );
    assert!(!lines[2].signed, "no secret, no signature");

    // Each delivered once, and the state says so.
    let state = wait_for("the state to catch up", Duration::from_secs(20), || async {
        let s = webhook_state(&http, &api, "all").await;
        (s["delivered"] == 3 && s["backlog"] == 0).then_some(s)
    })
    .await;
    assert_eq!(state["last_status"], 200);
    assert_eq!(state["done"], ids[2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(all.got().len(), 3);
    assert_eq!(removals.got().len(), 1);
}

const ADMIN: &str = "admin-token-0123456789";
const READ: &str = "read-token-0123456789";

/// `method url` with `token`.
async fn with_token(token: Option<&str>, method: &str, url: &str, body: &str) -> common::Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    Http::default()
        .send(method, url, &headers, body.to_string())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_webhooks_are_refused_and_secrets_need_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(
        dir.path(),
        &["--api-token", ADMIN, "--api-read-token", READ],
    )
    .await;
    let api = node.api_addr.to_string();
    let url = format!("http://{api}/roo/v1/kv/com.roo.webhook:w");
    let good = format!(r#"{{"url":"http://127.0.0.1:9/x","secret":"{SECRET}"}}"#);
    assert_eq!(
        with_token(Some(ADMIN), "PUT", &url, &good).await.status,
        200
    );
    for (bad, says) in [
        (r#"{"url":"ftp://127.0.0.1/x"}"#, "not http:// or https://"),
        (r#"{"url":"file:///etc/passwd"}"#, "url"),
        (r#"{"url":"http://127.0.0.1:9/x","secret":""}"#, "secret"),
        (
            r#"{"url":"http://127.0.0.1:9/x","events":"route."}"#,
            "events",
        ),
        (r#"{"url":"http://127.0.0.1:9/x","format":"irc"}"#, "format"),
        (r#"{"url":"http://127.0.0.1:9/x","colour":"red"}"#, "colour"),
        ("not json", "expected"),
    ] {
        let r = with_token(Some(ADMIN), "PUT", &url, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{bad}: {error}");
        assert_eq!(r.json()["ok"], false);
    }
    // Kept as it was; the secret only for the admin token.
    let stored = with_token(Some(ADMIN), "GET", &url, "").await.json();
    assert_eq!(stored["secret"], SECRET);
    let seen = with_token(Some(READ), "GET", &url, "").await.json();
    assert_eq!(seen["url"], "http://127.0.0.1:9/x");
    assert!(
        seen["secret"].as_str().unwrap().starts_with("redacted"),
        "{seen}"
    );
    assert_eq!(with_token(None, "GET", &url, "").await.status, 401);
    let scan_url = format!("http://{api}/roo/v1/kvs/com.roo.webhook");
    let scan = with_token(Some(READ), "GET", &scan_url, "").await.text();
    assert!(scan.contains("com.roo.webhook:w"), "{scan}");
    assert!(!scan.contains(&base64_of(SECRET)), "{scan}");
    let listed = with_token(None, "GET", &format!("http://{api}/roo/v1/webhooks"), "")
        .await
        .text();
    assert!(
        listed.contains("127.0.0.1:9/x") && !listed.contains(SECRET),
        "{listed}"
    );
    // The read token writes no webhook.
    assert_eq!(with_token(Some(READ), "PUT", &url, &good).await.status, 403);
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_was_down_gets_every_event_in_order_and_the_metrics_show_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    let (down, down_url) = Receiver::start().await;
    let (up, up_url) = Receiver::start().await;
    down.status.store(503, Ordering::SeqCst);
    let hook = |url: &str| format!(r#"{{"url":"{url}","secret":"{SECRET}"}}"#);
    assert_eq!(
        put(&http, &api, "com.roo.webhook:down", &hook(&down_url))
            .await
            .status,
        200
    );
    assert_eq!(
        put(&http, &api, "com.roo.webhook:up", &hook(&up_url))
            .await
            .status,
        200
    );
    for i in 0..5 {
        let key = format!("com.roo.host:d{i}.test:http");
        assert_eq!(
            put(&http, &api, &key, "http://127.0.0.1:9").await.status,
            200
        );
    }
    // The receiver that is down holds up no other.
    up.wait(5).await;
    let state = wait_for("failures in the state", Duration::from_secs(30), || async {
        let s = webhook_state(&http, &api, "down").await;
        (s["failures"].as_u64() >= Some(2)).then_some(s)
    })
    .await;
    assert_eq!(state["last_status"], 503);
    assert_eq!(state["backlog"], 5);
    assert!(
        state["last_error"].as_str().unwrap().contains("503"),
        "{state}"
    );
    let metrics = http
        .get(&format!("http://{api}/metrics"))
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains(r#"roo_webhook_backlog{webhook="down"} 5"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"roo_webhook_last_status{webhook="down"} 503"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"roo_webhook_delivered_total{webhook="up"} 5"#),
        "{metrics}"
    );

    down.status.store(200, Ordering::SeqCst);
    let got = down.wait(5).await;
    let ids: Vec<u64> = events(&http, &api, "?type=route.")
        .await
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
    assert!(got.iter().all(|d| d.signed));
    assert!(*down.attempts.lock().unwrap() > 5, "retried while down");
    wait_for("the backlog to empty", Duration::from_secs(20), || async {
        let s = webhook_state(&http, &api, "down").await;
        (s["backlog"] == 0 && s["failures"] == 0 && s["last_error"].is_null()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_survive_a_leader_kill_in_order_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = common::process_cluster(dir.path(), 3, &[]).await;
    let http = Http::default();
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let (leader, leader_at) = common::wait_for_leader_in(&http, &addrs, 3).await;
    let (receiver, url) = Receiver::start().await;
    receiver.status.store(503, Ordering::SeqCst);
    let follower = addrs[(leader_at + 1) % 3].clone();
    let hook = format!(r#"{{"url":"{url}","events":["route."],"secret":"{SECRET}"}}"#);
    assert_eq!(
        put(&http, &follower, "com.roo.webhook:ops", &hook)
            .await
            .status,
        200
    );
    for i in 0..6 {
        let key = format!("com.roo.host:k{i}.test:http");
        assert_eq!(
            put(&http, &follower, &key, "http://127.0.0.1:9")
                .await
                .status,
            200
        );
    }
    wait_for("a failed attempt", Duration::from_secs(30), || async {
        let s = webhook_state(&http, &follower, "ops").await;
        (s["failures"].as_u64() >= Some(1)).then_some(())
    })
    .await;

    procs[leader_at].kill();
    receiver.status.store(200, Ordering::SeqCst);
    let got = receiver.wait(6).await;
    let rest: Vec<String> = addrs
        .iter()
        .filter(|a| **a != addrs[leader_at])
        .cloned()
        .collect();
    let new_leader = common::wait_for_cluster(&http, &rest, 3).await;
    assert_ne!(new_leader, leader);
    let ids: Vec<u64> = events(&http, &follower, "?type=route.")
        .await
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(
        got.iter().map(|d| d.id).collect::<Vec<_>>(),
        ids,
        "in order, none twice"
    );
    assert!(got.iter().all(|d| d.signed));

    // The cluster told of it, once: the new leader, the old one unreachable.
    let subject = format!("node {leader}");
    let told = wait_for("node.unreachable", Duration::from_secs(30), || async {
        let e = events(&http, &follower, "?type=node.unreachable").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["subject"], subject);
    assert_eq!(told[0]["source"], "cluster");
    let leaders = events(&http, &follower, "?type=leader.changed").await;
    let new_subject = format!("node {new_leader}");
    let by_new: Vec<&Value> = leaders
        .iter()
        .filter(|e| e["subject"] == new_subject)
        .collect();
    assert_eq!(by_new.len(), 1, "{leaders:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().len(), 6);
}
