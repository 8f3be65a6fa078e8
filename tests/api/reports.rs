//! Usage and ledger reports over HTTP: shapes, JSON and CSV, paging, roles and bad parameters.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, MODEL, ManualClock, TestApp, assert_error, quick_mock, spawn_app, spawn_app_with_clock};

const NOW: &str = "2026-11-25T10:00:00Z";

/// A 720p task with audio (holds and settles 0.500000) and a 1080p silent one for bob
/// (0.375000), both completed, and one 720p task held for team-b.
async fn busy_app(backend: Backend) -> TestApp {
    let app = spawn_app_with_clock(backend, quick_mock(), ManualClock::at(NOW), |_| {}).await;
    let first = app.create_task("team-a", "audio").await;
    let silent = json!({"model": MODEL, "prompt": "silent", "video_urls": [app.reference_url()], "duration": 5,
                        "quality": "1080p", "model_params": {"generate_audio": false}});
    let response = app.post_create(&app.token_for("team-a", "bob"), &silent).await;
    assert_eq!(response.status(), StatusCode::OK);
    let second: Value = response.json().await.unwrap();
    for task in [&first, &second] {
        app.wait_final("team-a", task["id"].as_str().unwrap()).await;
    }
    app.create_task("team-b", "[mock:slow=30] still running").await;
    app
}

async fn tenant_usage(backend: Backend) {
    let app = busy_app(backend).await;
    let report = app.get_json("/v1/usage", &app.token("team-a")).await;
    assert_eq!(
        report,
        json!({
            "tenant": "team-a", "period": "2026-11", "currency": "USD", "budget": "100.000000",
            "spent": "0.875000", "reserved": "0.000000", "remaining": "99.125000",
            "breakdown": [
                {"quality": "1080p", "audio": false, "spent": "0.375000", "billed_input_ms": 5000,
                 "billed_output_ms": 5000, "tasks": 1},
                {"quality": "720p", "audio": true, "spent": "0.500000", "billed_input_ms": 5000,
                 "billed_output_ms": 5000, "tasks": 1}
            ],
            "tasks": {"reserved": 0, "settled": 2, "refunded": 0, "expired": 0}
        })
    );
    // A day is not the budget's period: no budget, no remaining.
    let day = app.get_json("/v1/usage?period=2026-11-25", &app.token("team-a")).await;
    assert_eq!(
        (day["budget"].clone(), day["spent"].clone()),
        (Value::Null, json!("0.875000"))
    );
    let other = app.get_json("/v1/usage?period=2026-10", &app.token("team-a")).await;
    assert_eq!(
        (other["spent"].as_str(), other["breakdown"].clone()),
        (Some("0.000000"), json!([]))
    );
    let b = app.get_json("/v1/usage?period=total", &app.token("team-b")).await;
    assert_eq!(
        (b["reserved"].as_str(), b["tasks"]["reserved"].as_i64()),
        (Some("0.500000"), Some(1))
    );
}

#[tokio::test]
async fn a_team_reads_its_own_usage_embedded() {
    tenant_usage(Backend::Embedded).await;
}

#[tokio::test]
async fn a_team_reads_its_own_usage_redis() {
    tenant_usage(Backend::Redis).await;
}

async fn admin_usage(backend: Backend) {
    let app = busy_app(backend).await;
    let finance = app.finance_token();
    let by_tenant = app.get_json("/v1/admin/usage?period=2026-11", &finance).await;
    let rows = by_tenant["rows"].as_array().unwrap();
    assert_eq!((by_tenant["group_by"].as_str(), rows.len()), (Some("tenant"), 2));
    assert_eq!(
        rows[0],
        json!({"tenant": "team-a", "budget": "100.000000", "remaining": "99.125000", "spent": "0.875000",
               "reserved": "0.000000", "billed_input_ms": 10000, "billed_output_ms": 10000,
               "tasks": {"reserved": 0, "settled": 2, "refunded": 0, "expired": 0}})
    );
    assert_eq!(
        (rows[1]["tenant"].as_str(), rows[1]["reserved"].as_str()),
        (Some("team-b"), Some("0.500000"))
    );

    let by_user = app
        .get_json("/v1/admin/usage?tenant=team-a&group_by=user", &finance)
        .await;
    let users: Vec<(&str, &str)> = by_user["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["user"].as_str().unwrap(), r["spent"].as_str().unwrap()))
        .collect();
    assert_eq!(users, vec![("alice", "0.500000"), ("bob", "0.375000")]);

    let by_day = app
        .get_json("/v1/admin/usage?period=total&group_by=day", &app.admin_token())
        .await;
    let days: Vec<(&str, &str)> = by_day["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tenant"].as_str().unwrap(), r["day"].as_str().unwrap()))
        .collect();
    assert_eq!(days, vec![("team-a", "2026-11-25"), ("team-b", "2026-11-25")]);

    let response = app
        .get("/v1/admin/usage?period=2026-W48&group_by=user&format=csv", &finance)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "period,tenant,user,day,currency,budget,remaining,spent,reserved,billed_input_ms,billed_output_ms,tasks_reserved,tasks_settled,tasks_refunded,tasks_expired,quality,audio"
    );
    assert_eq!(
        lines[1],
        "2026-W48,team-a,alice,,USD,,,0.500000,0.000000,5000,5000,0,1,0,0,,"
    );
    assert_eq!(lines.len(), 5, "3 users and a final line end: {csv:?}");
}

