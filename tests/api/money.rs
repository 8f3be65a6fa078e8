//! Budgets and money through the gateway: a hold that fits exactly is allowed, one that does
//! not is refused with 402 before anything reaches the upstream; per-user caps; periods that
//! roll over on the gateway clock; refunds; restarts of the gateway and of Redis mid-task.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Backend, ManualClock, TestApp, assert_error, quick_mock, spawn_app, spawn_app_with, spawn_app_with_clock,
};
use crate::support::redis::RedisServer;

async fn budget_boundary(backend: Backend) {
    // One reference at 720p with audio for 5 s holds exactly 0.500000.
    let app = spawn_app_with(backend, quick_mock(), |c| c.tenants[0].budget = "0.500000".into()).await;
    app.create_task("team-a", "fits exactly").await;
    let response = app
        .post_create(&app.token("team-a"), &app.create_body("one too many"))
        .await;
    let body = assert_error(response, StatusCode::PAYMENT_REQUIRED, "budget_exceeded", None).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("0.000000")),
        "{body}"
    );
    assert_eq!(
        app.mock.stats().creates,
        1,
        "the refused create never reached the upstream"
    );
}

#[tokio::test]
async fn a_budget_that_fits_to_the_micro_unit_allows_and_the_next_is_refused_embedded() {
    budget_boundary(Backend::Embedded).await;
}

#[tokio::test]
async fn a_budget_that_fits_to_the_micro_unit_allows_and_the_next_is_refused_redis() {
    budget_boundary(Backend::Redis).await;
}

async fn one_micro_over(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), |c| c.tenants[0].budget = "0.499999".into()).await;
    let response = app
        .post_create(&app.token("team-a"), &app.create_body("just too much"))
        .await;
    let body = assert_error(response, StatusCode::PAYMENT_REQUIRED, "budget_exceeded", None).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("0.499999")),
        "{body}"
    );
    assert_eq!(app.mock.stats().creates, 0);
}

#[tokio::test]
async fn a_budget_one_micro_unit_short_refuses_the_first_task_embedded() {
    one_micro_over(Backend::Embedded).await;
}

#[tokio::test]
async fn a_budget_one_micro_unit_short_refuses_the_first_task_redis() {
    one_micro_over(Backend::Redis).await;
}

async fn user_cap(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), |c| c.tenants[0].user_budget = "0.500000".into()).await;
    let alice = app.token_for("team-a", "alice");
    assert_eq!(
        app.post_create(&alice, &app.create_body("mine")).await.status(),
        StatusCode::OK
    );
    let response = app.post_create(&alice, &app.create_body("mine again")).await;
    let body = assert_error(response, StatusCode::PAYMENT_REQUIRED, "budget_exceeded", None).await;
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| m.contains("user's")),
        "{body}"
    );
    let bob = app.token_for("team-a", "bob");
    assert_eq!(
        app.post_create(&bob, &app.create_body("bob's own")).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.mock.stats().creates, 2);
}

#[tokio::test]
async fn a_user_budget_caps_one_user_inside_the_tenant_embedded() {
    user_cap(Backend::Embedded).await;
}

#[tokio::test]
async fn a_user_budget_caps_one_user_inside_the_tenant_redis() {
    user_cap(Backend::Redis).await;
}

/// The caller's `/v1/usage` for `period`.
async fn usage(app: &TestApp, period: &str) -> Value {
    app.get_json(&format!("/v1/usage?period={period}"), &app.token("team-a"))
        .await
}

async fn rollover(backend: Backend) {
    let clock = ManualClock::at("2026-11-30T23:59:00Z");
    let app = spawn_app_with_clock(backend, quick_mock(), clock.clone(), |c| {
        c.tenants[0].budget = "0.500000".into()
    })
    .await;
    let november = app.create_task("team-a", "last task of november").await;
    let response = app.post_create(&app.token("team-a"), &app.create_body("over")).await;
    assert_error(response, StatusCode::PAYMENT_REQUIRED, "budget_exceeded", None).await;

    clock.set("2026-12-01T00:00:01Z");
    let december = app.create_task("team-a", "first task of december").await;
    // November's task ends in December and is still booked to November.
    let done = app.wait_final("team-a", november["id"].as_str().unwrap()).await;
    assert_eq!(done["vidgate"]["state"], "settled");

    let nov = usage(&app, "2026-11").await;
    assert_eq!(
        (nov["spent"].as_str(), nov["reserved"].as_str()),
        (Some("0.500000"), Some("0.000000"))
    );
    assert_eq!(nov["remaining"], "0.000000");
    let dec = usage(&app, "2026-12").await;
    assert_eq!(
        (dec["spent"].as_str(), dec["reserved"].as_str()),
        (Some("0.000000"), Some("0.500000"))
    );
    assert_eq!(usage(&app, "2026-12-01").await["tasks"]["reserved"], 1);
    // Without a period: the current one of the tenant's kind (month) on the gateway clock.
    let current = app.get_json("/v1/usage", &app.token("team-a")).await;
    assert_eq!(current["period"], "2026-12");
    assert_eq!(december["vidgate"]["state"], "reserved");
}

