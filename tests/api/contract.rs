//! The API contract: the committed OpenAPI document matches the code, it is served with
//! Swagger UI (no token), and `/metrics` counts exactly what happened.

use reqwest::StatusCode;
use secrecy::SecretString;

use crate::helpers::{Backend, assert_error, quick_mock, spawn_app, spawn_app_with};

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
        .expect("openapi/openapi.json is committed");
    let generated = format!("{}\n", vidgate::openapi::document_json());
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: regenerate it with `cargo run -q -- openapi > openapi/openapi.json`"
    );
}

#[tokio::test]
async fn the_document_and_swagger_ui_are_served_without_a_token() {
    let app = spawn_app(Backend::Embedded).await;
    let served: serde_json::Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert!(served["paths"]["/v1/videos/generations"]["post"].is_object());
    assert!(served["components"]["securitySchemes"]["bearer"].is_object());
    let ui = app
        .client
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.expect("html").contains("swagger"));
}

fn value(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name_and_labels)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_creates_settlements_refunds_and_rejections_exactly() {
    let app = spawn_app(Backend::Embedded).await;
    let done = app.create_task("team-a", "ok").await;
    app.wait_final("team-a", done["id"].as_str().expect("id")).await;
    let failed = app.create_task("team-a", "[mock:fail]").await;
    app.wait_final("team-a", failed["id"].as_str().expect("id")).await;
    let mut bad = app.create_body("x");
    bad["duration"] = serde_json::json!(99);
    app.post_create(&app.token("team-a"), &bad).await;

    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("text");
    assert_eq!(
        value(&metrics, r#"vidgate_tasks_total{outcome="created",tenant="team-a"}"#),
        2.0
    );
    assert_eq!(
        value(&metrics, r#"vidgate_tasks_total{outcome="completed",tenant="team-a"}"#),
        1.0
    );
    assert_eq!(
        value(&metrics, r#"vidgate_tasks_total{outcome="failed",tenant="team-a"}"#),
        1.0
    );
    let spend = r#"vidgate_spend_total{audio="true",currency="USD",quality="720p",tenant="team-a"}"#;
    assert_eq!(value(&metrics, spend), 0.5, "{metrics}");
    assert_eq!(
        value(&metrics, r#"vidgate_refunds_total{currency="USD",tenant="team-a"}"#),
        0.5
    );
    assert_eq!(
        value(
            &metrics,
            r#"vidgate_billed_seconds_total{kind="output",tenant="team-a"}"#
        ),
        5.0
    );
    assert_eq!(
        value(
            &metrics,
            r#"vidgate_rejections_total{code="invalid_request",tenant="team-a"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&metrics, r#"vidgate_budget_limit{currency="USD",tenant="team-a"}"#),
        100.0
    );
    assert_eq!(
        value(&metrics, r#"vidgate_budget_spent{currency="USD",tenant="team-a"}"#),
        0.5
    );
    assert!(
        metrics.contains(r#"vidgate_http_requests_total{method="POST",route="/v1/videos/generations",status="200"}"#)
    );
    assert!(metrics.contains(r#"vidgate_upstream_requests_total{operation="create_task",status="200"}"#));
    assert!(metrics.contains("vidgate_store_operation_duration_seconds_bucket"));
    assert!(metrics.contains("vidgate_build_info{version="));
    assert!(!metrics.contains("task-unified-"), "no task id as a label");
}

#[tokio::test]
async fn metrics_can_require_their_own_token() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.metrics.bearer_token = SecretString::from("scrape-me".to_string())
    })
    .await;
    let url = format!("{}/metrics", app.base);
    let refused = app.client.get(&url).send().await.expect("answer");
    assert_error(refused, StatusCode::UNAUTHORIZED, "unauthenticated", None).await;
    let ok = app
        .client
        .get(&url)
        .bearer_auth("scrape-me")
        .send()
        .await
        .expect("answer");
    assert_eq!(ok.status(), StatusCode::OK);
}
