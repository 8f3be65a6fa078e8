//! Rate limits and concurrency caps: a burst then the steady rate, Retry-After from the
//! limiter, the RateLimit headers, per-user limits inside a tenant, runtime changes, and
//! limits that hold across gateway processes sharing one Redis.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, assert_error, quick_mock, sign, spawn_app_with};
use crate::support::process::spawn;
use crate::support::redis::RedisServer;

async fn a_burst_is_admitted_then_refused_with_retry_after(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), |c| {
        c.tenants[0].creates_per_minute = 30;
        c.tenants[0].creates_burst = 2;
    })
    .await;
    let token = app.token("team-a");
    for _ in 0..2 {
        let response = app.post_create(&token, &app.create_body("burst")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-policy"], "\"creates\";q=30;w=60");
        assert!(
            response.headers()["ratelimit"]
                .to_str()
                .expect("ascii")
                .starts_with("\"creates\";r=")
        );
    }
    let refused = app.post_create(&token, &app.create_body("one too many")).await;
    // 30 per minute: one every 2 s, so the next is admitted within 2 s.
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers()["ratelimit"], "\"creates\";r=0;t=4");
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    assert_eq!(app.mock.stats().tasks_created, 2);
    // After Retry-After, one more is admitted.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        app.post_create(&token, &app.create_body("later")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn creates_burst_then_429_with_retry_after_embedded() {
    a_burst_is_admitted_then_refused_with_retry_after(Backend::Embedded).await;
}

#[tokio::test]
async fn creates_burst_then_429_with_retry_after_redis() {
    a_burst_is_admitted_then_refused_with_retry_after(Backend::Redis).await;
}

