//! A reservation whose record a Redis failover lost (its reserve and bind were acknowledged
//! by a primary that died before its replica had them) comes back through the upstream's
//! callback: the sealed token carries what charges it. Simulated on one Redis by deleting
//! everything the create wrote, as a promoted replica that never had it would look.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use vidgate::config::Seconds;
use vidgate::mock_upstream::MockOptions;
use vidgate::store::ReservationState;

use crate::helpers::{Backend, TestApp, assert_error, own_callbacks, quick_mock, spawn_app_with};

/// Deletes every key of the app's prefix that the create of `rid` wrote (all but the tenants
/// and the shared secrets), and its ledger entries.
async fn forget(app: &TestApp, rid: &str) {
    let prefix = &app.config.store.key_prefix;
    let client = redis::Client::open(app.config.store.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        let name = &key[prefix.len()..];
        if name.starts_with("tenant") || name.starts_with("secret:") {
            continue;
        }
        if name.starts_with("ledger:") {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap();
            for (id, fields) in entries {
                if fields.iter().any(|(_, e)| e.contains(rid)) {
                    let _: i64 = redis::cmd("XDEL")
                        .arg(&key)
                        .arg(id)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
            }
            continue;
        }
        let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    }
    assert_eq!(app.state.store.reservation(rid).await.unwrap(), None);
}

async fn ledger(app: &TestApp) -> Vec<Value> {
    let ledger = app
        .get_json("/v1/admin/ledger?tenant=team-a&limit=1000", &app.finance_token())
        .await;
    ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "budget_change")
        .cloned()
        .collect()
}

async fn metrics(app: &TestApp) -> String {
    let response = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    response.text().await.unwrap()
}

fn kinds(entries: &[Value]) -> Vec<&str> {
    entries.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn slow_mock() -> MockOptions {
    MockOptions {
        allow_local_callbacks: true,
        processing_ms: 1500,
        ..quick_mock()
    }
}

/// The token of the callback URL the gateway sent with the last create.
fn sent_token(app: &TestApp) -> String {
    let sent = app.mock.stats().last_create_body.unwrap();
    let url = sent["callback_url"].as_str().unwrap();
    url.rsplit_once('/').unwrap().1.to_string()
}

async fn post_callback(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/upstream/callbacks/{token}", app.base))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reservation_a_failover_lost_is_rebuilt_from_its_callback_and_charged_once() {
    let app = spawn_app_with(Backend::Redis, slow_mock(), own_callbacks).await;
    let created = app.create_task("team-a", "character1 waves").await;
    let (task_id, rid) = (
        created["id"].as_str().unwrap().to_string(),
        created["vidgate"]["reservation_id"].as_str().unwrap().to_string(),
    );
    let sealed = sent_token(&app);
    forget(&app, &rid).await;
    assert!(ledger(&app).await.is_empty());

    // A token minted before tokens were sealed cannot rebuild anything: 404, an anomaly.
    let legacy = app.state.completion.callback_token(&rid);
    let response = post_callback(&app, &legacy, &json!({"id": task_id})).await;
    assert_error(response, StatusCode::NOT_FOUND, "task_not_found", None).await;
    let exposed = metrics(&app).await;
    assert!(
        exposed.contains(r#"vidgate_tasks_total{outcome="anomaly",tenant=""} 1"#),
        "{exposed}"
    );

    // The upstream's own callback, once the task completed: rebuilt, bound and settled.
    let done = until("the rebuilt reservation to settle", || async {
        app.state
            .store
            .reservation(&rid)
            .await
            .unwrap()
            .filter(|r| r.state == ReservationState::Settled)
    })
    .await;
    assert_eq!(done.task_id.as_deref(), Some(task_id.as_str()));
    assert_eq!((done.tenant.as_str(), done.user.as_str()), ("team-a", "alice"));
    // 5 s of reference and 5 s of output at the test price, as the create held.
    let held = created["vidgate"]["reserved"].as_str().unwrap();
    assert_eq!(vidgate::billing::format_money(done.reserved), held);
    assert_eq!(done.charged, Some(done.reserved));
    let entries = ledger(&app).await;
    assert_eq!(kinds(&entries), ["reserve", "settle"]);
    assert!(entries.iter().all(|e| e["reservation_id"] == rid.as_str()));
    let usage = app.state.store.period_usage("team-a", &done.period).await.unwrap();
    assert_eq!((usage.spent, usage.reserved, usage.in_flight), (done.reserved, 0, 0));

    // The same callback again (the upstream retries): nothing moves twice.
    let response = post_callback(&app, &sealed, &json!({"id": task_id})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(kinds(&ledger(&app).await), ["reserve", "settle"]);
    // The team sees its task again.
    let task: Value = app.get_task(&app.token("team-a"), &task_id).await.json().await.unwrap();
    assert_eq!(task["vidgate"]["state"], "settled", "{task}");
    let exposed = metrics(&app).await;
    assert!(
        exposed.contains(r#"vidgate_tasks_total{outcome="recovered",tenant="team-a"} 1"#),
        "{exposed}"
    );
}

#[tokio::test]
async fn a_lost_reservation_older_than_retention_is_an_anomaly_and_never_charged() {
    let app = spawn_app_with(Backend::Redis, slow_mock(), |config| {
        own_callbacks(config);
        config.store.retention_secs = Seconds::from_millis(1000);
    })
    .await;
    let created = app.create_task("team-a", "character1 waves").await;
    let rid = created["vidgate"]["reservation_id"].as_str().unwrap().to_string();
    forget(&app, &rid).await;
    // The callback comes after the task's 1.5 s: its token is older than retention.
    let entries = until("the anomaly", || async {
        let entries = ledger(&app).await;
        (!entries.is_empty()).then_some(entries)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let entries_after = ledger(&app).await;
    assert_eq!(kinds(&entries_after), ["anomaly"], "{entries_after:?}");
    assert_eq!(entries, entries_after);
    let note = entries[0]["note"].as_str().unwrap();
    assert!(note.contains("retention"), "{note}");
    assert_eq!(entries[0]["amount"], "0.000000");
    let kind = app.state.store.tenant("team-a").await.unwrap().unwrap().settings.period;
    let period = vidgate::store::PeriodKeys::at(chrono::Utc::now())
        .for_kind(kind)
        .to_string();
    let usage = app.state.store.period_usage("team-a", &period).await.unwrap();
    assert_eq!((usage.spent, usage.reserved, usage.in_flight), (0, 0, 0));
}

#[tokio::test]
async fn the_longest_user_fits_the_callback_url_and_a_longer_sub_is_refused() {
    let mock = MockOptions {
        allow_local_callbacks: true,
        ..quick_mock()
    };
    let app = spawn_app_with(Backend::Embedded, mock, own_callbacks).await;
    let body = app.create_body("character1 waves");
    let too_long = app.token_for("team-a", &"u".repeat(256));
    let response = app.post_create(&too_long, &body).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthenticated", None).await;
    assert_eq!(app.mock.stats().creates, 0);

    // 255 bytes of 4-byte characters: the most a token's user can take.
    let user = "😀".repeat(63) + "abc";
    let response = app.post_create(&app.token_for("team-a", &user), &body).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.text().await);
    let sent = app.mock.stats().last_create_body.unwrap();
    let url = sent["callback_url"].as_str().unwrap();
    assert!(url.len() <= 2048, "{} characters", url.len());
    let token = url.rsplit_once('/').unwrap().1;
    match app.state.completion.verify_token(token) {
        Some(vidgate::callbacks::token::Verified::Sealed(payload)) => assert_eq!(payload.user, user),
        other => panic!("{other:?}"),
    }
}
