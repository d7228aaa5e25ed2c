//! rooctl against a live node, each command, table and JSON output, and API errors as one line
//! with a non-zero exit.

mod common;

use std::process::Command;

const ADMIN: &str = "admin-token-0123456789";

/// Runs rooctl against `server`; (exit success, stdout, stderr).
fn rooctl(server: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rooctl"));
    cmd.env("ROO_SERVER", server)
        .env_remove("ROO_TOKEN")
        .args(args);
    if let Some(t) = token {
        cmd.env("ROO_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_live_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &["--api-token", ADMIN]).await;
    let api = node.api_addr.to_string();
    let server = format!("http://{api}");
    let admin = Some(ADMIN);

    // routes add / ls / rm.
    let (ok, out, err) = rooctl(
        &server,
        admin,
        &["routes", "add", "App.Test:8443", "http://tasks.app_web:80"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("com.roo.host:app.test:8443:https"), "{out}");
    assert!(
        rooctl(
            &server,
            admin,
            &[
                "routes",
                "add",
                "plain.test",
                "http://web:80",
                "--scheme",
                "http"
            ]
        )
        .0
    );
    let (ok, out, _) = rooctl(&server, None, &["routes", "ls"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("HOST") && lines[0].contains("DESTINATION"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("app.test")
            && l.contains("8443")
            && l.contains("http://tasks.app_web:80")),
        "{out}"
    );
    let (ok, out, _) = rooctl(&server, None, &["routes", "ls", "-o", "json"]);
    assert!(ok);
    let routes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(routes.as_array().unwrap().len(), 2);
    assert!(
        rooctl(
            &server,
            admin,
            &["routes", "rm", "plain.test", "--scheme", "http"]
        )
        .0
    );
    let (ok, _, err) = rooctl(
        &server,
        admin,
        &["routes", "rm", "plain.test", "--scheme", "http"],
    );
    assert!(!ok && err.contains("no route"), "{err}");
    // Without --scheme, rm finds the route whatever its scheme.
    assert!(
        rooctl(
            &server,
            admin,
            &[
                "routes",
                "add",
                "both.test",
                "http://web:80",
                "--scheme",
                "http"
            ]
        )
        .0
    );
    assert!(
        rooctl(
            &server,
            admin,
            &["routes", "add", "both.test", "http://web:80"]
        )
        .0
    );
    let (ok, out, err) = rooctl(&server, admin, &["routes", "rm", "both.test", "-o", "json"]);
    assert!(ok, "{err}");
    let removed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        removed["key"], "com.roo.host:both.test:http, com.roo.host:both.test:https",
        "{out}"
    );
    let (ok, _, err) = rooctl(&server, admin, &["routes", "rm", "both.test"]);
    assert!(
        !ok && err.contains("no route for both.test on any scheme"),
        "{err}"
    );

    // kv put / get / ls.
    assert!(rooctl(&server, admin, &["kv", "put", "custom.key", "v1"]).0);
    assert_eq!(
        rooctl(&server, None, &["kv", "get", "custom.key"]).1.trim(),
        "v1"
    );
    let (_, out, _) = rooctl(&server, None, &["kv", "ls", "custom."]);
    assert!(out.contains("custom.key") && out.contains("v1"), "{out}");
    // JSON for scripts: the value and its revision, not the raw value.
    let (ok, out, _) = rooctl(&server, None, &["kv", "get", "custom.key", "-o", "json"]);
    let got: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        ok && got["key"] == "custom.key" && got["value"] == "v1" && got["rev"].is_u64(),
        "{out}"
    );
    // kv rm, and rm of what is not there.
    assert!(rooctl(&server, admin, &["kv", "rm", "custom.key"]).0);
    let (ok, _, err) = rooctl(&server, admin, &["kv", "rm", "custom.key"]);
    assert!(!ok && err.contains("no key custom.key"), "{err}");
    // The token from a file, as from a Docker secret.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let (ok, _, err) = rooctl(
        &server,
        None,
        &[
            "kv",
            "put",
            "from.file",
            "x",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    // A reader that goes away early: no panic, no error.
    for i in 0..2000 {
        node.kv
            .put(&format!("many.{i:04}"), vec![b'v'; 64], None)
            .await
            .unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_rooctl"))
        .env("ROO_SERVER", &server)
        .args(["kv", "ls", "many."])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("panic"),
        "{:?} {err}",
        out.status
    );

    // certs ls: a manual certificate and an ACME status with its last error.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["app.test".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rooctl test issuer");
    let cert = params.self_signed(&key).unwrap();
    // certs add from PEM files.
    let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (ok, out, err) = rooctl(
        &server,
        admin,
        &[
            "certs",
            "add",
            "app.test",
            "--cert",
            cert_file.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("com.roo.cert:app.test"), "{out}{err}");
    // Another host's certificate is refused, with the API's reason.
    let (ok, _, err) = rooctl(
        &server,
        admin,
        &[
            "certs",
            "add",
            "other.test",
            "--cert",
            cert_file.to_str().unwrap(),
            "--key",
            key_file.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains("does not name other.test") && err.contains("400"),
        "{err}"
    );
    let status = serde_json::json!({"failures": 2, "last_error": "connection refused", "last_attempt": 1, "next_attempt": 2});
    assert!(
        rooctl(
            &server,
            admin,
            &[
                "kv",
                "put",
                "com.roo.acme.status:down.test",
                &status.to_string()
            ]
        )
        .0
    );
    let (ok, _, err) = rooctl(&server, None, &["certs", "ls"]);
    assert!(
        !ok && err.lines().count() == 1 && err.contains("401"),
        "needs a token: {err}"
    );
    let (ok, out, err) = rooctl(&server, admin, &["certs", "ls"]);
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.contains("app.test")
            && l.contains("rooctl test issuer")
            && l.contains("manual")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("down.test") && l.contains("connection refused")),
        "{out}"
    );

    // certs rm, and rm of one that is not there.
    assert!(rooctl(&server, admin, &["certs", "rm", "app.test"]).0);
    let (_, out, _) = rooctl(&server, admin, &["certs", "ls"]);
    assert!(!out.contains("app.test"), "{out}");
    let (ok, _, err) = rooctl(&server, admin, &["certs", "rm", "app.test"]);
    assert!(!ok && err.contains("no certificate"), "{err}");

    // cluster status / remove.
    let (ok, out, _) = rooctl(&server, None, &["cluster", "status"]);
    assert!(ok && out.contains("leader") && out.contains(&api), "{out}");
    // Its own row, as the leader sees it: reachable, no lag.
    assert!(
        out.lines()
            .any(|l| l.contains("leader") && l.contains("yes") && l.trim_end().ends_with('0')),
        "{out}"
    );
    let (ok, _, err) = rooctl(&server, admin, &["cluster", "remove", "12345"]);
    assert!(!ok && err.lines().count() == 1, "{err}");

    // Errors: a wrong token, no server.
    let (ok, _, err) = rooctl(
        &server,
        Some("wrong-token-0123456789"),
        &["routes", "add", "x.test", "http://y:1"],
    );
    assert!(
        !ok && err.lines().count() == 1 && err.contains("invalid token"),
        "{err}"
    );
    let dead = format!("http://127.0.0.1:{}", common::free_port("127.0.0.1"));
    let (ok, _, err) = rooctl(&dead, None, &["routes", "ls"]);
    assert!(!ok && err.lines().count() == 1, "{err}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_webhooks() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &["--api-token", ADMIN]).await;
    let server = format!("http://{}", node.api_addr);
    let admin = Some(ADMIN);
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = received.clone();
    let receiver = common::http_server(move |_req| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, std::convert::Infallible>(http::Response::new(Default::default())) }
    })
    .await;

    // A live follower first, so that it sees what comes next as it happens.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_rooctl"))
        .env("ROO_SERVER", &server)
        .args(["events", "--follow", "--type", "route."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let header = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert!(header.starts_with("ID  TIME  TYPE"), "{header}");

    let url = format!("http://{receiver}/hook");
    let (ok, out, err) = rooctl(
        &server,
        admin,
        &[
            "webhooks",
            "add",
            "ops",
            &url,
            "--events",
            "route.,certificate.",
            "--secret",
            "s3cret",
        ],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = rooctl(&server, admin, &["webhooks", "add", "bad", "ftp://x/"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("not http:// or https://") && err.lines().count() == 1,
        "{err}"
    );
    let (ok, out, err) = rooctl(
        &server,
        admin,
        &["routes", "add", "ev.test", "http://web:80"],
    );
    assert!(ok, "{out}{err}");

    let live = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert!(
        live.contains("route.added") && live.contains("ev.test:https"),
        "{live}"
    );
    assert!(live.contains("api:admin"), "{live}");
    let _ = follow.kill();
    let _ = follow.wait();

    let (ok, out, _) = rooctl(&server, None, &["events", "--type", "route."]);
    assert!(ok);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].starts_with("ID") && rows[0].contains("SOURCE"),
        "{out}"
    );
    assert!(
        rows[1].contains("route.added") && rows[1].contains("api:admin"),
        "{out}"
    );
    let (ok, out, _) = rooctl(&server, None, &["events", "-o", "json"]);
    assert!(ok);
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"leader.changed") && kinds.contains(&"route.added"),
        "{kinds:?}"
    );

    common::wait_for(
        "the delivery",
        std::time::Duration::from_secs(20),
        || async { (received.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    let state = common::wait_for("the state", std::time::Duration::from_secs(20), || async {
        let (_, out, _) = rooctl(&server, None, &["webhooks", "ls"]);
        out.lines()
            .nth(1)
            .filter(|l| l.contains("200"))
            .map(str::to_string)
    })
    .await;
    assert!(state.starts_with("ops") && state.contains(&url), "{state}");
    assert!(state.contains("route.,certificate."), "{state}");
    let (ok, out, _) = rooctl(&server, None, &["webhooks", "ls", "-o", "json"]);
    assert!(ok);
    let hooks: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hooks[0]["delivered"], 1, "{hooks}");
    assert_eq!(hooks[0]["backlog"], 0, "{hooks}");
    assert!(hooks[0].get("secret").is_none(), "{hooks}");
    assert!(rooctl(&server, admin, &["webhooks", "rm", "ops"]).0);
    let (ok, _, err) = rooctl(&server, admin, &["webhooks", "rm", "ops"]);
    assert!(!ok && err.contains("no webhook"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_history_freeze_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(dir.path(), &["--api-token", ADMIN]).await;
    let server = format!("http://{}", node.api_addr);
    let admin = Some(ADMIN);
    for to in ["http://one:80", "http://two:80"] {
        assert!(rooctl(&server, admin, &["routes", "add", "h.test", to]).0);
    }
    let (ok, out, err) = rooctl(&server, None, &["routes", "history", "h.test"]);
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[0].starts_with("REV") && rows[1].contains("two") && rows[2].contains("one"),
        "{out}"
    );
    assert!(rows[1].contains("api:admin"), "{out}");

    assert!(rooctl(&server, admin, &["routes", "freeze", "h.test"]).0);
    let (ok, _, err) = rooctl(
        &server,
        admin,
        &["routes", "add", "h.test", "http://three:80"],
    );
    assert!(
        !ok && err.contains("frozen") && err.contains("409"),
        "{err}"
    );
    let (ok, _, err) = rooctl(&server, admin, &["routes", "rollback", "h.test"]);
    assert!(!ok && err.contains("frozen"), "{err}");
    let (ok, out, err) = rooctl(&server, admin, &["routes", "rollback", "h.test", "--force"]);
    assert!(
        ok && out.contains("has the value of revision"),
        "{out}{err}"
    );
    assert!(rooctl(&server, admin, &["routes", "unfreeze", "h.test"]).0);
    let (_, out, _) = rooctl(
        &server,
        None,
        &["routes", "history", "h.test", "-o", "json"],
    );
    let history: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        history[0]["value"]
            .as_str()
            .unwrap()
            .contains("http://one:80"),
        "{history}"
    );
    let first = history[2]["rev"].as_u64().unwrap().to_string();
    let (ok, _, err) = rooctl(
        &server,
        admin,
        &["routes", "rollback", "h.test", "--rev", "1"],
    );
    assert!(!ok && err.contains("no revision 1"), "{err}");
    assert!(
        rooctl(
            &server,
            admin,
            &["routes", "rollback", "h.test", "--rev", &first]
        )
        .0
    );
    let (_, out, _) = rooctl(&server, None, &["routes", "history", "h.test"]);
    assert!(out.lines().nth(1).unwrap().contains("one"), "{out}");
}
