//! Authentication over HTTP: missing, forged, expired and not-yet-valid tokens get 401 with
//! a reason; unknown tenants get 403; the token is never echoed.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, assert_error, now, sign, spawn_app};

#[tokio::test]
async fn missing_forged_and_expired_tokens_are_refused_with_a_reason() {
    let app = spawn_app(Backend::Embedded).await;
    let body = app.create_body("x");
    let url = format!("{}/v1/videos/generations", app.base);
    let response = app.client.post(&url).json(&body).send().await.expect("answer");
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthenticated", None).await;

    let forged = {
        let good = app.token("team-a");
        let (head, _) = good.rsplit_once('.').expect("jwt");
        format!("{head}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    };
    let expired = sign(&json!({"sub": "u", "tenant": "team-a", "aud": "vidgate", "exp": now() - 3600}));
    let early =
        sign(&json!({"sub": "u", "tenant": "team-a", "aud": "vidgate", "exp": now() + 3600, "nbf": now() + 1800}));
    let wrong_aud = sign(&json!({"sub": "u", "tenant": "team-a", "aud": "other", "exp": now() + 3600}));
    for token in [forged, expired, early, wrong_aud, "not-a-jwt".to_string()] {
        let response = app.post_create(&token, &body).await;
        let error = assert_error(response, StatusCode::UNAUTHORIZED, "unauthenticated", None).await;
        assert!(!error.to_string().contains(&token), "the token must not be echoed");
    }
    assert_eq!(app.mock.stats().creates, 0);
}

#[tokio::test]
async fn auth_runs_before_body_validation() {
    let app = spawn_app(Backend::Embedded).await;
    let response = app
        .client
        .post(format!("{}/v1/videos/generations", app.base))
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await
        .expect("answer");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthenticated", None).await;
}

#[tokio::test]
async fn a_token_for_an_unknown_tenant_gets_403() {
    let app = spawn_app(Backend::Embedded).await;
    let response = app.post_create(&app.token("team-zzz"), &app.create_body("x")).await;
    assert_error(response, StatusCode::FORBIDDEN, "unknown_tenant", None).await;
    assert_eq!(app.mock.stats().creates, 0);
}

#[tokio::test]
async fn a_finance_token_without_tenant_cannot_create() {
    let app = spawn_app(Backend::Embedded).await;
    let token = sign(&json!({"sub": "fin", "roles": ["finance"], "aud": "vidgate", "exp": now() + 600}));
    let response = app.post_create(&token, &app.create_body("x")).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
}
