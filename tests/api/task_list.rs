//! `GET /v1/tasks`: a team's own tasks, newest first, from the store alone, with filters,
//! pages, unknown outcomes, and 400s that name their parameter; on both store backends.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, ManualClock, TestApp, assert_error, quick_mock, spawn_app_with, spawn_app_with_clock};

fn many_tasks(config: &mut vidgate::config::Config) {
    for tenant in &mut config.tenants {
        tenant.max_concurrent_tasks = 100;
        tenant.creates_burst = 50;
    }
}

/// The ids of the rows of one page.
fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|row| row["id"].as_str().unwrap_or("null").to_string())
        .collect()
}

fn id_of(task: &Value) -> String {
    task["id"].as_str().expect("task id").to_string()
}

async fn list(app: &TestApp, tenant: &str, query: &str) -> Value {
    app.get_json(&format!("/v1/tasks{query}"), &app.token(tenant)).await
}

async fn own_tasks_newest_first(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), many_tasks).await;
    let mut created = Vec::new();
    for prompt in ["first", "second", "third"] {
        created.push(id_of(&app.create_task("team-a", prompt).await));
    }
    let other = id_of(&app.create_task("team-b", "team b's own").await);
    let queries = app.mock.stats().queries;

    let page = list(&app, "team-a", "").await;
    created.reverse();
    assert_eq!(ids(&page), created, "newest first: {page}");
    assert_eq!(page["next_cursor"], Value::Null);
    for row in page["data"].as_array().unwrap() {
        assert_eq!(row["object"], "video.generation.task");
        assert_eq!(row["vidgate"]["tenant"], "team-a");
        assert_eq!(row["vidgate"]["state"], "reserved");
        assert_eq!(row["vidgate"]["reserved"], "0.500000");
    }
    let page = list(&app, "team-b", "").await;
    assert_eq!(ids(&page), vec![other.clone()]);
    // team-a cannot reach team-b's task through any filter.
    let rid = page["data"][0]["vidgate"]["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = list(&app, "team-a", &format!("?reservation_id={rid}")).await;
    assert_eq!(ids(&page), Vec::<String>::new());
    assert_eq!(app.mock.stats().queries, queries, "the list never asks the upstream");
}

#[tokio::test]
async fn a_team_lists_its_own_tasks_newest_first_and_never_another_teams_embedded() {
    own_tasks_newest_first(Backend::Embedded).await;
}

#[tokio::test]
async fn a_team_lists_its_own_tasks_newest_first_and_never_another_teams_redis() {
    own_tasks_newest_first(Backend::Redis).await;
}

