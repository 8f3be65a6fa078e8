//! Chaos: two gateway processes on one redis-server behind the mock upstream as a process
//! that loses 30 % of its callbacks, sends 30 % twice and delays them all; one gateway is
//! SIGKILLed and restarted twice while tasks are being created; creates meet unknown outcomes
//! (an upstream 500 after its write, a create outliving the timeout) and refusals after the
//! write (502), and Redis is stalled (SIGSTOP) across creates once. At the end every
//! reservation ended exactly once, the ledger matches an independent recomputation to the
//! micro-unit, no hold remains, every ending was relayed (signed) at least once, and the
//! upstream's own task list reconciles with the charges: nothing charged twice, nothing
//! charged that never ran, and every task that ran is charged unless its create's outcome was
//! unknown and every callback of it was lost (no design can recover those: listed apart).
//!
//! Size: `CHAOS_TASKS` (default 40). Figures are printed (`--nocapture` shows them);
//! `CHAOS_DEBUG=1` also prints the gateways' logs and the upstream's task list.

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
/// Creates sent while Redis is stalled at the end.
const STALLED_CREATES: usize = 4;

/// What task `i` is asked to do, and what it must cost (`None`: it fails, refunded).
struct Plan {
    prompt: String,
    request_id: String,
    expected: Option<Micros>,
}

fn plan(i: usize) -> Plan {
    let output_ms = 2000 + (i % 80) as u64 * 100;
    let slow = (i % 7) as f64 * 0.3;
    // 720p with audio at 0.05/s = 50 micros per ms; one 5 s reference bills 5000 ms.
    let completes = Some(50 * (5000 + output_ms as Micros));
    let out = format!("[mock:out={:.1}]", output_ms as f64 / 1000.0);
    let (marker, expected) = match i % 10 {
        3 => ("[mock:fail]".to_string(), None),
        7 => ("[mock:cancel]".to_string(), None),
        // Unknown outcomes: a 500 after the upstream's write; an answer after the timeout.
        5 => (format!("{out} [mock:after=500]"), completes),
        9 => (format!("{out} [mock:hang=1.5]"), completes),
        // Refused (502), but created all the same.
        1 if i % 20 == 1 => (format!("{out} [mock:after=502]"), completes),
        _ => (out, completes),
    };
    Plan {
        prompt: format!("chaos {i} {marker} [mock:slow={slow:.1}]"),
        request_id: format!("req_chaos_{i:05}"),
        expected,
    }
}

