//! `vidgate store export|import` with the real binary: embedded → Redis → embedded, and the
//! gateway on each store answers the same usage, ledger (CSV byte for byte), tenants, task
//! list and idempotent replays; a task in flight during the move finishes after it; import
//! refuses a store that is not empty.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};
use vidgate::config::{Config, StoreBackend};

use crate::helpers::{Backend, TestApp, quick_mock, spawn_app_with};
use crate::support::process::BIN;

/// A config file naming only the store of `config` (all the store commands read).
fn store_file(dir: &std::path::Path, name: &str, config: &Config) -> std::path::PathBuf {
    let store = &config.store;
    let backend = match store.backend {
        StoreBackend::Embedded => "embedded",
        StoreBackend::Redis => "redis",
    };
    let path = dir.join(name);
    let text = format!(
        "[store]\nbackend = \"{backend}\"\npath = \"{}\"\nredis_url = \"{}\"\nkey_prefix = \"{}\"\n",
        store.path.display(),
        store.redis_url,
        store.key_prefix
    );
    std::fs::write(&path, text).expect("write the store config");
    path
}

fn store_command(action: &str, config: &std::path::Path, stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["store", action, "--config", config.to_str().expect("path")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("VIDGATE_")) {
        command.env_remove(key);
    }
    let mut child = command.spawn().expect("spawn vidgate store");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write the dump");
    }
    drop(input);
    child.wait_with_output().expect("vidgate store ends")
}

/// What finance, admins and the team see: compared across stores.
#[derive(Debug, PartialEq)]
struct Seen {
    usage_csv: String,
    by_day_csv: String,
    ledger_csv: String,
    tenants: Value,
    team_usage: Value,
    tasks: Value,
    webhook_secret: Value,
    api_keys: Value,
}

async fn text(app: &TestApp, path: &str, token: &str) -> String {
    let response = app.get(path, token).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.text().await.expect("body")
}

async fn seen(app: &TestApp) -> Seen {
    let finance = app.finance_token();
    Seen {
        usage_csv: text(app, "/v1/admin/usage?group_by=user&format=csv", &finance).await,
        by_day_csv: text(app, "/v1/admin/usage?period=total&group_by=day&format=csv", &finance).await,
        ledger_csv: text(app, "/v1/admin/ledger?format=csv&limit=1000", &finance).await,
        tenants: app.get_json("/v1/admin/tenants", &app.admin_token()).await,
        team_usage: app.get_json("/v1/usage", &app.token("team-a")).await,
        tasks: app.get_json("/v1/tasks?limit=100", &app.token("team-a")).await,
        webhook_secret: app.get_json("/v1/webhooks/secret", &app.token("team-a")).await,
        api_keys: app.get_json("/v1/admin/tenants/team-a/keys", &app.admin_token()).await,
    }
}

/// Stops `app`, dumps its store with the binary, imports the dump into `target` and starts
/// the gateway on it.
async fn move_store(app: TestApp, target: impl FnOnce(&mut Config)) -> (TestApp, Vec<u8>) {
    let stopped = app.stop().await;
    let dir = stopped.dir.path().to_path_buf();
    let from = store_file(&dir, "from.toml", &stopped.config);
    let export = store_command("export", &from, None);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let mut moved = stopped.config.clone();
    target(&mut moved);
    let to = store_file(&dir, "to.toml", &moved);
    let import = store_command("import", &to, Some(&export.stdout));
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let summary = String::from_utf8_lossy(&import.stderr);
    assert!(summary.contains("imported") && summary.contains("tenant"), "{summary}");
    let app = stopped.start(|config| *config = moved).await;
    (app, export.stdout)
}

