//! Mutual TLS between nodes (`--peer-cert/--peer-key/--peer-ca`): three nodes form a cluster
//! and replicate over it; the API port speaks TLS only; RPCs and joins without a certificate of
//! the cluster CA, or without the cluster secret, are refused; a node of another CA can neither
//! join nor be trusted as a server; operators reach the API with the CA and no certificate.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{wait_for_cluster, Http, TestCa, SECRET};
use rood::node::Node;

/// A node's peer files, written to `dir`: its certificate (signed by `ca`), key and the CA the
/// node trusts (`trusted`); returns the flags naming them, with the cluster secret.
fn peer_args(dir: &Path, ca: &TestCa, trusted: &TestCa, name: &str) -> Vec<String> {
    // Operators check the name they reach a node by (here 127.0.0.1); nodes do not.
    let (cert, key, _) = ca.leaf(&[name, "127.0.0.1"]);
    let files = [
        ("--peer-cert", "peer.pem", cert),
        ("--peer-key", "peer.key", key),
        ("--peer-ca", "ca.pem", trusted.pem()),
    ];
    let mut args = vec!["--cluster-secret".to_string(), SECRET.to_string()];
    for (flag, file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        args.push(flag.to_string());
        args.push(path.to_str().unwrap().to_string());
    }
    args
}

