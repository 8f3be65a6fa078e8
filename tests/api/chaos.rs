//! Chaos: two gateway processes on one redis-server behind the mock upstream as a process
//! that loses 30 % of its callbacks, sends 30 % twice and delays them all; one gateway is
//! SIGKILLed and restarted twice while tasks are being created. At the end every task is
//! settled or refunded exactly once, the ledger matches an independent recomputation to the
//! micro-unit, no hold remains, and every ending was relayed (signed) at least once.
//!
//! Size: `CHAOS_TASKS` (default 40). Figures are printed (`--nocapture` shows them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use vidgate::billing::{Micros, parse_money};
use vidgate::store::redis::RedisStore;
use vidgate::store::{Queue, Store};

use crate::helpers::{LEGACY_UNTIL, MODEL, SECRET, SIGNING_SECRET, sign};
use crate::support::process::{Process, free_port, spawn_logged};
use crate::support::receiver::{Receiver, signature_valid};
use crate::support::redis::RedisServer;

/// Creates in flight at once.
const IN_FLIGHT: usize = 16;

/// What task `i` is asked to do, and what it must cost (`None`: it fails, refunded).
struct Plan {
    prompt: String,
    request_id: String,
    expected: Option<Micros>,
}

fn plan(i: usize) -> Plan {
    let output_ms = 2000 + (i % 80) as u64 * 100;
    let slow = (i % 7) as f64 * 0.3;
    let (marker, expected) = match i % 10 {
        3 => ("[mock:fail]".to_string(), None),
        7 => ("[mock:cancel]".to_string(), None),
        // 720p with audio at 0.05/s = 50 micros per ms; one 5 s reference bills 5000 ms.
        _ => (
            format!("[mock:out={:.1}]", output_ms as f64 / 1000.0),
            Some(50 * (5000 + output_ms as Micros)),
        ),
    };
    Plan {
        prompt: format!("chaos {i} {marker} [mock:slow={slow:.1}]"),
        request_id: format!("req_chaos_{i:05}"),
        expected,
    }
}

fn write_config(dir: &Path, name: &str, port: u16, mock: &str, redis_url: &str, prefix: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
public_base_url = "http://127.0.0.1:{port}"
[upstream]
base_url = "http://{mock}"
files_base_url = "http://{mock}"
api_key = "sk-evo-mock"
timeout_ms = 2000
[auth]
hs256_secret = "{SECRET}"
[store]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
[probe]
allow_private_networks = true
timeout_ms = 2000
[callbacks]
signing_secret = "{SIGNING_SECRET}"
legacy_signature_until = "{LEGACY_UNTIL}"
allow_private_networks = true
timeout_ms = 2000
retry_delays_ms = [100, 200, 400]
[reconciler]
first_poll_after_secs = 1
poll_interval_secs = 0.5
unbound_hold_grace_secs = 3
[[tenants]]
id = "chaos"
period = "total"
max_concurrent_tasks = 100000
creates_per_minute = 100000
creates_burst = 100000
reads_per_minute = 100000
reads_burst = 100000
"#
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn serve(config: &Path, log: &Path) -> Process {
    spawn_logged(&["serve", "--config", config.to_str().unwrap()], "warn", Some(log)).0
}

/// How one create ended, as the client saw it.
enum Created {
    Ok {
        task_id: String,
    },
    /// The replica died under the request: the task may or may not exist.
    Ambiguous,
}

async fn create(
    client: &reqwest::Client,
    ports: [u16; 2],
    i: usize,
    token: &str,
    body: &Value,
    plan: &Plan,
) -> Created {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = i;
    loop {
        let url = format!("http://127.0.0.1:{}/v1/videos/generations", ports[attempt % 2]);
        let sent = client
            .post(url)
            .bearer_auth(token)
            .header("x-request-id", &plan.request_id)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == 200 => {
                let task: Value = response.json().await.expect("json");
                return Created::Ok {
                    task_id: task["id"].as_str().unwrap().to_string(),
                };
            }
            Ok(response) => panic!("create {i} refused: {} {:?}", response.status(), response.text().await),
            // Never reached a gateway (the killed one is down): safe to send elsewhere.
            Err(error) if error.is_connect() && Instant::now() < deadline => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return Created::Ambiguous,
        }
    }
}