async fn reads_are_limited_separately(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), |c| {
        c.tenants[0].reads_per_minute = 60;
        c.tenants[0].reads_burst = 3;
    })
    .await;
    let task = app.create_task("team-a", "x").await;
    let id = task["id"].as_str().expect("id");
    let token = app.token("team-a");
    let ok = app.get_task(&token, id).await;
    assert_eq!(ok.headers()["ratelimit-policy"], "\"reads\";q=60;w=60");
    assert_eq!(app.get("/v1/usage", &token).await.status(), StatusCode::OK);
    assert_eq!(app.get_task(&token, id).await.status(), StatusCode::OK);
    let refused = app.get("/v1/usage", &token).await;
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    let refused = app.get_task(&token, id).await;
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    // Another tenant is not affected.
    assert_eq!(
        app.get("/v1/usage", &app.token("team-b")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn reads_are_limited_on_their_own_quota_embedded() {
    reads_are_limited_separately(Backend::Embedded).await;
}

#[tokio::test]
async fn reads_are_limited_on_their_own_quota_redis() {
    reads_are_limited_separately(Backend::Redis).await;
}

#[tokio::test]
async fn a_user_limit_applies_inside_the_tenant_limit() {
    let app = spawn_app_with(Backend::Redis, quick_mock(), |c| {
        c.tenants[0].user_creates_per_minute = 1
    })
    .await;
    let alice = app.token_for("team-a", "alice");
    assert_eq!(
        app.post_create(&alice, &app.create_body("a1")).await.status(),
        StatusCode::OK
    );
    let refused = app.post_create(&alice, &app.create_body("a2")).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((59..=60).contains(&retry_after), "{retry_after}");
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    let bob = app.token_for("team-a", "bob");
    assert_eq!(
        app.post_create(&bob, &app.create_body("b1")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_limit_lowered_at_runtime_applies_at_once_on_the_replica_that_changed_it() {
    let app = spawn_app_with(Backend::Redis, quick_mock(), |_| {}).await;
    let token = app.token("team-a");
    assert_eq!(app.get("/v1/usage", &token).await.status(), StatusCode::OK);
    let change = app
        .client
        .put(format!("{}/v1/admin/tenants/team-a", app.base))
        .bearer_auth(app.admin_token())
        .json(&json!({"reads_per_minute": 1, "reads_burst": 1}))
        .send()
        .await
        .expect("answer");
    assert_eq!(change.status(), StatusCode::OK);
    // One read a minute now: of the next three, at most one is admitted.
    let mut admitted = 0;
    for _ in 0..3 {
        admitted += usize::from(app.get("/v1/usage", &token).await.status() == StatusCode::OK);
    }
    assert!(admitted <= 1, "{admitted} admitted");
    let refused = app.get("/v1/usage", &token).await;
    assert_eq!(refused.headers()["ratelimit-policy"], "\"reads\";q=1;w=60");
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
}

#[tokio::test]
async fn a_limit_lowered_at_runtime_reaches_the_other_replicas_within_seconds() {
    let one = spawn_app_with(Backend::Redis, quick_mock(), |_| {}).await;
    let two = one.replica().await;
    let token = one.token("team-a");
    assert_eq!(two.get("/v1/usage", &token).await.status(), StatusCode::OK);
    let change = one
        .client
        .put(format!("{}/v1/admin/tenants/team-a", one.base))
        .bearer_auth(one.admin_token())
        .json(&json!({"reads_per_minute": 1, "reads_burst": 1}))
        .send()
        .await
        .expect("answer");
    assert_eq!(change.status(), StatusCode::OK);
    // The other replica's tenant cache lives 5 s: poll until its answers carry the new policy.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = two.get("/v1/usage", &token).await;
        if response
            .headers()
            .get("ratelimit-policy")
            .is_some_and(|p| p == "\"reads\";q=1;w=60")
        {
            break;
        }
        assert!(Instant::now() < deadline, "replica two never saw the lowered limit");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_config(dir: &std::path::Path, mock: &str, redis_url: &str, prefix: &str, tenant: &str) -> String {
    let path = dir.join("vidgate.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://{mock}\"\nfiles_base_url = \"http://{mock}\"\n\
         api_key = \"sk-evo-mock\"\n[auth]\nhs256_secret = \"{}\"\n[store]\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\n\
         key_prefix = \"{prefix}\"\n[probe]\nallow_private_networks = true\n{tenant}",
        crate::helpers::SECRET
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// Hammers one tenant's reads limit through `replicas` gateway processes for `window`.
async fn hammer(replicas: usize, per_minute: u32, burst: u32, window: Duration) -> (usize, f64) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let (_mock, mock) = spawn(&["mock-upstream", "--listen", "127.0.0.1:0"]);
    let tenant = format!("[[tenants]]\nid = \"hot\"\nreads_per_minute = {per_minute}\nreads_burst = {burst}\n");
    let config = write_config(
        dir.path(),
        &mock,
        &redis.url(),
        &crate::support::random_prefix(),
        &tenant,
    );
    let gateways: Vec<_> = (0..replicas).map(|_| spawn(&["serve", "--config", &config])).collect();
    let token = sign(&json!({"sub": "h", "tenant": "hot", "aud": "vidgate", "exp": crate::helpers::now() + 600}));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let workers = (0..8).map(|i| {
        let url = format!("http://{}/v1/usage", gateways[i % replicas].1);
        let (client, token) = (client.clone(), token.clone());
        async move {
            let mut admitted = 0;
            while started.elapsed() < window {
                let response = client.get(&url).bearer_auth(&token).send().await.expect("answer");
                admitted += usize::from(response.status() == StatusCode::OK);
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            admitted
        }
    });
    let admitted: usize = futures_util::future::join_all(workers).await.into_iter().sum();
    (admitted, started.elapsed().as_secs_f64())
}

/// Replicas from `LIMIT_REPLICAS` (default 2), window seconds from `LIMIT_WINDOW_SECS` (default 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_one_redis_admit_the_limit_not_a_multiple_of_it() {
    let replicas = std::env::var("LIMIT_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let window = std::env::var("LIMIT_WINDOW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (per_minute, burst) = (600, 5);
    let (admitted, elapsed) = hammer(replicas, per_minute, burst, Duration::from_secs(window)).await;
    let allowed = per_minute as f64 / 60.0 * elapsed;
    println!(
        "replicas={replicas} window={elapsed:.2}s admitted={admitted} limit×window={allowed:.1} burst={burst} \
         ratio={:.3}",
        admitted as f64 / allowed
    );
    assert!(
        admitted as f64 <= allowed + burst as f64 + 1.0,
        "{admitted} admitted, limit {allowed:.1} + {burst}"
    );
    assert!(
        admitted as f64 >= 0.95 * (allowed - per_minute as f64 / 60.0 * 0.2),
        "{admitted} admitted of {allowed:.1}"
    );
}

/// `max_concurrent_tasks = 5` across two processes: exactly 5 tasks in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_holds_across_two_processes() {
    let creates: usize = std::env::var("CONCURRENCY_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let (_mock, mock) = spawn(&["mock-upstream", "--listen", "127.0.0.1:0", "--pending-ms", "60000"]);
    let reference = crate::helpers::upload_reference_to(&format!("http://{mock}"), 5000).await;
    let tenant =
        "[[tenants]]\nid = \"cap\"\nmax_concurrent_tasks = 5\ncreates_per_minute = 100000\ncreates_burst = 100000\n";
    let config = write_config(
        dir.path(),
        &mock,
        &redis.url(),
        &crate::support::random_prefix(),
        tenant,
    );
    let (_one, one) = spawn(&["serve", "--config", &config]);
    let (_two, two) = spawn(&["serve", "--config", &config]);
    let token = sign(&json!({"sub": "c", "tenant": "cap", "aud": "vidgate", "exp": crate::helpers::now() + 600}));
    let body = json!({"model": crate::helpers::MODEL, "prompt": "cap", "video_urls": [reference]});
    let client = reqwest::Client::new();
    let calls = (0..creates).map(|i| {
        let url = format!("http://{}/v1/videos/generations", if i % 2 == 0 { &one } else { &two });
        let (client, token, body) = (client.clone(), token.clone(), body.clone());
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("answer")
                .status()
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let capped = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((ok, capped), (5, creates - 5));
    let stats: serde_json::Value = client
        .get(format!("http://{mock}/_mock/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["open_tasks"], 5, "the upstream sees exactly 5 open tasks");
}
