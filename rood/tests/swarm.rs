//! The swarm watcher against the machine's real Docker engine in swarm mode: services created,
//! updated and removed with the docker CLI, their routes checked in the KV of a rood process
//! that runs the watcher.
//!
//! Where no Docker engine is reachable these tests say SKIPPED (and fail in CI). A single-node
//! swarm is initialised if the engine is not in one yet. Every service and image a test makes is
//! removed at the end, pass or fail.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pebble::{served_leaf, Pebble, PebbleOptions};
use common::{free_port, wait_for, wait_for_cluster, Http, Proc};

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A swarm manager to test against, with an upstream image built for this test (busybox's
/// httpd, FROM scratch: nothing is pulled); its tag, or None (skipped) where there is no Docker
/// engine and this is not CI.
fn engine() -> Option<Image> {
    if let Err(e) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        if std::env::var_os("CI").is_none() {
            eprintln!("SKIPPED: no Docker engine reachable ({e})");
            return None;
        }
        panic!("the swarm tests need a Docker engine in CI: {e}");
    }
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap();
    if state != "active" {
        // Several test processes may find the engine out of a swarm at once: one init wins.
        if let Err(e) = docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]) {
            let now = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap();
            assert_eq!(now, "active", "docker swarm init: {e}");
        }
    }
    let image = Image(format!("roo-test-upstream:{:x}", rand::random::<u32>()));
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy("/bin/busybox", dir.path().join("busybox"))
            .expect("/bin/busybox (Debian's busybox-static) for the test image");
        std::fs::write(dir.path().join("index.html"), "upstream\n").unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n\
             ENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
        )
        .unwrap();
        docker(&["build", "-q", "-t", &image.0, dir.path().to_str().unwrap()])
            .expect("building the upstream image");
    }
    Some(image)
}

/// An image built by a test, removed when it ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

/// Services made by a test, removed when it ends.
struct Services {
    image: String,
    names: Vec<String>,
}

impl Services {
    fn create(&mut self, name: &str, args: &[&str]) -> Duration {
        let mut all = vec!["service", "create", "-d", "--name", name];
        all.extend_from_slice(args);
        all.push(&self.image);
        self.names.push(name.to_string());
        let started = Instant::now();
        docker(&all).unwrap();
        started.elapsed()
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for s in &self.names {
            let _ = docker(&["service", "rm", s]);
        }
    }
}

async fn value(http: &Http, node: &Proc, key: &str) -> Option<String> {
    let r = http
        .get(&node.url(&format!("/roo/v1/kv/{key}")))
        .await
        .ok()?;
    (r.status == 200).then(|| r.text())
}

/// Waits until `key` holds `want` (None: absent); returns how long that took.
async fn until(http: &Http, node: &Proc, key: &str, want: Option<&str>) -> Duration {
    let started = Instant::now();
    wait_for(
        &format!("{key} to be {want:?}"),
        Duration::from_secs(20),
        || async { (value(http, node, key).await.as_deref() == want).then_some(()) },
    )
    .await;
    started.elapsed()
}

