//! Rollouts on a three-node cluster, over sockets, with upstreams whose error rate and latency
//! the test sets and traffic through every node's proxy: a healthy canary promotes through every
//! step, one answering 10% 5xx and a slow one abort at the failure limit with the canary at
//! weight 0, no traffic holds, pause holds and resume goes on, a frozen route refuses a start,
//! the statistics come from every node, and a new leader continues a rollout at its step.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{wait_for, Http, Proc};
use http_body_util::Full;
use serde_json::{json, Value};

/// How an upstream answers: every `fail_every`th request with 503 (0: never), each after
/// `delay`.
async fn version(fail_every: u64, delay: Duration) -> std::net::SocketAddr {
    let seen = Arc::new(AtomicU64::new(0));
    common::http_server(move |_req| {
        let seen = seen.clone();
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(delay).await;
            let status = match fail_every {
                0 => 200,
                k if n.is_multiple_of(k) => 503,
                _ => 200,
            };
            let mut resp = http::Response::new(Full::new(Bytes::from_static(b"ok")));
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(resp)
        }
    })
    .await
}

/// Requests for `host` through the proxies at `proxies`, in turn, until `stop`.
fn drive(host: &str, proxies: Arc<std::sync::Mutex<Vec<String>>>, stop: Arc<AtomicBool>) {
    let host = host.to_string();
    tokio::spawn(async move {
        let http = Http::default();
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let to = {
                let p = proxies.lock().unwrap();
                p[i % p.len()].clone()
            };
            i += 1;
            let _ = http
                .send("GET", &format!("http://{to}/"), &[("host", &host)], "")
                .await;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    });
}

/// The route value of two backends, v1 at 100 and v2 at 0.
fn two_versions(v1: std::net::SocketAddr, v2: std::net::SocketAddr) -> String {
    json!({"backends": [
        {"name": "v1", "url": format!("http://{v1}"), "weight": 100},
        {"name": "v2", "url": format!("http://{v2}"), "weight": 0},
    ]})
    .to_string()
}

struct Cluster {
    procs: Vec<Proc>,
    /// Each node's proxy, `ip:port`.
    proxies: Arc<std::sync::Mutex<Vec<String>>>,
    http: Http,
}

impl Cluster {
    async fn start(dir: &std::path::Path) -> Cluster {
        let port = common::free_port("127.0.0.1").to_string();
        let http_addr = format!("{{ip}}:{port}");
        let procs = common::process_cluster(dir, 3, &["--http-addr", &http_addr]).await;
        let proxies = procs
            .iter()
            .map(|p| format!("{}:{port}", p.addr.rsplit_once(':').unwrap().0))
            .collect();
        Cluster {
            procs,
            proxies: Arc::new(std::sync::Mutex::new(proxies)),
            http: Http::default(),
        }
    }

    fn api(&self, i: usize) -> &str {
        &self.procs[i].addr
    }

    /// A node that runs.
    fn live(&self) -> &str {
        let p = self.procs.iter().find(|p| p.is_running()).unwrap();
        &p.addr
    }

