//! The API's access rules over HTTP: no token, the read token, the admin token and a wrong one,
//! against every class of endpoint; private keys only ever to the admin token.

mod common;

use std::time::Duration;

use clap::Parser;
use common::Http;
use rood::config::Config;
use rood::node::Node;

const ADMIN: &str = "admin-token-0123456789";
const READ: &str = "read-token-0123456789";
/// A certificate record for a.test, with a real chain and key (the API refuses others).
fn cert() -> &'static str {
    static CERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let (chain, key, _) = common::TestCa::new("auth test CA").leaf(&["a.test"]);
        serde_json::json!({"cert_pem": chain, "key_pem": key, "source": "manual"}).to_string()
    })
}

/// What only the private key holds.
const PRIVATE_KEY: &str = "PRIVATE KEY-----";

/// The status of `method path` with `token` (Some("") sends a malformed header).
async fn status(
    http: &Http,
    node: &Node,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let url = format!("http://{}{path}", node.api_addr);
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let r = http
        .send(method, &url, &headers, body.to_string())
        .await
        .unwrap();
    if r.status >= 400 {
        let v = r.json();
        assert_eq!(v["ok"], false, "{path}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
        if r.status == 401 {
            assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
        }
    }
    (r.status, r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(
        dir.path(),
        &["--api-token", ADMIN, "--api-read-token", READ],
    )
    .await;
    let http = Http::default();
    // Set up as admin.
    for (k, v) in [
        ("com.roo.host:a.test:https", "http://up:80"),
        ("com.roo.cert:a.test", cert()),
    ] {
        assert_eq!(
            status(
                &http,
                &node,
                "PUT",
                &format!("/roo/v1/kv/{k}"),
                Some(ADMIN),
                v
            )
            .await
            .0,
            200
        );
    }
    let wrong = Some("not-the-token-at-all");
    // (method, path, body, [none, read, admin, wrong]).
    let cases: Vec<(&str, &str, &str, [u16; 4])> = vec![
        ("GET", "/roo/ping", "", [200, 200, 200, 401]),
        (
            "GET",
            "/roo/v1/kv/com.roo.host:a.test:https",
            "",
            [200, 200, 200, 401],
        ),
        ("GET", "/roo/v1/kvs/com.roo.host:", "", [200, 200, 200, 401]),
        ("GET", "/roo/v1/cluster", "", [200, 200, 200, 401]),
        (
            "GET",
            "/roo/v1/kv/com.roo.cert:a.test",
            "",
            [401, 200, 200, 401],
        ),
        ("GET", "/roo/v1/kvs/com.roo.cert:", "", [401, 200, 200, 401]),
        (
            "GET",
            "/roo/v1/kv/com.roo.acme.account",
            "",
            [401, 404, 404, 401],
        ),
        (
            "PUT",
            "/roo/v1/kv/com.roo.host:b.test:https",
            "http://up:80",
            [401, 403, 200, 401],
        ),
        (
            "DELETE",
            "/roo/v1/kv/com.roo.host:b.test:https",
            "",
            [401, 403, 200, 401],
        ),
        (
            "DELETE",
            "/roo/v1/cluster/members/12345",
            "",
            [401, 403, 400, 401],
        ),
    ];
    for (method, path, body, want) in &cases {
        for (i, token) in [None, Some(READ), Some(ADMIN), wrong]
            .into_iter()
            .enumerate()
        {
            let (got, text) = status(&http, &node, method, path, token, body).await;
            // Removing a member that does not exist is the admin's 400 (or a 503 while the
            // cluster is busy); what matters is that the token was accepted.
            let ok = got == want[i] || (want[i] == 400 && got != 401 && got != 403);
            assert!(
                ok,
                "{method} {path} with token #{i}: {got} (want {}) {text}",
                want[i]
            );
        }
    }
    // Malformed Authorization: 401.
    let url = format!(
        "http://{}/roo/v1/kv/com.roo.host:a.test:https",
        node.api_addr
    );
    let r = http
        .send("GET", &url, &[("authorization", "Basic YWRtaW4=")], "")
        .await
        .unwrap();
    assert_eq!(r.status, 401);

    // Private keys: the admin sees them, the read token sees the certificate without.
    let (_, admin_view) = status(
        &http,
        &node,
        "GET",
        "/roo/v1/kv/com.roo.cert:a.test",
        Some(ADMIN),
        "",
    )
    .await;
    assert!(admin_view.contains(PRIVATE_KEY));
    let (_, read_view) = status(
        &http,
        &node,
        "GET",
        "/roo/v1/kv/com.roo.cert:a.test",
        Some(READ),
        "",
    )
    .await;
    assert!(
        read_view.contains("BEGIN CERTIFICATE") && !read_view.contains(PRIVATE_KEY),
        "{read_view}"
    );
    // A scan of everything without a token leaves secret keys out.
    let (_, all) = status(&http, &node, "GET", "/roo/v1/kvs/com.roo.", None, "").await;
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    let keys: Vec<&String> = all["results"].as_object().unwrap().keys().collect();
    assert!(
        keys.iter().any(|k| k.starts_with("com.roo.host:")),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("com.roo.cert:")),
        "{keys:?}"
    );
    // Refused writes changed nothing.
    let (_, route) = status(
        &http,
        &node,
        "GET",
        "/roo/v1/kv/com.roo.host:b.test:https",
        None,
        "",
    )
    .await;
    assert!(route.contains("not found"), "{route}");
    let (_, cert) = status(
        &http,
        &node,
        "GET",
        "/roo/v1/kv/com.roo.cert:a.test",
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(cert, self::cert());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_api_still_hides_private_keys_and_tokens_load_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let open = common::node(&dir.path().join("open"), &[]).await;
    let http = Http::default();
    assert_eq!(
        status(
            &http,
            &open,
            "PUT",
            "/roo/v1/kv/com.roo.cert:a.test",
            None,
            cert()
        )
        .await
        .0,
        200
    );
    let (code, view) = status(
        &http,
        &open,
        "GET",
        "/roo/v1/kv/com.roo.cert:a.test",
        None,
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert!(!view.contains(PRIVATE_KEY), "{view}");
    // The watch stream hides it too.
    let event = first_watch_event(&open, "com.roo.cert:").await;
    assert_eq!(event["key"], "com.roo.cert:a.test");
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD
        .decode(event["value"].as_str().unwrap())
        .unwrap();
    let value = String::from_utf8(value).unwrap();
    assert!(
        value.contains("BEGIN CERTIFICATE") && !value.contains(PRIVATE_KEY),
        "{value}"
    );
    open.stop().await;

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let closed = common::node(
        &dir.path().join("closed"),
        &["--api-token-file", token_file.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        status(
            &http,
            &closed,
            "PUT",
            "/roo/v1/kv/com.roo.host:a.test:http",
            None,
            "http://x:1"
        )
        .await
        .0,
        401
    );
    assert_eq!(
        status(
            &http,
            &closed,
            "PUT",
            "/roo/v1/kv/com.roo.host:a.test:http",
            Some(ADMIN),
            "http://x:1"
        )
        .await
        .0,
        200
    );
    closed.stop().await;

    // Bad settings stop the start with a line naming them.
    let mut short = Config::try_parse_from(["rood", "--api-token", "short"]).unwrap();
    assert!(short
        .load_secret_files()
        .unwrap_err()
        .contains("ROO_API_TOKEN"));
    let mut missing =
        Config::try_parse_from(["rood", "--api-token-file", "/nonexistent/token"]).unwrap();
    assert!(missing
        .load_secret_files()
        .unwrap_err()
        .contains("ROO_API_TOKEN_FILE"));
}

/// The first event of a watch from revision 0, read off the raw stream.
async fn first_watch_event(node: &Node, prefix: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.api_addr).await.unwrap();
    let req = format!("GET /roo/v1/watch/{prefix}?rev=0 HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(line) = text.lines().find(|l| l.starts_with("{\"rev\"")) {
            return serde_json::from_str(line).unwrap();
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a watch event within 5 s")
            .unwrap();
        assert!(n > 0, "watch stream closed: {text}");
        seen.extend_from_slice(&buf[..n]);
    }
}
