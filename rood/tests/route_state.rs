//! Route state over the API: freeze holds every change but a forced one, rollback restores an
//! earlier value as a new revision, and each tells the activity stream.

mod common;

use common::Http;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn freeze_holds_changes_and_rollback_restores_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    let name = "app.test:http";
    let kv = format!("http://{api}/roo/v1/kv/com.roo.host:{name}");
    let route = |action: &str| format!("http://{api}/roo/v1/routes/{name}/{action}");
    let value = || async { http.get(&kv).await.unwrap().text() };
    for v in ["http://127.0.0.1:1", "http://127.0.0.1:2"] {
        assert_eq!(http.put(&kv, v).await.unwrap().status, 200);
    }
    let r = http.send("POST", &route("freeze"), &[], "").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        common::listed_route(&http, &api, name).await["state"],
        "frozen"
    );
    // Frozen: refused with the reason, nothing changed; forced, made.
    let r = http.put(&kv, "http://127.0.0.1:3").await.unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["ok"], false);
    assert!(
        r.json()["error"].as_str().unwrap().contains("frozen"),
        "{}",
        r.text()
    );
    assert_eq!(http.delete(&kv).await.unwrap().status, 409);
    assert_eq!(value().await, "http://127.0.0.1:2");
    let forced = format!("{kv}?force=true");
    assert_eq!(
        http.put(&forced, "http://127.0.0.1:3")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(value().await, "http://127.0.0.1:3");
    let r = http
        .send("POST", &route("rollback"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 409, "a rollback is a change too");
    // Freezing twice changes nothing; unfreezing frees it.
    let again = http
        .send("POST", &route("freeze"), &[], "")
        .await
        .unwrap()
        .json();
    assert_eq!(again["changed"], false);
    let r = http
        .send("POST", &route("unfreeze"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(common::listed_route(&http, &api, name).await["state"], "ok");

    // Rollback: by default the value before the current one, as a new revision.
    let history = http.get(&route("history")).await.unwrap().json()["history"].clone();
    let revs: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["rev"].as_u64().unwrap())
        .collect();
    assert_eq!(revs.len(), 3, "{history}");
    let r = http
        .send("POST", &route("rollback"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["restored"], revs[1]);
    assert_eq!(
        http.get(&kv).await.unwrap().json()["backends"][0]["url"],
        "http://127.0.0.1:2"
    );
    let listed = common::listed_route(&http, &api, name).await;
    assert_eq!(listed["state"], "rolled_back");
    assert!(listed["rev"].as_u64().unwrap() > revs[0]);
    // To a named revision.
    let body = format!(r#"{{"rev":{}}}"#, revs[2]);
    let r = http
        .send("POST", &route("rollback"), &[], body)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        http.get(&kv).await.unwrap().json()["backends"][0]["url"],
        "http://127.0.0.1:1"
    );
    let newest = &http.get(&route("history")).await.unwrap().json()["history"][0];
    assert_eq!(newest["rollback_of"], revs[2]);
    // A plain change ends the rolled-back state.
    assert_eq!(
        http.put(&kv, "http://127.0.0.1:4").await.unwrap().status,
        200
    );
    assert_eq!(common::listed_route(&http, &api, name).await["state"], "ok");

    // Bad requests change nothing.
    for (path, body, status) in [
        (route("rollback"), r#"{"rev":1}"#, 400),
        (route("rollback"), r#"{"rev":"x"}"#, 400),
        (route("rollback"), "not json", 400),
        (
            format!("http://{api}/roo/v1/routes/none.test:http/freeze"),
            "",
            404,
        ),
        (
            format!("http://{api}/roo/v1/routes/app.test:ftp/freeze"),
            "",
            400,
        ),
        (route("thaw"), "", 404),
    ] {
        let r = http
            .send("POST", &path, &[], body.to_string())
            .await
            .unwrap();
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        assert_eq!(r.json()["ok"], false);
    }
    assert_eq!(http.get(&route("freeze")).await.unwrap().status, 405);
    assert_eq!(value().await, "http://127.0.0.1:4");

    // The stream: frozen and unfrozen once each, both rollbacks, the forced change.
    let events = http
        .get(&format!("http://{api}/roo/v1/events?type=route."))
        .await
        .unwrap()
        .json()["events"]
        .clone();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "route.added",
            "route.changed",
            "route.frozen",
            "route.changed",
            "route.unfrozen",
            "route.rolled_back",
            "route.rolled_back",
            "route.changed"
        ]
    );
    assert_eq!(events[5]["detail"]["rev"], revs[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_state_and_events_survive_a_restart_of_every_node() {
    let dir = tempfile::tempdir().unwrap();
    // Snapshots every 20 entries: what comes back is read from snapshots, not only the log.
    let mut procs = common::process_cluster(dir.path(), 3, &["--snapshot-every", "20"]).await;
    let http = Http::default();
    let name = "kept.test:http";
    let api = procs[0].addr.clone();
    let kv = format!("http://{api}/roo/v1/kv/com.roo.host:{name}");
    for i in 1..=5 {
        let r = http
            .put(&kv, format!("http://127.0.0.1:{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for i in 0..40 {
        let other = format!("http://{api}/roo/v1/kv/filler{i}");
        assert_eq!(http.put(&other, "x").await.unwrap().status, 200);
    }
    let route = |api: &str, action: &str| format!("http://{api}/roo/v1/routes/{name}/{action}");
    let body = || async {
        let h = http.get(&route(&api, "history")).await.unwrap().json();
        h["history"][3]["rev"].to_string()
    };
    let rollback = format!(r#"{{"rev":{}}}"#, body().await);
    let r = http
        .send("POST", &route(&api, "rollback"), &[], rollback)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http
        .send("POST", &route(&api, "freeze"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let history = http.get(&route(&api, "history")).await.unwrap().json();
    assert_eq!(history["history"].as_array().unwrap().len(), 6, "{history}");
    let events_url = |api: &str| format!("http://{api}/roo/v1/events?type=route.");
    let events = http.get(&events_url(&api)).await.unwrap().json();
    assert_eq!(events["events"].as_array().unwrap().len(), 7, "{events}");

    for p in &procs {
        common::wait_for("a snapshot", std::time::Duration::from_secs(20), || async {
            let status = http.cluster(&p.addr).await.ok()?;
            (status["snapshot_index"].as_u64()? > 0).then_some(())
        })
        .await;
    }
    for p in procs.iter_mut() {
        assert_eq!(p.terminate(std::time::Duration::from_secs(10)), Some(0));
    }
    for p in procs.iter_mut() {
        p.restart();
    }
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    common::wait_for_cluster(&http, &addrs, 3).await;
    for p in &procs {
        let again = common::wait_for(
            "the history after the restart",
            std::time::Duration::from_secs(20),
            || async {
                let r = http.get(&route(&p.addr, "history")).await.ok()?;
                (r.status == 200).then(|| r.json())
            },
        )
        .await;
        assert_eq!(again, history, "{}", p.addr);
        let listed = common::listed_route(&http, &p.addr, name).await;
        assert_eq!(listed["state"], "frozen", "{listed}");
        assert_eq!(http.get(&events_url(&p.addr)).await.unwrap().json(), events);
    }
}
