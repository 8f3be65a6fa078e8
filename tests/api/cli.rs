//! The real binary: `serve` announces its port and stops cleanly on SIGTERM; bad config is
//! refused naming the key; `token` mints a usable JWT; `check-config` masks secrets.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_vidgate");

fn write_config(dir: &tempfile::TempDir, extra: &str) -> std::path::PathBuf {
    let path = dir.path().join("vidgate.toml");
    let store = dir.path().join("store.redb");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"sk-evo-secret-value\"\n\
         [auth]\nhs256_secret = \"{}\"\n[store]\npath = \"{}\"\n{extra}",
        crate::helpers::SECRET,
        store.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn vidgate(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("VIDGATE_")) {
        command.env_remove(key);
    }
    command
}

#[test]
fn serve_announces_its_port_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let config = write_config(&dir, "");
    let mut child = vidgate(&["serve", "--config", config.to_str().expect("path")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("line");
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .expect("first line announces the address");
    assert!(!addr.ends_with(":0"), "the real port is printed: {addr}");
    let health = reqwest::blocking::get(format!("http://{addr}/healthz")).expect("healthz");
    assert!(health.status().is_success());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(child.wait().expect("exit").success());
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let config = write_config(
        &dir,
        "[pricing.models.\"wan2.6-reference-video-flash\".\"720p\"]\naudio = \"0.0500001\"\nsilent = \"0.025\"\n",
    );
    let output = vidgate(&["check-config", "--config", config.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pricing.models") && stderr.contains("audio"),
        "{stderr}"
    );

    let output = vidgate(&["serve", "--config", config.to_str().expect("path")])
        .env("VIDGATE_UPSTREAM__API_KEY", "")
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("upstream.api_key"));
}

#[test]
fn check_config_masks_secrets_and_token_mints_a_jwt() {
    let dir = tempfile::tempdir().expect("dir");
    let config = write_config(&dir, "");
    let path = config.to_str().expect("path");
    // Kubernetes service links add VIDGATE_PORT-style variables: they are not config.
    let output = vidgate(&["check-config", "--config", path])
        .env("VIDGATE_PORT", "tcp://192.0.2.1:8080")
        .env("VIDGATE_SERVICE_HOST", "192.0.2.1")
        .env("VIDGATE_SERVER__MAX_BODY_BYTES", "70000")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("max_body_bytes = 70000"));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(!shown.contains("sk-evo-secret-value") && !shown.contains(crate::helpers::SECRET));
    assert!(shown.contains("api_key = \"********\""));

    let output = vidgate(&[
        "token", "--tenant", "team-a", "--sub", "bob", "--roles", "finance", "--config", path,
    ])
    .output()
    .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let jwt = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(jwt.split('.').count(), 3);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["vidgate"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &jwt,
        &jsonwebtoken::DecodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
        &validation,
    )
    .expect("valid token");
    assert_eq!(data.claims["tenant"], "team-a");
    assert_eq!(data.claims["sub"], "bob");
    assert_eq!(data.claims["roles"][0], "finance");
}
