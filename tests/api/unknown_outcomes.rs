//! Money stays exact when a create's outcome is unknown: every row of the classification
//! (created, refused, unknown), a task created although the create was refused, idempotency
//! across unknown outcomes, and Redis stalls across a reserve and a bind. Each test checks
//! the money in `/v1/usage`, the ledger, and how many tasks the upstream made.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, ManualClock, TestApp, assert_error, own_callbacks, quick_mock, spawn_app_with};
use crate::support::redis::RedisServer;
use vidgate::mock_upstream::MockOptions;

/// 5 s of reference and 5 s of output at 720p with audio.
const PRICE: &str = "0.500000";

fn mock_calling_back() -> MockOptions {
    MockOptions {
        allow_local_callbacks: true,
        ..quick_mock()
    }
}

/// A gateway the mock upstream calls back, with creates timing out after 1 s.
async fn spawn(backend: Backend) -> TestApp {
    spawn_app_with(backend, mock_calling_back(), |c| {
        own_callbacks(c);
        c.upstream.timeout_ms = 1000;
    })
    .await
}

async fn usage(app: &TestApp) -> Value {
    app.get_json("/v1/usage", &app.token("team-a")).await
}

/// The tenant's ledger kinds, oldest first, budget changes left out.
async fn ledger_kinds(app: &TestApp) -> Vec<String> {
    let ledger = app
        .get_json("/v1/admin/ledger?tenant=team-a", &app.finance_token())
        .await;
    ledger["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| *k != "budget_change")
        .map(str::to_owned)
        .collect()
}

/// Waits (at most 15 s) until the tenant's usage shows `spent` and nothing reserved.
async fn wait_money(app: &TestApp, spent: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let report = usage(app).await;
        if report["spent"] == spent && report["reserved"] == "0.000000" {
            return report;
        }
        assert!(Instant::now() < deadline, "money never settled to {spent}: {report}");
        // Within the tenant's reads limit (10 a second).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/videos/generations", app.base))
        .bearer_auth(app.token("team-a"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("answer")
}

/// Refused: nothing created upstream, the hold released at once, nothing charged.
async fn refused_creates_release_the_hold_at_once(backend: Backend) {
    let app = spawn(backend).await;
    let rows = [
        ("[mock:http=400]", StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "[mock:http=429]",
            StatusCode::TOO_MANY_REQUESTS,
            "upstream_rate_limited",
        ),
        ("[mock:http=502]", StatusCode::BAD_GATEWAY, "upstream_error"),
        ("[mock:http=503]", StatusCode::BAD_GATEWAY, "upstream_error"),
    ];
    for (marker, status, code) in rows {
        let response = app.post_create(&app.token("team-a"), &app.create_body(marker)).await;
        let body = assert_error(response, status, code, None).await;
        assert!(body["error"].get("reservation_id").is_none(), "{marker}: {body}");
        let report = usage(&app).await;
        assert_eq!(
            (report["spent"].as_str(), report["reserved"].as_str()),
            (Some("0.000000"), Some("0.000000")),
            "{marker}"
        );
    }
    assert_eq!(app.mock.stats().tasks_created, 0);
    assert_eq!(ledger_kinds(&app).await, ["reserve", "refund"].repeat(4));
}

#[tokio::test]
async fn refused_creates_release_the_hold_at_once_embedded() {
    refused_creates_release_the_hold_at_once(Backend::Embedded).await;
}

#[tokio::test]
async fn refused_creates_release_the_hold_at_once_redis() {
    refused_creates_release_the_hold_at_once(Backend::Redis).await;
}

/// Unknown: the task may exist; the hold stays and is named; the upstream's callback then
/// reveals the task, which is bound, settled and charged once. A retry with the same
/// Idempotency-Key replays it instead of making a second task.
async fn unknown_outcomes_are_recovered_from_the_callback(backend: Backend) {
    let app = spawn(backend).await;
    let rows = [
        ("[mock:after=500]", StatusCode::BAD_GATEWAY, "upstream_outcome_unknown"),
        ("[mock:after=504]", StatusCode::BAD_GATEWAY, "upstream_outcome_unknown"),
        ("[mock:after=501]", StatusCode::BAD_GATEWAY, "upstream_outcome_unknown"),
        (
            "[mock:after=reset]",
            StatusCode::BAD_GATEWAY,
            "upstream_outcome_unknown",
        ),
        ("[mock:after=noid]", StatusCode::BAD_GATEWAY, "upstream_outcome_unknown"),
        ("[mock:after=huge]", StatusCode::BAD_GATEWAY, "upstream_outcome_unknown"),
        ("[mock:hang=1.5]", StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
    ];
    for (n, (marker, status, code)) in rows.into_iter().enumerate() {
        // Slow enough that the callback comes after the create's answer.
        let body = app.create_body(&format!("{marker} [mock:slow=1.5]"));
        let key = format!("unknown-{n}");
        let response = create_with_key(&app, &key, &body).await;
        let error = assert_error(response, status, code, None).await;
        let reservation_id = error["error"]["reservation_id"]
            .as_str()
            .expect("the hold is named")
            .to_string();
        assert!(reservation_id.starts_with("rsv_"), "{marker}: {error}");
        assert_ne!(
            usage(&app).await["reserved"],
            "0.000000",
            "{marker}: the hold stays while the outcome is unknown"
        );

        let spent = vidgate::billing::format_money(500_000 * (n as i64 + 1));
        wait_money(&app, &spent).await;
        let replay = create_with_key(&app, &key, &body).await;
        assert_eq!(
            replay.status(),
            StatusCode::OK,
            "{marker}: once bound, the key replays the task"
        );
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        let replayed: Value = replay.json().await.expect("json");
        assert_eq!(replayed["vidgate"]["reservation_id"], reservation_id.as_str());
        assert_eq!(replayed["vidgate"]["state"], "settled", "{marker}");
        assert_eq!(
            app.mock.stats().tasks_created,
            n as u64 + 1,
            "{marker}: no second upstream task"
        );
    }
    assert_eq!(ledger_kinds(&app).await, ["reserve", "settle"].repeat(rows.len()));
    assert_eq!(
        app.metric(r#"vidgate_tasks_total{outcome="recovered",tenant="team-a"}"#),
        rows.len() as f64
    );
}

#[tokio::test]
async fn unknown_outcomes_are_recovered_from_the_callback_embedded() {
    unknown_outcomes_are_recovered_from_the_callback(Backend::Embedded).await;
}

#[tokio::test]
async fn unknown_outcomes_are_recovered_from_the_callback_redis() {
    unknown_outcomes_are_recovered_from_the_callback(Backend::Redis).await;
}

/// A 502 after the upstream's write: refused, so the hold goes at once; the callback then
/// shows the task ran, and it is charged late, flagged as an anomaly.
async fn a_task_created_despite_a_refusal_is_charged_late(backend: Backend) {
    let app = spawn(backend).await;
    let response = app
        .post_create(&app.token("team-a"), &app.create_body("[mock:after=502]"))
        .await;
    assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error", None).await;
    assert_eq!(
        usage(&app).await["reserved"],
        "0.000000",
        "a refusal releases the hold at once"
    );
    let report = wait_money(&app, PRICE).await;
    assert_eq!(report["tasks"]["settled"], 1, "{report}");
    assert_eq!(report["tasks"]["refunded"], 0, "{report}");
    assert_eq!(
        ledger_kinds(&app).await,
        ["reserve", "refund", "late_settle", "anomaly"]
    );
    assert_eq!(app.mock.stats().tasks_created, 1);
}

#[tokio::test]
async fn a_task_created_despite_a_refusal_is_charged_late_embedded() {
    a_task_created_despite_a_refusal_is_charged_late(Backend::Embedded).await;
}

#[tokio::test]
async fn a_task_created_despite_a_refusal_is_charged_late_redis() {
    a_task_created_despite_a_refusal_is_charged_late(Backend::Redis).await;
}

/// While the outcome is unknown the key answers 409 with Retry-After, also after the
/// unbound hold expired (polling only: nothing can reveal the task), never a second task.
async fn the_key_stays_in_progress_while_the_outcome_is_unknown(backend: Backend) {
    let clock = ManualClock::at(&chrono::Utc::now().to_rfc3339());
    let app = crate::helpers::spawn_app_with_clock(backend, quick_mock(), clock.clone(), |c| {
        c.upstream.timeout_ms = 500;
        c.reconciler.first_poll_after_secs = vidgate::config::Seconds::from_millis(100);
        c.reconciler.poll_interval_secs = vidgate::config::Seconds::from_millis(100);
    })
    .await;
    let body = app.create_body("[mock:hang=1]");
    let first = create_with_key(&app, "slow", &body).await;
    assert_error(first, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", None).await;
    let again = create_with_key(&app, "slow", &body).await;
    assert_eq!(again.headers()["retry-after"], "1");
    assert_error(again, StatusCode::CONFLICT, "request_in_progress", None).await;

    // Past the unbound grace (default 600 s): the reconciler releases the hold as expired.
    clock.set(&(chrono::Utc::now() + chrono::Duration::seconds(700)).to_rfc3339());
    let deadline = Instant::now() + Duration::from_secs(10);
    while usage(&app).await["reserved"] != "0.000000" {
        assert!(Instant::now() < deadline, "the unbound hold was never released");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = create_with_key(&app, "slow", &body).await;
    assert_eq!(after.headers()["retry-after"], "60");
    assert_error(after, StatusCode::CONFLICT, "request_in_progress", None).await;
    assert_eq!(app.mock.stats().tasks_created, 1, "no second upstream task");
    assert_eq!(ledger_kinds(&app).await, ["reserve", "expire"]);
}

#[tokio::test]
async fn the_key_stays_in_progress_while_the_outcome_is_unknown_embedded() {
    the_key_stays_in_progress_while_the_outcome_is_unknown(Backend::Embedded).await;
}

#[tokio::test]
async fn the_key_stays_in_progress_while_the_outcome_is_unknown_redis() {
    the_key_stays_in_progress_while_the_outcome_is_unknown(Backend::Redis).await;
}

/// A gateway on a private redis-server that the test stalls (SIGSTOP).
async fn spawn_on(redis: &RedisServer) -> TestApp {
    let url = redis.url();
    spawn_app_with(Backend::Redis, mock_calling_back(), |c| {
        own_callbacks(c);
        c.store.redis_url = url;
    })
    .await
}

/// How a test stalls Redis across a reserve.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// SIGSTOP then SIGCONT: what was queued runs in any order.
    Stopped,
    /// `CLIENT PAUSE WRITE` past the store's 2 s command timeout.
    WritesPaused,
}

async fn a_reserve_stalled_in_redis_leaves_no_hold_once_redis_answers(stall: Stall) {
    let redis = RedisServer::start();
    let app = spawn_on(&redis).await;
    usage(&app).await;
    match stall {
        Stall::Stopped => redis.pause(),
        Stall::WritesPaused => redis.pause_writes(3000),
    }
    let response = app.post_create(&app.token("team-a"), &app.create_body("stalled")).await;
    if let Stall::Stopped = stall {
        redis.resume();
    }
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None).await;
    let resumed = Instant::now();
    wait_money(&app, "0.000000").await;
    let kinds = ledger_kinds(&app).await;
    println!(
        "stalled reserve ({stall:?}): no hold {:.1} s after the gateway gave up; ledger {kinds:?}",
        resumed.elapsed().as_secs_f64()
    );
    // Either the stalled script never ran (its connection was dropped, or the release's mark
    // came first), or it held and the release refunded it: both orders are in the store
    // conformance suite.
    assert!(kinds.is_empty() || kinds == ["reserve", "refund"], "{kinds:?}");
    assert_eq!(app.mock.stats().creates, 0, "nothing was forwarded");
    let usage = usage(&app).await;
    assert_eq!(usage["tasks"]["reserved"], 0, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_stalled_in_a_stopped_redis_leaves_no_hold_once_redis_answers() {
    a_reserve_stalled_in_redis_leaves_no_hold_once_redis_answers(Stall::Stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_held_up_by_paused_writes_is_released_once_redis_answers() {
    a_reserve_stalled_in_redis_leaves_no_hold_once_redis_answers(Stall::WritesPaused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_stalled_in_redis_is_retried_until_the_task_is_charged() {
    let redis = RedisServer::start();
    let app = spawn_on(&redis).await;
    let create = {
        let (client, base, token, body) = (
            app.client.clone(),
            app.base.clone(),
            app.token("team-a"),
            // Completes after the stall began: its callback meets a stalled Redis too.
            app.create_body("[mock:hang=1] [mock:slow=5]"),
        );
        tokio::spawn(async move {
            client
                .post(format!("{base}/v1/videos/generations"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("answer")
        })
    };
    // The reserve is done and the upstream call is hanging: stall Redis across the bind.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.pause();
    let response = create.await.expect("create");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the task exists: the caller is told so"
    );
    let task: Value = response.json().await.expect("json");
    assert!(
        task["id"].as_str().is_some_and(|id| id.starts_with("task-unified-")),
        "{task}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.resume();
    let report = wait_money(&app, PRICE).await;
    assert_eq!(report["tasks"]["settled"], 1, "{report}");
    assert_eq!(ledger_kinds(&app).await, ["reserve", "settle"]);
    assert_eq!(app.mock.stats().tasks_created, 1);
}
