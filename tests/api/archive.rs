//! The archive of finished videos (`[archive]`, `GET /v1/tasks/{task_id}/content`): copied as
//! soon as the task settles, byte for byte, into a directory or a real S3-compatible server
//! (Garage); served with `Range` and `ETag`; from the upstream's link before the copy; kept
//! across a restart, a slow or silent result host, a result over `max_bytes`, and the task
//! record's own retention; never to another tenant.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vidgate::config::Config;
use vidgate::state::Clock;
use vidgate::store::Queue;

use crate::helpers::{
    Backend, ManualClock, SECRET, TestApp, assert_error, quick_mock, sign, spawn_app_with, spawn_app_with_clock,
};

/// The archive in a directory beside the test's store.
fn file_archive(config: &mut Config) {
    let root = config.store.path.parent().expect("store dir").join("results");
    config.archive.url = Some(format!("file:{}", root.display()));
}

async fn archived_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, quick_mock(), file_archive).await
}

fn task_id(task: &Value) -> String {
    task["id"].as_str().expect("task id").to_string()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls the task until `vidgate.archived` is true (or panics after ~20 s).
async fn wait_archived(app: &TestApp, tenant: &str, id: &str) -> Value {
    for _ in 0..400 {
        let task: Value = app.get_task(&app.token(tenant), id).await.json().await.expect("json");
        if task["vidgate"]["archived"] == json!(true) {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} was never archived");
}

/// Waits until the metric series reaches `value` (or panics after ~20 s).
async fn wait_metric(app: &TestApp, series: &str, value: f64) {
    for _ in 0..400 {
        if app.metric(series) >= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{series} never reached {value} (is {})", app.metric(series));
}

async fn content(app: &TestApp, token: &str, id: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app
        .client
        .get(format!("{}/v1/tasks/{id}/content", app.base))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("gateway answers")
}

/// The result's bytes as the upstream serves them, from its own link.
async fn upstream_bytes(task: &Value) -> Vec<u8> {
    let url = task["results"][0].as_str().expect("a result URL");
    reqwest::get(url).await.unwrap().bytes().await.unwrap().to_vec()
}

async fn completes_and_is_archived_byte_for_byte(backend: Backend) {
    let app = archived_app(backend).await;
    let created = app.create_task("team-a", "a cat [mock:bytes=300000]").await;
    let id = task_id(&created);
    let done = app.wait_final("team-a", &id).await;
    assert_eq!(done["vidgate"]["content_url"], format!("/v1/tasks/{id}/content"));
    let task = wait_archived(&app, "team-a", &id).await;
    let original = upstream_bytes(&task).await;
    assert_eq!(original.len(), 300_000);

    let file = app
        .config
        .store
        .path
        .parent()
        .unwrap()
        .join(format!("results/team-a/{id}.mp4"));
    assert_eq!(
        sha256(&std::fs::read(&file).expect("the archived file")),
        sha256(&original)
    );
    let served = content(&app, &app.token("team-a"), &id, &[]).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.headers()["content-type"], "video/mp4");
    assert_eq!(served.headers()["content-length"], "300000");
    assert_eq!(
        sha256(&served.bytes().await.unwrap()),
        sha256(&original),
        "the upstream's bytes"
    );
    assert_eq!(app.metric("vidgate_archive_total{outcome=\"archived\"}"), 1.0);
    assert_eq!(app.metric("vidgate_archive_bytes_total"), 300_000.0);
    let queued = app.state.store.due(Queue::Archive, i64::MAX, 10).await.unwrap();
    assert!(queued.is_empty(), "the copy left the queue: {queued:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_video_is_copied_into_a_file_archive_byte_for_byte_embedded() {
    completes_and_is_archived_byte_for_byte(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_video_is_copied_into_a_file_archive_byte_for_byte_redis() {
    completes_and_is_archived_byte_for_byte(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archived_video_answers_ranges_and_etags() {
    let app = archived_app(Backend::Embedded).await;
    let id = task_id(&app.create_task("team-a", "ranges [mock:bytes=100000]").await);
    app.wait_final("team-a", &id).await;
    let task = wait_archived(&app, "team-a", &id).await;
    let original = upstream_bytes(&task).await;
    let token = app.token("team-a");

    let part = content(&app, &token, &id, &[("range", "bytes=100-199")]).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 100-199/100000");
    let etag = part.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(part.bytes().await.unwrap(), original[100..200]);

    let tail = content(&app, &token, &id, &[("range", "bytes=-10")]).await;
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes().await.unwrap(), original[99_990..]);
    let open = content(&app, &token, &id, &[("range", "bytes=99000-")]).await;
    assert_eq!(open.headers()["content-range"], "bytes 99000-99999/100000");
    assert_eq!(open.bytes().await.unwrap(), original[99_000..]);

    let head = app
        .client
        .head(format!("{}/v1/tasks/{id}/content", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "100000");
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert!(head.bytes().await.unwrap().is_empty());

    let beyond = content(&app, &token, &id, &[("range", "bytes=100000-")]).await;
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.headers()["content-range"], "bytes */100000");

    let unchanged = content(&app, &token, &id, &[("if-none-match", &etag)]).await;
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers()["etag"], etag.as_str());
    let changed = content(&app, &token, &id, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(changed.status(), StatusCode::OK);

    let same = content(&app, &token, &id, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!(same.status(), StatusCode::PARTIAL_CONTENT);
    let stale = content(&app, &token, &id, &[("range", "bytes=0-9"), ("if-range", "\"older\"")]).await;
    assert_eq!(stale.status(), StatusCode::OK, "another version: the whole video");
    assert_eq!(stale.bytes().await.unwrap().len(), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_the_owners_alone_409_while_running_and_410_without_a_video() {
    let app = archived_app(Backend::Embedded).await;
    let id = task_id(&app.create_task("team-a", "mine").await);
    app.wait_final("team-a", &id).await;
    wait_archived(&app, "team-a", &id).await;
    assert_error(
        content(&app, &app.token("team-b"), &id, &[]).await,
        StatusCode::NOT_FOUND,
        "task_not_found",
        None,
    )
    .await;
    assert_error(
        content(&app, &app.token("team-b"), "task-unified-never-made", &[]).await,
        StatusCode::NOT_FOUND,
        "task_not_found",
        None,
    )
    .await;
    let finance = app.finance_token();
    assert_error(
        content(&app, &finance, &id, &[]).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;

    let running = task_id(&app.create_task("team-a", "slow [mock:slow=30]").await);
    assert_error(
        content(&app, &app.token("team-a"), &running, &[]).await,
        StatusCode::CONFLICT,
        "result_not_ready",
        None,
    )
    .await;
    let failed = task_id(&app.create_task("team-a", "broken [mock:fail]").await);
    app.wait_final("team-a", &failed).await;
    assert_error(
        content(&app, &app.token("team-a"), &failed, &[]).await,
        StatusCode::GONE,
        "result_gone",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_and_a_console_session_of_the_tenant_read_the_content() {
    const SESSION_SECRET: &str = "console-session-secret-for-archive-tests-01";
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        file_archive(config);
        config.console.session_secret = secrecy::SecretString::from(SESSION_SECRET.to_string());
    })
    .await;
    let id = task_id(&app.create_task("team-a", "for the machines").await);
    app.wait_final("team-a", &id).await;
    wait_archived(&app, "team-a", &id).await;

    let key: Value = app
        .client
        .post(format!("{}/v1/admin/tenants/team-a/keys", app.base))
        .bearer_auth(app.admin_token())
        .json(&json!({"name": "render-ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_key = content(&app, key["key"].as_str().unwrap(), &id, &[]).await;
    assert_eq!(by_key.status(), StatusCode::OK);
    assert_eq!(by_key.headers()["content-type"], "video/mp4");

    let now_ms = chrono::Utc::now().timestamp_millis();
    let ticket = vidgate::auth::session::Ticket::new("ann", Some("team-a"), &[], Duration::from_secs(900), now_ms)
        .unwrap()
        .sign(SESSION_SECRET.as_bytes());
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = browser
        .get(format!("{}/console/link?ticket={ticket}", app.base))
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let by_session = browser
        .get(format!("{}/v1/tasks/{id}/content", app.base))
        .header("cookie", &cookie)
        .header("range", "bytes=0-7")
        .send()
        .await
        .unwrap();
    assert_eq!(by_session.status(), StatusCode::PARTIAL_CONTENT);
    let page = browser
        .get(format!("{}/console/team", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<video"), "the team's task view plays the video: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_archive_the_content_streams_from_the_upstreams_link() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |_| {}).await;
    let id = task_id(&app.create_task("team-a", "linked [mock:bytes=50000]").await);
    let task = app.wait_final("team-a", &id).await;
    assert_eq!(task["vidgate"]["archived"], json!(false));
    let original = upstream_bytes(&task).await;
    let whole = content(&app, &app.token("team-a"), &id, &[]).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(sha256(&whole.bytes().await.unwrap()), sha256(&original));
    let part = content(&app, &app.token("team-a"), &id, &[("range", "bytes=10-19")]).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/50000");
    assert_eq!(part.bytes().await.unwrap(), original[10..20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_pending_at_a_restart_is_made_after_it() {
    // The result host answers after 2 s while the gateway waits 0.5 s: every copy fails, so
    // the completion's copy is still queued when the gateway stops.
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        file_archive(config);
        config.probe.timeout_ms = 500;
    })
    .await;
    let id = task_id(&app.create_task("team-a", "restart [mock:result_hang=2]").await);
    let task = app.wait_final("team-a", &id).await;
    assert_eq!(task["vidgate"]["state"], "settled");
    assert_eq!(task["vidgate"]["archived"], json!(false));
    let queued = app.state.store.due(Queue::Archive, i64::MAX, 10).await.unwrap();
    assert_eq!(
        queued,
        vec![task["vidgate"]["reservation_id"].as_str().unwrap().to_string()]
    );

    let app = app.restart_with(|config| config.probe.timeout_ms = 10_000).await;
    wait_archived(&app, "team-a", &id).await;
    assert_eq!(app.metric("vidgate_archive_total{outcome=\"archived\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relayed_callback_carries_the_content_url_without_waiting_for_the_copy() {
    let receiver = crate::support::receiver::Receiver::start(vec![204]).await;
    // The result host answers after 30 s, the gateway waits 0.5 s: no copy can land soon.
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        file_archive(config);
        crate::helpers::relayed_callbacks(config);
        config.probe.timeout_ms = 500;
    })
    .await;
    let mut body = app.create_body("told at once [mock:result_hang=30]");
    body["callback_url"] = json!(receiver.url);
    let created: Value = app.post_create(&app.token("team-a"), &body).await.json().await.unwrap();
    let id = task_id(&created);
    app.wait_final("team-a", &id).await;
    let delivered = receiver.wait_for(1).await[0].json();
    assert_eq!(delivered["vidgate"]["state"], "settled");
    assert_eq!(delivered["vidgate"]["content_url"], format!("/v1/tasks/{id}/content"));
    assert_eq!(delivered["vidgate"]["archived"], json!(false));
    assert_eq!(app.metric("vidgate_archive_total{outcome=\"archived\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_host_is_held_to_the_probes_address_rules() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        file_archive(config);
        config.probe.timeout_ms = 500;
    })
    .await;
    let id = task_id(&app.create_task("team-a", "egress [mock:result_hang=2]").await);
    app.wait_final("team-a", &id).await;
    // The mock's result host is on loopback: refused once private networks are.
    let app = app
        .restart_with(|config| {
            config.probe.allow_private_networks = false;
            config.probe.timeout_ms = 10_000;
        })
        .await;
    // Unrefused, the next attempt (due 2 s after the last one) would land within 4.5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let task: Value = app.get_task(&app.token("team-a"), &id).await.json().await.unwrap();
    assert_eq!(task["vidgate"]["archived"], json!(false));
    assert_eq!(app.metric("vidgate_archive_total{outcome=\"archived\"}"), 0.0);
    assert_eq!(
        app.state.store.due(Queue::Archive, i64::MAX, 10).await.unwrap().len(),
        1,
        "still queued"
    );
    assert_error(
        content(&app, &app.token("team-a"), &id, &[]).await,
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        None,
    )
    .await;

    let app = app
        .restart_with(|config| config.probe.allow_private_networks = true)
        .await;
    wait_archived(&app, "team-a", &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_result_host_delays_neither_the_answer_nor_the_copy_beyond_its_delay() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        file_archive(config);
        config.probe.timeout_ms = 5_000;
    })
    .await;
    let id = task_id(&app.create_task("team-a", "slowly [mock:result_hang=1]").await);
    let task = app.wait_final("team-a", &id).await;
    assert_eq!(task["vidgate"]["content_url"], format!("/v1/tasks/{id}/content"));
    wait_archived(&app, "team-a", &id).await;
    assert_eq!(app.metric("vidgate_archive_total{outcome=\"archived\"}"), 1.0);
    assert_eq!(app.metric("vidgate_archive_total{outcome=\"failed\"}"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_host_that_never_answers_is_counted_failed_once_the_link_expired() {
    let clock = ManualClock::at("2026-12-06T10:00:00Z");
    let app = spawn_app_with_clock(Backend::Embedded, quick_mock(), clock.clone(), |config| {
        file_archive(config);
        config.probe.timeout_ms = 300;
    })
    .await;
    let id = task_id(&app.create_task("team-a", "silent [mock:result_hang=3600]").await);
    let task = app.wait_final("team-a", &id).await;
    assert_eq!(task["vidgate"]["result_expires_at"], "2026-12-07T10:00:00Z");
    // Attempts keep failing while the link lives; none counts as failed yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.metric("vidgate_archive_total{outcome=\"failed\"}"), 0.0);

    clock.set("2026-12-07T10:00:01Z");
    wait_metric(&app, "vidgate_archive_total{outcome=\"failed\"}", 1.0).await;
    assert!(
        app.state
            .store
            .due(Queue::Archive, i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_error(
        content(&app, &app.token("team-a"), &id, &[]).await,
        StatusCode::GONE,
        "result_gone",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_max_bytes_is_not_archived_and_is_counted() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        file_archive(config);
        config.archive.max_bytes = 200_000;
    })
    .await;
    let id = task_id(&app.create_task("team-a", "huge [mock:bytes=1000000]").await);
    app.wait_final("team-a", &id).await;
    wait_metric(&app, "vidgate_archive_total{outcome=\"too_large\"}", 1.0).await;
    let task: Value = app.get_task(&app.token("team-a"), &id).await.json().await.unwrap();
    assert_eq!(task["vidgate"]["archived"], json!(false));
    let file = app
        .config
        .store
        .path
        .parent()
        .unwrap()
        .join(format!("results/team-a/{id}.mp4"));
    assert!(!file.exists());
    // Still served, from the upstream's link, while it lives.
    let served = content(&app, &app.token("team-a"), &id, &[]).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.bytes().await.unwrap().len(), 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_content_outlives_the_task_record_until_its_own_retention() {
    let clock = ManualClock::at("2026-12-06T10:00:00Z");
    let app = spawn_app_with_clock(Backend::Embedded, quick_mock(), clock.clone(), |config| {
        file_archive(config);
        config.store.retention_secs = vidgate::config::Seconds::from_secs(86_400);
        config.archive.retention_days = 90;
    })
    .await;
    let id = task_id(&app.create_task("team-a", "keep me").await);
    app.wait_final("team-a", &id).await;
    let task = wait_archived(&app, "team-a", &id).await;
    let original = upstream_bytes(&task).await;

    // Two days on: the record went with the store's retention, the video stays.
    app.state
        .store
        .purge(clock.now().timestamp_millis() + 2 * 86_400_000)
        .await
        .unwrap();
    assert_error(
        app.get_task(&app.token("team-a"), &id).await,
        StatusCode::NOT_FOUND,
        "task_not_found",
        None,
    )
    .await;
    let served = content(&app, &app.token("team-a"), &id, &[]).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(sha256(&served.bytes().await.unwrap()), sha256(&original));
    assert_error(
        content(&app, &app.token("team-b"), &id, &[]).await,
        StatusCode::NOT_FOUND,
        "task_not_found",
        None,
    )
    .await;

    // 91 days on: the archive's retention deleted it too.
    let archive = app.state.archive.as_ref().expect("archive on");
    let later = chrono::Utc::now() + chrono::Duration::days(91);
    assert_eq!(archive.purge(later).await.unwrap(), 1);
    assert_error(
        content(&app, &app.token("team-a"), &id, &[]).await,
        StatusCode::NOT_FOUND,
        "task_not_found",
        None,
    )
    .await;
}

/// The S3 archive with the real binary, against Garage on loopback: credentials from the
/// usual AWS environment, objects at `{prefix}/{tenant}/{task_id}.mp4`, the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_video_is_copied_into_an_s3_bucket_byte_for_byte() {
    use object_store::ObjectStoreExt;

    let garage = crate::support::garage::shared();
    let mock = vidgate::mock_upstream::MockServer::start(quick_mock()).await.unwrap();
    let reference = crate::helpers::upload_reference(&mock, 5000).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("test-{}", ulid::Ulid::new());
    let config = dir.path().join("vidgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "{mock}"
files_base_url = "{mock}"
api_key = "sk-evo-mock"
[auth]
hs256_secret = "{SECRET}"
[store]
path = "{store}"
[probe]
allow_private_networks = true
[archive]
url = "s3://{bucket}/{prefix}"
s3_endpoint = "{endpoint}"
s3_region = "{region}"
[[tenants]]
id = "team-a"
budget = "10.00"
[[tenants]]
id = "team-b"
budget = "10.00"
"#,
            mock = mock.base_url(),
            store = dir.path().join("vidgate.redb").display(),
            bucket = crate::support::garage::BUCKET,
            endpoint = garage.endpoint(),
            region = crate::support::garage::REGION,
        ),
    )
    .unwrap();
    let (_gateway, addr) = spawn_with_aws_env(&config, &garage.key_id, &garage.secret);
    let base = format!("http://{addr}");
    let token = sign(&json!({"sub": "ann", "tenant": "team-a", "aud": "vidgate", "exp": crate::helpers::now() + 600}));
    let client = reqwest::Client::new();
    let body = json!({"model": crate::helpers::MODEL, "prompt": "to the bucket [mock:bytes=6000000]", "video_urls": [reference], "duration": 5});
    let created: Value = client
        .post(format!("{base}/v1/videos/generations"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task_id(&created);
    let mut task = Value::Null;
    for _ in 0..600 {
        task = client
            .get(format!("{base}/v1/tasks/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if task["vidgate"]["archived"] == json!(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(task["vidgate"]["archived"], json!(true), "{task}");
    let original = upstream_bytes(&task).await;
    assert_eq!(original.len(), 6_000_000, "more than one 5 MiB part");

    let bucket = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(crate::support::garage::BUCKET)
        .with_endpoint(garage.endpoint())
        .with_region(crate::support::garage::REGION)
        .with_access_key_id(&garage.key_id)
        .with_secret_access_key(&garage.secret)
        .with_allow_http(true)
        .build()
        .unwrap();
    let key = object_store::path::Path::from(format!("{prefix}/team-a/{id}.mp4"));
    let stored = bucket
        .get(&key)
        .await
        .expect("the object in the bucket")
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&stored), sha256(&original));

    let served = client
        .get(format!("{base}/v1/tasks/{id}/content"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let etag = served.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(sha256(&served.bytes().await.unwrap()), sha256(&original));
    let part = client
        .get(format!("{base}/v1/tasks/{id}/content"))
        .bearer_auth(&token)
        .header("range", "bytes=5242870-5242889")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 5242870-5242889/6000000");
    assert_eq!(
        part.bytes().await.unwrap(),
        original[5_242_870..5_242_890],
        "across the part boundary"
    );
    let unchanged = client
        .get(format!("{base}/v1/tasks/{id}/content"))
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    let other = sign(&json!({"sub": "eve", "tenant": "team-b", "aud": "vidgate", "exp": crate::helpers::now() + 600}));
    let refused = client
        .get(format!("{base}/v1/tasks/{id}/content"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
}

/// `vidgate serve` with the S3 credentials in its environment, as an operator sets them.
fn spawn_with_aws_env(
    config: &std::path::Path,
    key_id: &str,
    secret: &str,
) -> (crate::support::process::Process, String) {
    crate::support::process::spawn_with_env(
        &["serve", "--config", config.to_str().unwrap()],
        &[("AWS_ACCESS_KEY_ID", key_id), ("AWS_SECRET_ACCESS_KEY", secret)],
    )
}

/// A copy still pending when the store moves (embedded → Redis, as `vidgate store export |
/// import` does it) is made by the gateway on the new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_pending_at_a_store_move_is_made_on_the_new_store() {
    use vidgate::store::Store;

    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        file_archive(config);
        config.probe.timeout_ms = 500;
    })
    .await;
    let id = task_id(&app.create_task("team-a", "moving [mock:result_hang=2]").await);
    app.wait_final("team-a", &id).await;
    let stopped = app.stop().await;

    let embedded = vidgate::store::embedded::EmbeddedStore::open(&stopped.config.store.path, "").unwrap();
    let (sink, mut items) = tokio::sync::mpsc::channel(16);
    let collect = async {
        let mut out = Vec::new();
        while let Some(item) = items.recv().await {
            out.push(item);
        }
        out
    };
    let (exported, items) = tokio::join!(embedded.export(sink), collect);
    exported.unwrap();
    drop(embedded);
    assert!(
        items
            .iter()
            .any(|item| matches!(item, vidgate::store::DumpItem::Queued { queue, .. } if queue == "archive")),
        "the dump carries the pending copy"
    );
    let prefix = crate::support::random_prefix();
    let redis_url = crate::support::redis::shared().url();
    let redis = vidgate::store::redis::RedisStore::connect(&redis_url, &prefix)
        .await
        .unwrap();
    redis.import(items).await.unwrap();

    let app = stopped
        .start(|config| {
            config.store.backend = vidgate::config::StoreBackend::Redis;
            config.store.redis_url = redis_url.clone();
            config.store.key_prefix = prefix.clone();
            config.probe.timeout_ms = 10_000;
        })
        .await;
    wait_archived(&app, "team-a", &id).await;
}

/// The archive-copy queue and the `archived` mark move with `store export|import`, both ways.
mod dumps {
    use std::sync::Arc;

    use vidgate::store::embedded::EmbeddedStore;
    use vidgate::store::redis::RedisStore;
    use vidgate::store::{DumpItem, Queue, Store};

    async fn dump(store: &dyn Store) -> Vec<DumpItem> {
        let (sink, mut items) = tokio::sync::mpsc::channel(16);
        let export = store.export(sink);
        let collect = async {
            let mut out = Vec::new();
            while let Some(item) = items.recv().await {
                out.push(item);
            }
            out
        };
        let (exported, items) = tokio::join!(export, collect);
        exported.unwrap();
        items
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_copy_moves_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let first: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("a.redb"), "").unwrap());
        first.enqueue_archive("rsv_pending", 1_000).await.unwrap();
        first.enqueue_archive("rsv_pending", 5_000).await.unwrap();
        assert_eq!(
            first.due(Queue::Archive, 1_000, 10).await.unwrap(),
            vec!["rsv_pending"],
            "queued once, first due time kept"
        );
        let items = dump(first.as_ref()).await;
        let line = serde_json::to_string(&items).unwrap();
        assert!(
            line.contains(r#"{"kind":"queued","queue":"archive","id":"rsv_pending","due_ms":1000}"#),
            "{line}"
        );

        let redis: Arc<dyn Store> = Arc::new(
            RedisStore::connect(&crate::support::redis::shared().url(), &crate::support::random_prefix())
                .await
                .unwrap(),
        );
        redis.import(items).await.unwrap();
        assert_eq!(redis.due(Queue::Archive, 1_000, 10).await.unwrap(), vec!["rsv_pending"]);
        let last: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("b.redb"), "").unwrap());
        last.import(dump(redis.as_ref()).await).await.unwrap();
        assert_eq!(last.due(Queue::Archive, 1_000, 10).await.unwrap(), vec!["rsv_pending"]);
        assert!(last.due(Queue::Archive, 999, 10).await.unwrap().is_empty());
    }
}
