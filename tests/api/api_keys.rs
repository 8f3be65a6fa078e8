//! Tenant API keys: admins issue, list and revoke them; a key authenticates as its tenant
//! with user `key:<name>` and no roles, under the same limits, budgets, ledger and metrics as
//! any caller; a revoked or expired key is refused on every replica within 5 s.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, ManualClock, TestApp, assert_error, quick_mock, spawn_app_with, spawn_app_with_clock};

async fn issue(app: &TestApp, tenant: &str, body: Value) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/admin/tenants/{tenant}/keys", app.base))
        .bearer_auth(app.admin_token())
        .json(&body)
        .send()
        .await
        .expect("gateway answers")
}

async fn issued(app: &TestApp, tenant: &str, name: &str) -> Value {
    let response = issue(app, tenant, json!({"name": name})).await;
    assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
    response.json().await.expect("json")
}

async fn revoke(app: &TestApp, tenant: &str, key_id: &str) -> reqwest::Response {
    app.client
        .delete(format!("{}/v1/admin/tenants/{tenant}/keys/{key_id}", app.base))
        .bearer_auth(app.admin_token())
        .send()
        .await
        .expect("gateway answers")
}

async fn a_key_works_as_its_tenant_until_revoked(backend: Backend) {
    let one = spawn_app_with(backend, quick_mock(), |_| {}).await;
    let two = match backend {
        Backend::Redis => Some(one.replica().await),
        Backend::Embedded => None,
    };
    let key = issued(&one, "team-a", "render-ci").await;
    let secret = key["key"].as_str().expect("key").to_string();
    assert!(secret.starts_with("vgk_"), "{key}");
    assert!(key["id"].as_str().expect("id").starts_with("key_"));
    assert_eq!(
        (key["name"].as_str(), key["tenant"].as_str()),
        (Some("render-ci"), Some("team-a"))
    );
    assert_eq!(key["expires_at"], Value::Null);

    let listed = one.get_json("/v1/admin/tenants/team-a/keys", &one.admin_token()).await;
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["keys"][0]["id"], key["id"]);
    assert!(
        !listed.to_string().contains(&secret[4..]),
        "never the key again: {listed}"
    );

    // As the tenant: its usage, a task charged to user key:render-ci, counted like any.
    let usage = one.get_json("/v1/usage", &secret).await;
    assert_eq!(usage["tenant"], "team-a");
    let task = one.post_create(&secret, &one.create_body("machine")).await;
    assert_eq!(task.status(), StatusCode::OK, "{:?}", task.text().await);
    let task: Value = task.json().await.expect("json");
    assert_eq!(
        one.metric(r#"vidgate_tasks_total{outcome="created",tenant="team-a"}"#),
        1.0
    );
    let ledger = one
        .get_json("/v1/admin/ledger?tenant=team-a", &one.finance_token())
        .await;
    let reserve = ledger["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "reserve"));
    assert_eq!(reserve.map(|e| &e["user"]), Some(&json!("key:render-ci")), "{ledger}");
    let status = one.get_task(&secret, task["id"].as_str().expect("id")).await.status();
    assert_eq!(status, StatusCode::OK);
    // No roles: admin routes stay closed.
    assert_error(
        one.get("/v1/admin/tenants", &secret).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    if let Some(two) = &two {
        assert_eq!(two.get("/v1/usage", &secret).await.status(), StatusCode::OK);
    }

    let revoked = revoke(&one, "team-a", key["id"].as_str().expect("id")).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let revoked_at = Instant::now();
    assert_error(
        one.get("/v1/usage", &secret).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    )
    .await;
    if let Some(two) = &two {
        // The other replica may trust its cache a little longer, never more than 5 s.
        while two.get("/v1/usage", &secret).await.status() != StatusCode::UNAUTHORIZED {
            assert!(
                revoked_at.elapsed() < Duration::from_secs(5),
                "still accepted after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_error(
        revoke(&one, "team-a", key["id"].as_str().expect("id")).await,
        StatusCode::NOT_FOUND,
        "key_not_found",
        None,
    )
    .await;
    let listed = one.get_json("/v1/admin/tenants/team-a/keys", &one.admin_token()).await;
    assert_eq!(listed["keys"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_works_as_its_tenant_until_revoked_embedded() {
    a_key_works_as_its_tenant_until_revoked(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_works_as_its_tenant_until_revoked_on_every_replica_redis() {
    a_key_works_as_its_tenant_until_revoked(Backend::Redis).await;
}

#[tokio::test]
async fn names_are_checked_and_unique_per_tenant_and_only_admins_manage_keys() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |_| {}).await;
    for name in ["Render", "", "a_b", &"x".repeat(65)] {
        assert_error(
            issue(&app, "team-a", json!({"name": name})).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("name"),
        )
        .await;
    }
    assert_error(
        issue(
            &app,
            "team-a",
            json!({"name": "ci", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("expires_at"),
    )
    .await;
    assert_error(
        issue(&app, "team-a", json!({"name": "ci", "scope": "all"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        None,
    )
    .await;
    let first = issued(&app, "team-a", "ci").await;
    assert_error(
        issue(&app, "team-a", json!({"name": "ci"})).await,
        StatusCode::CONFLICT,
        "key_name_taken",
        None,
    )
    .await;
    issued(&app, "team-b", "ci").await;
    assert_error(
        issue(&app, "nobody", json!({"name": "ci"})).await,
        StatusCode::FORBIDDEN,
        "unknown_tenant",
        None,
    )
    .await;
    // Another tenant's key id is not found under this tenant.
    assert_error(
        revoke(&app, "team-b", first["id"].as_str().expect("id")).await,
        StatusCode::NOT_FOUND,
        "key_not_found",
        None,
    )
    .await;
    let member = app.token("team-a");
    let refused = app
        .client
        .post(format!("{}/v1/admin/tenants/team-a/keys", app.base))
        .bearer_auth(&member)
        .json(&json!({"name": "mine"}))
        .send()
        .await
        .expect("gateway answers");
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden", None).await;
    assert_error(
        app.get("/v1/admin/tenants/team-a/keys", &member).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
}

#[tokio::test]
async fn an_expired_key_and_a_made_up_key_are_refused() {
    let clock = ManualClock::at("2026-12-06T10:00:00Z");
    let app = spawn_app_with_clock(Backend::Embedded, quick_mock(), clock.clone(), |_| {}).await;
    let response = issue(
        &app,
        "team-a",
        json!({"name": "nightly", "expires_at": "2026-12-06T11:00:00Z"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let key: Value = response.json().await.expect("json");
    assert_eq!(key["expires_at"], "2026-12-06T11:00:00Z");
    let secret = key["key"].as_str().expect("key");
    assert_eq!(app.get("/v1/usage", secret).await.status(), StatusCode::OK);
    clock.set("2026-12-06T11:00:00Z");
    let body = assert_error(
        app.get("/v1/usage", secret).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{body}"
    );
    let made_up = format!("vgk_{}", "A".repeat(43));
    let body = assert_error(
        app.get("/v1/usage", &made_up).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    )
    .await;
    assert!(
        !body.to_string().contains(&made_up[4..]),
        "the key is never echoed: {body}"
    );
}

#[tokio::test]
async fn a_jwt_claiming_a_key_user_is_refused() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |_| {}).await;
    let forged = app.token_for("team-a", "key:render-ci");
    assert_error(
        app.get("/v1/usage", &forged).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    )
    .await;
}

#[tokio::test]
async fn a_key_meets_its_tenants_limits_and_budget_like_any_caller() {
    let app = spawn_app_with(Backend::Redis, quick_mock(), |config| {
        config.tenants[0].reads_per_minute = 1;
        config.tenants[0].reads_burst = 1;
        config.tenants[0].budget = "0.40".into();
    })
    .await;
    let secret = issued(&app, "team-a", "batch").await["key"]
        .as_str()
        .expect("key")
        .to_string();
    assert_eq!(app.get("/v1/usage", &secret).await.status(), StatusCode::OK);
    assert_error(
        app.get("/v1/usage", &secret).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    )
    .await;
    // A 5 s task holds 0.50: over the 0.40 budget.
    assert_error(
        app.post_create(&secret, &app.create_body("too dear")).await,
        StatusCode::PAYMENT_REQUIRED,
        "budget_exceeded",
        None,
    )
    .await;
}
