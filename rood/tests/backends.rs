//! Routes with several backends over real sockets: weighted choice, drains, path prefixes,
//! cohorts, and the API refusing a bad JSON route.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{wait_for, Http, Reply};
use rood::node::Node;

async fn upstream(name: &'static str) -> SocketAddr {
    common::http_server(move |req| common::echo(name, req)).await
}

/// PUT through the API, as every writer does.
async fn put_route(http: &Http, node: &Node, route: &str, value: &str) -> Reply {
    http.put(
        &format!("http://{}/roo/v1/kv/com.roo.host:{route}", node.api_addr),
        value.to_string(),
    )
    .await
    .unwrap()
}

async fn get(http: &Http, node: &Node, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    http.send(
        "GET",
        &format!("http://{}{path}", node.http_addr),
        &all,
        Bytes::new(),
    )
    .await
    .unwrap()
}

fn served_by(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["name"].as_str().unwrap().to_string()
}

/// Waits until requests to `host` reach `backend` (an upstream of that name).
async fn wait_served(http: &Http, node: &Node, host: &str, backend: &str) {
    wait_for(
        &format!("{host} served by {backend}"),
        Duration::from_secs(5),
        || async {
            let r = get(http, node, host, "/", &[]).await;
            (r.status == 200 && served_by(&r) == backend).then_some(())
        },
    )
    .await;
}