    async fn put_route(&self, name: &str, value: &str) {
        let url = format!("http://{}/roo/v1/kv/com.roo.host:{name}", self.api(0));
        let r = self.http.put(&url, value.to_string()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Starts a rollout through node `i`; the answer.
    async fn begin(&self, i: usize, name: &str, plan: Value) -> common::Reply {
        let url = format!("http://{}/roo/v1/rollouts/{name}", self.api(i));
        self.http.put(&url, plan.to_string()).await.unwrap()
    }

    async fn act(&self, i: usize, name: &str, action: &str) -> common::Reply {
        let url = format!("http://{}/roo/v1/rollouts/{name}/{action}", self.api(i));
        self.http.send("POST", &url, &[], "").await.unwrap()
    }

    async fn rollout(&self, i: usize, name: &str) -> Value {
        let url = format!("http://{}/roo/v1/rollouts/{name}", self.api(i));
        let r = self.http.get(&url).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Waits for the rollout to be in `state`, through any live node.
    async fn wait_state(&self, name: &str, state: &str, limit: Duration) -> Value {
        wait_for(&format!("{name} {state}"), limit, || async {
            for i in 0..self.procs.len() {
                if !self.procs[i].is_running() {
                    continue;
                }
                let url = format!("http://{}/roo/v1/rollouts/{name}", self.api(i));
                let r = self.http.get(&url).await.ok()?;
                let v = r.json();
                return (v["state"] == state).then_some(v);
            }
            None
        })
        .await
    }

    /// The route as the routes list gives it.
    async fn route(&self, name: &str) -> Value {
        let route = common::listed_route(&self.http, self.live(), name).await;
        assert!(!route.is_null(), "{name} is not listed");
        route
    }

    /// The route's backends' weights, by name.
    async fn weights(&self, name: &str) -> Vec<(String, u64)> {
        common::backend_weights(&self.route(name).await)
    }
}

/// rooctl against `api`: whether it succeeded, and what it printed.
fn rooctl(api: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rooctl"))
        .env("ROO_SERVER", format!("http://{api}"))
        .env_remove("ROO_TOKEN")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn plan(steps: &[u32], extra: Value) -> Value {
    let mut p = json!({"canary": "v2", "steps": steps, "interval_ms": 1000, "min_requests": 10});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canaries_promote_abort_hold_and_pause_on_the_proxys_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path()).await;
    let stable = version(0, Duration::ZERO).await;
    let healthy = version(0, Duration::ZERO).await;
    let failing = version(10, Duration::ZERO).await;
    let slow = version(0, Duration::from_millis(60)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let routes = [
        ("good.test:http", healthy),
        ("bad.test:http", failing),
        ("slow.test:http", slow),
        ("idle.test:http", healthy),
        ("paused.test:http", healthy),
        ("frozen.test:http", healthy),
    ];
    for (name, canary) in routes {
        c.put_route(name, &two_versions(stable, canary)).await;
    }
    for host in ["good.test", "bad.test", "slow.test", "paused.test"] {
        drive(host, c.proxies.clone(), stop.clone());
    }

    // Bad plans and routes are refused with the reason; nothing is stored.
    for (name, body, status, why) in [
        ("good.test:http", json!({"canary": "v3"}), 400, "no backend"),
        (
            "good.test:http",
            json!({"canary": "v2", "steps": [50, 10]}),
            400,
            "steps",
        ),
        ("none.test:http", json!({"canary": "v2"}), 404, "no route"),
    ] {
        let r = c.begin(1, name, body).await;
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.json()["ok"], false);
        assert!(
            r.json()["error"].as_str().unwrap().contains(why),
            "{}",
            r.text()
        );
    }
    let url = format!("http://{}/roo/v1/rollouts/good.test:http", c.api(0));
    assert_eq!(c.http.get(&url).await.unwrap().status, 404);

    // A frozen route takes no rollout.
    let freeze = format!("http://{}/roo/v1/routes/frozen.test:http/freeze", c.api(0));
    assert_eq!(
        c.http.send("POST", &freeze, &[], "").await.unwrap().status,
        200
    );
    let r = c
        .begin(2, "frozen.test:http", plan(&[50, 100], json!({})))
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("frozen"), "{}", r.text());
    assert_eq!(
        c.weights("frozen.test:http").await[1],
        ("v2".to_string(), 0)
    );

    let started = Instant::now();
    for (name, steps, extra) in [
        ("good.test:http", vec![20, 50, 100], json!({})),
        ("bad.test:http", vec![50, 100], json!({"failure_limit": 2})),
        ("slow.test:http", vec![50, 100], json!({"max_p99_ms": 30})),
        ("idle.test:http", vec![50, 100], json!({})),
        ("paused.test:http", vec![50, 100], json!({})),
    ] {
        let r = c.begin(1, name, plan(&steps, extra)).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.json()["rollout"]["weight"], steps[0]);
    }
    // One at a time.
    let r = c.begin(2, "good.test:http", plan(&[50], json!({}))).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = c.act(0, "paused.test:http", "pause").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.weights("good.test:http").await[1], ("v2".to_string(), 20));
    assert_eq!(c.route("paused.test:http").await["state"], "paused");
    assert_eq!(c.route("good.test:http").await["state"], "progressing");

