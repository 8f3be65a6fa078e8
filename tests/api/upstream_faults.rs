//! Upstream faults map to the documented errors, never leak the key, and release the hold
//! when the upstream certainly created nothing.

use reqwest::StatusCode;
use secrecy::SecretString;

use crate::helpers::{Backend, assert_error, quick_mock, spawn_app, spawn_app_with};
use vidgate::store::PeriodKeys;

async fn reserved_now(app: &crate::helpers::TestApp) -> i64 {
    let period = PeriodKeys::at(chrono::Utc::now()).month;
    app.state
        .store
        .period_usage("team-a", &period)
        .await
        .expect("usage")
        .reserved
}

#[tokio::test]
async fn a_wrong_company_key_gives_502_without_the_key() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.upstream.api_key = SecretString::from("sk-evo-wrong-key-123".to_string())
    })
    .await;
    let response = app.post_create(&app.token("team-a"), &app.create_body("x")).await;
    let body = assert_error(response, StatusCode::BAD_GATEWAY, "upstream_auth_failed", None).await;
    assert!(!body.to_string().contains("sk-evo-wrong-key-123"));
    assert_eq!(reserved_now(&app).await, 0, "a definite refusal releases the hold");
}

#[tokio::test]
async fn an_upstream_429_passes_through_with_retry_after() {
    let app = spawn_app(Backend::Embedded).await;
    let response = app
        .post_create(&app.token("team-a"), &app.create_body("busy [mock:http=429]"))
        .await;
    assert_eq!(response.headers()["retry-after"], "60");
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "upstream_rate_limited", None).await;
    assert_eq!(reserved_now(&app).await, 0);
}

#[tokio::test]
async fn upstream_402_and_5xx_map_to_the_documented_codes() {
    let app = spawn_app(Backend::Embedded).await;
    let token = app.token("team-a");
    let response = app.post_create(&token, &app.create_body("[mock:http=402]")).await;
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream_account_exhausted",
        None,
    )
    .await;
    let response = app.post_create(&token, &app.create_body("[mock:http=503]")).await;
    assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error", None).await;
    assert_eq!(reserved_now(&app).await, 0);
}

#[tokio::test]
async fn a_slow_upstream_gives_504_and_keeps_the_hold_for_reconciliation() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| c.upstream.timeout_ms = 300).await;
    let response = app
        .post_create(&app.token("team-a"), &app.create_body("[mock:hang=2]"))
        .await;
    assert_error(response, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", None).await;
    assert_eq!(app.mock.stats().creates, 1, "a create is never retried");
    assert!(reserved_now(&app).await > 0, "the outcome is unknown: the hold stays");
}

#[tokio::test]
async fn an_unreachable_upstream_gives_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.upstream.base_url = format!("http://{addr}")
    })
    .await;
    let response = app.post_create(&app.token("team-a"), &app.create_body("x")).await;
    assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error", None).await;
    assert_eq!(reserved_now(&app).await, 0);
}

/// An upstream whose task reads answer `503` with `Retry-After: 1`, counting the reads and
/// when they came.
fn busy_upstream() -> (String, std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            seen.lock().unwrap().push(std::time::Instant::now());
            let body = r#"{"error":{"code":503,"message":"busy"}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (format!("http://{addr}"), reads)
}

#[tokio::test]
async fn a_caller_waits_at_most_the_upstream_timeout_in_total_and_retry_after_is_honoured() {
    let (busy, reads) = busy_upstream();
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.upstream.timeout_ms = 1500;
        c.reconciler.enabled = false;
    })
    .await;
    let created = app.create_task("team-a", "seen later through a busy upstream").await;
    let task_id = created["id"].as_str().unwrap().to_string();
    let app = app.restart_with(|c| c.upstream.base_url = busy).await;
    let started = std::time::Instant::now();
    let response = app.get_task(&app.token("team-a"), &task_id).await;
    let waited = started.elapsed();
    assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error", None).await;
    let reads = reads.lock().unwrap().clone();
    assert_eq!(reads.len(), 2, "the retry after Retry-After fits, a third would not");
    assert!(
        reads[1] - reads[0] >= std::time::Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert!(
        waited < std::time::Duration::from_millis(1500 + 500),
        "waited {waited:?}"
    );
}
