//! The Redis store against real replication: a write refused as `READONLY` (the server was
//! demoted, as a managed Redis does behind its one name) fails closed and the store reconnects
//! once it is a primary again; a hold too few replicas acknowledge is undone (503, nothing
//! forwarded) and counted; Sentinel and primary passwords in a `redis+sentinel://` URL.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use vidgate::store::redis::RedisStore;
use vidgate::store::{PeriodKeys, ReserveOutcome, ReserveRequest, Store, StoreError, TenantSettings};

use crate::helpers::{Backend, assert_error, spawn_app_with};
use crate::support::redis::{RedisServer, cli, data_node_args, free_port};

/// A data node in its own directory under `dir`.
fn node(port: u16, dir: &tempfile::TempDir, extra: &[&str]) -> RedisServer {
    let mut args = data_node_args(port, dir.path());
    args.extend(extra.iter().map(|a| a.to_string()));
    RedisServer::start_args(port, &args)
}

fn hold(id: &str) -> ReserveRequest {
    ReserveRequest {
        reservation_id: id.into(),
        tenant: "acme".into(),
        user: "ann".into(),
        request_id: String::new(),
        periods: PeriodKeys::at(chrono::Utc::now()),
        model: "m".into(),
        quality: "720p".into(),
        audio: false,
        currency: "USD".into(),
        price_per_second: 1000,
        reference_durations_ms: Vec::new(),
        billed_input_ms: 0,
        requested_output_ms: 5000,
        amount: 5000,
        callback_url: None,
        now_ms: chrono::Utc::now().timestamp_millis(),
        idempotency: None,
        rate: Vec::new(),
    }
}

fn settings() -> TenantSettings {
    TenantSettings {
        budget: None,
        period: vidgate::config::PeriodKind::Total,
        creates_per_minute: 600,
        creates_burst: 100,
        reads_per_minute: 600,
        reads_burst: 100,
        max_concurrent_tasks: 100,
        user_budget: None,
        user_creates_per_minute: 0,
        allowed_qualities: vec!["720p".into()],
        alert_webhook_url: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_refuses_writes_and_the_store_reconnects_when_it_is_primary_again() {
    let (pa, pb) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let _a = node(pa, &dir, &[]);
    let _b = node(pb, &dir, &[]);
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{pa}"), "t:")
        .await
        .unwrap();
    store.apply_config_tenant("acme", &settings(), "h", 0).await.unwrap();
    assert!(matches!(
        store.reserve(&hold("rsv_1")).await.unwrap().outcome,
        ReserveOutcome::Reserved(_)
    ));

    // Demoted: every write is refused (READONLY), nothing lands on the replica.
    assert_eq!(cli(pa, &["REPLICAOF", "127.0.0.1", &pb.to_string()]), "OK");
    let refused = store.reserve(&hold("rsv_2")).await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
    assert_eq!(cli(pb, &["EXISTS", "t:res:rsv_2"]), "0");

    // Primary again (a failover back): the store reconnects and writes.
    assert_eq!(
        cli(pb, &["SET", "t:tenant:acme", &cli(pa, &["GET", "t:tenant:acme"])]),
        "OK"
    );
    assert_eq!(cli(pa, &["REPLICAOF", "NO", "ONE"]), "OK");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.reserve(&hold("rsv_3")).await {
            Ok(receipt) => {
                assert!(matches!(receipt.outcome, ReserveOutcome::Reserved(_)), "{receipt:?}");
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "never wrote again: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_hold_no_replica_acknowledges_is_undone_and_the_create_refused() {
    // The shared Redis has no replica: WAIT 1 never reaches one.
    let app = spawn_app_with(Backend::Redis, crate::helpers::quick_mock(), |config| {
        config.store.min_replicas_acked = 1;
        config.store.replica_ack_timeout_ms = 50;
    })
    .await;
    let response = app
        .post_create(&app.token("team-a"), &app.create_body("character1 waves"))
        .await;
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None).await;
    assert_eq!(app.mock.stats().creates, 0, "nothing forwarded");
    let period = PeriodKeys::at(chrono::Utc::now()).month;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let usage = app.state.store.period_usage("team-a", &period).await.unwrap();
        if (usage.reserved, usage.in_flight) == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the hold stayed: {usage:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = metrics
        .lines()
        .find(|l| l.starts_with(r#"vidgate_store_replica_ack_shortfall_total{operation="reserve"}"#))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!counted.ends_with(" 0"), "{counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_and_primary_passwords_come_from_the_url() {
    let (primary, sentinel_port) = (free_port(), free_port());
    // Passwords set once the servers answer (the readiness check pings without one).
    let dir = tempfile::tempdir().unwrap();
    let _node = node(primary, &dir, &[]);
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor m 127.0.0.1 {primary} 1\nsentinel auth-pass m pr1mary\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _sentinel = RedisServer::start_args(sentinel_port, &[conf.display().to_string(), "--sentinel".into()]);
    assert_eq!(cli(primary, &["CONFIG", "SET", "requirepass", "pr1mary"]), "OK");
    assert_eq!(
        cli(sentinel_port, &["ACL", "SETUSER", "default", "resetpass", ">s3ntinel"]),
        "OK"
    );
    let url = |primary_pw: &str, sentinel_pw: &str| {
        format!("redis+sentinel://:{primary_pw}@127.0.0.1:{sentinel_port}/m?sentinel_password={sentinel_pw}")
    };
    let store = RedisStore::connect(&url("pr1mary", "s3ntinel"), "t:").await.unwrap();
    store.ping().await.unwrap();
    assert!(store.describe().await.unwrap().contains("from sentinels 127.0.0.1:"));
    for (primary_pw, sentinel_pw) in [("pr1mary", "wrong"), ("wrong", "s3ntinel")] {
        let refused = RedisStore::connect(&url(primary_pw, sentinel_pw), "t:").await;
        assert!(refused.is_err(), "{primary_pw}/{sentinel_pw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_no_replica_acknowledges_is_counted_and_the_create_goes_on() {
    let (primary_port, replica_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let _primary = node(primary_port, &dir, &[]);
    let replica = node(
        replica_port,
        &dir,
        &["--replicaof", "127.0.0.1", &primary_port.to_string()],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(replica_port, &["INFO", "replication"]).contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = spawn_app_with(Backend::Redis, crate::helpers::quick_mock(), |config| {
        config.store.redis_url = format!("redis://127.0.0.1:{primary_port}");
        config.store.min_replicas_acked = 1;
        config.store.replica_ack_timeout_ms = 200;
    })
    .await;
    // The upstream answers after 1 s; meanwhile the replica freezes: the reserve was
    // acknowledged, the bind after the upstream call is not.
    let create = {
        let body = app.create_body("character1 waves [mock:hang=1]");
        let (client, url, token) = (
            app.client.clone(),
            format!("{}/v1/videos/generations", app.base),
            app.token("team-a"),
        );
        tokio::spawn(async move { client.post(url).bearer_auth(token).json(&body).send().await.unwrap() })
    };
    while app.mock.stats().creates == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    replica.pause();
    let response = create.await.unwrap();
    replica.resume();
    assert_eq!(response.status(), StatusCode::OK, "the task exists: the create goes on");
    let task: serde_json::Value = response.json().await.unwrap();
    let bound = app.state.store.task(task["id"].as_str().unwrap()).await.unwrap();
    assert!(bound.is_some(), "bound on the primary");
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"vidgate_store_replica_ack_shortfall_total{operation="bind"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"vidgate_store_replica_ack_shortfall_total{operation="reserve"}"#));
}