    // The healthy canary passes every step and becomes the stable backend.
    let good = c
        .wait_state("good.test:http", "promoted", Duration::from_secs(30))
        .await;
    let verdicts: Vec<(u64, &str)> = good["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["weight"].as_u64().unwrap(),
                k["verdict"].as_str().unwrap(),
            )
        })
        .filter(|(_, v)| *v != "hold")
        .collect();
    assert_eq!(
        verdicts,
        vec![(20, "pass"), (50, "pass"), (100, "pass")],
        "{good}"
    );
    assert_eq!(
        c.weights("good.test:http").await,
        vec![("v1".to_string(), 0), ("v2".to_string(), 100)]
    );

    // 10% 5xx, and a p99 over the limit: aborted at the second failed check, canary at 0.
    for name in ["bad.test:http", "slow.test:http"] {
        let r = c.wait_state(name, "aborted", Duration::from_secs(30)).await;
        let failed: Vec<&Value> = r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["verdict"] == "fail")
            .collect();
        assert_eq!(failed.len(), 2, "{r}");
        assert_eq!(r["failures"], 2);
        assert_eq!(r["weight"], 0);
        assert_eq!(
            c.weights(name).await,
            vec![("v1".to_string(), 100), ("v2".to_string(), 0)]
        );
        if name == "bad.test:http" {
            let rate = failed[0]["success_rate"].as_f64().unwrap();
            assert!((0.85..0.95).contains(&rate), "{r}");
        } else {
            assert!(failed[0]["p99_ms"].as_f64().unwrap() > 30.0, "{r}");
        }
    }
    let abort_time = started.elapsed();
    eprintln!("start to both aborts: {abort_time:?}");

    // No traffic holds at the first step; a paused rollout makes no checks.
    let idle = c.rollout(2, "idle.test:http").await;
    assert_eq!(
        (idle["state"].as_str(), idle["step"].as_u64()),
        (Some("progressing"), Some(0))
    );
    let holds = idle["checks"].as_array().unwrap();
    assert!(holds.len() >= 2, "{idle}");
    assert!(
        holds
            .iter()
            .all(|k| k["verdict"] == "hold" && k["requests"].as_u64() < Some(10)),
        "{idle}"
    );
    let paused = c.rollout(2, "paused.test:http").await;
    assert_eq!(paused["state"], "paused");
    assert!(paused["checks"].as_array().unwrap().is_empty(), "{paused}");
    assert_eq!(c.act(1, "paused.test:http", "pause").await.status, 409);
    // Gitopper's revision metric: each route's revision and state.
    let page = c
        .http
        .get(&format!("http://{}/metrics", c.api(1)))
        .await
        .unwrap()
        .text();
    let info = |route: &str| {
        page.lines()
            .find(|l| l.starts_with("roo_route_info{") && l.contains(&format!("route=\"{route}\"")))
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert!(
        info("paused.test:http").contains("state=\"paused\""),
        "{page}"
    );
    assert!(
        info("frozen.test:http").contains("state=\"frozen\""),
        "{page}"
    );
    assert!(info("good.test:http").contains("state=\"ok\""), "{page}");
    // rooctl reads the same.
    let (ok, out) = rooctl(
        c.api(2),
        &["rollout", "status", "paused.test", "--scheme", "http"],
    );
    assert!(ok && out.contains("paused at step 0"), "{out}");
    assert_eq!(c.act(1, "paused.test:http", "resume").await.status, 200);
    c.wait_state("paused.test:http", "promoted", Duration::from_secs(30))
        .await;

    // Abort by hand: the canary goes to 0 at once.
    assert_eq!(c.act(0, "idle.test:http", "abort").await.status, 200);
    assert_eq!(c.weights("idle.test:http").await[1], ("v2".to_string(), 0));
    assert_eq!(c.act(0, "idle.test:http", "resume").await.status, 409);

    // A route removed under its rollout ends it.
    assert_eq!(
        c.begin(1, "idle.test:http", plan(&[50], json!({})))
            .await
            .status,
        200
    );
    let url = format!("http://{}/roo/v1/kv/com.roo.host:idle.test:http", c.api(0));
    assert_eq!(c.http.delete(&url).await.unwrap().status, 200);
    c.wait_state("idle.test:http", "aborted", Duration::from_secs(30))
        .await;

    // The stats come from every node: each proxied some of the traffic.
    let url = format!(
        "http://{}/roo/v1/stats/bad.test:http?window_s=600",
        c.api(2)
    );
    let s = c.http.get(&url).await.unwrap().json();
    assert_eq!(s["nodes"]["answered"].as_array().unwrap().len(), 3, "{s}");
    let v2 = &s["backends"]["v2"];
    assert!(v2["requests"].as_u64().unwrap() >= 20, "{s}");
    assert!(v2["success_rate"].as_f64().unwrap() < 0.95, "{s}");
    assert!(
        s["backends"]["v1"]["success_rate"].as_f64().unwrap() == 1.0,
        "{s}"
    );
    for bad in ["window_s=0", "window_s=601", "window_s=x"] {
        let url = format!("http://{}/roo/v1/stats/bad.test:http?{bad}", c.api(0));
        assert_eq!(c.http.get(&url).await.unwrap().status, 400, "{bad}");
    }
    let (ok, out) = rooctl(
        c.api(0),
        &["stats", "bad.test", "--scheme", "http", "--window-s", "600"],
    );
    assert!(ok && out.lines().any(|l| l.starts_with("v2")), "{out}");
    let (ok, out) = rooctl(
        c.api(0),
        &["rollout", "abort", "bad.test", "--scheme", "http"],
    );
    assert!(!ok && out.contains("aborted already"), "{out}");
    // The peers' part needs the cluster secret.
    let url = format!("http://{}/roo/v1/peer/stats/bad.test:http", c.api(0));
    assert_eq!(c.http.get(&url).await.unwrap().status, 401);

    // Each step and end told the activity stream, in order.
    let events = common::events(&c.http, c.api(1), "?type=rollout.").await;
    let of = |route: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["subject"] == route && e["type"] != "rollout.check")
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        of("good.test:http"),
        [
            "rollout.started",
            "rollout.step",
            "rollout.step",
            "rollout.promoted"
        ],
    );
    assert_eq!(of("bad.test:http"), ["rollout.started", "rollout.aborted"]);
    assert_eq!(
        of("paused.test:http"),
        [
            "rollout.started",
            "rollout.paused",
            "rollout.resumed",
            "rollout.step",
            "rollout.promoted"
        ],
    );
    stop.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_continues_a_rollout_at_its_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path()).await;
    let (stable, canary) = (
        version(0, Duration::ZERO).await,
        version(0, Duration::ZERO).await,
    );
    let name = "steps.test:http";
    c.put_route(name, &two_versions(stable, canary)).await;
    let stop = Arc::new(AtomicBool::new(false));
    drive("steps.test", c.proxies.clone(), stop.clone());
    let steps: Vec<u32> = (1..=8).map(|i| i * 12).chain([100]).collect();
    let r = c
        .begin(0, name, plan(&steps, json!({"interval_ms": 1500})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the third step", Duration::from_secs(30), || async {
        (c.rollout(0, name).await["step"].as_u64() >= Some(2)).then_some(())
    })
    .await;

    let addrs: Vec<String> = c.procs.iter().map(|p| p.addr.clone()).collect();
    let status = c.http.cluster(&addrs[0]).await.unwrap();
    let leader_addr = common::addr_of(&status, status["leader_id"].as_u64().unwrap());
    let at = addrs.iter().position(|a| *a == leader_addr).unwrap();
    c.procs[at].kill();
    c.proxies.lock().unwrap().remove(at);
    let rest: Vec<String> = addrs
        .iter()
        .filter(|a| **a != leader_addr)
        .cloned()
        .collect();
    common::wait_for_cluster(&c.http, &rest, 3).await;

    let done = c
        .wait_state(name, "promoted", Duration::from_secs(60))
        .await;
    stop.store(true, Ordering::SeqCst);
    // Every step once, in order, across the leader change.
    let live = (at + 1) % 3;
    let events = common::events(&c.http, c.api(live), "?type=rollout.step").await;
    let stepped: Vec<u64> = events
        .iter()
        .filter(|e| e["subject"] == name)
        .map(|e| e["detail"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        stepped,
        (1..steps.len() as u64).collect::<Vec<_>>(),
        "{done}"
    );
    let passes = done["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["verdict"] == "pass")
        .count();
    assert_eq!(passes, steps.len(), "{done}");
    // A check made while the old leader was gone names it as missing, or none was due then.
    assert_eq!(c.weights(name).await[1], ("v2".to_string(), 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooctl_load_shows_each_backend_by_the_header_the_route_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let (http, api) = (Http::default(), node.api_addr.to_string());
    let (v1, v2) = (
        version(0, Duration::ZERO).await,
        version(2, Duration::ZERO).await,
    );
    let value = json!({"expose_backend": true, "backends": [
        {"name": "v1", "url": format!("http://{v1}"), "weight": 50},
        {"name": "v2", "url": format!("http://{v2}"), "weight": 50},
    ]});
    let url = format!("http://{api}/roo/v1/kv/com.roo.host:load.test:http");
    assert_eq!(http.put(&url, value.to_string()).await.unwrap().status, 200);
    let proxy = format!("http://{}/", node.http_addr);
    let named = wait_for("the route", Duration::from_secs(10), || async {
        let r = http
            .send("GET", &proxy, &[("host", "load.test")], "")
            .await
            .ok()?;
        let name = r.headers.get("x-roo-backend")?.to_str().ok()?.to_string();
        Some(name)
    })
    .await;
    assert!(named == "v1" || named == "v2", "{named}");

    let args = [
        "load",
        &proxy,
        "--host",
        "load.test",
        "--rate",
        "100",
        "--duration",
        "2",
        "--concurrency",
        "2",
    ];
    let (ok, out) = rooctl(&api, &args);
    assert!(ok, "{out}");
    // Per second and backend: requests and errors; v2 fails every other answer.
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let sum = |backend: &str, col: usize| -> u64 {
        rows.iter()
            .filter(|r| r[1] == backend)
            .map(|r| r[col].parse::<u64>().unwrap())
            .sum()
    };
    assert!(sum("v1", 2) >= 40 && sum("v2", 2) >= 40, "{out}");
    assert_eq!(sum("v1", 3), 0, "{out}");
    assert!(sum("v2", 3) >= 15, "{out}");
    assert!(rows.iter().all(|r| r[0] == "0" || r[0] == "1"), "{out}");
    let (ok, out) = rooctl(&api, &["load", "ftp://x", "--duration", "1"]);
    assert!(!ok && out.contains("http://"), "{out}");

    // The 502 roo answers for a backend that is down names that backend too.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let value = json!({"expose_backend": true, "backends": [
        {"name": "gone", "url": format!("http://{gone_addr}")},
    ]});
    let url = format!("http://{api}/roo/v1/kv/com.roo.host:gone.test:http");
    assert_eq!(http.put(&url, value.to_string()).await.unwrap().status, 200);
    let r = wait_for("the route", Duration::from_secs(10), || async {
        let r = http
            .send("GET", &proxy, &[("host", "gone.test")], "")
            .await
            .ok()?;
        (r.status != 404).then_some(r)
    })
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["x-roo-backend"], "gone");
}
