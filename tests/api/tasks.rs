//! Create → poll → completed through the gateway, ownership, restart, and the money held
//! and released along the way, for both store backends.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, assert_error, spawn_app};

async fn a_task_is_created_polled_and_completed(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_task("team-a", "character1 waves").await;
    let task_id = created["id"].as_str().expect("task id").to_string();
    assert!(task_id.starts_with("task-unified-"));
    assert_eq!(created["object"], "video.generation.task");
    assert_eq!(created["vidgate"]["state"], "reserved");
    assert_eq!(created["vidgate"]["tenant"], "team-a");
    assert_eq!(created["vidgate"]["currency"], "USD");
    assert!(
        created["vidgate"]["reservation_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("rsv_"))
    );
    // One reference at 720p with audio: at most 5 s input + 5 s output at 0.05/s.
    assert_eq!(created["vidgate"]["reserved"], "0.500000");

    let done = app.wait_final("team-a", &task_id).await;
    assert_eq!(done["status"], "completed");
    assert!(done["results"][0].as_str().is_some_and(|u| u.ends_with(".mp4")));
    assert_eq!(done["vidgate"]["state"], "settled");
    assert!(done["vidgate"]["charged"].is_string());
    assert!(done["vidgate"]["result_expires_at"].is_string());
    assert_eq!(app.mock.stats().tasks_created, 1);

    // Observing the final state again moves no more money.
    let again: Value = app
        .get_task(&app.token("team-a"), &task_id)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["vidgate"], done["vidgate"]);
}

#[tokio::test]
async fn a_task_completes_through_the_gateway_with_the_embedded_store() {
    a_task_is_created_polled_and_completed(Backend::Embedded).await;
}

#[tokio::test]
async fn a_task_completes_through_the_gateway_with_the_redis_store() {
    a_task_is_created_polled_and_completed(Backend::Redis).await;
}

async fn another_tenant_gets_404(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_task("team-a", "private work").await;
    let task_id = created["id"].as_str().expect("id");
    let response = app.get_task(&app.token("team-b"), task_id).await;
    assert_error(response, StatusCode::NOT_FOUND, "task_not_found", None).await;
    let queries_before = app.mock.stats().queries;
    let response = app.get_task(&app.token("team-a"), "task-unified-1-neverseen").await;
    assert_error(response, StatusCode::NOT_FOUND, "task_not_found", None).await;
    assert_eq!(
        app.mock.stats().queries,
        queries_before,
        "unknown ids never reach the upstream"
    );
}

#[tokio::test]
async fn a_tenant_cannot_read_another_tenants_task_embedded() {
    another_tenant_gets_404(Backend::Embedded).await;
}

#[tokio::test]
async fn a_tenant_cannot_read_another_tenants_task_redis() {
    another_tenant_gets_404(Backend::Redis).await;
}

#[tokio::test]
async fn a_failed_task_is_refunded_and_charges_nothing() {
    let app = spawn_app(Backend::Embedded).await;
    let created = app.create_task("team-a", "please [mock:fail]").await;
    let done = app.wait_final("team-a", created["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["vidgate"]["state"], "refunded");
    assert_eq!(done["vidgate"]["charged"], "0.000000");
}

#[tokio::test]
async fn a_task_survives_a_gateway_restart_with_the_embedded_store() {
    let app = spawn_app(Backend::Embedded).await;
    let created = app.create_task("team-a", "before restart").await;
    let task_id = created["id"].as_str().expect("id").to_string();
    let app = app.restart().await;
    let done = app.wait_final("team-a", &task_id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["vidgate"]["reservation_id"], created["vidgate"]["reservation_id"]);
    let response = app.get_task(&app.token("team-b"), &task_id).await;
    assert_error(response, StatusCode::NOT_FOUND, "task_not_found", None).await;
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = spawn_app(Backend::Embedded).await;
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(health.headers().contains_key("x-request-id"));
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_caller_request_id_is_echoed_and_unknown_routes_get_the_envelope() {
    let app = spawn_app(Backend::Embedded).await;
    let response = app
        .client
        .get(format!("{}/v1/nothing-here", app.base))
        .bearer_auth(app.token("team-a"))
        .header("x-request-id", "my-trace-123")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.headers()["x-request-id"], "my-trace-123");
    let body = assert_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    assert_eq!(body["error"]["request_id"], "my-trace-123");
    let response = app
        .client
        .delete(format!("{}/v1/videos/generations", app.base))
        .bearer_auth(app.token("team-a"))
        .send()
        .await
        .expect("answer");
    assert_error(response, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None).await;
}

/// Retention: a final task is answered until `store.retention_secs` after it ended, then 404
/// like a task never seen; its money stays in the usage report.
async fn a_task_past_retention_is_not_found(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, crate::helpers::quick_mock(), |c| {
        c.store.retention_secs = vidgate::config::Seconds::from_millis(500);
    })
    .await;
    let created = app.create_task("team-a", "kept for half a second").await;
    let task_id = created["id"].as_str().expect("task id").to_string();
    let done = app.wait_final("team-a", &task_id).await;
    assert_eq!(done["vidgate"]["state"], "settled");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = app.get_task(&app.token("team-a"), &task_id).await;
        if response.status() == StatusCode::NOT_FOUND {
            assert_error(response, StatusCode::NOT_FOUND, "task_not_found", None).await;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the task outlived its retention");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let usage = app.get_json("/v1/usage", &app.token("team-a")).await;
    assert_eq!(usage["spent"], "0.500000", "{usage}");
    assert_eq!(usage["tasks"]["settled"], 1, "{usage}");
}

#[tokio::test]
async fn a_task_past_retention_is_not_found_embedded() {
    a_task_past_retention_is_not_found(Backend::Embedded).await;
}

#[tokio::test]
async fn a_task_past_retention_is_not_found_redis() {
    a_task_past_retention_is_not_found(Backend::Redis).await;
}