/// Every ledger entry of the tenant, page by page, from a gateway.
async fn ledger(client: &reqwest::Client, port: u16, token: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("http://127.0.0.1:{port}/v1/admin/ledger?tenant=chaos&limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        entries.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return entries,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_every_task_ends_exactly_once_and_the_ledger_adds_up() {
    let tasks: usize = std::env::var("CHAOS_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let started = Instant::now();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (_mock, mock) = spawn_logged(
        &[
            "mock-upstream",
            "--listen",
            "127.0.0.1:0",
            "--pending-ms",
            "100",
            "--processing-ms",
            "300",
            "--allow-local-callbacks",
            "--callback-drop-pct",
            "30",
            "--callback-dup-pct",
            "30",
            "--callback-delay-ms",
            "300",
        ],
        "warn",
        None,
    );
    let receiver = Receiver::start(vec![200]).await;
    let prefix = crate::support::random_prefix();
    let ports = [free_port(), free_port()];
    let configs = ["a", "b"].map(|name| {
        let port = ports[usize::from(name == "b")];
        write_config(dir.path(), name, port, &mock, &redis.url(), &prefix)
    });
    let logs = ["a", "b"].map(|name| dir.path().join(format!("{name}.log")));
    let first = serve(&configs[0], &logs[0]);
    let _second = serve(&configs[1], &logs[1]);

    let token =
        sign(&json!({"sub": "chaos", "tenant": "chaos", "aud": "vidgate", "exp": crate::helpers::now() + 3600}));
    let finance =
        sign(&json!({"sub": "fin", "roles": ["finance"], "aud": "vidgate", "exp": crate::helpers::now() + 3600}));
    let reference = crate::helpers::upload_reference_to(&format!("http://{mock}"), 5000).await;
    let client = reqwest::Client::new();

    // Replica a is killed when a third and two thirds of the creates are done, and restarted.
    let done = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (done, config, log) = (done.clone(), configs[0].clone(), logs[0].clone());
        tokio::spawn(async move {
            let mut replica = first;
            for fraction in [1, 2] {
                while done.load(Ordering::SeqCst) < tasks * fraction / 3 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                replica.kill();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (config, log) = (config.clone(), log.clone());
                replica = tokio::task::spawn_blocking(move || serve(&config, &log)).await.unwrap();
            }
            replica
        })
    };
    let outcomes: Vec<Created> = futures_util::stream::iter(0..tasks)
        .map(|i| {
            let (client, token, done, receiver_url) = (&client, &token, &done, &receiver.url);
            let reference = reference.clone();
            async move {
                let plan = plan(i);
                let body = json!({"model": MODEL, "prompt": plan.prompt, "video_urls": [reference], "duration": 5,
                                  "callback_url": receiver_url});
                let created = create(client, ports, i, token, &body, &plan).await;
                done.fetch_add(1, Ordering::SeqCst);
                created
            }
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let _restarted = killer.await.unwrap();
    let created_at = started.elapsed();

    // Quiet: nothing left to reconcile or relay, no hold left.
    let store = RedisStore::connect(&redis.url(), &prefix).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(180 + tasks as u64 / 5);
    loop {
        let pending = store.due(Queue::Tasks, i64::MAX / 2, 1).await.unwrap();
        let outbox = store.due(Queue::Outbox, i64::MAX / 2, 1).await.unwrap();
        let usage = store.period_usage("chaos", "total").await.unwrap();
        if pending.is_empty() && outbox.is_empty() && usage.reserved == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not quiet: pending {pending:?}, outbox {outbox:?}, {usage:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet_at = started.elapsed();

    // The ledger, per reservation, against the plan (by the request id each create sent).
    let entries = ledger(&client, ports[1], &finance).await;
    let by_request: BTreeMap<String, usize> = (0..tasks).map(|i| (plan(i).request_id, i)).collect();
    let mut per_reservation: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e["kind"] != "budget_change") {
        per_reservation
            .entry(entry["reservation_id"].as_str().unwrap().to_string())
            .or_default()
            .push(entry.clone());
    }
    let known: BTreeMap<usize, String> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Created::Ok { task_id } => Some((i, task_id.clone())),
            Created::Ambiguous => None,
        })
        .collect();
    let (mut settled, mut refunded, mut expired, mut late) = (0, 0, 0, 0);
    let mut charged_by_ledger: Micros = 0;
    let mut recomputed: Micros = 0;
    let mut owed_events = BTreeSet::new();
    let mut seen_tasks = BTreeSet::new();
    for (rid, entries) in &per_reservation {
        let kinds: Vec<&str> = entries.iter().map(|e| e["kind"].as_str().unwrap()).collect();
        let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
        let i = by_request[entries[0]["request_id"].as_str().unwrap()];
        let plan = plan(i);
        assert_eq!(count("reserve"), 1, "{rid}: {kinds:?}");
        let finals = count("settle") + count("refund") + count("expire");
        assert_eq!(finals, 1, "{rid} (task {i}) must end exactly once: {kinds:?}");
        assert!(count("late_settle") <= count("expire"), "{rid}: {kinds:?}");
        let task_id = entries
            .iter()
            .map(|e| e["task_id"].as_str().unwrap())
            .find(|t| !t.is_empty());
        if let Some(task_id) = task_id {
            assert!(seen_tasks.insert(task_id.to_string()), "task {task_id} bound twice");
        }
        if let Some(known_task) = known.get(&i) {
            assert_eq!(task_id, Some(known_task.as_str()), "task {i}");
            assert_eq!(count("expire"), 0, "a created task ends by its outcome: {kinds:?}");
        }
        for entry in entries {
            let amount = parse_money(entry["amount"].as_str().unwrap()).unwrap();
            match entry["kind"].as_str().unwrap() {
                "settle" | "late_settle" => {
                    assert_eq!(Some(amount), plan.expected, "task {i} charged {amount}");
                    charged_by_ledger += amount;
                    recomputed += plan.expected.unwrap_or_default();
                }
                "refund" => assert_eq!(plan.expected, None, "task {i} refunded but should complete"),
                _ => {}
            }
        }
        settled += count("settle");
        refunded += count("refund");
        expired += count("expire");
        late += count("late_settle");
        for kind in ["settle", "refund", "expire", "late_settle"] {
            if count(kind) == 1 && task_id.is_some() {
                owed_events.insert(format!("msg_{rid}_{kind}"));
            }
        }
    }
    for i in known.keys() {
        assert!(
            per_reservation
                .values()
                .any(|e| by_request[e[0]["request_id"].as_str().unwrap()] == *i),
            "created task {i} has no reservation"
        );
    }
    assert_eq!(charged_by_ledger, recomputed);
    let usage = store.period_usage("chaos", "total").await.unwrap();
    assert_eq!((usage.spent, usage.reserved, usage.in_flight), (recomputed, 0, 0));
    let report: Value = client
        .get(format!(
            "http://127.0.0.1:{}/v1/admin/usage?period=total&tenant=chaos",
            ports[0]
        ))
        .bearer_auth(&finance)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        parse_money(report["rows"][0]["spent"].as_str().unwrap()).unwrap(),
        recomputed
    );
    assert_eq!(parse_money(report["rows"][0]["reserved"].as_str().unwrap()).unwrap(), 0);

    // Relayed at least once each, signed; duplicates allowed (at-least-once), nothing else.
    let received = receiver.received();
    let delivered: BTreeSet<String> = received.iter().map(|r| r.header("webhook-id").to_string()).collect();
    assert!(received.iter().all(|r| signature_valid(SIGNING_SECRET, r)));
    assert_eq!(delivered, owed_events, "every ending relayed, and only those");

    let stats: Value = client
        .get(format!("http://{mock}/_mock/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ambiguous = outcomes.iter().filter(|o| matches!(o, Created::Ambiguous)).count();
    println!(
        "chaos: {tasks} creates ({} answered, {ambiguous} cut by a kill) in {:.1} s, quiet after {:.1} s; \
         reservations {}: settled {settled}, refunded {refunded}, expired {expired} (unbound), late settles {late}; \
         charged {} = recomputed {}; upstream tasks {}, bound {}; callbacks sent {}, dropped {}, duplicated {}; \
         relayed {} deliveries for {} events",
        known.len(),
        created_at.as_secs_f64(),
        quiet_at.as_secs_f64(),
        per_reservation.len(),
        vidgate::billing::format_money(charged_by_ledger),
        vidgate::billing::format_money(recomputed),
        stats["tasks_created"],
        seen_tasks.len(),
        stats["callbacks_sent"],
        stats["callbacks_dropped"],
        stats["callbacks_duplicated"],
        received.len(),
        delivered.len(),
    );
}