async fn pages_and_filters(backend: Backend) {
    let clock = ManualClock::at("2026-11-25T10:00:00Z");
    let app = spawn_app_with_clock(backend, quick_mock(), clock.clone(), many_tasks).await;
    let alice = app.token_for("team-a", "alice");
    let bob = app.token_for("team-a", "bob");
    let mut created = Vec::new();
    for (i, token) in [&alice, &bob, &alice, &bob, &alice].into_iter().enumerate() {
        clock.set(&format!("2026-11-25T10:0{i}:00Z"));
        let response = app.post_create(token, &app.create_body(&format!("task {i}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        created.push(id_of(&response.json().await.unwrap()));
    }
    // Two more in the same ms: the order between them is still total.
    for i in 5..7 {
        let response = app.post_create(&alice, &app.create_body(&format!("task {i}"))).await;
        created.push(id_of(&response.json().await.unwrap()));
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    // Pages of 3 walk the whole list once, in order.
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_string();
    loop {
        let page = list(&app, "team-a", &query).await;
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    let page = list(&app, "team-a", "?user=bob").await;
    assert_eq!(ids(&page), vec![created[3].clone(), created[1].clone()]);
    // `from` inclusive, `to` exclusive, on the creation time.
    let page = list(&app, "team-a", "?from=2026-11-25T10:01:00Z&to=2026-11-25T10:03:00Z").await;
    assert_eq!(ids(&page), vec![created[2].clone(), created[1].clone()]);
    let page = list(&app, "team-a", "?user=alice&from=2026-11-25T10:02:00Z&limit=2").await;
    assert_eq!(ids(&page), vec![created[6].clone(), created[5].clone()]);
    let cursor = page["next_cursor"].as_str().expect("more rows follow").to_string();
    let page = list(
        &app,
        "team-a",
        &format!("?user=alice&from=2026-11-25T10:02:00Z&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(ids(&page), vec![created[4].clone(), created[2].clone()]);

    // One task ends: the state filter follows `vidgate.state`.
    let done = app.wait_final("team-a", &created[0]).await;
    assert_eq!(done["vidgate"]["state"], "settled");
    let page = list(&app, "team-a", "?state=settled").await;
    assert_eq!(ids(&page), vec![created[0].clone()]);
    assert_eq!(page["data"][0]["vidgate"], done["vidgate"]);
    assert_eq!(
        page["data"][0]["status"], "completed",
        "the row shows the task as last seen"
    );
    assert_eq!(page["data"][0]["results"], done["results"]);
    let page = list(&app, "team-a", "?state=reserved").await;
    assert_eq!(ids(&page).len(), 6);
    let rid = done["vidgate"]["reservation_id"].as_str().unwrap();
    let page = list(&app, "team-a", &format!("?reservation_id={rid}")).await;
    assert_eq!(ids(&page), vec![created[0].clone()]);
    let page = list(&app, "team-a", &format!("?reservation_id={rid}&state=reserved")).await;
    assert_eq!(ids(&page), Vec::<String>::new());
}

#[tokio::test]
async fn pages_and_filters_select_exactly_the_matching_tasks_embedded() {
    pages_and_filters(Backend::Embedded).await;
}

#[tokio::test]
async fn pages_and_filters_select_exactly_the_matching_tasks_redis() {
    pages_and_filters(Backend::Redis).await;
}

async fn unknown_outcomes(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), |c| c.upstream.timeout_ms = 300).await;
    let token = app.token("team-a");
    let response = app.post_create(&token, &app.create_body("slow [mock:hang=1]")).await;
    let body = assert_error(response, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", None).await;
    let response = app
        .post_create(&token, &app.create_body("refused [mock:http=503]"))
        .await;
    assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error", None).await;

    let page = list(&app, "team-a", "").await;
    let rows = page["data"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{page}");
    // The refused create: nothing runs, nothing is charged.
    assert_eq!(rows[0]["id"], Value::Null);
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["vidgate"]["state"], "refunded");
    assert_eq!(rows[0]["vidgate"]["charged"], "0.000000");
    // The timed-out one may exist upstream: its hold stays, its outcome is unknown.
    assert_eq!(rows[1]["id"], Value::Null);
    assert_eq!(rows[1]["status"], "unknown");
    assert_eq!(rows[1]["vidgate"]["state"], "reserved");
    assert_eq!(rows[1]["vidgate"]["reserved"], "0.500000");
    if let Some(rid) = body["error"]["reservation_id"].as_str() {
        assert_eq!(rows[1]["vidgate"]["reservation_id"], rid);
    }
    let page = list(&app, "team-a", "?state=reserved").await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_create_with_an_unknown_outcome_is_listed_without_an_id_embedded() {
    unknown_outcomes(Backend::Embedded).await;
}

#[tokio::test]
async fn a_create_with_an_unknown_outcome_is_listed_without_an_id_redis() {
    unknown_outcomes(Backend::Redis).await;
}

#[tokio::test]
async fn bad_parameters_get_400_naming_the_parameter() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |_| {}).await;
    let token = app.token("team-a");
    let cases = [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?state=done", "state"),
        ("?from=yesterday", "from"),
        ("?to=2026-13-01T00:00:00Z", "to"),
        ("?from=2026-11-25T00:00:00Z&to=2026-11-25T00:00:00Z", "to"),
        ("?cursor=not-a-cursor", "cursor"),
        ("?reservation_id=rsv%20x", "reservation_id"),
        ("?user=", "user"),
        ("?limit=5&limit=6", "limit"),
        ("?sort=asc", "sort"),
    ];
    for (query, param) in cases {
        let response = app.get(&format!("/v1/tasks{query}"), &token).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request", Some(param)).await;
    }
}

#[tokio::test]
async fn the_task_list_needs_a_tenant_and_counts_against_the_reads_limit() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.tenants[0].reads_per_minute = 1;
        c.tenants[0].reads_burst = 1;
    })
    .await;
    let response = app.get("/v1/tasks", &app.finance_token()).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
    let response = app.get("/v1/tasks", &app.token("ghost")).await;
    assert_error(response, StatusCode::FORBIDDEN, "unknown_tenant", None).await;
    let token = app.token("team-a");
    assert_eq!(app.get("/v1/tasks", &token).await.status(), StatusCode::OK);
    let response = app.get("/v1/tasks", &token).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited", None).await;
}

/// Reservations kept before the task list existed (no index entries) enter it at startup.
mod earlier_tasks {
    use std::sync::Arc;

    use vidgate::config::PeriodKind;
    use vidgate::store::embedded::EmbeddedStore;
    use vidgate::store::redis::RedisStore;
    use vidgate::store::{PeriodKeys, ReserveRequest, Store, TaskIndexRange, TenantSettings};

    async fn with_three_holds(store: &dyn Store) {
        let settings = TenantSettings {
            budget: None,
            period: PeriodKind::Month,
            creates_per_minute: 60,
            creates_burst: 10,
            reads_per_minute: 600,
            reads_burst: 100,
            max_concurrent_tasks: 10,
            user_budget: None,
            user_creates_per_minute: 0,
            allowed_qualities: vec!["720p".into()],
            alert_webhook_url: None,
        };
        store.apply_config_tenant("acme", &settings, "h", 1).await.unwrap();
        for (i, id) in ["r1", "r2", "r3"].into_iter().enumerate() {
            let now_ms = 1_795_600_000_000 + i as i64;
            let request = ReserveRequest {
                reservation_id: id.into(),
                tenant: "acme".into(),
                user: "ann".into(),
                request_id: "q".into(),
                periods: PeriodKeys::at(chrono::DateTime::from_timestamp_millis(now_ms).unwrap()),
                model: "m".into(),
                quality: "720p".into(),
                audio: true,
                currency: "USD".into(),
                price_per_second: 1,
                reference_durations_ms: vec![],
                billed_input_ms: 0,
                requested_output_ms: 5000,
                amount: 5,
                callback_url: None,
                now_ms,
                idempotency: None,
                rate: Vec::new(),
            };
            store.reserve(&request).await.unwrap();
        }
    }

    async fn listed(store: &dyn Store) -> Vec<String> {
        let entries = store.task_index("acme", &TaskIndexRange::default(), 10).await.unwrap();
        entries.into_iter().map(|e| e.reservation_id).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_embedded_store_indexes_its_earlier_reservations_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        {
            let store = EmbeddedStore::open(&path, "").unwrap();
            with_three_holds(&store).await;
        }
        // A store from before the task list: the same records, no index.
        {
            let db = redb::Database::open(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.delete_table(redb::TableDefinition::<(&str, u64, &str), ()>::new("task_index"))
                .unwrap();
            tx.commit().unwrap();
        }
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path, "").unwrap());
        assert!(listed(store.as_ref()).await.is_empty());
        assert_eq!(store.index_earlier_tasks().await.unwrap(), 3);
        assert_eq!(listed(store.as_ref()).await, ["r3", "r2", "r1"]);
        assert_eq!(store.index_earlier_tasks().await.unwrap(), 0, "once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_store_indexes_its_earlier_reservations_once() {
        let url = crate::support::redis::shared().url();
        let prefix = crate::support::random_prefix();
        let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&url, &prefix).await.unwrap());
        assert_eq!(store.index_earlier_tasks().await.unwrap(), 0);
        assert_eq!(store.holds().await.unwrap(), None, "an empty store stays empty");
        with_three_holds(store.as_ref()).await;
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}tasklist:acme"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(listed(store.as_ref()).await.is_empty());
        assert_eq!(store.index_earlier_tasks().await.unwrap(), 3);
        assert_eq!(listed(store.as_ref()).await, ["r3", "r2", "r1"]);
        assert_eq!(store.index_earlier_tasks().await.unwrap(), 0, "once");
    }
}