async fn start(dir: &Path, args: &[String], extra: &[&str]) -> Node {
    let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
    argv.extend_from_slice(extra);
    common::try_node(&dir.join("data"), &argv).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_replicate_over_mutual_tls_and_refuse_everyone_else() {
    let ca = TestCa::new("roo cluster CA");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let args: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| peer_args(d.path(), &ca, &ca, &format!("node-{i}.roo")))
        .collect();
    let first = start(dirs[0].path(), &args[0], &[]).await;
    let seed = first.api_addr.to_string();
    let mut nodes = vec![first];
    for i in 1..3 {
        nodes.push(start(dirs[i].path(), &args[i], &["--join", &seed]).await);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.api_addr.to_string()).collect();

    // Operators: the cluster CA, a token where needed, no certificate.
    let operator = Http::tls(&ca, None);
    let leader = wait_for_cluster(&operator, &addrs, 3).await;

    // A write on each node (followers forward theirs to the leader) read linearizably on the
    // next one (read-index through the leader): every hop is peer TLS.
    for i in 0..3 {
        let key = format!("https://{}/roo/v1/kv/k{i}", addrs[i]);
        let r = operator.put(&key, format!("v{i}")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let next = format!("https://{}/roo/v1/kv/k{i}", addrs[(i + 1) % 3]);
        let r = operator.get(&next).await.unwrap();
        assert_eq!((r.status, r.text()), (200, format!("v{i}")));
    }

    // The API port speaks TLS only.
    let plain = Http::default()
        .get(&format!("http://{}/roo/ping", addrs[0]))
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let r = operator
        .get(&format!("https://{}/roo/ping", addrs[0]))
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "PONG".to_string()));

    // The secret without a certificate: raft RPCs and joins refused.
    let with_secret = [("x-roo-cluster-secret", SECRET)];
    for (path, body) in [
        ("/roo/v1/raft/vote", "{}"),
        (
            "/roo/v1/cluster/join",
            r#"{"node_id":77,"addr":"127.0.0.1:1"}"#,
        ),
    ] {
        let r = operator
            .send(
                "POST",
                &format!("https://{}{path}", addrs[1]),
                &with_secret,
                Bytes::from(body),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert!(r.text().contains("client certificate"), "{}", r.text());
    }

    // A certificate of the cluster CA without the secret: refused too.
    let (cert, key, _) = ca.leaf(&["tooling.roo"]);
    let with_cert = Http::tls(&ca, Some((&cert, &key)));
    let r = with_cert
        .send(
            "POST",
            &format!("https://{}/roo/v1/raft/vote", addrs[1]),
            &[],
            Bytes::from("{}"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("cluster secret"), "{}", r.text());

    // A certificate of another CA does not get through the handshake.
    let rogue_ca = TestCa::new("rogue CA");
    let (cert, key, _) = rogue_ca.leaf(&["rogue.roo"]);
    let refused = Http::tls(&ca, Some((&cert, &key)))
        .send(
            "POST",
            &format!("https://{}/roo/v1/raft/vote", addrs[1]),
            &with_secret,
            Bytes::from("{}"),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // A node with the secret and a certificate of another CA cannot join, and a node of the
    // cluster does not trust it as a server either.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_args = peer_args(rogue_dir.path(), &rogue_ca, &rogue_ca, "rogue.roo");
    let rogue = start(rogue_dir.path(), &rogue_args, &[]).await;
    let err = rogue
        .kv
        .join(&seed, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    let rogue_addr = rogue.api_addr.to_string();
    let client = nodes[0].kv.peer_client();
    let err = client
        .get::<serde_json::Value>(&rogue_addr, "/roo/v1/cluster", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    let ok = client
        .get::<serde_json::Value>(&addrs[1], "/roo/v1/cluster", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ok["leader_id"].as_u64(), Some(leader));

    // Nor can a node with the secret and no TLS at all.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = common::try_node(plain_dir.path(), &["--cluster-secret", SECRET])
        .await
        .unwrap();
    assert!(plain.kv.join(&seed, Duration::from_secs(5)).await.is_err());

    // Membership is what it was: three voters, none of them a stranger.
    let status = operator.cluster(&addrs[0]).await.unwrap();
    let members = status["members"].as_object().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    for stranger in [rogue.kv.node_id(), plain.kv.node_id()] {
        assert!(!members.contains_key(&stranger.to_string()), "{status}");
    }

    // rooctl reaches a TLS node with the CA.
    let ca_file = dirs[0].path().join("ca.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_rooctl"))
        .args(["--server", &format!("https://{}", addrs[2])])
        .args(["--cacert", ca_file.to_str().unwrap(), "kv", "get", "k2"])
        .env_remove("ROO_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v2");
    let out = Command::new(env!("CARGO_BIN_EXE_rooctl"))
        .args([
            "--server",
            &format!("https://{}", addrs[2]),
            "kv",
            "get",
            "k2",
        ])
        .env_remove("ROO_TOKEN")
        .env_remove("ROO_CACERT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    for node in nodes.into_iter().chain([rogue, plain]) {
        node.stop().await;
    }
}

#[tokio::test]
async fn peer_tls_settings_go_together_and_must_be_readable() {
    let ca = TestCa::new("roo cluster CA");
    let dir = tempfile::tempdir().unwrap();
    let args = peer_args(dir.path(), &ca, &ca, "node.roo");
    let refused = |args: Vec<String>| {
        let data = dir.path().join("data");
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match common::try_node(&data, &args).await {
                Ok(_) => panic!("started with {args:?}"),
                Err(e) => e.to_string(),
            }
        }
    };
    // --peer-cert without the other two.
    let err = refused(args[..4].to_vec()).await;
    assert!(
        err.contains("ROO_PEER_CERT, ROO_PEER_KEY and ROO_PEER_CA"),
        "{err}"
    );
    // A CA file with no certificate in it.
    std::fs::write(dir.path().join("ca.pem"), "nothing\n").unwrap();
    let err = refused(args.clone()).await;
    assert!(err.contains("peer CA"), "{err}");
    // A key that is not one.
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(
        dir.path().join("peer.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = refused(args).await;
    assert!(
        err.contains("peer key") || err.contains("peer certificate and key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_dashboard_s_session_cookie_is_secure() {
    let ca = TestCa::new("roo cluster CA");
    let dir = tempfile::tempdir().unwrap();
    let args = peer_args(dir.path(), &ca, &ca, "node-0.roo");
    let token = "admin-token-of-the-tls-node";
    let node = start(dir.path(), &args, &["--api-token", token]).await;
    let operator = Http::tls(&ca, None);
    let r = operator
        .send(
            "POST",
            &format!("https://{}/ui/login", node.api_addr),
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(format!("token={token}")),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
}
