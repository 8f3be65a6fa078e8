//! Soak: tasks driven through a real gateway process and the mock upstream process, with fast
//! completion and a short retention, on each store. At the start, halfway, at the end and once
//! retention has passed it prints the store's state (Redis: `used_memory` and keys by kind;
//! embedded: the file size), the gateway's RSS, the outbox, and what `vidgate store export`
//! holds by kind. Once retention passed, what grows with tasks (reservations, idempotency
//! claims, queues, outbox events) is back to where it started; the ledger and aggregates stay
//! (finance's record), and their bytes per task are printed.
//!
//! Size: `SOAK_TASKS` (default 200; `bench/soak.sh` runs 100,000 per store).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{MODEL, SECRET, SIGNING_SECRET, sign};
use crate::support::process::{BIN, Process, free_port, spawn_logged};
use crate::support::receiver::Receiver;
use crate::support::redis::RedisServer;

const IN_FLIGHT: usize = 32;
/// What grows with tasks and must come back once retention passed (`store export` kinds).
const BOUNDED_KINDS: [&str; 4] = ["reservation", "idempotency", "queued", "outbox_event"];

struct Soak {
    dir: tempfile::TempDir,
    config: PathBuf,
    redis: Option<RedisServer>,
    prefix: String,
    gateway: Option<(Process, String)>,
}

impl Soak {
    fn start(&mut self) {
        self.gateway = Some(spawn_logged(
            &["serve", "--config", self.config.to_str().unwrap()],
            "warn",
            Some(&self.dir.path().join("gateway.log")),
        ));
    }

    fn addr(&self) -> &str {
        &self.gateway.as_ref().expect("running").1
    }