/// A machine caller (a tenant API key) sees its tenant's tasks and quotes exactly as a JWT of
/// the tenant does, and nothing of another tenant.
#[tokio::test]
async fn an_api_key_lists_and_quotes_like_a_jwt_of_its_tenant() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), many_tasks).await;
    let own = id_of(&app.create_task("team-a", "made by a person").await);
    app.create_task("team-b", "someone else's").await;
    let issued: Value = app
        .client
        .post(format!("{}/v1/admin/tenants/team-a/keys", app.base))
        .bearer_auth(app.admin_token())
        .json(&serde_json::json!({"name": "render-ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = issued["key"].as_str().expect("the key").to_string();
    let by_key = app.get_json("/v1/tasks", &key).await;
    let by_jwt = list(&app, "team-a", "").await;
    assert_eq!(ids(&by_key), vec![own.clone()]);
    assert_eq!(by_key, by_jwt);
    let quoted = |token: String| {
        let (client, base, body) = (app.client.clone(), app.base.clone(), app.create_body("priced"));
        async move {
            let response = client
                .post(format!("{base}/v1/quotes"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        }
    };
    let (by_key, by_jwt) = (quoted(key.clone()).await, quoted(app.token("team-a")).await);
    assert_eq!(by_key["reserve"], by_jwt["reserve"]);
    // The key's tasks are its own user's: `key:render-ci`.
    let made = app.post_create(&key, &app.create_body("made by a machine")).await;
    assert_eq!(made.status(), StatusCode::OK);
    let page = app.get_json("/v1/tasks?user=key:render-ci", &key).await;
    assert_eq!(ids(&page).len(), 1);
}
