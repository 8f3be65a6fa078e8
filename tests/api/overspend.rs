//! No overspend across processes: two real gateway processes and a real mock-upstream
//! process share one redis-server; many creates at once against a budget that fits exactly
//! N of them: exactly N succeed, the rest get 402, nothing more reaches the upstream.
//!
//! Size: `OVERSPEND_CREATES` (default 200).

use reqwest::StatusCode;
use serde_json::{Value, json};
use vidgate::store::redis::RedisStore;
use vidgate::store::{PeriodKeys, Store};

use crate::helpers::{MODEL, SECRET, sign};
use crate::support::process::spawn;
use crate::support::redis::RedisServer;

/// Holds that fit the budget: 0.500000 each (one reference, 720p with audio, 5 s).
const FITS: usize = 37;

fn write_config(dir: &std::path::Path, mock: &str, redis_url: &str, prefix: &str, budget: &str) -> String {
    let path = dir.join("vidgate.toml");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "http://{mock}"
files_base_url = "http://{mock}"
api_key = "sk-evo-mock"
[auth]
hs256_secret = "{SECRET}"
[store]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
[probe]
allow_private_networks = true
[[tenants]]
id = "race"
budget = "{budget}"
max_concurrent_tasks = 100000
creates_per_minute = 100000
creates_burst = 100000
"#
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_never_spend_past_a_shared_budget() {
    let creates: usize = std::env::var("OVERSPEND_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (_mock, mock) = spawn(&["mock-upstream", "--listen", "127.0.0.1:0", "--pending-ms", "60000"]);
    let prefix = crate::support::random_prefix();
    let budget = vidgate::billing::format_money(500_000 * FITS as i64);
    let config = write_config(dir.path(), &mock, &redis.url(), &prefix, &budget);
    let (_one, one) = spawn(&["serve", "--config", &config]);
    let (_two, two) = spawn(&["serve", "--config", &config]);

    let token = sign(&json!({"sub": "racer", "tenant": "race", "aud": "vidgate", "exp": crate::helpers::now() + 600}));
    let reference = crate::helpers::upload_reference_to(&format!("http://{mock}"), 5000).await;
    let body = json!({"model": MODEL, "prompt": "race", "video_urls": [reference], "duration": 5});
    let client = reqwest::Client::new();
    let calls = (0..creates).map(|i| {
        let url = format!("http://{}/v1/videos/generations", if i % 2 == 0 { &one } else { &two });
        let request = client.post(url).bearer_auth(&token).json(&body).send();
        tokio::spawn(async move { request.await.expect("a gateway answers").status() })
    });
    let mut statuses = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        statuses.push(call.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::PAYMENT_REQUIRED).count();
    assert_eq!(
        (ok, refused),
        (FITS.min(creates), creates - FITS.min(creates)),
        "{statuses:?}"
    );

    let store = RedisStore::connect(&redis.url(), &prefix).await.unwrap();
    let month = PeriodKeys::at(chrono::Utc::now()).month;
    let usage = store.period_usage("race", &month).await.unwrap();
    assert!(usage.spent + usage.reserved <= 500_000 * FITS as i64, "{usage:?}");
    assert_eq!(usage.reserved, 500_000 * ok as i64);
    let stats: Value = client
        .get(format!("http://{mock}/_mock/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["creates"], ok, "only the holds that fit reached the upstream");
}
