//! Failover with real processes: Debian's redis-server as a primary and a replica, three
//! Sentinels (`redis-server --sentinel`), two gateway processes on
//! `redis+sentinel://...`, the mock upstream as a process sending callbacks, steady creates
//! and queries. The primary is SIGKILLed and Sentinel promotes the replica; the old primary
//! is restarted and becomes a replica of the new one; then the new primary is frozen
//! (SIGSTOP) for longer than the timeouts (store command 2 s, Sentinel's down-after 1 s), and
//! thawed. Run with `store.min_replicas_acked` 0 and 1; for each: seconds without service,
//! creates refused, tasks the upstream ran, tasks charged, tasks charged twice. With 1,
//! nothing the gateway acknowledged is lost: every task the upstream ran is charged, once.
//!
//! Size: `FAILOVER_TASKS` (default 60): about that many creates over the run. Figures are
//! printed (`--nocapture`); `FAILOVER_DEBUG=1` also prints the gateways' logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{MODEL, SECRET, sign};
use crate::support::process::{Process, free_port, spawn_logged};
use crate::support::redis::{RedisServer, cli, data_node_args};

const MASTER: &str = "mymaster";
/// Concurrent clients, each creating then querying, paced.
const CLIENTS: usize = 4;
/// The run's length without its outages: the pace spreads `FAILOVER_TASKS` over it.
const STEADY_SECS: f64 = 12.0;
/// How long the new primary stays frozen: past the store's 2 s command timeout and
/// Sentinel's 1 s down-after.
const FREEZE: Duration = Duration::from_secs(5);

/// A data node's arguments, a replica's with `--replicaof`.
fn node_args(port: u16, dir: &Path, replica_of: Option<u16>) -> Vec<String> {
    let mut args = data_node_args(port, dir);
    if let Some(primary) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), primary.to_string()]);
    }
    args
}

fn sentinel(port: u16, primary: u16, dir: &Path) -> RedisServer {
    let conf = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel-{port}.log\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 4000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    RedisServer::start_args(port, &[conf.display().to_string(), "--sentinel".into()])
}

/// The primary's port as the first Sentinel names it.
fn named_primary(sentinel: u16) -> Option<u16> {
    let reply = cli(sentinel, &["SENTINEL", "get-master-addr-by-name", MASTER]);
    reply.lines().nth(1)?.trim().parse().ok()
}

async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the node on `port` is a replica in sync with its primary.
fn synced_replica(port: u16) -> bool {
    let info = cli(port, &["INFO", "replication"]);
    info.contains("role:slave") && info.contains("master_link_status:up")
}

fn write_config(dir: &Path, name: &str, port: u16, mock: &str, redis_url: &str, prefix: &str, acked: u32) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
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
timeout_ms = 1000
[auth]
hs256_secret = "{SECRET}"
[store]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
min_replicas_acked = {acked}
replica_ack_timeout_ms = 500
[probe]
allow_private_networks = true
timeout_ms = 2000
[callbacks]
allow_private_networks = true
[reconciler]
first_poll_after_secs = 1
poll_interval_secs = 0.5
unbound_hold_grace_secs = 62
[[tenants]]
id = "failover"
period = "total"
max_concurrent_tasks = 100000
creates_per_minute = 100000
creates_burst = 100000
reads_per_minute = 100000
reads_burst = 100000
"#
        ),
    )
    .unwrap();
    path
}

fn serve(config: &Path, log: &Path) -> Process {
    spawn_logged(&["serve", "--config", config.to_str().unwrap()], "warn", Some(log)).0
}

/// How one create ended.
#[derive(Debug, Clone)]
enum Created {
    Ok(String),
    /// Answered, but not 200: the code.
    Refused(String),
    /// No answer (the connection broke).
    Cut,
}

struct Figures {
    acked: u32,
    creates: usize,
    refused: BTreeMap<String, usize>,
    outage_secs: f64,
    queries: usize,
    queries_failed: usize,
    ran: usize,
    charged: usize,
    charged_twice: usize,
    lost: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// Before the first fault: the steady cost of a create.
    steady_p50_ms: f64,
    steady_p99_ms: f64,
    elapsed: f64,
}

