//! Budgets as the create path sees them: a hold that fits exactly is allowed, one that does
//! not is refused with 402 before anything reaches the upstream.

use reqwest::StatusCode;

use crate::helpers::{Backend, assert_error, quick_mock, spawn_app_with};

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