#[tokio::test]
async fn a_new_month_on_the_gateway_clock_brings_a_new_budget_embedded() {
    rollover(Backend::Embedded).await;
}

#[tokio::test]
async fn a_new_month_on_the_gateway_clock_brings_a_new_budget_redis() {
    rollover(Backend::Redis).await;
}

async fn refunds(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .post_create(&app.token("team-a"), &app.create_body("broken [mock:http=502]"))
        .await;
    assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error", None).await;
    for marker in ["[mock:fail]", "[mock:cancel]"] {
        let created = app.create_task("team-a", &format!("doomed {marker}")).await;
        let done = app.wait_final("team-a", created["id"].as_str().unwrap()).await;
        assert_eq!(done["vidgate"]["state"], "refunded", "{marker}");
        assert_eq!(done["vidgate"]["charged"], "0.000000", "{marker}");
    }
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let report = usage(&app, &month).await;
    assert_eq!(
        (report["spent"].as_str(), report["reserved"].as_str()),
        (Some("0.000000"), Some("0.000000"))
    );
    assert_eq!(report["tasks"]["refunded"], 3);
    let ledger = app
        .get_json("/v1/admin/ledger?tenant=team-a", &app.finance_token())
        .await;
    let kinds: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| *k != "budget_change")
        .collect();
    assert_eq!(
        kinds,
        vec!["reserve", "refund", "reserve", "refund", "reserve", "refund"]
    );
}

#[tokio::test]
async fn refunds_on_upstream_failure_failed_and_cancelled_embedded() {
    refunds(Backend::Embedded).await;
}

#[tokio::test]
async fn refunds_on_upstream_failure_failed_and_cancelled_redis() {
    refunds(Backend::Redis).await;
}

async fn restart_mid_task(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_task("team-a", "before restart").await;
    let task_id = created["id"].as_str().unwrap().to_string();
    let app = app.restart().await;
    let done = app.wait_final("team-a", &task_id).await;
    assert_eq!(done["vidgate"]["state"], "settled");
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let report = usage(&app, &month).await;
    assert_eq!(
        (report["spent"].as_str(), report["reserved"].as_str()),
        (Some("0.500000"), Some("0.000000"))
    );
    assert_eq!(report["tasks"]["settled"], 1);
}

#[tokio::test]
async fn a_gateway_restart_in_the_middle_of_a_task_loses_nothing_embedded() {
    restart_mid_task(Backend::Embedded).await;
}

#[tokio::test]
async fn a_gateway_restart_in_the_middle_of_a_task_loses_nothing_redis() {
    restart_mid_task(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_between_reserve_and_settle_loses_nothing_and_forwards_nothing_while_down() {
    let data = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start_persistent(data.path());
    let url = redis.url();
    let app = spawn_app_with(Backend::Redis, quick_mock(), |c| c.store.redis_url = url).await;
    let created = app.create_task("team-a", "held across a redis restart").await;
    let task_id = created["id"].as_str().unwrap().to_string();
    redis.kill();

    let response = app
        .post_create(&app.token("team-a"), &app.create_body("while down"))
        .await;
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None).await;
    let response = app.get_task(&app.token("team-a"), &task_id).await;
    assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None).await;
    assert_eq!(
        app.mock.stats().creates,
        1,
        "nothing was forwarded while the budget could not be checked"
    );

    let _redis = RedisServer::start_persistent_on(redis.port(), data.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.state.store.ping().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the gateway did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = app.wait_final("team-a", &task_id).await;
    assert_eq!(done["vidgate"]["state"], "settled");
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let report = usage(&app, &month).await;
    assert_eq!(
        (report["spent"].as_str(), report["reserved"].as_str()),
        (Some("0.500000"), Some("0.000000"))
    );
    let ledger = app
        .get_json("/v1/admin/ledger?tenant=team-a", &app.finance_token())
        .await;
    let money: Vec<&str> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| *k != "budget_change")
        .collect();
    assert_eq!(money, vec!["reserve", "settle"]);
}
