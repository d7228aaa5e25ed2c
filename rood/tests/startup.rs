//! A rood process refuses a bad setting at start with one line naming it, and says in a few
//! lines what it is when it starts.

mod common;

use std::process::Command;

fn start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rood"))
        .args(args)
        .env_remove("ROO_API_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_stop_the_start_with_a_line_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roo.toml");
    std::fs::write(&file, "max_connections = \"many\"\n").unwrap();
    let (code, err) = start(&["--config", file.to_str().unwrap()], &[]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--max-connections") && err.contains("many"),
        "{err}"
    );

    std::fs::write(&file, "no_such_setting = 1\n").unwrap();
    let (code, err) = start(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no_such_setting"), "{err}");

    let (code, err) = start(
        &["--data-dir", dir.path().to_str().unwrap()],
        &[("ROO_API_TOKEN", "short")],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("ROO_API_TOKEN"), "{err}");
}

#[test]
fn a_node_says_in_a_few_lines_what_it_is() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let addr = |_| format!("127.0.0.1:{}", common::free_port("127.0.0.1"));
    let (api, http, https) = (addr(0), addr(1), addr(2));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rood"))
        .args([
            "--api-addr",
            &api,
            "--http-addr",
            &http,
            "--https-addr",
            &https,
        ])
        .args(["--data-dir", dir.path().to_str().unwrap(), "--swarm", "off"])
        .env_remove("ROO_API_TOKEN")
        .env_remove("ROO_CLUSTER_SECRET")
        .env("ROO_LOG_FORMAT", "text")
        // ACME on, against a CA on loopback that is not there: its line must name it.
        .env("ROO_ACME", "true")
        .env("ROO_ACME_DIRECTORY", "https://127.0.0.1:9/dir")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Everything up to the line that says what cluster it is in.
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains("started a cluster of one"))
    {
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no cluster line in 30 s:\n{}", lines.join("\n")),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(lines.len() <= 7, "{} lines:\n{all}", lines.len());
    for needed in [
        format!("api={api}"),
        format!("http={http}"),
        format!("https={https}"),
        format!("data_dir={}", dir.path().display()),
        "https://127.0.0.1:9/dir".to_string(),
        "ROO_CLUSTER_SECRET is not set".to_string(),
        "ROO_API_TOKEN is not set".to_string(),
    ] {
        assert!(all.contains(&needed), "{needed:?} missing:\n{all}");
    }
}
