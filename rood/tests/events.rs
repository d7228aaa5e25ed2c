//! The activity stream over the API: each route write makes one event, with its kind, source and
//! values; `since` and `type` select; the leader keeps the stream to its bounds of count and age.

mod common;

use std::time::Duration;

use common::{events, wait_for, Http};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_route_write_makes_one_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    let key = format!("http://{api}/roo/v1/kv/com.roo.host:ev.test:http");
    let v2 = r#"{"backends":[{"name":"v2","url":"http://127.0.0.1:10"}]}"#;
    assert_eq!(
        http.put(&key, "http://127.0.0.1:9").await.unwrap().status,
        200
    );
    assert_eq!(http.put(&key, v2).await.unwrap().status, 200);
    // Refused: no event.
    assert_eq!(http.put(&key, "ftp://x").await.unwrap().status, 400);
    assert_eq!(http.delete(&key).await.unwrap().status, 200);
    // Nothing to remove: no event. Back again: added, as new.
    assert_eq!(http.delete(&key).await.unwrap().status, 200);
    assert_eq!(http.put(&key, v2).await.unwrap().status, 200);

    let all = events(&http, &api, "?type=route.").await;
    let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "route.added",
            "route.changed",
            "route.removed",
            "route.added"
        ],
        "{all:?}"
    );
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for e in &all {
        assert_eq!(e["subject"], "ev.test:http");
        assert_eq!(e["source"], "api");
        let time = e["time"].as_str().unwrap();
        assert!(time.starts_with("20") && time.ends_with('Z'), "{time}");
    }
    let name = |v: &Value| v["backends"][0]["name"].clone();
    assert!(all[0]["detail"]["old"].is_null());
    assert_eq!(name(&all[0]["detail"]["new"]), "default");
    assert_eq!(name(&all[1]["detail"]["old"]), "default");
    assert_eq!(name(&all[1]["detail"]["new"]), "v2");
    assert_eq!(name(&all[2]["detail"]["old"]), "v2");
    assert!(all[2]["detail"]["new"].is_null());
    assert!(all[3]["detail"]["old"].is_null());
    assert_eq!(name(&all[3]["detail"]["new"]), "v2");
    // Stored, an event names the values by revision; the answer reads them from the history.
    assert!(all[0]["detail"].get("old_rev").is_none(), "{all:?}");
    assert_eq!(all[1]["detail"]["old_rev"], all[0]["id"]);
    assert_eq!(all[2]["detail"]["old_rev"], all[1]["id"]);
    assert!(all[3]["detail"].get("old_rev").is_none(), "{all:?}");
    // The event's id is the revision of the write it tells of.
    let history = http
        .get(&format!("http://{api}/roo/v1/routes/ev.test:http/history"))
        .await
        .unwrap()
        .json();
    assert_eq!(history["history"][0]["rev"], all[3]["id"]);

    let later = events(&http, &api, &format!("?since={}&type=route.", ids[0])).await;
    assert_eq!(later, all[1..]);
    let removed = events(&http, &api, "?type=route.rem").await;
    assert_eq!(removed, all[2..3]);
    let r = http
        .get(&format!("http://{api}/roo/v1/events?since=soon"))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["ok"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_keeps_the_stream_to_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &["--events-kept", "10"]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    for i in 0..25 {
        let key = format!("http://{api}/roo/v1/kv/com.roo.host:h{i:02}.test:http");
        assert_eq!(
            http.put(&key, "http://127.0.0.1:9").await.unwrap().status,
            200
        );
    }
    let kept = wait_for("the stream trimmed", Duration::from_secs(30), || async {
        let all = events(&http, &api, "").await;
        (all.len() == 10).then_some(all)
    })
    .await;
    // The newest stay.
    let subjects: Vec<&str> = kept
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    let newest: Vec<String> = (15..25).map(|i| format!("h{i:02}.test:http")).collect();
    assert_eq!(subjects, newest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_past_the_age_bound_leave_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &["--events-max-age-s", "3"]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    let route = format!("http://{api}/roo/v1/routes/age.test:http");
    let key = format!("http://{api}/roo/v1/kv/com.roo.host:age.test:http");
    assert_eq!(
        http.put(&key, "http://127.0.0.1:9").await.unwrap().status,
        200
    );
    // An event of a route's history, and one of an event key.
    let r = http.send("POST", &format!("{route}/freeze"), &[], "").await;
    assert_eq!(r.unwrap().status, 200);
    let listed = events(&http, &api, "?type=route.").await;
    let kinds: Vec<&str> = listed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["route.added", "route.frozen"]);
    // Both leave the stream as they age; the leader deletes the event keys (the cluster's own
    // event, its leader's, among them).
    wait_for("the events to age out", Duration::from_secs(30), || async {
        let keys = http
            .get(&format!("http://{api}/roo/v1/kvs/com.roo.event:"))
            .await
            .ok()?
            .json();
        let stored = keys["results"].as_object().map_or(0, |k| k.len());
        (events(&http, &api, "").await.is_empty() && stored == 0).then_some(())
    })
    .await;
    // The route's history stays: it is the route's, not the stream's.
    let history = http.get(&format!("{route}/history")).await.unwrap().json();
    assert_eq!(
        history["history"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    // A new event is in the stream again.
    let r = http
        .send("POST", &format!("{route}/unfreeze"), &[], "")
        .await;
    assert_eq!(r.unwrap().status, 200);
    let listed = events(&http, &api, "").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["type"], "route.unfrozen");
}

/// An SSE reader over a raw connection: what it has read so far.
struct Sse {
    stream: tokio::net::TcpStream,
    seen: String,
}

impl Sse {
    async fn open(api: &str, query: &str, headers: &str) -> Sse {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
        let req = format!(
            "GET /roo/v1/events{query} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n{headers}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut sse = Sse {
            stream,
            seen: String::new(),
        };
        sse.until("\r\n\r\n").await;
        assert!(sse.seen.starts_with("HTTP/1.1 200"), "{}", sse.seen);
        assert!(
            sse.seen
                .to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{}",
            sse.seen
        );
        sse
    }

    /// Reads until `needle` has come, for 10 s at most.
    async fn until(&mut self, needle: &str) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.seen.contains(needle) {
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in 10 s; got {:?}", self.seen))
                .unwrap();
            assert!(n > 0, "closed; got {:?}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_sent_events_stream_live_and_resume_after_the_last_id() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    let key = |h: &str| format!("http://{api}/roo/v1/kv/com.roo.host:{h}.test:http");
    assert_eq!(
        http.put(&key("old"), "http://127.0.0.1:9")
            .await
            .unwrap()
            .status,
        200
    );
    let mut live = Sse::open(&api, "?type=route.", "").await;
    // What was stored comes first.
    live.until("old.test:http").await;
    assert!(live.seen.contains("event: route.added"), "{}", live.seen);
    // Then what is written while the stream is open.
    assert_eq!(
        http.put(&key("new"), "http://127.0.0.1:9")
            .await
            .unwrap()
            .status,
        200
    );
    live.until("new.test:http").await;
    let all = events(&http, &api, "?type=route.").await;
    let new = &all[1];
    assert!(
        live.seen.contains(&format!("id: {}\n", new["id"])),
        "{}",
        live.seen
    );
    let data = live
        .seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(data, all, "the stream's events are the list's");
    // A client that reconnects with the last id it saw gets only what came after.
    let last = format!("Last-Event-ID: {}\r\n", all[0]["id"]);
    let mut again = Sse::open(&api, "", &last).await;
    again.until("new.test:http").await;
    assert!(!again.seen.contains("old.test:http"), "{}", again.seen);
    // A type filter leaves other events out, live too.
    assert_eq!(http.delete(&key("new")).await.unwrap().status, 200);
    let mut removals = Sse::open(&api, "?type=route.removed", "").await;
    removals.until("event: route.removed").await;
    assert!(!removals.seen.contains("route.added"), "{}", removals.seen);
    let bad = Sse::open_status(&api, "", "Last-Event-ID: yesterday\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
}

impl Sse {
    /// The head of an answer that is not a stream.
    async fn open_status(api: &str, query: &str, headers: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
        let req = format!(
            "GET /roo/v1/events{query} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\nConnection: close\r\n{headers}\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_step_is_one_event_with_an_id_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    let route = r#"{"backends":[{"name":"v1","url":"http://127.0.0.1:9","weight":100},{"name":"v2","url":"http://127.0.0.1:10","weight":0}]}"#;
    let key = format!("http://{api}/roo/v1/kv/com.roo.host:ro.test:http");
    assert_eq!(http.put(&key, route).await.unwrap().status, 200);
    let mut live = Sse::open(&api, "", "").await;
    live.until("event: route.added").await;
    // Starting sets the first weight: the route and the rollout change in one request.
    let plan = r#"{"canary":"v2","steps":[10,50],"interval_ms":60000}"#;
    let r = http
        .put(&format!("http://{api}/roo/v1/rollouts/ro.test:http"), plan)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    live.until("event: rollout.started").await;
    let all = events(&http, &api, "").await;
    let about: Vec<&Value> = all
        .iter()
        .filter(|e| e["subject"] == "ro.test:http")
        .collect();
    let kinds: Vec<&str> = about.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["route.added", "rollout.started"]);
    assert_eq!(about[1]["detail"]["weight"], 10);
    // Ids name one event each, for `since`, SSE's Last-Event-ID and webhook deliveries.
    let mut ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "{all:?}");
    let streamed: Vec<Value> = live
        .seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(streamed, all);
    // The route's history has the change, by whoever started the rollout.
    let history = http
        .get(&format!("http://{api}/roo/v1/routes/ro.test:http/history"))
        .await
        .unwrap()
        .json();
    let record = &history["history"][0];
    assert_eq!(record["rev"], about[1]["id"], "{history}");
    assert_eq!(record["source"], about[1]["source"]);
    assert_eq!(record["value"]["backends"][1]["weight"], 10);
}
