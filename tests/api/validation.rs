//! Every validation rule: one bad value each gets 400 with the right `param`, and the
//! upstream receives nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, quick_mock, spawn_app, spawn_app_with};

async fn refused(app: &TestApp, body: Value, code: &str, param: &str) {
    let response = app.post_create(&app.token("team-a"), &body).await;
    assert_error(response, StatusCode::BAD_REQUEST, code, Some(param)).await;
}

fn with(app: &TestApp, field: &str, value: Value) -> Value {
    let mut body = app.create_body("a prompt");
    body[field] = value;
    body
}

#[tokio::test]
async fn each_bad_field_is_refused_with_its_param_and_nothing_reaches_the_upstream() {
    let app = spawn_app(Backend::Embedded).await;
    let cases = [
        ("model", json!("wan2.5-other"), "model"),
        ("model", json!(7), "model"),
        ("prompt", json!(""), "prompt"),
        ("prompt", json!("x".repeat(1501)), "prompt"),
        ("video_urls", json!([]), "video_urls"),
        (
            "video_urls",
            json!([
                "https://a.example/1.mp4",
                "https://a.example/2.mp4",
                "https://a.example/3.mp4",
                "https://a.example/4.mp4"
            ]),
            "video_urls",
        ),
        (
            "video_urls",
            json!(["https://a.example/1.mp4", "file:///etc/passwd"]),
            "video_urls[1]",
        ),
        ("video_urls", json!([42]), "video_urls[0]"),
        ("aspect_ratio", json!("21:9"), "aspect_ratio"),
        ("quality", json!("4k"), "quality"),
        ("duration", json!(1), "duration"),
        ("duration", json!(11), "duration"),
        ("duration", json!("5"), "duration"),
        (
            "model_params",
            json!({"generate_audio": "yes"}),
            "model_params.generate_audio",
        ),
        ("model_params", json!({"seed": 3}), "model_params.seed"),
        ("negative_prompt", json!("no dogs"), "negative_prompt"),
    ];
    for (field, value, param) in cases {
        refused(&app, with(&app, field, value), "invalid_request", param).await;
    }
    let mut missing = app.create_body("a prompt");
    missing.as_object_mut().expect("object").remove("video_urls");
    refused(&app, missing, "invalid_request", "video_urls").await;
    assert_eq!(app.mock.stats().creates, 0, "the upstream must receive nothing");
}

#[tokio::test]
async fn callback_urls_follow_the_callback_rules() {
    let app = spawn_app(Backend::Embedded).await;
    for url in [
        "http://hooks.example.com/x".to_string(),
        "https://127.0.0.1/hook".into(),
        "https://localhost:9/hook".into(),
        "https://2130706433/hook".into(),
        "https://[::ffff:127.0.0.1]/hook".into(),
        "ftp://hooks.example.com/x".into(),
        format!("https://hooks.example.com/{}", "a".repeat(2040)),
    ] {
        refused(
            &app,
            with(&app, "callback_url", json!(url)),
            "invalid_callback_url",
            "callback_url",
        )
        .await;
    }
    assert_eq!(app.mock.stats().creates, 0);
    // Nothing was held for any of them.
    let usage = app.get_json("/v1/usage?period=total", &app.token("team-a")).await;
    assert_eq!(usage["reserved"], "0.000000");
    assert_eq!(usage["tasks"]["reserved"], 0);
    let ledger = app
        .get_json("/v1/admin/ledger?tenant=team-a", &app.finance_token())
        .await;
    assert!(
        ledger["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] == "budget_change"),
        "{ledger}"
    );
}

#[tokio::test]
async fn malformed_bodies_get_the_json_envelope() {
    let app = spawn_app(Backend::Embedded).await;
    let url = format!("{}/v1/videos/generations", app.base);
    let token = app.token("team-a");
    let send = |body: &'static str, content_type: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    assert_error(
        send("{not json", "application/json").await.expect("answer"),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        None,
    )
    .await;
    assert_error(
        send("[1,2]", "application/json").await.expect("answer"),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        None,
    )
    .await;
    assert_error(
        send("a=b", "text/plain").await.expect("answer"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    )
    .await;
    assert_eq!(app.mock.stats().creates, 0);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| c.server.max_body_bytes = 2048).await;
    let body = with(&app, "prompt", json!("y".repeat(4000)));
    let response = app.post_create(&app.token("team-a"), &body).await;
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None).await;
    assert_eq!(app.mock.stats().creates, 0);
}

#[tokio::test]
async fn a_quality_the_tenant_may_not_use_is_refused_before_the_upstream() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.tenants[0].allowed_qualities = vec!["720p".into()]
    })
    .await;
    let response = app
        .post_create(&app.token("team-a"), &with(&app, "quality", json!("1080p")))
        .await;
    assert_error(response, StatusCode::FORBIDDEN, "quality_not_allowed", None).await;
    assert_eq!(app.mock.stats().creates, 0);
}