/// Seconds during which creates were sent and none succeeded: from the first failed create
/// after a success to the next success.
fn outage_secs(results: &[(Duration, Duration, Created)]) -> f64 {
    let mut sorted: Vec<&(Duration, Duration, Created)> = results.iter().collect();
    sorted.sort_by_key(|(sent, _, _)| *sent);
    let mut total = 0.0;
    let mut down_since: Option<Duration> = None;
    for (sent, _, outcome) in sorted {
        match (outcome, down_since) {
            (Created::Ok(_), Some(since)) => {
                total += sent.saturating_sub(since).as_secs_f64();
                down_since = None;
            }
            (Created::Ok(_), None) => {}
            (_, None) => down_since = Some(*sent),
            (_, Some(_)) => {}
        }
    }
    total
}

async fn scenario(acked: u32, tasks: usize) -> Figures {
    let started = Instant::now();
    let debug = std::env::var("FAILOVER_DEBUG").is_ok();
    // Kept for a look when debugging (the Sentinels' logs are there).
    let dir = tempfile::Builder::new().disable_cleanup(debug).tempdir().unwrap();
    if debug {
        eprintln!("failover acked={acked}: files in {}", dir.path().display());
    }
    let (p1, p2) = (free_port(), free_port());
    let mut primary = RedisServer::start_args(p1, &node_args(p1, dir.path(), None));
    let replica = RedisServer::start_args(p2, &node_args(p2, dir.path(), Some(p1)));
    until("the replica to sync", Duration::from_secs(20), || synced_replica(p2)).await;
    let sentinel_ports = [free_port(), free_port(), free_port()];
    let _sentinels: Vec<RedisServer> = sentinel_ports
        .iter()
        .map(|port| sentinel(*port, p1, dir.path()))
        .collect();
    // Every Sentinel knows the replica and the others before anything fails.
    until("the sentinels to see each other", Duration::from_secs(30), || {
        sentinel_ports.iter().all(|port| {
            let info = cli(*port, &["SENTINEL", "master", MASTER]);
            let field = |name: &str| {
                let mut lines = info.lines();
                lines.find(|l| l.trim() == name);
                lines.next().and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(0)
            };
            field("num-slaves") >= 1 && field("num-other-sentinels") >= 2
        })
    })
    .await;
    let redis_url = format!(
        "redis+sentinel://{}/{MASTER}",
        sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );

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
            "--callback-delay-ms",
            "200",
        ],
        "warn",
        None,
    );
    let prefix = crate::support::random_prefix();
    let ports = [free_port(), free_port()];
    let logs = ["a", "b"].map(|name| dir.path().join(format!("{name}.log")));
    let _gateways: Vec<Process> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let config = write_config(dir.path(), name, ports[i], &mock, &redis_url, &prefix, acked);
            serve(&config, &logs[i])
        })
        .collect();
    let token =
        sign(&json!({"sub": "load", "tenant": "failover", "aud": "vidgate", "exp": crate::helpers::now() + 3600}));
    let finance =
        sign(&json!({"sub": "fin", "roles": ["finance"], "aud": "vidgate", "exp": crate::helpers::now() + 3600}));
    let reference = crate::helpers::upload_reference_to(&format!("http://{mock}"), 5000).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // Steady load until told to stop: each client creates, queries what it created, waits.
    let stop = Arc::new(AtomicBool::new(false));
    let pace = Duration::from_secs_f64(STEADY_SECS * CLIENTS as f64 / tasks as f64);
    let load_started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, token, reference, stop) = (client.clone(), token.clone(), reference.clone(), stop.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                let (mut queries, mut queries_failed) = (0, 0);
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let port = ports[(c + n) % 2];
                    let body = json!({"model": MODEL, "prompt": format!("failover {c}-{n} [mock:out=3]"),
                                      "video_urls": [reference], "duration": 5});
                    let sent = load_started.elapsed();
                    let answer = client
                        .post(format!("http://127.0.0.1:{port}/v1/videos/generations"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await;
                    let took = load_started.elapsed() - sent;
                    let outcome = match answer {
                        Ok(response) if response.status() == 200 => {
                            let task: Value = response.json().await.unwrap();
                            Created::Ok(task["id"].as_str().unwrap().to_string())
                        }
                        Ok(response) => {
                            let error: Value = response.json().await.unwrap_or_default();
                            Created::Refused(error["error"]["code"].as_str().unwrap_or("?").to_string())
                        }
                        Err(_) => Created::Cut,
                    };
                    if let Created::Ok(task_id) = &outcome {
                        queries += 1;
                        let read = client
                            .get(format!(
                                "http://127.0.0.1:{}/v1/tasks/{task_id}",
                                ports[(c + n + 1) % 2]
                            ))
                            .bearer_auth(&token)
                            .send()
                            .await;
                        if !matches!(&read, Ok(r) if r.status() == 200) {
                            queries_failed += 1;
                        }
                    }
                    results.push((sent, took, outcome));
                    n += 1;
                    tokio::time::sleep(pace.saturating_sub(load_started.elapsed() - sent)).await;
                }
                (results, queries, queries_failed)
            })
        })
        .collect();

    // The faults, a third and two thirds into the steady run.
    let third = Duration::from_secs_f64(STEADY_SECS / 3.0);
    tokio::time::sleep(third).await;
    let first_fault = load_started.elapsed();
    primary.kill();
    until("Sentinel to promote the replica", Duration::from_secs(30), || {
        named_primary(sentinel_ports[0]) == Some(p2)
    })
    .await;
    let promoted_after = load_started.elapsed();
    primary = RedisServer::start_args(p1, &node_args(p1, dir.path(), None));
    until("the old primary to become a replica", Duration::from_secs(30), || {
        synced_replica(p1)
    })
    .await;
    tokio::time::sleep(third).await;
    replica.pause();
    tokio::time::sleep(FREEZE).await;
    replica.resume();
    until("Sentinel to promote the old primary", Duration::from_secs(30), || {
        named_primary(sentinel_ports[0]) == Some(p1)
    })
    .await;
    until(
        "the thawed primary to become a replica",
        Duration::from_secs(30),
        || synced_replica(p2),
    )
    .await;
    tokio::time::sleep(third).await;
    stop.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    let (mut queries, mut queries_failed) = (0, 0);
    for client in clients {
        let (r, q, f) = client.await.unwrap();
        results.extend(r);
        queries += q;
        queries_failed += f;
    }
    let load_secs = load_started.elapsed().as_secs_f64();

    // Quiet: every task the upstream made has ended, and the charges stopped changing.
    let upstream_tasks = || async {
        client
            .get(format!("http://{mock}/_mock/tasks"))
            .send()
            .await
            .unwrap()
            .json::<Vec<Value>>()
            .await
            .unwrap()
    };
    let charges = || async {
        let mut charges: BTreeMap<String, usize> = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "http://127.0.0.1:{}/v1/admin/ledger?tenant=failover&limit=1000",
                ports[0]
            );
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let Ok(response) = client.get(url).bearer_auth(&finance).send().await else {
                return None;
            };
            let page: Value = response.json().await.ok()?;
            for entry in page["entries"].as_array()? {
                if matches!(entry["kind"].as_str(), Some("settle" | "late_settle")) {
                    *charges.entry(entry["task_id"].as_str()?.to_string()).or_default() += 1;
                }
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Some(charges),
            }
        }
    };
    let mut last: Option<BTreeMap<String, usize>> = None;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (ran, charged) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tasks = upstream_tasks().await;
        let all_final = tasks.iter().all(|t| t["status"] == "completed");
        let now = charges().await;
        if now != last {
            last = now.clone();
            stable_since = Instant::now();
        }
        let ran: Vec<String> = tasks.iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
        let every_one_charged = now.as_ref().is_some_and(|c| ran.iter().all(|t| c.contains_key(t)));
        let settled = all_final && (every_one_charged || stable_since.elapsed() > Duration::from_secs(10));
        if (settled && now.is_some()) || Instant::now() > deadline {
            break (ran, now.unwrap_or_default());
        }
    };
    // Money steps too few replicas acknowledged, by step, over both gateways.
    let mut shortfalls: BTreeMap<String, u64> = BTreeMap::new();
    for port in ports {
        let Ok(response) = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await else {
            continue;
        };
        for line in response.text().await.unwrap_or_default().lines() {
            let Some(rest) = line.strip_prefix(r#"vidgate_store_replica_ack_shortfall_total{operation=""#) else {
                continue;
            };
            if let Some((operation, count)) = rest.split_once(r#""} "#) {
                *shortfalls.entry(operation.to_string()).or_default() += count.parse::<u64>().unwrap_or(0);
            }
        }
    }
    if std::env::var("FAILOVER_DEBUG").is_ok() {
        for log in &logs {
            eprintln!("LOG {log:?}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
    }
    drop(primary);
    drop(replica);

    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, outcome) in &results {
        match outcome {
            Created::Ok(_) => {}
            Created::Refused(code) => *refused.entry(code.clone()).or_default() += 1,
            Created::Cut => *refused.entry("no answer".into()).or_default() += 1,
        }
    }
    let latencies = |before: Duration| {
        let mut ms: Vec<f64> = results
            .iter()
            .filter(|(sent, _, o)| matches!(o, Created::Ok(_)) && *sent < before)
            .map(|(_, took, _)| took.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let quantile = |ms: &[f64], q: f64| {
        ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let (all_ms, steady_ms) = (latencies(Duration::MAX), latencies(first_fault));
    let charged_twice = charged.values().filter(|n| **n > 1).count();
    let never_ran = charged.keys().filter(|t| !ran.contains(t)).count();
    assert_eq!(never_ran, 0, "charged but never run (acked {acked})");
    let lost = ran.iter().filter(|t| !charged.contains_key(*t)).count();
    println!(
        "failover acked={acked}: promoted after {:.1} s of load; load {load_secs:.1} s; \
         steps too few replicas acknowledged {shortfalls:?}",
        promoted_after.as_secs_f64()
    );
    Figures {
        acked,
        creates: results.len(),
        refused,
        outage_secs: outage_secs(&results),
        queries,
        queries_failed,
        ran: ran.len(),
        charged: ran.iter().filter(|t| charged.contains_key(*t)).count(),
        charged_twice,
        lost,
        p50_ms: quantile(&all_ms, 0.5),
        p99_ms: quantile(&all_ms, 0.99),
        steady_p50_ms: quantile(&steady_ms, 0.5),
        steady_p99_ms: quantile(&steady_ms, 0.99),
        elapsed: started.elapsed().as_secs_f64(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_and_a_frozen_primary_lose_no_acknowledged_money() {
    let tasks: usize = std::env::var("FAILOVER_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut all = Vec::new();
    for acked in [0, 1] {
        let figures = scenario(acked, tasks).await;
        println!(
            "failover min_replicas_acked={}: {} creates ({:.1} s in all); seconds without service {:.1}; \
             creates refused {} {:?}; queries {} ({} failed); tasks the upstream ran {}; charged {}; \
             charged twice {}; ran but not charged {}; create latency p50 {:.1} ms, p99 {:.1} ms \
             (before the first fault: p50 {:.1} ms, p99 {:.1} ms)",
            figures.acked,
            figures.creates,
            figures.elapsed,
            figures.outage_secs,
            figures.refused.values().sum::<usize>(),
            figures.refused,
            figures.queries,
            figures.queries_failed,
            figures.ran,
            figures.charged,
            figures.charged_twice,
            figures.lost,
            figures.p50_ms,
            figures.p99_ms,
            figures.steady_p50_ms,
            figures.steady_p99_ms,
        );
        all.push(figures);
    }
    for figures in &all {
        assert_eq!(figures.charged_twice, 0, "charged twice (acked {})", figures.acked);
        assert!(figures.ran > 0 && figures.creates > 0);
    }
    let replicated = &all[1];
    assert_eq!(
        replicated.ran, replicated.charged,
        "with min_replicas_acked = 1, every task the upstream ran is charged"
    );
}
