//! `POST /v1/quotes`: the price of a create body without creating anything. Its `reserve`
//! is the hold the same create takes, over the billing cases; no upstream call, no hold,
//! never 402 or `concurrency_limited`; the budget left; the limits it counts against.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use vidgate::store::PeriodKeys;

use crate::helpers::{Backend, MODEL, TestApp, assert_error, quick_mock, spawn_app_with, upload_reference};

async fn post_quote(app: &TestApp, token: &str, body: &Value) -> Response {
    app.client
        .post(format!("{}/v1/quotes", app.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

async fn quote(app: &TestApp, tenant: &str, body: &Value) -> Value {
    let response = post_quote(app, &app.token(tenant), body).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.text().await);
    response.json().await.expect("json")
}

async fn reserved_now(app: &TestApp, tenant: &str) -> i64 {
    let period = PeriodKeys::at(chrono::Utc::now()).month;
    app.state
        .store
        .period_usage(tenant, &period)
        .await
        .expect("usage")
        .reserved
}

/// One billing case: reference lengths (ms), quality, audio, requested seconds, and the
/// expected hold and billed input (list prices: 720p 0.05/0.025, 1080p 0.075/0.0375 per s).
struct Case {
    references_ms: &'static [u64],
    quality: &'static str,
    audio: bool,
    duration: u32,
    reserve: &'static str,
    billed_input_ms: u64,
}

const CASES: &[Case] = &[
    // 1 reference: min(d, 5 s). 3.3 s + 5 s at 0.05 = 0.415.
    Case {
        references_ms: &[3300],
        quality: "720p",
        audio: true,
        duration: 5,
        reserve: "0.415000",
        billed_input_ms: 3300,
    },
    // Capped at 5 s: 5 s + 5 s at 0.025 = 0.25.
    Case {
        references_ms: &[8000],
        quality: "720p",
        audio: false,
        duration: 5,
        reserve: "0.250000",
        billed_input_ms: 5000,
    },
    // 2 references: min(d, 2.5 s) each. 2 + 2.5 s + 10 s at 0.075 = 1.0875.
    Case {
        references_ms: &[2000, 4000],
        quality: "1080p",
        audio: true,
        duration: 10,
        reserve: "1.087500",
        billed_input_ms: 4500,
    },
    // 2.5 + 2.5 s + 2 s at 0.0375 = 0.2625.
    Case {
        references_ms: &[3000, 3000],
        quality: "1080p",
        audio: false,
        duration: 2,
        reserve: "0.262500",
        billed_input_ms: 5000,
    },
    // 3 references: min(d, 1.65 s) each = 4.95 s. + 5 s at 0.05 = 0.4975.
    Case {
        references_ms: &[2000, 2000, 2000],
        quality: "720p",
        audio: true,
        duration: 5,
        reserve: "0.497500",
        billed_input_ms: 4950,
    },
    // 4.95 s + 10 s at 0.0375 = 0.560625.
    Case {
        references_ms: &[9000, 9000, 9000],
        quality: "1080p",
        audio: false,
        duration: 10,
        reserve: "0.560625",
        billed_input_ms: 4950,
    },
];

async fn body_for(app: &TestApp, case: &Case) -> Value {
    let mut urls = Vec::new();
    for ms in case.references_ms {
        urls.push(upload_reference(&app.mock, *ms).await);
    }
    json!({"model": MODEL, "prompt": "character1 waves", "video_urls": urls, "quality": case.quality,
           "duration": case.duration, "model_params": {"generate_audio": case.audio}})
}

fn roomy(config: &mut vidgate::config::Config) {
    for tenant in &mut config.tenants {
        tenant.max_concurrent_tasks = 100;
        tenant.creates_burst = 50;
    }
}

async fn reserve_equals_the_hold(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), roomy).await;
    for case in CASES {
        let body = body_for(&app, case).await;
        let creates = app.mock.stats().creates;
        let held_before = reserved_now(&app, "team-a").await;
        let quoted = quote(&app, "team-a", &body).await;
        assert_eq!(app.mock.stats().creates, creates, "a quote never reaches the upstream");
        assert_eq!(reserved_now(&app, "team-a").await, held_before, "a quote holds nothing");
        assert_eq!(quoted["reserve"], case.reserve, "{quoted}");
        assert_eq!(quoted["billed_input_ms"], case.billed_input_ms);
        assert_eq!(quoted["max_output_ms"], u64::from(case.duration) * 1000);
        assert_eq!(quoted["currency"], "USD");

        let response = app.post_create(&app.token("team-a"), &body).await;
        assert_eq!(response.status(), StatusCode::OK);
        let created: Value = response.json().await.expect("json");
        assert_eq!(
            created["vidgate"]["reserved"], quoted["reserve"],
            "the quote is the hold"
        );
        assert_eq!(created["vidgate"]["billed_input_ms"], quoted["billed_input_ms"]);
    }
    let price = |quality: &str, audio: bool| {
        let body = json!({"model": MODEL, "prompt": "p", "video_urls": [app.reference_url()], "quality": quality,
                          "model_params": {"generate_audio": audio}});
        let app = &app;
        async move { quote(app, "team-a", &body).await["price_per_second"].clone() }
    };
    assert_eq!(price("720p", true).await, "0.050000");
    assert_eq!(price("720p", false).await, "0.025000");
    assert_eq!(price("1080p", true).await, "0.075000");
    assert_eq!(price("1080p", false).await, "0.037500");
}

