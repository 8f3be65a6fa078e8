//! Tenant management by admins: create and change at runtime, audited in the ledger, kept
//! across restarts until the config entry itself changes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, spawn_app};

async fn put(app: &TestApp, token: &str, id: &str, body: &Value) -> reqwest::Response {
    app.client
        .put(format!("{}/v1/admin/tenants/{id}", app.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

/// (actor, note) of every budget change of `tenant`.
async fn audit(app: &TestApp, tenant: &str) -> Vec<(String, Value)> {
    let ledger = app
        .get_json(&format!("/v1/admin/ledger?tenant={tenant}"), &app.finance_token())
        .await;
    ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "budget_change")
        .map(|e| {
            let note = serde_json::from_str(e["note"].as_str().unwrap()).unwrap();
            (e["actor"].as_str().unwrap().to_string(), note)
        })
        .collect()
}

async fn budget_of(app: &TestApp, tenant: &str) -> Value {
    let list = app.get_json("/v1/admin/tenants", &app.admin_token()).await;
    list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == tenant)
        .map(|t| t["budget"].clone())
        .unwrap_or(Value::Null)
}

async fn admin_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token();
    // Read once, so this replica's tenant cache holds the old budget.
    assert_eq!(
        app.get_json("/v1/usage", &app.token("team-a")).await["budget"],
        "100.000000"
    );

    let response = put(
        &app,
        &admin,
        "team-a",
        &json!({"budget": "0.75", "max_concurrent_tasks": 2}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let changed: Value = response.json().await.unwrap();
    assert_eq!(
        (changed["budget"].as_str(), changed["max_concurrent_tasks"].as_u64()),
        (Some("0.750000"), Some(2))
    );
    assert_eq!(changed["period"], "month");
    // This replica sees the change at once.
    assert_eq!(
        app.get_json("/v1/usage", &app.token("team-a")).await["budget"],
        "0.750000"
    );
    app.create_task("team-a", "fits").await;
    let response = app
        .post_create(&app.token("team-a"), &app.create_body("does not"))
        .await;
    assert_error(response, StatusCode::PAYMENT_REQUIRED, "budget_exceeded", None).await;

    let response = put(
        &app,
        &admin,
        "new-team",
        &json!({"budget": "", "allowed_qualities": ["720p"]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        (created["id"].as_str(), created["budget"].as_str()),
        (Some("new-team"), Some(""))
    );
    app.create_task("new-team", "first task of a new team").await;
    let list = app.get_json("/v1/admin/tenants", &admin).await;
    let ids: Vec<&str> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["new-team", "team-a", "team-b"]);

    // The same change again changes nothing and is not audited again.
    assert_eq!(
        put(&app, &admin, "team-a", &json!({"budget": "0.750000"}))
            .await
            .status(),
        StatusCode::OK
    );
    let team_a = audit(&app, "team-a").await;
    assert_eq!(team_a.len(), 2);
    assert_eq!(
        team_a[1],
        (
            "root".to_string(),
            json!({"budget": "0.750000", "max_concurrent_tasks": 2})
        )
    );
    let new_team = audit(&app, "new-team").await;
    assert_eq!(new_team[0].0, "root");
    assert_eq!(
        (new_team[0].1["created"].as_bool(), new_team[0].1["budget"].as_str()),
        (Some(true), Some(""))
    );
}

#[tokio::test]
async fn an_admin_changes_and_creates_tenants_with_an_audit_trail_embedded() {
    admin_changes(Backend::Embedded).await;
}

#[tokio::test]
async fn an_admin_changes_and_creates_tenants_with_an_audit_trail_redis() {
    admin_changes(Backend::Redis).await;
}

async fn persistence(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = put(&app, &app.admin_token(), "team-a", &json!({"budget": "5.00"})).await;
    assert_eq!(response.status(), StatusCode::OK);

    let app = app.restart().await;
    assert_eq!(
        budget_of(&app, "team-a").await,
        "5.000000",
        "an unchanged config keeps the admin's change"
    );

    let app = app.restart_with(|c| c.tenants[0].max_concurrent_tasks = 9).await;
    let list = app.get_json("/v1/admin/tenants", &app.admin_token()).await;
    let team_a = &list["tenants"][0];
    assert_eq!(
        (team_a["budget"].as_str(), team_a["max_concurrent_tasks"].as_u64()),
        (Some("100.000000"), Some(9))
    );
    let who: Vec<String> = audit(&app, "team-a")
        .await
        .into_iter()
        .map(|(actor, _)| actor)
        .collect();
    assert_eq!(who, vec!["config", "root", "config"]);
}

#[tokio::test]
async fn admin_changes_persist_across_restarts_until_the_config_entry_changes_embedded() {
    persistence(Backend::Embedded).await;
}

#[tokio::test]
async fn admin_changes_persist_across_restarts_until_the_config_entry_changes_redis() {
    persistence(Backend::Redis).await;
}

#[tokio::test]
async fn only_admins_change_tenants_and_bad_fields_are_named() {
    let app = spawn_app(Backend::Embedded).await;
    for token in [app.token("team-a"), app.finance_token()] {
        let response = put(&app, &token, "team-a", &json!({"budget": "1"})).await;
        assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
    }
    let admin = app.admin_token();
    let bad = [
        (json!({"budget": "1.1234567"}), "budget"),
        (json!({"budget": 5}), "budget"),
        (json!({"user_budget": "-1"}), "user_budget"),
        (json!({"period": "year"}), "period"),
        (json!({"creates_per_minute": 0}), "creates_per_minute"),
        (json!({"max_concurrent_tasks": -1}), "max_concurrent_tasks"),
        (json!({"allowed_qualities": ["4k"]}), "allowed_qualities"),
        (json!({"id": "team-b"}), "id"),
        (json!({"colour": "red"}), "colour"),
    ];
    for (body, param) in bad {
        let response = put(&app, &admin, "team-a", &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request", Some(param)).await;
    }
    let response = put(&app, &admin, "bad%20id", &json!({})).await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request", Some("id")).await;
    assert_eq!(audit(&app, "team-a").await.len(), 1, "refused changes are not written");
}
