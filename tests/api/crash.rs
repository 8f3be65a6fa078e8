//! Crash between reserve and bind, with the real binary: a hold written to the store with no
//! task ever bound (as when a replica dies right after reserving, or the upstream call times
//! out) is released as `expire` by the reconciler after the grace period, and the error log
//! names its request id and reservation id for manual reconciliation.

use std::time::{Duration, Instant};

use vidgate::store::redis::RedisStore;
use vidgate::store::{
    FinalizeOutcome, LedgerKind, LedgerPosition, PeriodKeys, ReservationState, ReserveOutcome, ReserveRequest, Store,
};

use crate::helpers::SECRET;
use crate::support::process::spawn_logged;

const REQUEST_ID: &str = "req_killed_between_reserve_and_bind";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_never_bound_is_expired_after_the_grace_period_and_logged_with_its_request_id() {
    let redis = crate::support::redis::shared();
    let prefix = crate::support::random_prefix();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vidgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "http://127.0.0.1:9"
files_base_url = "http://127.0.0.1:9"
api_key = "sk-evo-mock"
timeout_ms = 500
[auth]
hs256_secret = "{SECRET}"
[store]
backend = "redis"
redis_url = "{}"
key_prefix = "{prefix}"
[reconciler]
first_poll_after_secs = 0.1
poll_interval_secs = 0.1
unbound_hold_grace_secs = 61
[[tenants]]
id = "crash"
budget = "10.00"
"#,
            redis.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let (mut gateway, _) = spawn_logged(&["serve", "--config", config.to_str().unwrap()], "info", Some(&log));

    // What a create does before it dies: the hold, and nothing after it; made a grace period
    // ago (the shortest grace startup accepts is 2 × upstream.timeout_ms + 60 s).
    let store = RedisStore::connect(&redis.url(), &prefix).await.unwrap();
    let now = chrono::Utc::now() - chrono::Duration::seconds(62);
    let hold = ReserveRequest {
        reservation_id: format!("rsv_{}", ulid::Ulid::new()),
        tenant: "crash".into(),
        user: "ann".into(),
        request_id: REQUEST_ID.into(),
        periods: PeriodKeys::at(now),
        model: "wan2.6-reference-video-flash".into(),
        quality: "720p".into(),
        audio: true,
        currency: "USD".into(),
        price_per_second: 50_000,
        reference_durations_ms: vec![5000],
        billed_input_ms: 5000,
        requested_output_ms: 5000,
        amount: 500_000,
        callback_url: Some("https://hooks.example.com/never".into()),
        now_ms: now.timestamp_millis(),
        idempotency: None,
        rate: Vec::new(),
    };
    let rid = hold.reservation_id.clone();
    assert!(matches!(
        store.reserve(&hold).await.unwrap().outcome,
        ReserveOutcome::Reserved(_)
    ));
    let month = hold.periods.month.clone();
    assert_eq!(store.period_usage("crash", &month).await.unwrap().reserved, 500_000);

    let deadline = Instant::now() + Duration::from_secs(30);
    let expired = loop {
        let record = store.reservation(&rid).await.unwrap().unwrap();
        if record.state != ReservationState::Reserved {
            break record;
        }
        assert!(Instant::now() < deadline, "the unbound hold was never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((expired.state, expired.charged), (ReservationState::Expired, Some(0)));
    let usage = store.period_usage("crash", &month).await.unwrap();
    assert_eq!((usage.spent, usage.reserved, usage.in_flight), (0, 0, 0));
    let kinds: Vec<LedgerKind> = store
        .ledger_range("crash", LedgerPosition::default(), u64::MAX, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.entry.kind)
        .filter(|kind| *kind != LedgerKind::BudgetChange)
        .collect();
    assert_eq!(kinds, [LedgerKind::Reserve, LedgerKind::Expire]);
    assert!(
        store
            .due(vidgate::store::Queue::Outbox, i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty(),
        "no task, so no callback to relay"
    );
    assert!(matches!(
        store.expire(&rid, now.timestamp_millis()).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));

    gateway.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains(REQUEST_ID))
        .unwrap_or_else(|| panic!("no log line names the request id:\n{text}"));
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(line.contains(&rid), "{line}");
}