#[tokio::test]
async fn finance_reads_usage_by_tenant_user_and_day_embedded() {
    admin_usage(Backend::Embedded).await;
}

#[tokio::test]
async fn finance_reads_usage_by_tenant_user_and_day_redis() {
    admin_usage(Backend::Redis).await;
}

async fn ledger(backend: Backend) {
    let app = busy_app(backend).await;
    let finance = app.finance_token();
    let all = app
        .get_json("/v1/admin/ledger?tenant=team-a&limit=1000", &finance)
        .await;
    let entries = all["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // Both holds, then each settlement on the measured result (no anomaly).
    assert_eq!(&kinds[..3], ["budget_change", "reserve", "reserve"]);
    assert_eq!(kinds.iter().filter(|k| **k == "settle").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "anomaly").count(), 0);
    assert_eq!(kinds.len(), 5);
    assert_eq!(all["next_cursor"], Value::Null);
    let reserve = &entries[1];
    assert_eq!(reserve["time"], "2026-11-25T10:00:00.000Z");
    assert_eq!(
        (
            reserve["user"].as_str(),
            reserve["amount"].as_str(),
            reserve["audio"].as_bool()
        ),
        (Some("alice"), Some("0.500000"), Some(true))
    );
    assert_eq!(entries[0]["actor"], "config");
    assert_eq!(entries[0]["audio"], Value::Null);

    // Pages of two across both tenants, resumed with next_cursor, give every row once.
    let mut seen = Vec::new();
    let mut path = "/v1/admin/ledger?limit=2".to_string();
    loop {
        let page = app.get_json(&path, &finance).await;
        seen.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/admin/ledger?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), entries.len() + 2, "team-b: its budget change and its hold");

    let window = app
        .get_json(
            "/v1/admin/ledger?from=2026-11-25T10:00:00Z&to=2026-11-25T10:00:00.001Z&tenant=team-b",
            &finance,
        )
        .await;
    assert_eq!(window["entries"].as_array().unwrap().len(), 2);
    let none = app.get_json("/v1/admin/ledger?to=2026-11-01T00:00:00Z", &finance).await;
    assert_eq!(none["entries"], json!([]));

    let response = app
        .get("/v1/admin/ledger?tenant=team-a&format=csv&limit=2", &finance)
        .await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(response.headers().contains_key("x-next-cursor"));
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "time,kind,tenant,user,reservation_id,task_id,model,quality,audio,billed_input_ms,billed_output_ms,amount,currency,request_id,actor,note"
    );
    assert!(
        lines[1].starts_with("2026-11-25T10:00:00.000Z,budget_change,team-a,,,,,,,0,0,0.000000,,,config,\"{"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("2026-11-25T10:00:00.000Z,reserve,team-a,alice,rsv_"),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains(",wan2.6-reference-video-flash,720p,true,5000,5000,0.500000,USD,"),
        "{}",
        lines[2]
    );
}

#[tokio::test]
async fn finance_reads_the_ledger_in_pages_as_json_and_csv_embedded() {
    ledger(Backend::Embedded).await;
}

#[tokio::test]
async fn finance_reads_the_ledger_in_pages_as_json_and_csv_redis() {
    ledger(Backend::Redis).await;
}

#[tokio::test]
async fn only_finance_and_admin_read_all_usage_and_bad_parameters_are_named() {
    let app = spawn_app(Backend::Embedded).await;
    for path in ["/v1/admin/usage", "/v1/admin/ledger", "/v1/admin/tenants"] {
        let response = app.get(path, &app.token("team-a")).await;
        assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
    }
    let response = app.get("/v1/admin/tenants", &app.finance_token()).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
    let response = app.get("/v1/usage", &app.finance_token()).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;

    let finance = app.finance_token();
    let bad = [
        ("/v1/admin/usage?period=2026-13", "period"),
        ("/v1/admin/usage?period=2026-W60", "period"),
        ("/v1/admin/usage?group_by=week", "group_by"),
        ("/v1/admin/usage?format=xml", "format"),
        ("/v1/admin/usage?tenant=nobody", "tenant"),
        ("/v1/admin/usage?group-by=user", "group-by"),
        ("/v1/admin/usage?period=total&period=2026-11", "period"),
        ("/v1/admin/ledger?limit=0", "limit"),
        ("/v1/admin/ledger?limit=1001", "limit"),
        ("/v1/admin/ledger?from=yesterday", "from"),
        (
            "/v1/admin/ledger?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
            "to",
        ),
        ("/v1/admin/ledger?cursor=abc", "cursor"),
        ("/v1/admin/ledger?tenant=a%20b", "tenant"),
    ];
    for (path, param) in bad {
        let response = app.get(path, &finance).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request", Some(param)).await;
    }
    let response = app.get("/v1/usage?period=last-month", &app.token("team-a")).await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request", Some("period")).await;
}
