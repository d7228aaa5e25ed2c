//! `GET /metrics`: a Prometheus text page that a Prometheus parser reads, whose counters move
//! with the traffic that went through the proxy.

mod common;

use std::time::Duration;

use common::{wait_for, Http};

/// The samples of a metrics page: (name, labels, value).
fn samples(page: &str) -> Vec<prometheus_parse::Sample> {
    let lines = page.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .expect("a Prometheus text page")
        .samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &[]).await;
    let http = Http::default();
    let api = node.api_addr.to_string();
    let up = common::upstream("ok").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (key, value) in [
        ("com.roo.host:m.test:http", format!("http://{up}")),
        ("com.roo.host:dead.test:http", format!("http://{dead}")),
    ] {
        let r = http
            .put(&format!("http://{api}/roo/v1/kv/{key}"), value)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let proxy = format!("http://{}/", node.http_addr);
    wait_for("the route", Duration::from_secs(10), || async {
        let r = http
            .send("GET", &proxy, &[("host", "m.test")], "")
            .await
            .ok()?;
        (r.status == 200).then_some(())
    })
    .await;
    let before = samples(
        &http
            .get(&format!("http://{api}/metrics"))
            .await
            .unwrap()
            .text(),
    );
    let ok_before = value(
        &before,
        "roo_requests_total",
        &[("host", "m.test"), ("status", "2xx")],
    )
    .unwrap_or(0.0);
    for _ in 0..3 {
        let r = http
            .send("GET", &proxy, &[("host", "m.test")], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    for host in ["unknown-1.test", "unknown-2.test"] {
        assert_eq!(
            http.send("GET", &proxy, &[("host", host)], "")
                .await
                .unwrap()
                .status,
            404
        );
    }
    assert_eq!(
        http.send("GET", &proxy, &[("host", "dead.test")], "")
            .await
            .unwrap()
            .status,
        502
    );
    // A TLS handshake without a certificate for its name fails.
    let tcp = tokio::net::TcpStream::connect(node.https_addr)
        .await
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("nocert.test").unwrap();
    assert!(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .is_err()
    );

    // The server counts the failure once its side of the handshake has ended, which may be
    // after the client has seen it.
    let r = wait_for(
        "the failed handshake in the metrics",
        Duration::from_secs(5),
        || {
            let (http, url) = (&http, format!("http://{api}/metrics"));
            async move {
                let r = http.get(&url).await.ok()?;
                let failures = value(&samples(&r.text()), "roo_tls_handshake_failures_total", &[]);
                failures.is_some_and(|n| n >= 1.0).then_some(r)
            }
        },
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("openmetrics"));
    let after = samples(&r.text());
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", r.text()))
    };
    assert_eq!(
        get(
            "roo_requests_total",
            &[("host", "m.test"), ("status", "2xx")]
        ) - ok_before,
        3.0
    );
    // Unrouted hosts share one label value.
    assert_eq!(
        get("roo_requests_total", &[("host", "-"), ("status", "4xx")]),
        2.0
    );
    assert_eq!(
        get(
            "roo_requests_total",
            &[("host", "dead.test"), ("status", "5xx")]
        ),
        1.0
    );
    assert!(get("roo_upstream_connect_errors_total", &[]) >= 1.0);
    assert!(get("roo_upstream_ejections_total", &[]) >= 1.0);
    assert!(get("roo_request_duration_seconds_count", &[("scheme", "http")]) >= 6.0);
    // Per backend, as the statistics count it: the dead upstream's 502 is its backend's.
    let dead = [("route", "dead.test:http")];
    assert_eq!(
        get("roo_backend_request_duration_seconds_count", &dead),
        1.0
    );
    let inf = r#"roo_backend_request_duration_seconds_bucket{le="+Inf",route="dead.test:http",backend="default"} 1"#;
    assert!(r.text().lines().any(|l| l == inf), "{}", r.text());
    assert!(get("roo_tls_handshake_failures_total", &[]) >= 1.0);
    assert!(value(&after, "roo_open_connections", &[("scheme", "http")]).is_some());
    assert_eq!(get("roo_routes", &[]), 2.0);
    assert_eq!(get("roo_certificates", &[]), 0.0);
    assert_eq!(get("roo_raft_is_leader", &[]), 1.0);
    assert!(get("roo_raft_term", &[]) >= 1.0);
    assert!(get("roo_raft_applied_index", &[]) >= 3.0);
    assert!(get("roo_raft_commit_index", &[]) >= get("roo_raft_applied_index", &[]) - 1.0);
    node.stop().await;
}
