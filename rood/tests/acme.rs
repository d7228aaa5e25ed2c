//! Clustered ACME against a real ACME server: Pebble, resolving names through
//! pebble-challtestsrv, validating against rood processes on 127.0.0.1..3.
//!
//! Each test starts its own Pebble (TLS certificate for its listener made here), its own DNS
//! server and its own nodes. The name being certified points at a node that is not the leader,
//! so a validation only succeeds if the challenge reached that node through the KV.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pebble::{parse_response, served_leaf, tls_connect, Pebble, PebbleOptions};
use common::{addr_of, free_port, wait_for, wait_for_cluster, Http, Proc};
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `/` for `host` over a TLS connection to `addr`; status and body.
async fn https_request(
    addr: &str,
    host: &str,
    root: &CertificateDer<'static>,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let (mut tls, _) = tls_connect(addr, host, roots, &[b"http/1.1"]).await?;
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let (status, body) = parse_response(&raw)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Three nodes on 127.0.0.1..3 whose HTTP and HTTPS listeners use the ports Pebble validates
/// on; the nodes, their IPs, and the leader's index.
async fn acme_cluster(
    dir: &Path,
    pebble: &Pebble,
    http_port: u16,
    tls_port: u16,
    extra: &[&str],
) -> (Vec<Proc>, usize) {
    let mut args: Vec<String> = pebble.node_args();
    args.extend([
        "--http-addr".into(),
        format!("{{ip}}:{http_port}"),
        "--https-addr".into(),
        format!("{{ip}}:{tls_port}"),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let procs = common::process_cluster(dir, 3, &args).await;
    let http = Http::default();
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let leader_id = wait_for_cluster(&http, &addrs, 3).await;
    let status = http.cluster(&addrs[0]).await.unwrap();
    let leader_addr = addr_of(&status, leader_id);
    let leader = addrs.iter().position(|a| *a == leader_addr).unwrap();
    (procs, leader)
}

fn ip_of(p: &Proc) -> String {
    p.addr.rsplit_once(':').unwrap().0.to_string()
}

async fn put_route(http: &Http, node: &Proc, key: &str, value: &str) {
    let r = http
        .put(&node.url(&format!("/roo/v1/kv/{key}")), value.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "PUT {key}: {}", r.text());
}

/// A key's value as JSON, read from `node` (None: absent).
async fn kv_json(http: &Http, node: &Proc, key: &str) -> Option<Value> {
    let r = http
        .get(&node.url(&format!("/roo/v1/kv/{key}")))
        .await
        .ok()?;
    (r.status == 200).then(|| serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text())))
}

/// Keys under `prefix`, read from `node`.
async fn kv_keys(http: &Http, node: &Proc, prefix: &str) -> Vec<String> {
    let r = http
        .get(&node.url(&format!("/roo/v1/kvs/{prefix}")))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["results"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The activity stream's certificate events, as `node` has them.
async fn cert_events(http: &Http, node: &Proc) -> Vec<Value> {
    let r = http
        .get(&node.url("/roo/v1/events?type=certificate."))
        .await
        .unwrap();
    r.json()["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_one_certificate_served_by_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let options = PebbleOptions::new(http_port, tls_port);
    let Some(pebble) = Pebble::start(dir.path(), options).await else {
        return;
    };
    let (procs, leader) = acme_cluster(dir.path(), &pebble, http_port, tls_port, &[]).await;
    let http = Http::default();
    let target = (leader + 1) % procs.len();
    pebble.point("app.test", &ip_of(&procs[target])).await;
    let up = common::upstream("hello from app").await;
    let root = pebble.issuing_root().await;

    let started = Instant::now();
    put_route(
        &http,
        &procs[0],
        "com.roo.host:app.test:https",
        &format!("http://{up}"),
    )
    .await;
    // Once the route is live on the node the name points at (its plain listener redirects),
    // the first handshake there waits for the certificate rather than failing.
    let plain = format!("http://{}:{http_port}/", ip_of(&procs[target]));
    wait_for(
        "the route on the target node",
        Duration::from_secs(10),
        || async {
            let r = http
                .send("GET", &plain, &[("host", "app.test")], "")
                .await
                .ok()?;
            (r.status == 308).then_some(())
        },
    )
    .await;
    let first = served_leaf(
        &format!("{}:{tls_port}", ip_of(&procs[target])),
        "app.test",
        &root,
    )
    .await
    .expect("the first handshake waits for the certificate");
    let mut leaves = vec![first];
    for p in &procs {
        let addr = format!("{}:{tls_port}", ip_of(p));
        let leaf = wait_for(
            "the certificate on every node",
            Duration::from_secs(30),
            || async { served_leaf(&addr, "app.test", &root).await.ok() },
        )
        .await;
        leaves.push(leaf);
    }
    eprintln!(
        "route PUT to a valid certificate on all three nodes: {:?}",
        started.elapsed()
    );
    assert!(
        leaves.iter().all(|l| *l == leaves[0]),
        "every node serves the same certificate"
    );
    let (status, body) = https_request(
        &format!("{}:{tls_port}", ip_of(&procs[2])),
        "app.test",
        &root,
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from app"));
    assert_eq!(pebble.count("Added order"), 1, "exactly one order");
    assert_eq!(pebble.count("Issued certificate serial"), 1);
    // The activity stream tells of it once, whichever node is asked.
    let told = cert_events(&http, &procs[2]).await;
    let kinds: Vec<&str> = told.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["certificate.ordered", "certificate.issued"],
        "{told:?}"
    );
    for e in &told {
        assert_eq!(
            (e["subject"].as_str(), e["source"].as_str()),
            (Some("app.test"), Some("acme"))
        );
    }
    assert!(told[1]["detail"]["not_after"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(!told[1]["detail"]["issuer"].as_str().unwrap().is_empty());

    // What the KV holds: an ACME certificate, the host's status, the account; no leftover
    // challenge or order.
    let cert = kv_json(&http, &procs[1], "com.roo.cert:app.test")
        .await
        .unwrap();
    assert_eq!(cert["source"], "acme");
    assert!(cert["not_after"].as_str().unwrap().ends_with('Z'));
    let status = kv_json(&http, &procs[1], "com.roo.acme.status:app.test")
        .await
        .unwrap();
    assert!(status["last_success"].as_u64().is_some(), "{status}");
    assert_eq!(status["failures"], 0);
    assert!(kv_json(&http, &procs[1], "com.roo.acme.account")
        .await
        .is_some());
    wait_for(
        "challenges and the order removed",
        Duration::from_secs(5),
        || async {
            let left = kv_keys(&http, &procs[1], "com.roo.acme.http01:")
                .await
                .len()
                + kv_keys(&http, &procs[1], "com.roo.acme.order:").await.len();
            (left == 0).then_some(())
        },
    )
    .await;

    // Plain HTTP redirects; a host without a route never gets a certificate.
    let r = http
        .send(
            "GET",
            &format!("http://{}:{http_port}/x?y=1", ip_of(&procs[0])),
            &[("host", "app.test")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 308);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let addr = format!("{}:{tls_port}", ip_of(&procs[0]));
    assert!(tls_connect(&addr, "other.test", roots, &[b"http/1.1"])
        .await
        .is_err());
    assert_eq!(
        pebble.count("Added order"),
        1,
        "no order for a host without a route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_alpn_01_is_answered_by_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let options = PebbleOptions::new(http_port, tls_port);
    let Some(pebble) = Pebble::start(dir.path(), options).await else {
        return;
    };
    let (procs, leader) = acme_cluster(
        dir.path(),
        &pebble,
        http_port,
        tls_port,
        &["--acme-challenge", "tls-alpn-01"],
    )
    .await;
    let http = Http::default();
    let target = (leader + 2) % procs.len();
    pebble.point("alpn.test", &ip_of(&procs[target])).await;
    let up = common::upstream("alpn app").await;
    let root = pebble.issuing_root().await;
    put_route(
        &http,
        &procs[leader],
        "com.roo.host:alpn.test:https",
        &format!("http://{up}"),
    )
    .await;
    let addr = format!("{}:{tls_port}", ip_of(&procs[target]));
    let (status, body) = wait_for(
        "a certificate by TLS-ALPN-01",
        Duration::from_secs(30),
        || async { https_request(&addr, "alpn.test", &root).await.ok() },
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "alpn app"));
    assert_eq!(pebble.count("Added order"), 1);
    let log = std::fs::read_to_string(procs[target].data_dir.with_extension("log")).unwrap();
    assert!(
        log.contains("answered a TLS-ALPN-01 validation"),
        "the follower the name points at answered the validation:\n{log}"
    );
    assert!(
        kv_keys(&http, &procs[target], "com.roo.acme.http01:")
            .await
            .is_empty(),
        "no HTTP-01 challenge was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_order_still_ends_with_one_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    // Validation takes up to 3 s, so the order is still open when the leader dies.
    let options = PebbleOptions {
        va_sleep: Some(3),
        ..PebbleOptions::new(http_port, tls_port)
    };
    let Some(pebble) = Pebble::start(dir.path(), options).await else {
        return;
    };
    let (mut procs, leader) = acme_cluster(dir.path(), &pebble, http_port, tls_port, &[]).await;
    let http = Http::default();
    let target = (leader + 1) % procs.len();
    pebble.point("failover.test", &ip_of(&procs[target])).await;
    let up = common::upstream("still here").await;
    let root = pebble.issuing_root().await;
    put_route(
        &http,
        &procs[target],
        "com.roo.host:failover.test:https",
        &format!("http://{up}"),
    )
    .await;
    wait_for(
        "the order to be recorded",
        Duration::from_secs(20),
        || async { kv_json(&http, &procs[target], "com.roo.acme.order:failover.test").await },
    )
    .await;
    procs[leader].kill();
    let survivors: Vec<usize> = (0..procs.len()).filter(|i| *i != leader).collect();
    for &i in &survivors {
        let addr = format!("{}:{tls_port}", ip_of(&procs[i]));
        let (status, body) = wait_for(
            "a certificate after the failover",
            Duration::from_secs(60),
            || async { https_request(&addr, "failover.test", &root).await.ok() },
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "still here"));
    }
    assert_eq!(
        pebble.count("Added order"),
        1,
        "the new leader resumed the order"
    );
    assert_eq!(pebble.count("Issued certificate serial"), 1);
    let log_of =
        |i: usize| std::fs::read_to_string(procs[i].data_dir.with_extension("log")).unwrap();
    let resumed = survivors
        .iter()
        .any(|&i| log_of(i).contains("resuming the order in progress"));
    let finished_before = log_of(leader).contains("certificate issued");
    assert!(resumed || finished_before, "a survivor resumed the order");
    eprintln!("resumed by the new leader: {resumed}");
    // The old leader comes back and serves the same certificate.
    procs[leader].restart();
    let addr = format!("{}:{tls_port}", ip_of(&procs[leader]));
    let back = wait_for(
        "the old leader to serve it",
        Duration::from_secs(30),
        || async { served_leaf(&addr, "failover.test", &root).await.ok() },
    )
    .await;
    let survivor_addr = format!("{}:{tls_port}", ip_of(&procs[survivors[0]]));
    assert_eq!(
        back,
        served_leaf(&survivor_addr, "failover.test", &root)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_certificates_renew_without_a_failed_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    // 15 s certificates: renewed two thirds in, at about 10 s.
    let options = PebbleOptions {
        validity: Some(15),
        ..PebbleOptions::new(http_port, tls_port)
    };
    let Some(pebble) = Pebble::start(dir.path(), options).await else {
        return;
    };
    let (procs, leader) = acme_cluster(dir.path(), &pebble, http_port, tls_port, &[]).await;
    let http = Http::default();
    let target = (leader + 1) % procs.len();
    pebble.point("renew.test", &ip_of(&procs[target])).await;
    let up = common::upstream("renewed").await;
    let root = pebble.issuing_root().await;
    put_route(
        &http,
        &procs[0],
        "com.roo.host:renew.test:https",
        &format!("http://{up}"),
    )
    .await;
    let addrs: Vec<String> = procs
        .iter()
        .map(|p| format!("{}:{tls_port}", ip_of(p)))
        .collect();
    let first = wait_for("the first certificate", Duration::from_secs(30), || async {
        served_leaf(&addrs[0], "renew.test", &root).await.ok()
    })
    .await;
    // Handshakes on every node, back to back, until every node serves a new certificate (two
    // renewals at most in 40 s); every single one must succeed.
    let mut handshakes = 0;
    let mut renewed = vec![false; addrs.len()];
    let deadline = Instant::now() + Duration::from_secs(40);
    while renewed.iter().any(|r| !r) {
        assert!(
            Instant::now() < deadline,
            "no renewal within 40 s on every node"
        );
        for (i, addr) in addrs.iter().enumerate() {
            let leaf = served_leaf(addr, "renew.test", &root)
                .await
                .unwrap_or_else(|e| {
                    panic!("handshake {handshakes} with {addr} failed during renewal: {e}")
                });
            handshakes += 1;
            if leaf != first {
                renewed[i] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pebble.count("Issued certificate serial") >= 2);
    eprintln!("{handshakes} handshakes, none failed, across the renewal");
    let told = cert_events(&http, &procs[1]).await;
    let kinds: Vec<&str> = told.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let issued = pebble.count("Issued certificate serial");
    assert_eq!(
        kinds.iter().filter(|k| **k == "certificate.issued").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .filter(|k| **k == "certificate.renewed")
            .count()
            >= issued - 1,
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_back_off_and_bad_hosts_never_reach_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let options = PebbleOptions::new(http_port, tls_port);
    let Some(pebble) = Pebble::start(dir.path(), options).await else {
        return;
    };
    let extra = [
        "--acme-retry-base-s",
        "1",
        "--acme-handshake-wait-ms",
        "300",
    ];
    let (node, _) = pebble.node(&dir.path().join("n1"), &extra).await;
    let http = Http::default();
    // Nothing answers on 127.0.0.9: validation fails.
    pebble.point("down.test", "127.0.0.9").await;
    let up = common::upstream("plain").await;
    put_route(
        &http,
        &node,
        "com.roo.host:down.test:https",
        &format!("http://{up}"),
    )
    .await;
    for bad in ["under_score.test", "*.wild.test", "localhost"] {
        put_route(
            &http,
            &node,
            &format!("com.roo.host:{bad}:https"),
            &format!("http://{up}"),
        )
        .await;
    }
    put_route(
        &http,
        &node,
        "com.roo.host:plain.test:http",
        &format!("http://{up}"),
    )
    .await;

    let status = wait_for("two recorded failures", Duration::from_secs(60), || async {
        let s = kv_json(&http, &node, "com.roo.acme.status:down.test").await?;
        (s["failures"].as_u64()? >= 2).then_some(s)
    })
    .await;
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("down.test"), "{error}");
    let failed: Vec<Value> = cert_events(&http, &node)
        .await
        .into_iter()
        .filter(|e| e["type"] == "certificate.failed")
        .collect();
    assert!(failed.len() >= 2, "{failed:?}");
    assert!(
        failed.iter().all(|e| e["subject"] == "down.test"),
        "{failed:?}"
    );
    assert!(failed[0]["detail"]["error"]
        .as_str()
        .unwrap()
        .contains("down.test"));
    assert_eq!(failed[1]["detail"]["failures"], 2);
    assert!(status["next_attempt"].as_u64().unwrap() >= status["last_attempt"].as_u64().unwrap());
    // The proxy keeps serving meanwhile; the failed host's handshake fails cleanly.
    let r = http
        .send(
            "GET",
            &format!("http://127.0.0.1:{http_port}/"),
            &[("host", "plain.test")],
            "",
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    let root = pebble.issuing_root().await;
    assert!(
        served_leaf(&format!("127.0.0.1:{tls_port}"), "down.test", &root)
            .await
            .is_err()
    );
    // Invalid names were refused with a log line, never ordered.
    let log = std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap();
    for bad in ["under_score.test", "*.wild.test", "localhost"] {
        assert!(
            log.lines()
                .any(|l| l.contains("not asking the CA") && l.contains(bad)),
            "no refusal logged for {bad}:\n{log}"
        );
        assert!(kv_json(&http, &node, &format!("com.roo.acme.status:{bad}"))
            .await
            .is_none());
    }
    assert!(log.contains("DNS-01"), "the wildcard refusal says why");
    let orders = pebble.count("Added order");
    let failures = status["failures"].as_u64().unwrap() as usize;
    assert!(
        orders >= failures && orders <= failures + 1,
        "{orders} orders for {failures} failures of down.test only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_that_answers_garbage_or_nothing_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let options = PebbleOptions::new(http_port, tls_port);
    let Some(pebble) = Pebble::start(dir.path(), options).await else {
        return;
    };
    let http = Http::default();
    let up = common::upstream("served anyway").await;
    // Garbage: Pebble's management API answers a PEM where a directory should be. Down: nothing
    // listens.
    let garbage = format!("https://{}/roots/0", pebble.management);
    let down = format!("https://127.0.0.1:{}/dir", free_port("127.0.0.1"));
    for (i, directory) in [garbage, down].into_iter().enumerate() {
        let api = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let ca = pebble.listener_ca.display().to_string();
        let node = Proc::start(
            &api,
            &dir.path().join(format!("n{i}")),
            &[
                "--acme",
                "true",
                "--acme-directory",
                &directory,
                "--acme-ca-file",
                &ca,
                "--acme-handshake-wait-ms",
                "200",
            ],
        );
        wait_for_cluster(&http, std::slice::from_ref(&api), 1).await;
        put_route(
            &http,
            &node,
            "com.roo.host:secure.test:https",
            &format!("http://{up}"),
        )
        .await;
        put_route(
            &http,
            &node,
            "com.roo.host:open.test:http",
            &format!("http://{up}"),
        )
        .await;
        let status = wait_for("the failure recorded", Duration::from_secs(60), || async {
            kv_json(&http, &node, "com.roo.acme.status:secure.test").await
        })
        .await;
        assert!(status["failures"].as_u64().unwrap() >= 1, "{status}");
        eprintln!("{directory}: {}", status["last_error"]);
        // Plain routes keep working through it all.
        let log = std::fs::read_to_string(node.data_dir.with_extension("log")).unwrap();
        let http_addr = log
            .lines()
            .find_map(|l| l.split("http=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_string();
        let r = http
            .send(
                "GET",
                &format!("http://{http_addr}/"),
                &[("host", "open.test")],
                "",
            )
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "served anyway"));
    }
    assert_eq!(pebble.count("Added order"), 0);
}
