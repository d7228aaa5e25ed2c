//! A rood process refuses a bad setting at start with one line naming it.

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