    /// The checkpoint's figures, and what the store holds by export kind (count, bytes).
    fn sample(&mut self, label: &str, tasks: usize) -> BTreeMap<String, (u64, u64)> {
        let (process, _) = self.gateway.as_ref().expect("running");
        let rss_kb = rss_kb(process.pid());
        let store = match &self.redis {
            Some(redis) => redis_state(redis, &self.prefix),
            None => {
                // redb lets one process open the file: stop the gateway (cleanly, so that no
                // lease of its outlives it) to read its store.
                if let Some((mut process, _)) = self.gateway.take() {
                    process.terminate();
                }
                let path = self.dir.path().join("store.redb");
                format!(
                    "file {} KiB",
                    std::fs::metadata(&path).map(|m| m.len() / 1024).unwrap_or(0)
                )
            }
        };
        let held = export_by_kind(&self.config);
        if self.gateway.is_none() {
            self.start();
        }
        let outbox = held.get("outbox_event").map_or(0, |(n, _)| *n);
        println!(
            "soak {label:>16} after {tasks:>7} tasks: {store}; gateway RSS {rss_kb} KiB; outbox {outbox}; held {}",
            held.iter()
                .map(|(kind, (n, bytes))| format!("{kind} {n} ({} KiB)", bytes / 1024))
                .collect::<Vec<_>>()
                .join(", ")
        );
        held
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `used_memory` and the prefix's keys by kind (the part before the first `:`).
fn redis_state(redis: &RedisServer, prefix: &str) -> String {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let memory = cli(&["INFO", "memory"]);
    let used = memory
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for key in cli(&["--scan", "--pattern", &format!("{prefix}*")]).lines() {
        let kind = key
            .trim_start_matches(prefix)
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        *kinds.entry(kind).or_default() += 1;
    }
    format!(
        "redis used_memory {used} B, keys {}",
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `vidgate store export` of the store, counted by line kind (lines, bytes).
fn export_by_kind(config: &Path) -> BTreeMap<String, (u64, u64)> {
    let out = std::process::Command::new(BIN)
        .args(["store", "export", "--config", config.to_str().unwrap()])
        .output()
        .expect("vidgate store export");
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    let mut kinds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let kind = serde_json::from_str::<Value>(line).expect("a JSON line")["kind"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let entry = kinds.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += line.len() as u64 + 1;
    }
    kinds
}

fn write_config(dir: &Path, mock: &str, redis: Option<&RedisServer>, prefix: &str) -> PathBuf {
    let store = match redis {
        Some(redis) => format!(
            "backend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"",
            redis.url()
        ),
        None => format!(
            "backend = \"embedded\"\npath = \"{}\"",
            dir.join("store.redb").display()
        ),
    };
    let path = dir.join("vidgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
public_base_url = "http://127.0.0.1:{port}"
[upstream]
base_url = "http://{mock}"
files_base_url = "http://{mock}"
api_key = "sk-evo-mock"
timeout_ms = 5000
[auth]
hs256_secret = "{SECRET}"
[store]
{store}
retention_secs = 2
[archive]
url = ""
[probe]
allow_private_networks = true
[callbacks]
signing_secret = "{SIGNING_SECRET}"
legacy_signature_until = "2100-01-01T00:00:00Z"
allowed_networks = ["127.0.0.0/8"]
allow_private_networks = true
retry_delays_ms = [100, 200, 400]
[reconciler]
first_poll_after_secs = 0.05
poll_interval_secs = 0.1
[idempotency]
ttl_secs = 3
[[tenants]]
id = "soak"
period = "total"
max_concurrent_tasks = 100000
creates_per_minute = 1000000
creates_burst = 100000
reads_per_minute = 1000000
reads_burst = 100000
"#,
            port = free_port(),
        ),
    )
    .expect("write config");
    path
}

async fn soak(redis: Option<RedisServer>, tasks: usize) {
    let (_mock, mock) = spawn_logged(
        &[
            "mock-upstream",
            "--listen",
            "127.0.0.1:0",
            "--pending-ms",
            "5",
            "--processing-ms",
            "10",
            "--allow-local-callbacks",
        ],
        "warn",
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let prefix = crate::support::random_prefix();
    let config = write_config(dir.path(), &mock, redis.as_ref(), &prefix);
    let mut soak = Soak {
        dir,
        config,
        redis,
        prefix,
        gateway: None,
    };
    soak.start();
    let receiver = Receiver::start(vec![200]).await;
    let token =
        sign(&json!({"sub": "soak", "tenant": "soak", "aud": "vidgate", "exp": crate::helpers::now() + 86_400}));
    let reference = crate::helpers::upload_reference_to(&format!("http://{mock}"), 5000).await;
    let client = reqwest::Client::new();
    let start = soak.sample("start", 0);

    let done = Arc::new(AtomicUsize::new(0));
    let unknown = AtomicUsize::new(0);
    let started = Instant::now();
    for half in [0, 1] {
        let range = half * tasks / 2..(half + 1) * tasks / 2;
        let url = format!("http://{}/v1/videos/generations", soak.addr());
        futures_util::stream::iter(range)
            .map(|i| {
                let (client, token, url, done, unknown) = (&client, &token, &url, &done, &unknown);
                let mut body = json!({"model": MODEL, "prompt": format!("soak {i}"), "video_urls": [reference.clone()],
                                      "duration": 2});
                if i % 10 == 0 {
                    body["callback_url"] = json!(receiver.url);
                }
                async move {
                    let mut request = client.post(url).bearer_auth(token).json(&body);
                    if i % 4 == 0 {
                        request = request.header("Idempotency-Key", format!("soak-{i}"));
                    }
                    let response = request.send().await.expect("create answered");
                    // An outcome the gateway could not know is resolved by the upstream's callback.
                    if response.status() != 200 {
                        let error: Value = response.json().await.expect("an error body");
                        let code = error["error"]["code"].as_str().unwrap_or_default();
                        assert!(
                            matches!(code, "upstream_outcome_unknown" | "upstream_timeout"),
                            "create {i}: {error}"
                        );
                        unknown.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<()>()
            .await;
        let label = if half == 0 { "halfway" } else { "end" };
        soak.sample(label, done.load(Ordering::Relaxed));
    }
    let created_in = started.elapsed();

    // Every task ends (the reconciler polls them all), then retention (2 s) and the
    // idempotency claims (3 s) run out, and a purge runs.
    let usage_url = format!("http://{}/v1/usage?period=total", soak.addr());
    loop {
        let usage: Value = client
            .get(&usage_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if usage["tasks"]["reserved"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let quiet_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = soak.sample("after retention", tasks);
    println!(
        "soak: {tasks} tasks created in {:.1} s ({:.0}/s, {} with an unknown outcome), all ended after {:.1} s; ledger {} B/task, aggregates {} B/task",
        created_in.as_secs_f64(),
        tasks as f64 / created_in.as_secs_f64(),
        unknown.load(Ordering::Relaxed),
        quiet_in.as_secs_f64(),
        per_task(&start, &after, "ledger", tasks),
        per_task(&start, &after, "aggregate", tasks),
    );
    for kind in BOUNDED_KINDS {
        let count = |held: &BTreeMap<String, (u64, u64)>| held.get(kind).map_or(0, |(n, _)| *n);
        assert!(
            count(&after) <= count(&start),
            "{kind}: {} after retention, {} at the start",
            count(&after),
            count(&start)
        );
    }
    // (An `anomaly` row more when a result could not be measured in time.)
    assert!(
        after.get("ledger").map_or(0, |(n, _)| *n) as usize
            >= 2 * tasks + start.get("ledger").map_or(0, |(n, _)| *n) as usize,
        "the ledger keeps every reserve and settle"
    );
}

fn per_task(
    start: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    kind: &str,
    tasks: usize,
) -> u64 {
    let bytes = |held: &BTreeMap<String, (u64, u64)>| held.get(kind).map_or(0, |(_, b)| *b);
    bytes(after).saturating_sub(bytes(start)) / tasks.max(1) as u64
}

fn size() -> usize {
    std::env::var("SOAK_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_embedded_state_is_bounded_by_work_in_flight() {
    soak(None, size()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_redis_state_is_bounded_by_work_in_flight() {
    soak(Some(RedisServer::start()), size()).await;
}
