//! rood processes on loopback addresses: leader loss, restart and catch-up, joining after the log
//! was purged, kill -9 of the whole cluster during writes, DNS discovery, a wrong cluster secret.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{process_cluster, wait_for, wait_for_cluster, Http, Proc};
use rand::Rng;

/// Finds the process that leads, by asking one that answers.
async fn leader_index(http: &Http, procs: &[Proc]) -> usize {
    let addrs: Vec<String> = procs
        .iter()
        .filter(|p| p.is_running())
        .map(|p| p.addr.clone())
        .collect();
    let leader = wait_for_cluster(http, &addrs, procs.len()).await;
    let status = http.cluster(&addrs[0]).await.unwrap();
    let addr = common::addr_of(&status, leader);
    procs.iter().position(|p| p.addr == addr).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_new_leader_takes_writes_and_old_one_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = process_cluster(dir.path(), 3, &[]).await;
    let http = Http::default();
    let li = leader_index(&http, &procs).await;
    assert_eq!(
        http.put(&procs[li].url("/roo/v1/kv/before"), "1")
            .await
            .unwrap()
            .status,
        200
    );

    procs[li].kill();
    let killed_at = Instant::now();
    let survivor = (li + 1) % 3;
    // A write through a survivor succeeds once a new leader is elected.
    let url = procs[survivor].url("/roo/v1/kv/after");
    wait_for(
        "a write after the leader died",
        Duration::from_secs(20),
        || async {
            let r = http.put(&url, "2").await.ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await;
    eprintln!(
        "new leader took a write {:?} after kill -9",
        killed_at.elapsed()
    );
    let status = http.cluster(&procs[survivor].addr).await.unwrap();
    assert_ne!(
        common::addr_of(&status, status["leader_id"].as_u64().unwrap()),
        procs[li].addr
    );
    for i in 0..50 {
        assert_eq!(
            http.put(&procs[survivor].url(&format!("/roo/v1/kv/during.{i}")), "x")
                .await
                .unwrap()
                .status,
            200
        );
    }

    // The old leader restarts from its data dir and catches up.
    procs[li].restart();
    let url = procs[li].url("/roo/v1/kvs/during.?consistency=stale");
    wait_for(
        "the restarted node to catch up",
        Duration::from_secs(30),
        || async {
            let r = http.get(&url).await.ok()?;
            (r.status == 200 && r.json()["results"].as_object()?.len() == 50).then_some(())
        },
    )
    .await;
    let r = http.get(&procs[li].url("/roo/v1/kv/after")).await.unwrap();
    assert_eq!(r.text(), "2");
    let status = http.cluster(&procs[li].addr).await.unwrap();
    assert_eq!(status["voters"].as_array().unwrap().len(), 3, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_joining_after_purge_gets_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = process_cluster(dir.path(), 1, &["--snapshot-every", "50"]).await;
    let http = Http::default();
    for i in 0..300 {
        let r = http
            .put(
                &procs[0].url(&format!("/roo/v1/kv/k.{i:03}")),
                format!("v{i}"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let status = wait_for("the log to be purged", Duration::from_secs(20), || async {
        let s = http.cluster(&procs[0].addr).await.ok()?;
        (s["purged_index"].as_u64()? > 100).then_some(s)
    })
    .await;
    eprintln!("leader after writes: {status}");

    let port = procs[0].addr.rsplit(':').next().unwrap().to_string();
    let addr = format!("127.0.0.2:{port}");
    let seed = procs[0].addr.clone();
    procs.push(Proc::start(
        &addr,
        &dir.path().join("n2"),
        &["--join", &seed, "--snapshot-every", "50"],
    ));
    wait_for_cluster(&http, &[seed, addr.clone()], 2).await;
    let joined = http.cluster(&addr).await.unwrap();
    assert!(
        joined["snapshot_index"].as_u64().unwrap() > 100,
        "no snapshot installed: {joined}"
    );
    let r = http
        .get(&procs[1].url("/roo/v1/kvs/k.?consistency=stale"))
        .await
        .unwrap();
    let results = r.json()["results"].as_object().unwrap().clone();
    assert_eq!(results.len(), 300);
    assert_eq!(results["k.299"], "djI5OQ==");
    // Its change history starts at the snapshot: a watch from before is refused, clearly.
    let r = http
        .get(&procs[1].url("/roo/v1/watch/k.?rev=1"))
        .await
        .unwrap();
    assert_eq!(r.status, 410, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("compacted"));
    // And it keeps following: a new write reaches it through the log.
    assert_eq!(
        http.put(&procs[0].url("/roo/v1/kv/k.new"), "n")
            .await
            .unwrap()
            .status,
        200
    );
    let r = http.get(&procs[1].url("/roo/v1/kv/k.new")).await.unwrap();
    assert_eq!(r.text(), "n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_everything_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = process_cluster(dir.path(), 3, &["--snapshot-every", "200"]).await;
    let http = Http::default();
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut rng = rand::thread_rng();
    for round in 0..4 {
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        wait_for_cluster(&http, &addrs, 3).await;
        let round_acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..12 {
            let (http, addrs, acked, stop) = (
                http.clone(),
                addrs.clone(),
                round_acked.clone(),
                stop.clone(),
            );
            writers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("r{round}.w{w}.{i}");
                    let value = format!("{key}={}", i * 7);
                    let url = format!("http://{}/roo/v1/kv/{key}", addrs[i % addrs.len()]);
                    if let Ok(r) = http.put(&url, value.clone()).await {
                        if r.status == 200 {
                            acked.lock().unwrap().push((key, value));
                        }
                    }
                    i += 1;
                }
            }));
        }
        let run_for = Duration::from_millis(rng.gen_range(300..1500));
        tokio::time::sleep(run_for).await;
        // Kill all three at once, mid-stream, then let the writers see the failures.
        for p in procs.iter_mut() {
            p.kill();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let new: Vec<(String, String)> = round_acked.lock().unwrap().clone();
        eprintln!(
            "round {round}: {} writes acknowledged in {run_for:?}",
            new.len()
        );
        assert!(
            !new.is_empty(),
            "no write was acknowledged in round {round}"
        );
        acked.extend(new);

        for p in procs.iter_mut() {
            p.restart();
        }
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        wait_for_cluster(&http, &addrs, 3).await;
        // Every acknowledged write of every round is there, on a linearizable read.
        let r = wait_for("a scan after restart", Duration::from_secs(20), || async {
            let r = http
                .get(&procs[round % 3].url("/roo/v1/kvs/r"))
                .await
                .ok()?;
            (r.status == 200).then_some(r)
        })
        .await;
        let results = r.json()["results"].as_object().unwrap().clone();
        use base64::Engine;
        for (key, value) in &acked {
            let got = results.get(key).unwrap_or_else(|| {
                panic!(
                    "acknowledged {key} lost after round {round}\n{}",
                    procs[0].log_tail()
                )
            });
            let got = base64::engine::general_purpose::STANDARD
                .decode(got.as_str().unwrap())
                .unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), *value);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_started_together_with_dns_form_one_cluster() {
    let dns = format!("127.0.0.1:{}", common::free_port("127.0.0.1"));
    let mgmt = format!("127.0.0.1:{}", common::free_port("127.0.0.1"));
    let Some(_srv) = common::challtestsrv(&dns, &mgmt) else {
        return;
    };
    let http = Http::default();
    let port = common::free_port("127.0.0.1");
    let ips = [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
    ];
    let body = serde_json::json!({"host": "tasks.roo_roo.test", "addresses": ips}).to_string();
    wait_for(
        "challtestsrv to take a record",
        Duration::from_secs(10),
        || async {
            let r = http
                .send("POST", &format!("http://{mgmt}/add-a"), &[], body.clone())
                .await
                .ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    // All five at once, in shuffled order.
    let mut order: Vec<usize> = (0..ips.len()).collect();
    use rand::seq::SliceRandom;
    order.shuffle(&mut rand::thread_rng());
    let mut procs = Vec::new();
    for i in order {
        let addr = format!("{}:{port}", ips[i]);
        procs.push(Proc::start(
            &addr,
            &dir.path().join(format!("n{i}")),
            &["--dns", "tasks.roo_roo.test", "--resolver", &dns],
        ));
    }
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let leader = wait_for_cluster(&http, &addrs, ips.len()).await;
    // One cluster: every node lists the same five voters.
    let mut views = Vec::new();
    for a in &addrs {
        let s = http.cluster(a).await.unwrap();
        assert_eq!(s["leader_id"].as_u64(), Some(leader));
        views.push(s["voters"].clone());
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");
    let r = http
        .put(&procs[4].url("/roo/v1/kv/formed"), "yes")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        http.get(&procs[0].url("/roo/v1/kv/formed"))
            .await
            .unwrap()
            .text(),
        "yes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_cluster_secret_cannot_join_or_send_raft_messages() {
    let dir = tempfile::tempdir().unwrap();
    let procs = process_cluster(dir.path(), 1, &[]).await;
    let http = Http::default();
    let port = procs[0].addr.rsplit(':').next().unwrap();
    let intruder_addr = format!("127.0.0.2:{port}");
    let intruder_log = dir.path().join("intruder.log");
    let intruder = std::process::Command::new(env!("CARGO_BIN_EXE_rood"))
        .args(["--api-addr", &intruder_addr, "--join", &procs[0].addr])
        .args(["--http-addr", "127.0.0.2:0", "--https-addr", "127.0.0.2:0"])
        .arg("--data-dir")
        .arg(dir.path().join("intruder"))
        .env("ROO_CLUSTER_SECRET", "not-the-secret")
        .stderr(std::fs::File::create(&intruder_log).unwrap())
        .spawn()
        .unwrap();
    let _intruder = common::KillOnDrop(intruder);
    // It tries, twice at least, and is refused each time.
    wait_for(
        "two refused joins in the intruder's log",
        Duration::from_secs(15),
        || async {
            let text = std::fs::read_to_string(&intruder_log).ok()?;
            (text.matches("join failed").count() >= 2 && text.contains("401 Unauthorized"))
                .then_some(())
        },
    )
    .await;
    let s = http.cluster(&intruder_addr).await.unwrap();
    assert_eq!(s["initialized"], false, "{s}");
    let s = http.cluster(&procs[0].addr).await.unwrap();
    assert_eq!(s["members"].as_object().unwrap().len(), 1, "{s}");
    let r = http
        .send(
            "POST",
            &procs[0].url("/roo/v1/cluster/join"),
            &[("x-roo-cluster-secret", "not-the-secret")],
            r#"{"node_id":5,"addr":"127.0.0.2:1"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = http
        .send(
            "POST",
            &procs[0].url("/roo/v1/raft/vote"),
            &[("x-roo-cluster-secret", "not-the-secret")],
            r#"{}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_as_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = process_cluster(dir.path(), 3, &[]).await;
    let http = Http::default();
    assert_eq!(
        http.put(&procs[0].url("/roo/v1/kv/t"), "1")
            .await
            .unwrap()
            .status,
        200
    );
    let code = procs[2].terminate(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "exit status after SIGTERM\n{}",
        procs[2].log_tail()
    );
    assert!(procs[2].log_tail().contains("shutting down"));
    procs[2].restart();
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    wait_for_cluster(&http, &addrs, 3).await;
    assert_eq!(
        http.get(&procs[2].url("/roo/v1/kv/t"))
            .await
            .unwrap()
            .text(),
        "1"
    );
}