/// Which plan a mock task's prompt came from.
fn plan_of(prompt: &str) -> usize {
    prompt
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a chaos prompt: {prompt}"))
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
timeout_ms = 1000
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
unbound_hold_grace_secs = 62
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
#[derive(Debug)]
enum Created {
    Ok {
        task_id: String,
    },
    /// The replica died under the request: the task may or may not exist.
    Ambiguous,
    /// `upstream_outcome_unknown` / `upstream_timeout`: the task may exist, the hold is named.
    Unknown,
    /// `upstream_error`: the upstream refused (it may have created the task all the same).
    Refused,
    /// `store_unavailable` (Redis stalled): nothing was forwarded.
    StoreDown,
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
            Ok(response) => {
                let status = response.status();
                let error: Value = response.json().await.expect("json error");
                return match error["error"]["code"].as_str() {
                    Some("upstream_outcome_unknown" | "upstream_timeout") => {
                        assert!(error["error"]["reservation_id"].is_string(), "{error}");
                        Created::Unknown
                    }
                    Some("upstream_error") => Created::Refused,
                    Some("store_unavailable") => Created::StoreDown,
                    _ => panic!("create {i} refused: {status} {error}"),
                };
            }
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
    let redis = Arc::new(RedisServer::start());
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

    // Replica a is killed when a third and two thirds of the creates are done, and restarted;
    // in between, half-way, Redis stalls for longer than a store command may take (one after
    // the other: a replica starting against a stalled Redis would not start).
    let done = Arc::new(AtomicUsize::new(0));
    let disruptor = {
        let (done, config, log, redis) = (done.clone(), configs[0].clone(), logs[0].clone(), redis.clone());
        let reached = move |n: usize| {
            let done = done.clone();
            async move {
                while done.load(Ordering::SeqCst) < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        tokio::spawn(async move {
            let mut replica = first;
            for fraction in [1, 2] {
                reached(tasks * fraction / 3).await;
                replica.kill();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (config, log) = (config.clone(), log.clone());
                replica = tokio::task::spawn_blocking(move || serve(&config, &log)).await.unwrap();
                if fraction == 1 {
                    reached(tasks / 2).await;
                    redis.pause();
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    redis.resume();
                }
            }
            replica
        })
    };
    let create_one = |i: usize| {
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
    };
    let mut outcomes: Vec<Created> = futures_util::stream::iter(0..tasks)
        .map(create_one)
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let _restarted = disruptor.await.unwrap();
    // A last few creates meet a Redis stalled past the store's command timeout: their
    // reserves time out (503, nothing forwarded) and must leave no hold once Redis is back.
    redis.pause();
    let resume = {
        let redis = redis.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3000)).await;
            redis.resume();
        })
    };
    outcomes.extend(futures_util::future::join_all((tasks..tasks + STALLED_CREATES).map(create_one)).await);
    resume.await.unwrap();
    let tasks = tasks + STALLED_CREATES;
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
            _ => None,
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
        assert!(
            count("late_settle") <= count("expire") + count("refund"),
            "{rid}: {kinds:?}"
        );
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
                // A refusal, or a reserve released after a store stall, refunds what completes.
                "refund" => assert!(
                    plan.expected.is_none() || matches!(outcomes[i], Created::Refused | Created::StoreDown),
                    "task {i} refunded but should complete ({:?})",
                    outcomes[i]
                ),
                _ => {}
            }
        }
        settled += count("settle");
        refunded += count("refund");
        expired += count("expire");
        late += count("late_settle");
        // An ending is relayed when a task was bound by then (its entry names it).
        for entry in entries {
            let kind = entry["kind"].as_str().unwrap();
            if ["settle", "refund", "expire", "late_settle"].contains(&kind) && entry["task_id"] != "" {
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

    // What finance reconciles: the upstream's tasks against the charges.
    let upstream_tasks: Vec<Value> = client
        .get(format!("http://{mock}/_mock/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ran: BTreeMap<String, &Value> = upstream_tasks
        .iter()
        .filter(|t| t["status"] == "completed")
        .map(|t| (t["id"].as_str().unwrap().to_string(), t))
        .collect();
    let mut charges: BTreeMap<String, usize> = BTreeMap::new();
    for entry in entries
        .iter()
        .filter(|e| matches!(e["kind"].as_str(), Some("settle" | "late_settle")))
    {
        *charges
            .entry(entry["task_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let charged_twice: Vec<&String> = charges.iter().filter(|(_, n)| **n > 1).map(|(t, _)| t).collect();
    let charged_never_ran: Vec<&String> = charges.keys().filter(|t| !ran.contains_key(*t)).collect();
    let charged = charges.keys().filter(|t| ran.contains_key(*t)).count();
    let lost: Vec<String> = ran
        .iter()
        .filter(|(task_id, _)| !charges.contains_key(*task_id))
        .map(|(task_id, task)| {
            let i = plan_of(task["prompt"].as_str().unwrap());
            assert!(
                matches!(outcomes[i], Created::Unknown | Created::Ambiguous | Created::Refused)
                    && task["callback"] == "dropped",
                "task {task_id} (create {i}, {:?}) ran and was never charged, although it was recoverable",
                outcomes[i]
            );
            format!("{task_id} (create {i}: {:?})", outcomes[i])
        })
        .collect();
    println!(
        "chaos reconciliation: tasks the upstream ran {}; charged {charged}; charged twice {}; charged but never run {}; \
         ran with an unknown outcome and lost every callback {}: {lost:?}",
        ran.len(),
        charged_twice.len(),
        charged_never_ran.len(),
        lost.len(),
    );
    if std::env::var("CHAOS_DEBUG").is_ok() {
        for log in &logs {
            eprintln!("LOG {log:?}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        for t in &upstream_tasks {
            eprintln!("TASK {t}");
        }
    }
    assert!(charged_twice.is_empty(), "charged twice: {charged_twice:?}");
    assert!(
        charged_never_ran.is_empty(),
        "charged but never run: {charged_never_ran:?}"
    );
    assert_eq!(ran.len(), charged + lost.len());

    let stats: Value = client
        .get(format!("http://{mock}/_mock/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tally = |f: fn(&Created) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let ambiguous = tally(|o| matches!(o, Created::Ambiguous));
    println!(
        "chaos: create answers: {} unknown outcome, {} refused, {} store unavailable",
        tally(|o| matches!(o, Created::Unknown)),
        tally(|o| matches!(o, Created::Refused)),
        tally(|o| matches!(o, Created::StoreDown)),
    );
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
