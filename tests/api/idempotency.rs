//! Idempotent creates: a retry with the same key and body answers as the first request did,
//! without a new hold or a new upstream task; another body is refused; keys are per tenant.

use reqwest::StatusCode;
use serde_json::Value;
use vidgate::store::PeriodKeys;

use crate::helpers::{Backend, TestApp, assert_error, spawn_app};

async fn create_with_key(app: &TestApp, tenant: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/videos/generations", app.base))
        .bearer_auth(app.token(tenant))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("answer")
}

async fn reserved(app: &TestApp, tenant: &str) -> i64 {
    let period = PeriodKeys::at(chrono::Utc::now()).month;
    app.state
        .store
        .period_usage(tenant, &period)
        .await
        .expect("usage")
        .reserved
}

async fn a_retry_with_the_same_key_and_body_replays_the_first_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = app.create_body("once");
    let first: Value = create_with_key(&app, "team-a", "key-1", &body)
        .await
        .json()
        .await
        .expect("json");
    let second = create_with_key(&app, "team-a", "key-1", &body).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.expect("json");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["vidgate"]["reservation_id"], first["vidgate"]["reservation_id"]);
    assert_eq!(app.mock.stats().tasks_created, 1, "no second upstream task");
    assert_eq!(reserved(&app, "team-a").await, 500_000, "no second hold");

    let mut other = body.clone();
    other["prompt"] = "twice".into();
    let response = create_with_key(&app, "team-a", "key-1", &other).await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        None,
    )
    .await;

    // Keys are scoped to the tenant: team-b's key-1 is a different request.
    let theirs: Value = create_with_key(&app, "team-b", "key-1", &body)
        .await
        .json()
        .await
        .expect("json");
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(app.mock.stats().tasks_created, 2);
}

#[tokio::test]
async fn idempotent_retries_replay_with_the_embedded_store() {
    a_retry_with_the_same_key_and_body_replays_the_first_answer(Backend::Embedded).await;
}

#[tokio::test]
async fn idempotent_retries_replay_with_the_redis_store() {
    a_retry_with_the_same_key_and_body_replays_the_first_answer(Backend::Redis).await;
}

async fn concurrent_duplicates_create_one_task(backend: Backend) {
    let app = spawn_app(backend).await;
    // The upstream answers slowly, so the duplicates overlap the first request.
    let body = app.create_body("slow [mock:hang=1]");
    let (a, b, c) = tokio::join!(
        create_with_key(&app, "team-a", "dup", &body),
        create_with_key(&app, "team-a", "dup", &body),
        create_with_key(&app, "team-a", "dup", &body),
    );
    let statuses: Vec<u16> = [&a, &b, &c].iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 2, "{statuses:?}");
    for response in [a, b, c] {
        if response.status() == StatusCode::CONFLICT {
            assert_eq!(response.headers()["retry-after"], "1");
            assert_error(response, StatusCode::CONFLICT, "request_in_progress", None).await;
        }
    }
    assert_eq!(app.mock.stats().tasks_created, 1);
    // Once the first has answered, a retry replays it.
    let replay = create_with_key(&app, "team-a", "dup", &body).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn concurrent_duplicates_create_one_task_embedded() {
    concurrent_duplicates_create_one_task(Backend::Embedded).await;
}

#[tokio::test]
async fn concurrent_duplicates_create_one_task_redis() {
    concurrent_duplicates_create_one_task(Backend::Redis).await;
}

#[tokio::test]
async fn a_key_whose_first_request_failed_runs_again_and_bad_keys_are_refused() {
    let app = spawn_app(Backend::Embedded).await;
    let failing = app.create_body("[mock:http=503]");
    let first = create_with_key(&app, "team-a", "retry-me", &failing).await;
    assert_eq!(first.status(), StatusCode::BAD_GATEWAY);
    let again = create_with_key(&app, "team-a", "retry-me", &failing).await;
    assert_eq!(
        again.status(),
        StatusCode::BAD_GATEWAY,
        "a refunded first attempt does not block the key"
    );
    assert_eq!(app.mock.stats().creates, 2);

    let response = create_with_key(&app, "team-a", &"k".repeat(256), &app.create_body("x")).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("Idempotency-Key"),
    )
    .await;
}