/// A rood process with the swarm watcher on, once it leads its one-node cluster.
async fn watching_node(dir: &std::path::Path) -> Proc {
    let api = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let node = Proc::start(&api, &dir.join("n1"), &["--swarm", "on"]);
    wait_for_cluster(&Http::default(), std::slice::from_ref(&api), 1).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_become_routes_and_only_the_watchers_routes_change() {
    let Some(image) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = watching_node(dir.path()).await;
    let http = Http::default();
    wait_for(
        "the watcher to hold the lease",
        Duration::from_secs(20),
        || async { value(&http, &node, "com.roo.swarm.lease").await },
    )
    .await;

    let tag = format!("{:x}", rand::random::<u32>());
    let (web, api_svc, bad) = (
        format!("roo-t-web-{tag}"),
        format!("roo-t-api-{tag}"),
        format!("roo-t-bad-{tag}"),
    );
    let (a, b, c) = (
        format!("a-{tag}.test"),
        format!("b-{tag}.test"),
        format!("c-{tag}.test"),
    );
    let hand = format!("hand-{tag}.test");
    let hand_key = format!("com.roo.host:{hand}:https");
    let r = http
        .put(
            &node.url(&format!("/roo/v1/kv/{hand_key}")),
            "http://by-hand:80",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let mut services = Services {
        image: image.0.clone(),
        names: Vec::new(),
    };
    // Service labels (compose deploy.labels), Roo's names.
    let took = services.create(
        &web,
        &[
            "--label",
            &format!("OriginHosts={a},{hand}"),
            "--label",
            "DestinationPort=80",
        ],
    );
    let key_a = format!("com.roo.host:{a}:https");
    let live = until(&http, &node, &key_a, Some(&format!("http://{web}:80"))).await;
    eprintln!(
        "docker service create took {took:?}; the route was in the KV {live:?} after it returned"
    );
    // A label naming a hand-made route does not take it over.
    assert_eq!(
        value(&http, &node, &hand_key).await.as_deref(),
        Some("http://by-hand:80")
    );

    // Container labels with the roo. prefix, another origin scheme and port.
    services.create(
        &api_svc,
        &[
            "--container-label",
            &format!("roo.OriginHost={c}"),
            "--container-label",
            "roo.OriginScheme=http",
            "--container-label",
            "roo.OriginPort=8080",
            "--container-label",
            "roo.DestinationPort=9000",
            "--container-label",
            "roo.DestinationHost=tasks.api",
        ],
    );
    until(
        &http,
        &node,
        &format!("com.roo.host:{c}:8080:http"),
        Some("http://tasks.api:9000"),
    )
    .await;

    // Invalid labels: skipped with a log line naming the service; the rest still routes.
    services.create(&bad, &["--label", &format!("OriginHosts=bad-{tag}.test")]);
    wait_for(
        "the invalid labels logged",
        Duration::from_secs(20),
        || async {
            node.log_lines("invalid roo labels")
                .iter()
                .any(|l| l.contains(&bad))
                .then_some(())
        },
    )
    .await;
    assert!(
        value(&http, &node, &format!("com.roo.host:bad-{tag}.test:https"))
            .await
            .is_none()
    );
    // And told in the activity stream once, however often the watcher looks again.
    let errors = wait_for("swarm.error", Duration::from_secs(20), || async {
        let e = events_about(&http, &node, "swarm.error", &bad).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(errors[0]["source"], format!("swarm:{bad}"));
    assert!(
        errors[0]["detail"]["error"].as_str().is_some(),
        "{errors:?}"
    );

    // A label change moves exactly that service's route.
    let started = Instant::now();
    docker(&[
        "service",
        "update",
        "-d",
        "--label-add",
        &format!("OriginHosts={b}"),
        &web,
    ])
    .unwrap();
    let returned = started.elapsed();
    let key_b = format!("com.roo.host:{b}:https");
    let moved = until(&http, &node, &key_b, Some(&format!("http://{web}:80"))).await;
    until(&http, &node, &key_a, None).await;
    eprintln!("docker service update took {returned:?}; the new route was live {moved:?} after");
    assert!(
        moved < Duration::from_secs(2),
        "label change live within 2 s: {moved:?}"
    );
    // Each change told once, by the service that made it.
    let source = format!("swarm:{web}");
    let added = events_about(&http, &node, "route.added", &format!("{b}:https")).await;
    let removed = events_about(&http, &node, "route.removed", &format!("{a}:https")).await;
    assert_eq!(
        (added.len(), removed.len()),
        (1, 1),
        "{added:?} {removed:?}"
    );
    assert_eq!(
        (&added[0]["source"], &removed[0]["source"]),
        (&source.clone().into(), &source.into())
    );
    assert_eq!(
        events_about(&http, &node, "swarm.error", &bad).await.len(),
        1
    );
    assert_eq!(
        value(&http, &node, &hand_key).await.as_deref(),
        Some("http://by-hand:80")
    );

    // A route the watcher made, then edited by hand, is left alone when the service goes.
    let key_c = format!("com.roo.host:{c}:8080:http");
    http.put(&node.url(&format!("/roo/v1/kv/{key_c}")), "http://edited:1")
        .await
        .unwrap();
    docker(&["service", "rm", &api_svc]).unwrap();
    docker(&["service", "rm", &web]).unwrap();
    until(&http, &node, &key_b, None).await;
    assert_eq!(
        value(&http, &node, &key_c).await.as_deref(),
        Some("http://edited:1")
    );
    assert_eq!(
        value(&http, &node, &hand_key).await.as_deref(),
        Some("http://by-hand:80")
    );
    let owners = http
        .get(&node.url("/roo/v1/kvs/com.roo.swarm.service:"))
        .await
        .unwrap()
        .json();
    // No ownership record left for this test's services (other services on the engine may
    // have theirs).
    use base64::Engine;
    let records: String = owners["results"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            String::from_utf8(raw).unwrap()
        })
        .collect();
    for name in [&web, &api_svc, &bad] {
        assert!(
            !records.contains(name.as_str()),
            "{name} still has a record"
        );
    }
}

/// The events of type `kind` about `subject`.
async fn events_about(
    http: &Http,
    node: &Proc,
    kind: &str,
    subject: &str,
) -> Vec<serde_json::Value> {
    let r = http
        .get(&node.url(&format!("/roo/v1/events?type={kind}")))
        .await
        .unwrap()
        .json();
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["subject"] == subject)
        .cloned()
        .collect()
}

/// Waits until `key` holds a JSON route equal to `want`.
async fn until_json(http: &Http, node: &Proc, key: &str, want: &serde_json::Value) {
    wait_for(
        &format!("{key} to be {want}"),
        Duration::from_secs(20),
        || async {
            let v = value(http, node, key).await?;
            (serde_json::from_str::<serde_json::Value>(&v).ok()? == *want).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_of_one_host_are_its_weighted_backends_each_owning_its_own() {
    let Some(image) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = watching_node(dir.path()).await;
    let http = Http::default();
    let tag = format!("{:x}", rand::random::<u32>());
    let (v1, v2, bad) = (
        format!("roo-t-v1-{tag}"),
        format!("roo-t-v2-{tag}"),
        format!("roo-t-vbad-{tag}"),
    );
    let host = format!("w-{tag}.test");
    let key = format!("com.roo.host:{host}:https");
    let mut services = Services {
        image: image.0.clone(),
        names: Vec::new(),
    };
    let origin = format!("OriginHosts={host}");
    services.create(
        &v1,
        &[
            "--label",
            &origin,
            "--label",
            "DestinationPort=80",
            "--label",
            "roo.weight=90",
            "--label",
            "roo.backend=stable",
            "--label",
            "roo.sticky=true",
            "--label",
            r#"roo.middlewares=[{"rate_limit":{"average":50,"burst":10}}]"#,
        ],
    );
    services.create(
        &v2,
        &[
            "--label",
            &origin,
            "--label",
            "DestinationPort=80",
            "--label",
            "roo.weight=10",
            "--label",
            "roo.backend=canary",
            "--label",
            "roo.match.header=X-Canary=always",
        ],
    );
    let both = serde_json::json!({
        "backends": [
            {"name": "stable", "url": format!("http://{v1}:80"), "weight": 90},
            {"name": "canary", "url": format!("http://{v2}:80"), "weight": 10},
        ],
        "match": [{"header": "X-Canary", "value": "always", "backend": "canary"}],
        "middlewares": [{"rate_limit": {"average": 50, "burst": 10}}],
        "sticky": {"cookie": "roo_sticky"},
    });
    until_json(&http, &node, &key, &both).await;
    // Written through the routes' one write path: owned by the watcher, with history.
    let history = http
        .get(&node.url(&format!("/roo/v1/routes/{host}:https/history")))
        .await
        .unwrap()
        .json();
    assert_eq!(history["history"][0]["source"], format!("swarm:{v1},{v2}"));
    assert_eq!(
        history["history"][0]["value"]["backends"][1]["name"],
        "canary"
    );

    // A third service with a bad label: a line names it and the label; the route stays.
    services.create(
        &bad,
        &[
            "--label",
            &origin,
            "--label",
            "DestinationPort=80",
            "--label",
            "roo.weight=ten",
        ],
    );
    wait_for("the bad label logged", Duration::from_secs(20), || async {
        node.log_lines("invalid roo labels")
            .iter()
            .any(|l| l.contains(&bad) && l.contains("roo.weight"))
            .then_some(())
    })
    .await;
    until_json(&http, &node, &key, &both).await;

    // The canary's service goes: only its backend (and its cohort) leaves the route.
    docker(&["service", "rm", &v2]).unwrap();
    let stable = serde_json::json!({
        "backends": [{"name": "stable", "url": format!("http://{v1}:80"), "weight": 90}],
        "middlewares": [{"rate_limit": {"average": 50, "burst": 10}}],
        "sticky": {"cookie": "roo_sticky"},
    });
    until_json(&http, &node, &key, &stable).await;
    // The last one takes the route with it.
    docker(&["service", "rm", &v1]).unwrap();
    until(&http, &node, &key, None).await;
}

/// The backends of route `name` and their weights, as the routes list reads them.
async fn weights(http: &Http, node: &Proc, name: &str) -> Vec<(String, u64)> {
    common::backend_weights(&common::listed_route(http, &node.addr, name).await)
}

/// Waits until route `name` has exactly these backends and weights.
async fn until_weights(http: &Http, node: &Proc, name: &str, want: &[(&str, u64)]) {
    let want: Vec<(String, u64)> = want.iter().map(|(n, w)| (n.to_string(), *w)).collect();
    wait_for(
        &format!("{name} at {want:?}"),
        Duration::from_secs(20),
        || async { (weights(http, node, name).await == want).then_some(()) },
    )
    .await;
}

async fn rollout(http: &Http, node: &Proc, name: &str) -> serde_json::Value {
    let r = http
        .get(&node.url(&format!("/roo/v1/rollouts/{name}")))
        .await
        .unwrap();
    match r.status {
        200 => r.json(),
        _ => serde_json::Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_service_s_rollout_label_starts_its_rollout_and_owns_the_weights() {
    let Some(image) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = watching_node(dir.path()).await;
    let http = Http::default();
    let tag = format!("{:x}", rand::random::<u32>());
    let (v1, v2, v3) = (
        format!("roo-t-r1-{tag}"),
        format!("roo-t-r2-{tag}"),
        format!("roo-t-r3-{tag}"),
    );
    let host = format!("r-{tag}.test");
    let name = format!("{host}:https");
    let mut services = Services {
        image: image.0.clone(),
        names: Vec::new(),
    };
    let origin = format!("OriginHosts={host}");
    let labels = |backend: &'static str| {
        vec![
            "--label".to_string(),
            origin.clone(),
            "--label".to_string(),
            "DestinationPort=80".to_string(),
            "--label".to_string(),
            format!("roo.backend={backend}"),
        ]
    };
    let create = |services: &mut Services, service: &str, args: Vec<String>| {
        services.create(
            service,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    };
    create(&mut services, &v1, labels("stable"));
    until_weights(&http, &node, &name, &[("stable", 100)]).await;

    // No traffic: every check holds, so the rollout stays at its first step.
    let mut canary = labels("canary");
    canary.extend([
        "--label".to_string(),
        "roo.rollout=steps:20,60,100;interval:1s".to_string(),
    ]);
    create(&mut services, &v2, canary);
    until_weights(&http, &node, &name, &[("stable", 80), ("canary", 20)]).await;
    let r = rollout(&http, &node, &name).await;
    assert_eq!(r["state"], "progressing", "{r}");
    assert_eq!(r["canary"], "canary");
    assert_eq!(r["stable_backend"], "stable");
    assert_eq!(r["interval_ms"], 1000);
    assert_eq!(r["source"], format!("swarm:{v2}"));
    // Written through the one write path: the canary came in at 0, then the rollout's first
    // step, started by the canary's service.
    let history = http
        .get(&node.url(&format!("/roo/v1/routes/{name}/history")))
        .await
        .unwrap()
        .json();
    let sources: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["source"].as_str().unwrap())
        .collect();
    let (started_by, composed) = (format!("swarm:{v2}"), format!("swarm:{v1},{v2}"));
    assert_eq!(sources[..2], [&started_by, &composed], "{history}");
    assert_eq!(history["history"][1]["value"]["backends"][1]["weight"], 0);

    // A label change on the stable service is made, but its weight label is not: the rollout's
    // weights stand.
    docker(&[
        "service",
        "update",
        "-d",
        "--label-add",
        "roo.weight=50",
        "--label-add",
        "roo.health.path=/",
        &v1,
    ])
    .unwrap();
    wait_for("the health label made", Duration::from_secs(20), || async {
        let route = common::listed_route(&http, &node.addr, &name).await;
        (route["value"]["health"]["path"] == "/").then_some(())
    })
    .await;
    assert_eq!(
        weights(&http, &node, &name).await,
        [("stable".to_string(), 80), ("canary".to_string(), 20)]
    );
    wait_for("a check that held", Duration::from_secs(20), || async {
        let r = rollout(&http, &node, &name).await;
        let held = r["checks"]
            .as_array()?
            .iter()
            .any(|c| c["verdict"] == "hold");
        (held && r["step"] == 0).then_some(())
    })
    .await;

    // Promoted by hand: the watcher keeps 0/100 and starts no second rollout of this canary.
    let promote = http
        .send(
            "POST",
            &node.url(&format!("/roo/v1/rollouts/{name}/promote")),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(promote.status, 200, "{}", promote.text());
    until_weights(&http, &node, &name, &[("stable", 0), ("canary", 100)]).await;
    docker(&[
        "service",
        "update",
        "-d",
        "--label-rm",
        "roo.health.path",
        &v1,
    ])
    .unwrap();
    wait_for("the health label gone", Duration::from_secs(20), || async {
        let route = common::listed_route(&http, &node.addr, &name).await;
        route["value"]["health"].is_null().then_some(())
    })
    .await;
    assert_eq!(
        weights(&http, &node, &name).await,
        [("stable".to_string(), 0), ("canary".to_string(), 100)]
    );
    assert_eq!(rollout(&http, &node, &name).await["state"], "promoted");

    // The old version goes; the next one comes while the route is frozen: held back, nothing
    // started; once unfrozen, it comes in at 0 and its rollout starts against the canary of
    // before.
    docker(&["service", "rm", &v1]).unwrap();
    until_weights(&http, &node, &name, &[("canary", 100)]).await;
    let frozen = http
        .send(
            "POST",
            &node.url(&format!("/roo/v1/routes/{name}/freeze")),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(frozen.status, 200, "{}", frozen.text());
    let mut next = labels("next");
    next.extend([
        "--label".to_string(),
        "roo.rollout=steps:50,100;interval:1s".to_string(),
    ]);
    create(&mut services, &v3, next);
    wait_for("route.held", Duration::from_secs(20), || async {
        let held = events_about(&http, &node, "route.held", &name).await;
        (!held.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        weights(&http, &node, &name).await,
        [("canary".to_string(), 100)]
    );
    assert_eq!(rollout(&http, &node, &name).await["state"], "promoted");
    let unfrozen = http
        .send(
            "POST",
            &node.url(&format!("/roo/v1/routes/{name}/unfreeze")),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(unfrozen.status, 200, "{}", unfrozen.text());
    // Unfreezing is no service event: the periodic reconcile (30 s) or the next event makes
    // the change. A label on an unrelated service gives that event now.
    docker(&["service", "update", "-d", "--label-add", "roo.nudge=1", &v2]).unwrap();
    until_weights(&http, &node, &name, &[("canary", 50), ("next", 50)]).await;
    let r = rollout(&http, &node, &name).await;
    assert_eq!(
        (r["canary"].as_str(), r["stable_backend"].as_str()),
        (Some("next"), Some("canary"))
    );
    assert_eq!(r["source"], format!("swarm:{v3}"));
    let started = events_about(&http, &node, "rollout.started", &name).await;
    assert_eq!(started.len(), 2, "{started:?}");
}

/// Runs `f`, ignoring errors: cleanup.
fn quietly(args: &[&str]) {
    let _ = docker(args);
}

/// Everything the stack test makes, removed when it ends.
struct Stack {
    name: String,
    network: String,
    secret: String,
    token: String,
    image: String,
    labelled_node: Option<String>,
}

impl Stack {
    fn deploy(&self, env: &[(&str, String)], files: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("docker");
        cmd.args(["stack", "deploy"]);
        for f in files {
            cmd.args(["-c", f]);
        }
        cmd.arg(&self.name);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `docker stack rm`, then waits until its containers are gone.
    fn remove(&self) {
        quietly(&["stack", "rm", &self.name]);
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        for _ in 0..120 {
            let left = docker(&["ps", "-aq", "--filter", &label]).unwrap_or_default();
            if left.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.remove();
        for volume in ["roo-data", "roo-manager-data"] {
            quietly(&["volume", "rm", &format!("{}_{volume}", self.name)]);
        }
        quietly(&["network", "rm", &self.network]);
        quietly(&["secret", "rm", &self.secret]);
        quietly(&["secret", "rm", &self.token]);
        quietly(&["rmi", "-f", &self.image]);
        if let Some(node) = &self.labelled_node {
            quietly(&["node", "update", "--label-rm", "load_balancer", node]);
        }
    }
}

/// GET `/` for `host` through the stack's published HTTP port: status and body.
/// Waits up to `secs` until a GET for `host` through the stack's port answers `status`;
/// returns the body.
async fn wait_through(
    http: &Http,
    port: u16,
    host: &str,
    status: u16,
    secs: u64,
    what: &str,
) -> String {
    let (_, body) = wait_for(what, Duration::from_secs(secs), || async {
        through(http, port, host)
            .await
            .filter(|(s, _)| *s == status)
    })
    .await;
    body
}

async fn through(http: &Http, port: u16, host: &str) -> Option<(u16, String)> {
    let r = http
        .send(
            "GET",
            &format!("http://127.0.0.1:{port}/"),
            &[("host", host)],
            "",
        )
        .await
        .ok()?;
    Some((r.status, r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_roo_stack_routes_labelled_services_and_keeps_its_kv_across_redeploys() {
    let Some(upstream) = engine() else { return };
    let tag = format!("{:x}", rand::random::<u32>());
    let node = docker(&["info", "--format", "{{.Swarm.NodeID}}"]).unwrap();
    let had_label = docker(&[
        "node",
        "inspect",
        "--format",
        "{{index .Spec.Labels \"load_balancer\"}}",
        &node,
    ])
    .unwrap_or_default()
        == "true";
    let stack = Stack {
        name: format!("rootest{tag}"),
        network: format!("roo-test-net-{tag}"),
        secret: format!("roo-test-secret-{tag}"),
        token: format!("roo-test-token-{tag}"),
        image: format!("roo-test:{tag}"),
        labelled_node: (!had_label).then(|| node.clone()),
    };
    let compose_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose");
    // The image as README builds it (the dist binary) where CI gives it, else this test build's.
    let shipped = std::env::var("ROO_IMAGE_BINARY").ok();
    if std::env::var_os("CI").is_some() {
        assert!(
            shipped.is_some(),
            "CI builds the image from ROO_IMAGE_BINARY (.ci/run sets it)"
        );
    }
    let binary = shipped
        .clone()
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_rood").to_string());
    let built = Command::new(format!("{compose_dir}/build-image.sh"))
        .args([binary.as_str(), stack.image.as_str()])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let size: u64 = docker(&["image", "inspect", "--format", "{{.Size}}", &stack.image])
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "image {} from {binary}: {:.1} MB",
        stack.image,
        size as f64 / 1e6
    );
    if shipped.is_some() {
        assert!(size <= 32_000_000, "the image is {size} bytes");
    }
    docker(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        &stack.network,
    ])
    .unwrap();
    docker(&["node", "update", "--label-add", "load_balancer=true", &node]).unwrap();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), format!("secret-{tag}")).unwrap();
    docker(&[
        "secret",
        "create",
        &stack.secret,
        secret_file.path().to_str().unwrap(),
    ])
    .unwrap();
    let admin_token = format!("admin-{tag}-0123456789abcdef");
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), &admin_token).unwrap();
    docker(&[
        "secret",
        "create",
        &stack.token,
        token_file.path().to_str().unwrap(),
    ])
    .unwrap();

    // The API is on the overlay network only; this test also publishes it, on the host, to
    // drive it.
    let (http_port, https_port, api_port) = (
        free_port("0.0.0.0"),
        free_port("0.0.0.0"),
        free_port("0.0.0.0"),
    );
    let dir = tempfile::tempdir().unwrap();
    let api_override = dir.path().join("api.yml");
    std::fs::write(
        &api_override,
        format!("version: \"3.8\"\nservices:\n  roo:\n    environment:\n      ROO_LOG: info,rood::cluster=debug\n    ports:\n      - target: 6299\n        published: {api_port}\n        mode: host\n  manager:\n    environment:\n      ROO_LOG: info,rood::cluster=debug\n"),
    )
    .unwrap();
    let env = vec![
        ("ROO_IMAGE", stack.image.clone()),
        ("ROO_STACK", stack.name.clone()),
        ("ROO_NETWORK", stack.network.clone()),
        ("ROO_SECRET_NAME", stack.secret.clone()),
        ("ROO_TOKEN_NAME", stack.token.clone()),
        ("ROO_HTTP_PORT", http_port.to_string()),
        ("ROO_HTTPS_PORT", https_port.to_string()),
        ("ROO_ACME", "false".to_string()),
    ];
    let compose = format!("{compose_dir}/roo-docker-compose.yml");
    let files = [compose.as_str(), api_override.to_str().unwrap()];
    stack.deploy(&env, &files).unwrap();
    let http = Http::default();
    let api = format!("127.0.0.1:{api_port}");
    let wait_api = || async {
        wait_for(
            "the stack's node to lead its cluster",
            Duration::from_secs(90),
            || async {
                let s = http.cluster(&api).await.ok()?;
                s["leader_id"].as_u64()
            },
        )
        .await
    };
    wait_api().await;

    // A labelled service on the same network answers for its host. Its tasks' addresses
    // (`tasks.<service>`): this machine's kernel has no IPVS, so swarm's virtual IPs do not
    // carry traffic here.
    let web = format!("web-{tag}");
    let mut services = Services {
        image: upstream.0.clone(),
        names: Vec::new(),
    };
    let created = Instant::now();
    services.create(
        &web,
        &[
            "--network",
            &stack.network,
            "--label",
            &format!("OriginHosts=web-{tag}.test"),
            "--label",
            "OriginScheme=http",
            "--label",
            "DestinationPort=80",
            "--label",
            &format!("DestinationHost=tasks.{web}"),
        ],
    );
    let body = wait_through(
        &http,
        http_port,
        &format!("web-{tag}.test"),
        200,
        60,
        "the labelled service through the stack",
    )
    .await;
    assert_eq!(body.trim(), "upstream");
    eprintln!(
        "docker service create to a routed answer: {:?}",
        created.elapsed()
    );

    // A hand-made route to the same service: the admin token (a Docker secret) is needed.
    let hand_key = format!("com.roo.host:hand-{tag}.test:http");
    let hand_url = format!("http://{api}/roo/v1/kv/{hand_key}");
    let r = http
        .put(&hand_url, format!("http://{web}:80"))
        .await
        .unwrap();
    assert_eq!(r.status, 401, "writes need the admin token: {}", r.text());
    let bearer = format!("Bearer {admin_token}");
    let r = http
        .send(
            "PUT",
            &hand_url,
            &[("authorization", &bearer)],
            format!("http://{web}:80"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // An operator gets in with the image's rooctl, the token read from the Docker secret.
    let manager = wait_for(
        "the manager task's container",
        Duration::from_secs(30),
        || async {
            let id = docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("name={}_manager", stack.name),
            ])
            .ok()?;
            let id = id.lines().next()?.trim().to_string();
            (!id.is_empty()).then_some(id)
        },
    )
    .await;
    let listed = docker(&["exec", &manager, "/rooctl", "routes", "ls"]).unwrap();
    assert!(
        listed.contains(&format!("hand-{tag}.test")) && listed.contains(&format!("web-{tag}.test")),
        "{listed}"
    );
    let added = docker(&["exec", &manager, "/rooctl", "kv", "put", "from.rooctl", "x"]).unwrap();
    assert!(
        added.contains("ok"),
        "written with the admin token: {added}"
    );

    // The label moves the route.
    docker(&[
        "service",
        "update",
        "-d",
        "--label-add",
        &format!("OriginHosts=moved-{tag}.test"),
        &web,
    ])
    .unwrap();
    let moved = format!("moved-{tag}.test");
    wait_through(&http, http_port, &moved, 200, 10, "the moved route").await;
    wait_through(
        &http,
        http_port,
        &format!("web-{tag}.test"),
        404,
        10,
        "the old route gone",
    )
    .await;

    // Removing the service removes its route, not the hand-made one.
    docker(&["service", "rm", &web]).unwrap();
    wait_through(
        &http,
        http_port,
        &moved,
        404,
        10,
        "the service's route removed",
    )
    .await;
    let kept = http
        .get(&format!("http://{api}/roo/v1/kv/{hand_key}"))
        .await
        .unwrap();
    assert_eq!(
        (kept.status, kept.text()),
        (200, format!("http://{web}:80"))
    );

    // stack rm, deploy again: the volume keeps the KV, and the two nodes, back at new
    // addresses, find each other again.
    let before = http.cluster(&api).await.unwrap()["members"].clone();
    stack.remove();
    stack.deploy(&env, &files).unwrap();
    wait_api().await;
    let failed = std::sync::atomic::AtomicU32::new(0);
    let kept = wait_for(
        "the hand-made route after the redeploy",
        Duration::from_secs(60),
        || async {
            let r = http
                .get(&format!("http://{api}/roo/v1/kv/{hand_key}"))
                .await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("reading the hand-made route: {e}");
                    return None;
                }
            };
            if r.status != 200 {
                eprintln!("reading the hand-made route: {} {}", r.status, r.text());
                if failed.fetch_add(1, Ordering::SeqCst) == 3 {
                    for service in ["roo", "manager"] {
                        let name = format!("{}_{service}", stack.name);
                        let logs = Command::new("docker")
                            .args(["service", "logs", "--tail", "400", &name])
                            .output();
                        if let Ok(out) = logs {
                            eprintln!(
                                "{name}:\n{}{}",
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            );
                        }
                    }
                }
            }
            (r.status == 200).then(|| r.text())
        },
    )
    .await;
    assert_eq!(kept, format!("http://{web}:80"));
    let after = http.cluster(&api).await.unwrap()["members"].clone();
    eprintln!("members before the redeploy: {before}; after: {after}");
    let ids = |m: &serde_json::Value| m.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(
        ids(&before),
        ids(&after),
        "the same two nodes, from their volumes"
    );
}

/// A TCP front for the Docker socket that the test can cut and heal.
struct DockerFront {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    cut_now: tokio::sync::watch::Sender<bool>,
}

impl DockerFront {
    async fn start() -> DockerFront {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (cut_now, _) = tokio::sync::watch::channel(false);
        let (flag, signal) = (cut.clone(), cut_now.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let mut cut = signal.subscribe();
                tokio::spawn(async move {
                    let Ok(mut docker) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut docker) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        DockerFront { addr, cut, cut_now }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        self.cut_now.send_replace(cut);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_docker_api_deletes_nothing() {
    let Some(image) = engine() else { return };
    let front = DockerFront::start().await;
    let dir = tempfile::tempdir().unwrap();
    let api = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let docker_host = format!("tcp://{}", front.addr);
    // The watcher reaches Docker through the front only.
    let node = Proc::start_with_env(
        &api,
        &dir.path().join("n1"),
        &["--swarm", "on"],
        &[("DOCKER_HOST", &docker_host)],
    );
    let http = Http::default();
    wait_for_cluster(&http, std::slice::from_ref(&api), 1).await;
    let tag = format!("{:x}", rand::random::<u32>());
    let web = format!("roo-t-cut-{tag}");
    let key = format!("com.roo.host:cut-{tag}.test:https");
    let mut services = Services {
        image: image.0.clone(),
        names: Vec::new(),
    };
    services.create(
        &web,
        &[
            "--label",
            &format!("OriginHosts=cut-{tag}.test"),
            "--label",
            "DestinationPort=80",
        ],
    );
    until(&http, &node, &key, Some(&format!("http://{web}:80"))).await;

    // Cut: the watcher loses its event stream and its reconciles fail. The service goes away
    // meanwhile; its route stays, since the watcher cannot tell.
    front.set_cut(true);
    docker(&["service", "rm", &web]).unwrap();
    let log = node.data_dir.with_extension("log");
    let failures = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("swarm reconcile failed; routes left as they are")
            .count()
    };
    wait_for(
        "failed reconciles while Docker is unreachable",
        Duration::from_secs(30),
        || async { (failures() >= 2).then_some(()) },
    )
    .await;
    assert_eq!(
        value(&http, &node, &key).await.as_deref(),
        Some(format!("http://{web}:80").as_str()),
        "nothing is deleted while Docker does not answer"
    );

    // Healed: the next reconcile sees the service gone and removes its route.
    front.set_cut(false);
    until(&http, &node, &key, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_labelled_service_gets_its_certificate_from_pebble() {
    let Some(image) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let options = PebbleOptions::new(http_port, tls_port);
    let Some(pebble) = Pebble::start(dir.path(), options).await else {
        return;
    };
    let (node, _) = pebble
        .node(&dir.path().join("n1"), &["--swarm", "on"])
        .await;
    let http = Http::default();
    wait_for(
        "the watcher to hold the lease",
        Duration::from_secs(20),
        || async { value(&http, &node, "com.roo.swarm.lease").await },
    )
    .await;
    let root = pebble.issuing_root().await;
    let tag = format!("{:x}", rand::random::<u32>());
    let host = format!("tls-{tag}.test");
    pebble.point(&host, "127.0.0.1").await;
    let mut services = Services {
        image: image.0.clone(),
        names: Vec::new(),
    };
    let created = Instant::now();
    services.create(
        &format!("roo-t-tls-{tag}"),
        &[
            "--label",
            &format!("OriginHosts={host}"),
            "--label",
            "DestinationPort=80",
        ],
    );
    let addr = format!("127.0.0.1:{tls_port}");
    wait_for(
        "a certificate for the labelled service",
        Duration::from_secs(30),
        || async { served_leaf(&addr, &host, &root).await.ok() },
    )
    .await;
    eprintln!(
        "docker service create to a valid certificate: {:?}",
        created.elapsed()
    );
    // The engine is shared: this node's watcher also routes the labelled services of swarm
    // tests running alongside, and its issuer orders their certificates from this Pebble too
    // (CI once saw two orders so). Exactly one order for this service's host, as the issuer
    // logs its orders.
    let field = format!("host={host} ");
    let placed: Vec<String> = node
        .log_lines("order placed")
        .into_iter()
        .filter(|l| l.contains(&field))
        .collect();
    assert_eq!(
        placed.len(),
        1,
        "orders for {host}: {placed:#?}\nPebble: {:#?}",
        pebble.lines("order")
    );
    assert!(pebble.count("Added order") >= 1);
}