#[tokio::test]
async fn a_quote_is_exactly_the_hold_of_the_same_create_over_the_billing_cases_embedded() {
    reserve_equals_the_hold(Backend::Embedded).await;
}

#[tokio::test]
async fn a_quote_is_exactly_the_hold_of_the_same_create_over_the_billing_cases_redis() {
    reserve_equals_the_hold(Backend::Redis).await;
}

async fn budget_left(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), |c| {
        c.tenants[0].budget = "0.800000".into();
        c.tenants[0].user_budget = "0.600000".into();
        c.tenants[0].max_concurrent_tasks = 1;
        c.tenants[1].budget = String::new();
    })
    .await;
    let body = app.create_body("five seconds");
    // Nothing used yet: the user's cap is the smaller.
    assert_eq!(quote(&app, "team-a", &body).await["budget_remaining"], "0.600000");
    app.create_task("team-a", "alice's first").await;
    // alice: 0.6 - 0.5; the tenant: 0.8 - 0.5.
    let quoted = quote(&app, "team-a", &body).await;
    assert_eq!(quoted["budget_remaining"], "0.100000");
    assert_eq!(quoted["reserve"], "0.500000");
    let bob = app.token_for("team-a", "bob");
    let response = post_quote(&app, &bob, &body).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "over the concurrency cap: still a quote"
    );
    let quoted: Value = response.json().await.expect("json");
    assert_eq!(quoted["budget_remaining"], "0.300000");
    // The create itself is refused: the cap of one task at a time is reached.
    let response = app.post_create(&bob, &body).await;
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "concurrency_limited", None).await;
    // No cap at all: null.
    assert_eq!(quote(&app, "team-b", &body).await["budget_remaining"], Value::Null);
}

#[tokio::test]
async fn a_quote_over_budget_or_over_the_concurrency_cap_is_still_200_with_the_budget_left_embedded() {
    budget_left(Backend::Embedded).await;
}

#[tokio::test]
async fn a_quote_over_budget_or_over_the_concurrency_cap_is_still_200_with_the_budget_left_redis() {
    budget_left(Backend::Redis).await;
}

#[tokio::test]
async fn a_quote_refuses_what_a_create_would_refuse_before_money() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.tenants[0].allowed_qualities = vec!["720p".into()];
        c.tenants[0].budget = "0.100000".into();
    })
    .await;
    let token = app.token("team-a");
    let mut body = app.create_body("x");
    body["quality"] = json!("1080p");
    let response = post_quote(&app, &token, &body).await;
    assert_error(response, StatusCode::FORBIDDEN, "quality_not_allowed", None).await;
    let response = post_quote(&app, &app.token("ghost"), &app.create_body("x")).await;
    assert_error(response, StatusCode::FORBIDDEN, "unknown_tenant", None).await;
    let response = post_quote(&app, &app.finance_token(), &app.create_body("x")).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;

    // Over the budget: a quote, and the create it prices is the one refused.
    let quoted = quote(&app, "team-a", &app.create_body("x")).await;
    assert_eq!(quoted["reserve"], "0.500000");
    assert_eq!(quoted["budget_remaining"], "0.100000");
    let response = app.post_create(&token, &app.create_body("x")).await;
    assert_error(response, StatusCode::PAYMENT_REQUIRED, "budget_exceeded", None).await;

    let invalid = [
        (json!({"duration": 11}), "duration"),
        (
            json!({"model_params": {"generate_audio": "yes"}}),
            "model_params.generate_audio",
        ),
        (json!({"seed": 7}), "seed"),
        (json!({"video_urls": ["ftp://example.com/a.mp4"]}), "video_urls[0]"),
        (json!({"model": "other-model"}), "model"),
    ];
    for (change, param) in invalid {
        let mut body = app.create_body("x");
        for (field, value) in change.as_object().unwrap() {
            body[field] = value.clone();
        }
        let response = post_quote(&app, &token, &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request", Some(param)).await;
    }
    // A reference that is not a video is refused as a create's would be.
    let mut body = app.create_body("x");
    body["video_urls"] = json!([format!("{}/_mock/stats", app.mock.base_url())]);
    let response = post_quote(&app, &token, &body).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "reference_video_invalid",
        Some("video_urls[0]"),
    )
    .await;
    assert_eq!(
        app.mock.stats().creates,
        0,
        "neither the quotes nor the refused create reached the upstream"
    );
}

#[tokio::test]
async fn quotes_count_against_the_reads_limit_and_the_create_pre_limit() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.tenants[0].reads_per_minute = 1;
        c.tenants[0].reads_burst = 1;
        c.tenants[1].creates_per_minute = 1;
        c.tenants[1].creates_burst = 1;
    })
    .await;
    let body = app.create_body("x");
    quote(&app, "team-a", &body).await;
    let response = post_quote(&app, &app.token("team-a"), &body).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;

    // The pre-limit in front of the probe allows twice the tenant's create burst.
    quote(&app, "team-b", &body).await;
    quote(&app, "team-b", &body).await;
    // A reference never probed before: a probe would read it.
    let mut fresh = body.clone();
    fresh["video_urls"] = json!([upload_reference(&app.mock, 4000).await]);
    let probed = app.state.prober.stats().bytes_read;
    let response = post_quote(&app, &app.token("team-b"), &fresh).await;
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
    assert_eq!(app.state.prober.stats().bytes_read, probed, "refused before probing");
}
