//! Secrets are never printed: the real binary runs a session that touches every secret (API
//! keys issued, used, revoked and made up; webhook keys read and rotated; signed callbacks;
//! budget alerts to webhooks whose URLs carry tokens, one unreachable, one failing once;
//! metrics behind a bearer token), with debug logging on. Then its whole log, its
//! `check-config` output and its metrics are searched for every configured secret, every
//! webhook key and every API key.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{SECRET, SIGNING_SECRET, sign, upload_reference_to};
use crate::support::process::{BIN, free_port, spawn_logged};
use crate::support::receiver::Receiver;

const UPSTREAM_KEY: &str = "sk-evo-mock";
const METRICS_TOKEN: &str = "metrics-bearer-7f3a9c1e5b";
const REDIS_PASSWORD: &str = "redis-pass-4d8e2a";
const GLOBAL_ALERT_TOKEN: &str = "global-alert-token-9b1c";
const TENANT_ALERT_TOKEN: &str = "tenant-alert-token-6e0f";

struct Gateway {
    child: Child,
    base: String,
}

impl Gateway {
    fn start(config: &std::path::Path, log: &std::path::Path) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--config", config.to_str().expect("path")])
            .env("RUST_LOG", "debug");
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("VIDGATE_")) {
            command.env_remove(key);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log).expect("log file")))
            .spawn()
            .expect("spawn the gateway");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("first line");
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .expect("announced")
            .to_string();
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// SIGTERM, so every queued log line is written before it exits.
    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn token(mut claims: Value) -> String {
    claims["aud"] = json!("vidgate");
    claims["exp"] = json!(crate::helpers::now() + 3600);
    sign(&claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_and_no_api_key_ever_reaches_the_log_check_config_or_metrics() {
    let dir = tempfile::tempdir().expect("dir");
    let (_mock, mock) = spawn_logged(
        &[
            "mock-upstream",
            "--listen",
            "127.0.0.1:0",
            "--pending-ms",
            "50",
            "--processing-ms",
            "150",
            "--allow-local-callbacks",
        ],
        "warn",
        None,
    );
    let reference = upload_reference_to(&format!("http://{mock}"), 5000).await;
    let callbacks = Receiver::start(vec![200]).await;
    let tenant_alerts = Receiver::start(vec![500, 200]).await;
    let port = free_port();
    let closed = free_port();
    let config = dir.path().join("vidgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
public_base_url = "http://127.0.0.1:{port}"
[upstream]
base_url = "http://{mock}"
files_base_url = "http://{mock}"
api_key = "{UPSTREAM_KEY}"
[auth]
hs256_secret = "{SECRET}"
[store]
path = "{store}"
redis_url = "redis://:{REDIS_PASSWORD}@127.0.0.1:{closed}/0"
[archive]
url = "file:{store}.results"
[probe]
allow_private_networks = true
[callbacks]
signing_secret = "{SIGNING_SECRET}"
legacy_signature_until = "2100-01-01T00:00:00Z"
allow_private_networks = true
retry_delays_ms = [50, 100]
[alerts]
webhook_url = "http://127.0.0.1:{closed}/services/T0/B0/{GLOBAL_ALERT_TOKEN}"
[metrics]
bearer_token = "{METRICS_TOKEN}"
[[tenants]]
id = "team-a"
budget = "0.50"
alert_webhook_url = "{tenant_alerts}?token={TENANT_ALERT_TOKEN}"
"#,
            store = dir.path().join("store.redb").display(),
            tenant_alerts = tenant_alerts.url,
        ),
    )
    .expect("write config");
    let log = dir.path().join("gateway.log");
    let gateway = Gateway::start(&config, &log);
    let client = reqwest::Client::new();
    let admin = token(json!({"sub": "root", "roles": ["admin"]}));
    let member = token(json!({"sub": "alice", "tenant": "team-a", "roles": ["tenant_admin"]}));
    let mut secrets: Vec<String> = [
        UPSTREAM_KEY,
        SECRET,
        SIGNING_SECRET,
        METRICS_TOKEN,
        REDIS_PASSWORD,
        GLOBAL_ALERT_TOKEN,
        TENANT_ALERT_TOKEN,
    ]
    .map(str::to_string)
    .to_vec();
    secrets.extend([admin.clone(), member.clone()]);

    // API keys: issued, used for a create with a signed callback, revoked, used again.
    let issued: Value = client
        .post(format!("{}/v1/admin/tenants/team-a/keys", gateway.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "render-ci"}))
        .send()
        .await
        .expect("issue")
        .json()
        .await
        .expect("json");
    let key = issued["key"].as_str().expect("key").to_string();
    let body = json!({"model": crate::helpers::MODEL, "prompt": "p", "video_urls": [reference], "duration": 5,
                      "callback_url": callbacks.url});
    let created = client
        .post(format!("{}/v1/videos/generations", gateway.base))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::OK);
    let task: Value = created.json().await.expect("json");
    for _ in 0..500 {
        let seen: Value = client
            .get(format!(
                "{}/v1/tasks/{}",
                gateway.base,
                task["id"].as_str().expect("id")
            ))
            .bearer_auth(&key)
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("json");
        if seen["vidgate"]["state"] != "reserved" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    callbacks.wait_for(1).await;
    tenant_alerts.wait_for(4).await;
    let revoke = client
        .delete(format!(
            "{}/v1/admin/tenants/team-a/keys/{}",
            gateway.base,
            issued["id"].as_str().expect("id")
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let made_up = format!("vgk_{}", "Z".repeat(43));
    for refused in [&key, &made_up] {
        let status = client
            .get(format!("{}/v1/usage", gateway.base))
            .bearer_auth(refused)
            .send()
            .await
            .expect("usage")
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    secrets.extend([key, made_up]);

    // Webhook keys: read and rotated.
    for path in ["/v1/webhooks/secret", "/v1/webhooks/secret/rotate"] {
        let request = match path.ends_with("rotate") {
            true => client.post(format!("{}{path}", gateway.base)),
            false => client.get(format!("{}{path}", gateway.base)),
        };
        let answer: Value = request
            .bearer_auth(&member)
            .send()
            .await
            .expect("secret")
            .json()
            .await
            .expect("json");
        secrets.push(answer["secret"].as_str().expect("secret").to_string());
    }
    let metrics = client
        .get(format!("{}/metrics", gateway.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // The global alert webhook is unreachable: let its retries finish and be logged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.stop();

    let check = Command::new(BIN)
        .args(["check-config", "--config", config.to_str().expect("path")])
        .output()
        .expect("check-config");
    assert!(check.status.success());
    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(
        log_text.contains("budget alert webhook unreachable"),
        "the failing alert was logged"
    );
    assert!(
        log_text.contains("API key issued"),
        "the log is the one of this session"
    );
    assert!(
        log_text.contains("signature with the legacy callbacks.signing_secret until"),
        "startup says the legacy key still signs"
    );
    for (name, text) in [
        ("the log", log_text.as_str()),
        ("check-config", &String::from_utf8_lossy(&check.stdout)),
        ("/metrics", &metrics),
    ] {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{name} carries a secret ({} chars)",
                secret.len()
            );
        }
    }
}