#[tokio::test]
async fn a_store_moves_embedded_to_redis_and_back_with_everything_and_work_in_flight() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |c| {
        c.tenants[0].max_concurrent_tasks = 10;
        c.tenants[0].user_budget = "50.00".into();
    })
    .await;
    let settled = app.create_task("team-a", "done before the move").await;
    app.wait_final("team-a", settled["id"].as_str().unwrap()).await;
    let failed = app.create_task("team-a", "fails [mock:fail]").await;
    app.wait_final("team-a", failed["id"].as_str().unwrap()).await;
    let running = app.create_task("team-a", "still running [mock:slow=3600]").await;
    let running_id = running["id"].as_str().unwrap().to_string();
    let keyed_body = app.create_body("with a key");
    let keyed = app
        .client
        .post(format!("{}/v1/videos/generations", app.base))
        .bearer_auth(app.token("team-a"))
        .header("idempotency-key", "batch-7")
        .json(&keyed_body)
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::OK);
    let keyed: Value = keyed.json().await.unwrap();
    let changed = app
        .client
        .put(format!("{}/v1/admin/tenants/team-b", app.base))
        .bearer_auth(app.admin_token())
        .json(&json!({"budget": "250.00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let issued: Value = app
        .client
        .post(format!("{}/v1/admin/tenants/team-a/keys", app.base))
        .bearer_auth(app.admin_token())
        .json(&json!({"name": "mover"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_key = issued["key"].as_str().expect("the key, shown once").to_string();
    let before = seen(&app).await;
    assert!(before.ledger_csv.lines().count() > 6, "{}", before.ledger_csv);

    // embedded → Redis
    let redis_url = crate::support::redis::shared().url();
    let redis_prefix = crate::support::random_prefix();
    let (app, dump) = move_store(app, |c| {
        c.store.backend = StoreBackend::Redis;
        c.store.redis_url = redis_url.clone();
        c.store.key_prefix = redis_prefix.clone();
    })
    .await;
    let text = String::from_utf8(dump).expect("a dump is text");
    assert!(text.lines().all(|line| line.starts_with("{\"kind\":\"")), "{text}");
    for kind in [
        "tenant",
        "reservation",
        "counter",
        "ledger",
        "aggregate",
        "usage_day",
        "idempotency",
        "queued",
        "secret",
        "webhook_keys",
        "api_key",
    ] {
        assert!(
            text.contains(&format!("{{\"kind\":\"{kind}\"")),
            "a {kind} line: {text}"
        );
    }
    assert_eq!(
        seen(&app).await,
        before,
        "the gateway on Redis sees what it saw on the embedded store"
    );
    let replay = app
        .client
        .post(format!("{}/v1/videos/generations", app.base))
        .bearer_auth(app.token("team-a"))
        .header("idempotency-key", "batch-7")
        .json(&keyed_body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["id"], keyed["id"]);
    assert_eq!(
        app.get("/v1/usage", &api_key).await.status(),
        StatusCode::OK,
        "the API key moved"
    );

    // The task in flight during the move ends now and is charged on Redis, once.
    assert!(app.mock.complete(&running_id).await);
    let done = app.wait_final("team-a", &running_id).await;
    assert_eq!(done["vidgate"]["state"], "settled");
    assert_eq!(done["vidgate"]["reservation_id"], running["vidgate"]["reservation_id"]);
    let on_redis = seen(&app).await;
    assert_ne!(
        on_redis.ledger_csv, before.ledger_csv,
        "the settlement is in the ledger"
    );

    // A second import into the same (now used) Redis is refused, naming what it holds.
    let stopped = app.stop().await;
    let target = store_file(stopped.dir.path(), "again.toml", &stopped.config);
    let again = store_command(
        "import",
        &target,
        Some(b"{\"kind\":\"usage_day\",\"tenant\":\"x\",\"day\":\"2026-11-25\"}\n"),
    );
    assert!(!again.status.success());
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(
        message.contains("not empty") && message.contains(&redis_prefix),
        "{message}"
    );
    let app = stopped.start(|_| {}).await;

    // Redis → embedded (a new file)
    let path = app.state.config.store.path.with_file_name("moved-back.redb");
    let (app, _) = move_store(app, |c| {
        c.store.backend = StoreBackend::Embedded;
        c.store.path = path.clone();
    })
    .await;
    assert_eq!(seen(&app).await, on_redis, "and back on an embedded store");
    let replay = app
        .client
        .post(format!("{}/v1/videos/generations", app.base))
        .bearer_auth(app.token("team-a"))
        .header("idempotency-key", "batch-7")
        .json(&keyed_body)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(app.mock.stats().tasks_created, 4, "no task was made twice");
}

#[tokio::test]
async fn import_refuses_a_store_that_is_not_empty_and_a_line_it_does_not_know() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |_| {}).await;
    let stopped = app.stop().await;
    let config = store_file(stopped.dir.path(), "used.toml", &stopped.config);
    let output = store_command("import", &config, Some(b""));
    assert!(!output.status.success(), "a gateway already wrote its tenants there");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("not empty") && message.contains("tenants: 2"),
        "{message}"
    );

    let mut fresh = stopped.config.clone();
    fresh.store.path = stopped.dir.path().join("fresh.redb");
    let config = store_file(stopped.dir.path(), "fresh.toml", &fresh);
    let output = store_command("import", &config, Some(b"{\"kind\":\"not_a_kind\",\"id\":\"x_1\"}\n"));
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("line 1") && message.contains("not_a_kind"),
        "{message}"
    );
}

mod dumps {
    use std::sync::Arc;

    use vidgate::config::PeriodKind;
    use vidgate::store::embedded::EmbeddedStore;
    use vidgate::store::redis::RedisStore;
    use vidgate::store::{DumpItem, IdempotencyClaim, PeriodKeys, ReserveRequest, Settlement, Store, TenantSettings};

    fn settings() -> TenantSettings {
        TenantSettings {
            budget: Some(10_000_000),
            period: PeriodKind::Week,
            creates_per_minute: 60,
            creates_burst: 10,
            reads_per_minute: 600,
            reads_burst: 100,
            max_concurrent_tasks: 10,
            user_budget: None,
            user_creates_per_minute: 0,
            allowed_qualities: vec!["720p".into()],
            alert_webhook_url: None,
        }
    }

    fn hold(id: &str, now_ms: i64, key: Option<&str>) -> ReserveRequest {
        let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap();
        ReserveRequest {
            reservation_id: id.into(),
            tenant: "acme".into(),
            user: "ann".into(),
            request_id: format!("req-{id}"),
            periods: PeriodKeys::at(now),
            model: "wan2.6-reference-video-flash".into(),
            quality: "720p".into(),
            audio: false,
            currency: "USD".into(),
            price_per_second: 25_000,
            reference_durations_ms: vec![4000],
            billed_input_ms: 4000,
            requested_output_ms: 5000,
            amount: 225_000,
            callback_url: Some("https://hooks.example.com/done".into()),
            now_ms,
            idempotency: key.map(|key| IdempotencyClaim {
                key: key.into(),
                body_hash: "abc".into(),
                ttl_ms: 3_600_000,
            }),
            rate: Vec::new(),
        }
    }

    /// Every line of a store's dump, sorted, with claim expiry rounded to the minute (Redis
    /// keeps a TTL, not a time).
    async fn lines(store: &dyn Store) -> Vec<String> {
        let (sink, mut items) = tokio::sync::mpsc::channel(16);
        let export = store.export(sink);
        let collect = async {
            let mut out = Vec::new();
            while let Some(mut item) = items.recv().await {
                if let DumpItem::Idempotency { expires_ms, .. } = &mut item {
                    *expires_ms = (*expires_ms + 30_000) / 60_000;
                }
                out.push(serde_json::to_string(&item).unwrap());
            }
            out
        };
        let (exported, mut out) = tokio::join!(export, collect);
        exported.unwrap();
        out.sort();
        out
    }

    async fn copy(from: &dyn Store, to: &dyn Store) {
        let (sink, mut items) = tokio::sync::mpsc::channel(16);
        let export = from.export(sink);
        let collect = async {
            let mut out = Vec::new();
            while let Some(item) = items.recv().await {
                out.push(item);
            }
            out
        };
        let (exported, items) = tokio::join!(export, collect);
        exported.unwrap();
        assert_eq!(to.holds().await.unwrap(), None);
        to.import(items).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dump_of_either_backend_loads_into_the_other_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let first: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("a.redb"), "").unwrap());
        let now = chrono::Utc::now().timestamp_millis();
        first.apply_config_tenant("acme", &settings(), "h1", now).await.unwrap();
        first.reserve(&hold("r1", now, None)).await.unwrap();
        first.bind("r1", "task-1", "{\"id\":\"task-1\"}").await.unwrap();
        let done = Settlement {
            billed_output_ms: 4800,
            amount: 220_000,
            anomaly: false,
            now_ms: now + 1000,
        };
        first.settle("r1", &done).await.unwrap();
        first.reserve(&hold("r2", now + 2000, Some("key-2"))).await.unwrap();
        first.bind("r2", "task-2", "{\"id\":\"task-2\"}").await.unwrap();
        first.reserve(&hold("r3", now + 3000, None)).await.unwrap();
        first.refund("r3", now + 4000).await.unwrap();
        first.claim_alert("acme", "2026-W48", 800_000).await.unwrap();
        first
            .shared_secret("callback_token_key", b"0123456789abcdef")
            .await
            .unwrap();
        let dumped = lines(first.as_ref()).await;
        assert!(
            dumped.iter().any(|l| l.contains("\"kind\":\"outbox_event\"")),
            "{dumped:#?}"
        );
        assert!(dumped.iter().any(|l| l.contains("\"kind\":\"alert\"")));

        let redis: Arc<dyn Store> = Arc::new(
            RedisStore::connect(&crate::support::redis::shared().url(), &crate::support::random_prefix())
                .await
                .unwrap(),
        );
        copy(first.as_ref(), redis.as_ref()).await;
        assert_eq!(
            lines(redis.as_ref()).await,
            dumped,
            "Redis holds what the embedded store held"
        );
        let last: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("b.redb"), "").unwrap());
        copy(redis.as_ref(), last.as_ref()).await;
        assert_eq!(lines(last.as_ref()).await, dumped, "and back");
        // The week (derived on the embedded store) is what the days add up to.
        let week = PeriodKeys::at(chrono::DateTime::from_timestamp_millis(now).unwrap()).week;
        assert_eq!(
            last.usage("acme", &week, true).await.unwrap(),
            first.usage("acme", &week, true).await.unwrap()
        );
        assert_eq!(
            last.usage("acme", "total", true).await.unwrap(),
            first.usage("acme", "total", true).await.unwrap()
        );
    }
}
