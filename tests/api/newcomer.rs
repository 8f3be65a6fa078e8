//! The newcomer's first hour with the real binary: the demo's tokens and curl lines work,
//! `serve` against `mock-upstream` with its sample reference video (the README recipe), and
//! a startup log that names the store.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::helpers::{Backend, MODEL, spawn_app};
use crate::support::process::{BIN, spawn, spawn_logged};

/// A child killed however the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vidgate(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("VIDGATE_")) {
        command.env_remove(key);
    }
    command
}

/// The demo's stdout up to its last line.
fn demo_output(child: &mut Child) -> String {
    let mut out = String::new();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        out.push_str(&line);
        out.push('\n');
        if line.starts_with("Ctrl-C stops the demo") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    out
}

fn exported(output: &str, name: &str) -> String {
    let prefix = format!("  export {name}=");
    output
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("the demo prints {name}: {output}"))
        .to_string()
}

fn call(request: reqwest::blocking::RequestBuilder, token: &str) -> (u16, String) {
    let response = request.bearer_auth(token).send().expect("gateway answers");
    (response.status().as_u16(), response.text().expect("body"))
}

#[test]
fn the_demo_takes_a_config_and_prints_team_finance_and_admin_tokens_that_work() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("demo.toml");
    std::fs::write(
        &config,
        "[auth]\nissuer = \"https://idp.example.com\"\n[[tenants]]\nid = \"studio\"\nbudget = \"20.00\"\nperiod = \"week\"\n",
    )
    .expect("write config");
    let child = vidgate(&["demo", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the demo");
    let mut child = Killed(child);
    let output = demo_output(&mut child.0);
    assert!(output.starts_with("listening on http://"), "{output}");
    assert!(
        output.contains("Tenant \"studio\" has a budget of 20.000000 USD a week")
            && output.contains("holds 0.450000 USD"),
        "the tenant and its budget explained in one line: {output}"
    );
    for what in [
        "/v1/quotes",
        "/v1/videos/generations",
        "/v1/tasks/TASK_ID",
        "/v1/tasks?",
        "/v1/usage",
        "format=csv",
    ] {
        assert!(output.contains(what), "a curl line for {what}: {output}");
    }
    let (base, team, finance, admin) = (
        exported(&output, "BASE"),
        exported(&output, "TOKEN"),
        exported(&output, "FINANCE_TOKEN"),
        exported(&output, "ADMIN_TOKEN"),
    );
    let sample = output
        .lines()
        .find_map(|line| line.strip_prefix("The sample reference video is "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the sample URL")
        .to_string();
    let client = Client::new();
    let body = json!({"model": MODEL, "prompt": "character1 waves", "video_urls": [sample], "duration": 5});

    let (status, quote) = call(client.post(format!("{base}/v1/quotes")).json(&body), &team);
    assert_eq!(status, 200, "{quote}");
    let quote: Value = serde_json::from_str(&quote).unwrap();
    assert_eq!(
        (quote["reserve"].as_str(), quote["budget_remaining"].as_str()),
        (Some("0.450000"), Some("20.000000"))
    );
    let (status, created) = call(client.post(format!("{base}/v1/videos/generations")).json(&body), &team);
    assert_eq!(status, 200, "{created}");
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["vidgate"]["tenant"], "studio");
    let (status, list) = call(client.get(format!("{base}/v1/tasks")), &team);
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["data"][0]["id"], created["id"]);
    let (status, csv) = call(
        client.get(format!("{base}/v1/admin/usage?group_by=user&format=csv")),
        &finance,
    );
    assert_eq!(status, 200);
    assert!(csv.contains("studio,demo-user"), "{csv}");
    let (status, _) = call(client.get(format!("{base}/v1/admin/ledger?format=csv")), &finance);
    assert_eq!(status, 200);
    let (status, _) = call(client.get(format!("{base}/v1/admin/tenants")), &finance);
    assert_eq!(status, 403, "finance reads, only admin manages");
    let (status, tenants) = call(client.get(format!("{base}/v1/admin/tenants")), &admin);
    assert_eq!(status, 200);
    assert!(tenants.contains("\"studio\""));
    let (status, _) = call(client.get(format!("{base}/v1/admin/usage")), &team);
    assert_eq!(status, 403);
    let console = output
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(&format!("{base}/console/link?ticket=")))
        .expect("a console link on the gateway's address");
    let browser = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = browser.get(console).send().expect("gateway answers");
    assert_eq!(signed_in.status().as_u16(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let overview = browser
        .get(format!("{base}/console/"))
        .header("cookie", cookie)
        .send()
        .expect("gateway answers");
    assert_eq!(overview.status().as_u16(), 200);
    assert!(
        overview.text().unwrap().contains("Spend overview"),
        "signed in as finance"
    );
    assert_eq!(
        browser.get(console).send().unwrap().status().as_u16(),
        401,
        "the link works once"
    );
}

#[tokio::test]
async fn the_mock_upstreams_sample_reference_video_is_billed_as_four_seconds() {
    let app = spawn_app(Backend::Embedded).await;
    let sample = app.mock.sample_reference_url();
    assert!(sample.ends_with("/samples/reference-4s.mp4"));
    let head = app.client.head(&sample).send().await.expect("sample");
    assert_eq!(head.headers()["content-type"], "video/mp4");
    let body = json!({"model": MODEL, "prompt": "character1 waves", "video_urls": [sample], "duration": 5});
    let response = app.post_create(&app.token("team-a"), &body).await;
    assert_eq!(response.status(), 200);
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["vidgate"]["billed_input_ms"], 4000);
    assert_eq!(created["vidgate"]["reserved"], "0.450000");
}

/// `vidgate serve` against `vidgate mock-upstream`, configured as the README recipe says.
#[test]
fn serve_against_the_mock_upstream_as_the_readme_says() {
    let (_mock, mock_addr) = spawn(&["mock-upstream", "--listen", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("vidgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://{mock_addr}\"\n\
             files_base_url = \"http://{mock_addr}\"\napi_key = \"sk-evo-mock\"\n[auth]\n\
             hs256_secret = \"change-me-change-me-change-me-change-me\"\n[store]\npath = \"{0}/vidgate.redb\"\n\
             [archive]\nurl = \"file:{0}/results\"\n\
             [probe]\nallow_private_networks = true\n[[tenants]]\nid = \"marketing\"\nbudget = \"500.00\"\n",
            dir.path().display()
        ),
    )
    .expect("write config");
    let config = config.to_str().unwrap();
    let (_gateway, addr) = spawn(&["serve", "--config", config]);
    let token = vidgate(&["token", "--tenant", "marketing", "--sub", "me", "--config", config])
        .output()
        .expect("token");
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let body = json!({"model": MODEL, "prompt": "character1 waves",
                      "video_urls": [format!("http://{mock_addr}/samples/reference-4s.mp4")],
                      "model_params": {"generate_audio": false}});
    let client = Client::new();
    let (status, quote) = call(client.post(format!("http://{addr}/v1/quotes")).json(&body), &token);
    assert_eq!(status, 200, "{quote}");
    let quote: Value = serde_json::from_str(&quote).unwrap();
    // (4 s + 5 s) x 0.025 silent at 720p.
    assert_eq!(quote["reserve"], "0.225000");
    let (status, created) = call(
        client.post(format!("http://{addr}/v1/videos/generations")).json(&body),
        &token,
    );
    assert_eq!(status, 200, "{created}");
}

/// The first log line after startup that says the gateway serves.
fn serving_line(log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("vidgate serving")) {
            return line.to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no \"vidgate serving\" line in {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn the_startup_log_names_the_store_backend_and_the_redis_version() {
    let dir = tempfile::tempdir().expect("dir");
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"k\"\n\
         [auth]\nhs256_secret = \"{}\"\n",
        crate::helpers::SECRET
    );
    let embedded = dir.path().join("embedded.toml");
    let store = dir.path().join("store.redb");
    std::fs::write(&embedded, format!("{base}[store]\npath = \"{}\"\n", store.display())).unwrap();
    let log = dir.path().join("embedded.log");
    let (_gateway, _) = spawn_logged(&["serve", "--config", embedded.to_str().unwrap()], "info", Some(&log));
    let line = serving_line(&log);
    assert!(
        line.contains(&format!("embedded (redb) at {}", store.display())),
        "{line}"
    );

    let redis = dir.path().join("redis.toml");
    let url = crate::support::redis::shared().url();
    std::fs::write(
        &redis,
        format!(
            "{base}[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{}\"\n",
            crate::support::random_prefix()
        ),
    )
    .unwrap();
    let log = dir.path().join("redis.log");
    let (_gateway, _) = spawn_logged(&["serve", "--config", redis.to_str().unwrap()], "info", Some(&log));
    let line = serving_line(&log);
    let version = String::from_utf8(
        Command::new("redis-server")
            .arg("--version")
            .output()
            .expect("redis-server --version")
            .stdout,
    )
    .unwrap();
    // "Redis server v=7.0.15 sha=..." names the version INFO reports.
    let version = version
        .split_whitespace()
        .find_map(|part| part.strip_prefix("v="))
        .expect("a version");
    assert!(line.contains(&format!("redis {version}")), "{line}");
}
