//! The activity stream over the API: each route write makes one event, with its kind, source and
//! values; `since` and `type` select; the leader keeps the stream to its bound.

mod common;

use std::time::Duration;

use common::{wait_for, Http};
use serde_json::Value;

async fn events(http: &Http, api: &str, query: &str) -> Vec<Value> {
    let r = http
        .get(&format!("http://{api}/roo/v1/events{query}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["events"].as_array().unwrap().clone()
}

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

    let all = events(&http, &api, "").await;
    let kinds: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["route.added", "route.changed", "route.removed"],
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
    // The event's id is the revision of the write it tells of.
    let history = http
        .get(&format!("http://{api}/roo/v1/routes/ev.test:http/history"))
        .await
        .unwrap()
        .json();
    assert_eq!(history["history"][0]["rev"], all[2]["id"]);

    let later = events(&http, &api, &format!("?since={}", ids[0])).await;
    assert_eq!(later, all[1..]);
    let removed = events(&http, &api, "?type=route.rem").await;
    assert_eq!(removed, all[2..]);
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