fn two_backends(a: SocketAddr, wa: u32, b: SocketAddr, wb: u32) -> String {
    serde_json::json!({"backends": [
        {"name": "v1", "url": format!("http://{a}"), "weight": wa},
        {"name": "v2", "url": format!("http://{b}"), "weight": wb},
    ]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_90_10_split_holds_over_4000_requests_and_is_counted_per_backend() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    let (v1, v2) = (upstream("v1").await, upstream("v2").await);
    let r = put_route(
        &http,
        &node,
        "split.test:http",
        &two_backends(v1, 90, v2, 10),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the split route", Duration::from_secs(5), || async {
        (get(&http, &node, "split.test", "/", &[]).await.status == 200).then_some(())
    })
    .await;

    // 8 clients, 500 requests each.
    let counts: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, counts) = (http.clone(), counts.clone());
            let addr = node.http_addr;
            tokio::spawn(async move {
                for _ in 0..500 {
                    let r = http
                        .send(
                            "GET",
                            &format!("http://{addr}/"),
                            &[("host", "split.test")],
                            Bytes::new(),
                        )
                        .await
                        .unwrap();
                    *counts.lock().unwrap().entry(served_by(&r)).or_default() += 1;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let counts = counts.lock().unwrap().clone();
    let (n1, n2) = (counts["v1"], counts["v2"]);
    assert_eq!(n1 + n2, 4000, "{counts:?}");
    let share = n2 as f64 / 4000.0;
    assert!((share - 0.10).abs() <= 0.03, "v2 took {share}: {counts:?}");
    eprintln!("90/10 split over 4000 requests: {counts:?}");

    let page = http
        .get(&format!("http://{}/metrics", node.api_addr))
        .await
        .unwrap()
        .text();
    let counted = |backend: &str| -> u64 {
        page.lines()
            .filter(|l| {
                l.starts_with("roo_requests_total{")
                    && l.contains("host=\"split.test\"")
                    && l.contains(&format!("backend=\"{backend}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    // The node counted them too, and the readiness check's request.
    assert_eq!(counted("v1") + counted("v2"), 4001, "{page}");
    assert!(counted("v2") as usize >= n2, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weight_zero_drains_a_backend_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    // v2 answers slowly: requests are in flight on it when its weight goes to 0.
    let v1 = upstream("v1").await;
    let v2 = common::http_server(|req| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        common::echo("v2", req).await
    })
    .await;
    put_route(
        &http,
        &node,
        "drain.test:http",
        &two_backends(v1, 50, v2, 50),
    )
    .await;
    wait_served(&http, &node, "drain.test", "v2").await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (http, stop, failures, served) =
                (http.clone(), stop.clone(), failures.clone(), served.clone());
            let addr = node.http_addr;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .send(
                            "GET",
                            &format!("http://{addr}/"),
                            &[("host", "drain.test")],
                            Bytes::new(),
                        )
                        .await;
                    match r {
                        Ok(r) if r.status == 200 => {
                            served.lock().unwrap().push(served_by(&r));
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // Traffic on both, then v2 drained.
    wait_for("requests on v2", Duration::from_secs(5), || async {
        served
            .lock()
            .unwrap()
            .iter()
            .any(|s| s == "v2")
            .then_some(())
    })
    .await;
    let r = put_route(
        &http,
        &node,
        "drain.test:http",
        &two_backends(v1, 50, v2, 0),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Once the change is live, no new request goes to v2: a run of 200 answers in a row from
    // v1 (requests sent before the change may still come back from v2 meanwhile).
    wait_for("v2 drained", Duration::from_secs(5), || async {
        let served = served.lock().unwrap();
        let tail = served.iter().rev().take(200).collect::<Vec<_>>();
        (tail.len() == 200 && tail.iter().all(|s| *s == "v1")).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    let served = served.lock().unwrap();
    eprintln!(
        "{} requests during the drain, {} on v2",
        served.len(),
        served.iter().filter(|s| *s == "v2").count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paths_cohorts_and_the_hosts_own_backends() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    let (site, canary, api, files) = (
        upstream("site").await,
        upstream("canary").await,
        upstream("api").await,
        upstream("files").await,
    );
    let route = serde_json::json!({
        "backends": [
            {"name": "site", "url": format!("http://{site}")},
            {"name": "canary", "url": format!("http://{canary}"), "weight": 0},
        ],
        "match": [
            {"header": "X-Canary", "value": "always", "backend": "canary"},
            {"cookie": "canary", "value": "1", "backend": "canary"},
        ],
        "paths": [
            {"prefix": "/api", "strip_prefix": true, "backends": [{"name": "api", "url": format!("http://{api}")}]},
            {"prefix": "/static", "backends": [{"name": "files", "url": format!("http://{files}")}]},
        ],
    });
    let r = put_route(&http, &node, "app.test:http", &route.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_served(&http, &node, "app.test", "site").await;

    for (path, backend, seen) in [
        ("/", "site", "/"),
        ("/apix", "site", "/apix"),
        ("/api", "api", "/"),
        ("/api/users?page=2", "api", "/users?page=2"),
        ("/static/app.css", "files", "/static/app.css"),
    ] {
        let r = get(&http, &node, "app.test", path, &[]).await;
        assert_eq!(served_by(&r), backend, "{path}");
        assert_eq!(r.json()["uri"], seen, "{path}");
        let prefix = &r.json()["headers"]["x-forwarded-prefix"];
        match backend {
            "api" => assert_eq!(prefix, "/api", "{path}"),
            _ => assert!(prefix.is_null(), "{path}: {prefix}"),
        }
    }
    // Cohorts: a drained backend still takes its cohort; other values do not count.
    for (headers, backend) in [
        (vec![("x-canary", "always")], "canary"),
        (vec![("x-canary", "sometimes")], "site"),
        (vec![("cookie", "theme=dark; canary=1")], "canary"),
        (vec![("cookie", "canary=0")], "site"),
    ] {
        let r = get(&http, &node, "app.test", "/", &headers).await;
        assert_eq!(served_by(&r), backend, "{headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_json_route_is_refused_naming_the_field_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    let v1 = upstream("v1").await;
    let good = two_backends(v1, 1, v1, 1).replace("\"v2\"", "\"v1b\"");
    assert_eq!(
        put_route(&http, &node, "keep.test:http", &good)
            .await
            .status,
        200
    );
    for (value, field) in [
        (
            two_backends(v1, 0, v1, 0).replace("\"v2\"", "\"v1b\""),
            "backends: the weights sum to 0",
        ),
        (
            good.replace("\"v1b\"", "\"v1\""),
            "backends[1].name: \"v1\" given twice",
        ),
        (
            good.replace("\"weight\":1", "\"weight\":-1"),
            "backends[0].weight",
        ),
        (
            good.replace("\"url\"", "\"uri\""),
            "backends[0].uri: unknown field",
        ),
        (
            good.replace(
                "]}",
                "],\"match\":[{\"header\":\"x\",\"value\":\"1\",\"backend\":\"nope\"}]}",
            ),
            "match[0].backend: no backend named \"nope\"",
        ),
        (
            good.replace("]}", "],\"sticky\":{\"cookie\":\"a=b\"}}"),
            "sticky.cookie: not a cookie name",
        ),
    ] {
        let r = put_route(&http, &node, "keep.test:http", &value).await;
        assert_eq!(r.status, 400, "{value}: {}", r.text());
        let body = r.json();
        assert_eq!(body["ok"], false);
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(field), "{value}: {error}");
        assert_eq!(r.text().lines().count(), 1);
    }
    let stored = http
        .get(&format!(
            "http://{}/roo/v1/kv/com.roo.host:keep.test:http",
            node.api_addr
        ))
        .await
        .unwrap();
    assert_eq!(stored.text(), good);
    assert_eq!(
        served_by(&get(&http, &node, "keep.test", "/", &[]).await),
        "v1"
    );
}

/// The `roo_sticky` cookie an answer sets, if any.
fn sticky_cookie(r: &Reply) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("roo_sticky="))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_clients_keep_their_backend_and_address_and_move_when_they_go() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    let (a1, a2, b) = (
        upstream("a1").await,
        upstream("a2").await,
        upstream("b").await,
    );
    let route = |a_urls: &[SocketAddr], a_weight: u32, with_b: bool| {
        let mut backends = vec![serde_json::json!({
            "name": "a",
            "urls": a_urls.iter().map(|u| format!("http://{u}")).collect::<Vec<_>>(),
            "weight": a_weight,
        })];
        if with_b {
            backends
                .push(serde_json::json!({"name": "b", "url": format!("http://{b}"), "weight": 50}));
        }
        serde_json::json!({"backends": backends, "sticky": {"cookie": "roo_sticky"}}).to_string()
    };
    let put = |value: String| {
        let http = http.clone();
        let api = node.api_addr;
        async move {
            let r = http
                .put(
                    &format!("http://{api}/roo/v1/kv/com.roo.host:sticky.test:http"),
                    value,
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    put(route(&[a1, a2], 50, true)).await;
    wait_for("the sticky route", Duration::from_secs(5), || async {
        (get(&http, &node, "sticky.test", "/", &[]).await.status == 200).then_some(())
    })
    .await;

    // New clients are bound where they land; one bound to an address of `a` is followed.
    let (cookie, first) = wait_for("a client bound to a", Duration::from_secs(5), || async {
        let r = get(&http, &node, "sticky.test", "/", &[]).await;
        let cookie = sticky_cookie(&r).expect("a new client gets a cookie");
        cookie.starts_with("a~").then(|| (cookie, served_by(&r)))
    })
    .await;
    let bound = |cookie: String| {
        let (http, node) = (http.clone(), &node);
        async move {
            let header = format!("theme=dark; roo_sticky={cookie}");
            get(&http, node, "sticky.test", "/", &[("cookie", &header)]).await
        }
    };
    for _ in 0..20 {
        let r = bound(cookie.clone()).await;
        assert_eq!(served_by(&r), first);
        assert_eq!(sticky_cookie(&r), None, "a bound client is not bound again");
    }

    // `a` drained: its bound clients stay, new ones go to `b`.
    put(route(&[a1, a2], 0, true)).await;
    wait_for(
        "a drained for new clients",
        Duration::from_secs(5),
        || async {
            let all_b = new_clients_land_on_b(&http, &node, 10).await;
            all_b.then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(served_by(&bound(cookie.clone()).await), first);
    }

    // The bound address leaves the backend: the client moves to the other one, bound anew.
    let other = if first == "a1" { a2 } else { a1 };
    let other_name = if first == "a1" { "a2" } else { "a1" };
    put(route(&[other], 0, true)).await;
    let moved = wait_for("the client moved", Duration::from_secs(5), || async {
        let r = bound(cookie.clone()).await;
        (served_by(&r) == other_name).then(|| sticky_cookie(&r))
    })
    .await;
    let moved = moved.expect("moved clients are bound again");
    assert!(moved.starts_with("a~") && moved != cookie, "{moved}");
    assert_eq!(served_by(&bound(moved.clone()).await), other_name);

    // A client bound to a backend that is gone is bound to one that is there.
    let on_b = wait_for("a client bound to b", Duration::from_secs(5), || async {
        sticky_cookie(&get(&http, &node, "sticky.test", "/", &[]).await)
            .filter(|c| c.starts_with("b~"))
    })
    .await;
    put(route(&[other], 50, false)).await;
    let rebound = wait_for("b's client moved to a", Duration::from_secs(5), || async {
        let r = bound(on_b.clone()).await;
        (served_by(&r) == other_name).then(|| sticky_cookie(&r))
    })
    .await;
    assert!(rebound.is_some_and(|c| c.starts_with("a~")));
}

/// Whether `n` new clients (no cookie) all land on `b`.
async fn new_clients_land_on_b(http: &Http, node: &Node, n: usize) -> bool {
    for _ in 0..n {
        if served_by(&get(http, node, "sticky.test", "/", &[]).await) != "b" {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_checks_take_a_failing_address_out_and_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    let good = upstream("good").await;
    // `flaky` keeps answering requests; only its health endpoint fails while `sick` is set.
    let sick = Arc::new(AtomicBool::new(false));
    let flag = sick.clone();
    let flaky = common::http_server(move |req| {
        let sick = flag.load(Ordering::SeqCst);
        async move {
            if req.uri().path() == "/healthz" && sick {
                let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from("sick")));
                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                return Ok(resp);
            }
            common::echo("flaky", req).await
        }
    })
    .await;
    let route = serde_json::json!({
        "backends": [{"name": "app", "urls": [format!("http://{good}"), format!("http://{flaky}")]}],
        "health": {"path": "/healthz", "interval_ms": 100, "fails": 2, "passes": 2},
    });
    let r = put_route(&http, &node, "health.test:http", &route.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_served(&http, &node, "health.test", "flaky").await;

    let in_a_row = |name: &'static str| {
        let (http, node) = (http.clone(), &node);
        async move {
            for _ in 0..20 {
                if served_by(&get(&http, node, "health.test", "/", &[]).await) != name {
                    return None;
                }
            }
            Some(())
        }
    };
    sick.store(true, Ordering::SeqCst);
    wait_for("flaky out of rotation", Duration::from_secs(5), || {
        in_a_row("good")
    })
    .await;
    sick.store(false, Ordering::SeqCst);
    wait_served(&http, &node, "health.test", "flaky").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_write_keeps_its_owner_and_a_bounded_history() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    let api = node.api_addr;
    let routes = || {
        let http = http.clone();
        async move {
            http.get(&format!("http://{api}/roo/v1/routes"))
                .await
                .unwrap()
                .json()
        }
    };
    let history = || {
        let http = http.clone();
        async move {
            let r = http
                .get(&format!(
                    "http://{api}/roo/v1/routes/hist.test:http/history"
                ))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["history"].as_array().unwrap().clone()
        }
    };
    for port in 1..=25 {
        let r = put_route(
            &http,
            &node,
            "hist.test:http",
            &format!("http://127.0.0.1:{port}"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let listed = routes().await;
    let hist = listed["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "hist.test:http")
        .unwrap()
        .clone();
    assert_eq!(hist["owner"], "api");
    assert_eq!(hist["state"], "ok");
    assert_eq!(hist["value"]["backends"][0]["url"], "http://127.0.0.1:25");
    let h = history().await;
    assert_eq!(h.len(), 20, "bounded: {h:?}");
    assert_eq!(h[0]["value"]["backends"][0]["url"], "http://127.0.0.1:25");
    assert_eq!(h[19]["value"]["backends"][0]["url"], "http://127.0.0.1:6");
    assert_eq!(h[0]["source"], "api");
    assert!(h[0]["rev"].as_u64() > h[1]["rev"].as_u64());

    // Refused: nothing stored, no history.
    let r = put_route(&http, &node, "hist.test:http", "{\"backends\":[]}").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        history().await[0]["value"]["backends"][0]["url"],
        "http://127.0.0.1:25"
    );

    // A removal is history too; the route and its owner go.
    let r = http
        .delete(&format!(
            "http://{api}/roo/v1/kv/com.roo.host:hist.test:http"
        ))
        .await
        .unwrap();
    assert_eq!(r.json()["deleted"], 1);
    let h = history().await;
    assert!(h[0]["value"].is_null(), "{:?}", h[0]);
    assert!(routes().await["routes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["route"] != "hist.test:http"));
    let owner = http
        .get(&format!(
            "http://{api}/roo/v1/kv/com.roo.route.owner:hist.test:http"
        ))
        .await
        .unwrap();
    assert_eq!(owner.status, 404);
    // Removing what is not there changes nothing.
    let r = http
        .delete(&format!(
            "http://{api}/roo/v1/kv/com.roo.host:hist.test:http"
        ))
        .await
        .unwrap();
    assert_eq!(r.json()["deleted"], 0);
    assert_eq!(history().await.len(), h.len());

    // A value stored past the API (an older version, straight into raft) is listed as invalid.
    node.kv
        .put("com.roo.host:old.test:http", b"not a url".to_vec(), None)
        .await
        .unwrap();
    let old = routes().await["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "old.test:http")
        .unwrap()
        .clone();
    assert_eq!(old["state"], "invalid");
    assert_eq!(old["value"], "not a url");
}
