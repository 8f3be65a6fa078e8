//! Each tenant signs with its own webhook key: a receiving team verifies deliveries with the
//! reference Standard Webhooks library (PyPI `standardwebhooks`) and its own key, another
//! team's key does not verify them, nor does the legacy shared key after its date; a
//! rotation signs with both keys for 24 h.

use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, ManualClock, SIGNING_SECRET, TestApp, assert_error, quick_mock, relayed_callbacks, spawn_app_with,
    spawn_app_with_clock,
};
use crate::support::receiver::{Received, Receiver};

/// Verifies each (secret, delivery) with the reference library: "ok" or "rejected: ...".
fn verify_with_library(cases: &[(&str, &Received)]) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = format!("{root}/.venv-webhooks/bin/python");
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: scripts/test sets it up (python3 -m venv .venv-webhooks && \
         .venv-webhooks/bin/pip install -r tests/webhooks/requirements.txt)"
    );
    let input: Vec<Value> = cases
        .iter()
        .map(|(secret, received)| {
            json!({"secret": secret, "headers": received.headers,
                   "body": String::from_utf8(received.body.clone()).expect("a UTF-8 body")})
        })
        .collect();
    let mut child = Command::new(python)
        .arg(format!("{root}/tests/webhooks/verify.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the verifier");
    serde_json::to_writer(child.stdin.take().expect("stdin"), &input).expect("write cases");
    let output = child.wait_with_output().expect("verifier output");
    assert!(output.status.success(), "the verifier failed");
    serde_json::from_slice(&output.stdout).expect("a JSON array of verdicts")
}

fn ok(verdict: &str) -> bool {
    verdict == "ok"
}

async fn secret_of(app: &TestApp, tenant: &str) -> Value {
    app.get_json("/v1/webhooks/secret", &app.token(tenant)).await
}

async fn rotate(app: &TestApp, token: &str, query: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/webhooks/secret/rotate{query}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("gateway answers")
}

/// Creates a task of `tenant` with a callback to `receiver`, waits until it is final and
/// returns the delivery (the `n`th the receiver got).
async fn delivered(app: &TestApp, tenant: &str, receiver: &Receiver, n: usize) -> Received {
    let mut body = app.create_body(&format!("hook {n}"));
    body["callback_url"] = json!(receiver.url);
    let response = app.post_create(&app.token(tenant), &body).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.text().await);
    let task: Value = response.json().await.expect("json");
    app.wait_final(tenant, task["id"].as_str().expect("id")).await;
    receiver.wait_for(n).await[n - 1].clone()
}

async fn deliveries_verify_with_the_tenants_own_key_only(backend: Backend) {
    let app = spawn_app_with(backend, quick_mock(), |config| {
        relayed_callbacks(config);
        // The legacy key's date has passed: it no longer signs.
        config.callbacks.legacy_signature_until = "2020-01-01T00:00:00Z".into();
    })
    .await;
    let receiver = Receiver::start(vec![200]).await;
    let (mine, theirs) = (secret_of(&app, "team-a").await, secret_of(&app, "team-b").await);
    let mine = mine["secret"].as_str().expect("secret").to_string();
    let theirs = theirs["secret"].as_str().expect("secret").to_string();
    assert!(mine.starts_with("whsec_") && mine != theirs);
    assert_eq!(
        secret_of(&app, "team-a").await["secret"],
        mine.as_str(),
        "the key is kept"
    );

    let delivery = delivered(&app, "team-a", &receiver, 1).await;
    let verdicts = verify_with_library(&[(&mine, &delivery), (&theirs, &delivery), (SIGNING_SECRET, &delivery)]);
    assert!(ok(&verdicts[0]), "the tenant's key verifies: {verdicts:?}");
    assert!(!ok(&verdicts[1]), "another tenant's key does not: {verdicts:?}");
    assert!(
        !ok(&verdicts[2]),
        "the legacy key after its date does not: {verdicts:?}"
    );
    assert_eq!(delivery.header("webhook-signature").split(' ').count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_verify_with_the_tenants_own_key_only_embedded() {
    deliveries_verify_with_the_tenants_own_key_only(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_verify_with_the_tenants_own_key_only_redis() {
    deliveries_verify_with_the_tenants_own_key_only(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_key_still_verifies_before_its_date() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), relayed_callbacks).await;
    let receiver = Receiver::start(vec![200]).await;
    let mine = secret_of(&app, "team-a").await["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let delivery = delivered(&app, "team-a", &receiver, 1).await;
    let verdicts = verify_with_library(&[(&mine, &delivery), (SIGNING_SECRET, &delivery)]);
    assert!(verdicts.iter().all(|v| ok(v)), "{verdicts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_signs_with_both_keys_for_24_hours_then_with_the_new_one_only() {
    let clock = ManualClock::at("2026-12-06T10:00:00Z");
    // No legacy secret at all: a callback_url needs none.
    let app = spawn_app_with_clock(Backend::Redis, quick_mock(), clock.clone(), |config| {
        config.callbacks.allowed_networks = vec!["127.0.0.0/8".into()];
        config.callbacks.retry_delays_ms = vec![50, 100, 200];
    })
    .await;
    let receiver = Receiver::start(vec![200]).await;
    let old = secret_of(&app, "team-a").await;
    assert_eq!(old["previous_expires_at"], Value::Null);
    assert_eq!(old["created_at"], "2026-12-06T10:00:00Z");
    let lead = app.token_with_roles(Some("team-a"), "lead", &["tenant_admin"]);
    let response = rotate(&app, &lead, "").await;
    assert_eq!(response.status(), StatusCode::OK);
    let new: Value = response.json().await.expect("json");
    assert_eq!(new["previous_expires_at"], "2026-12-07T10:00:00Z");
    assert_ne!(new["secret"], old["secret"]);
    assert_eq!(secret_of(&app, "team-a").await, new, "GET shows the rotation too");
    let (old, new) = (
        old["secret"].as_str().expect("secret").to_string(),
        new["secret"].as_str().expect("secret").to_string(),
    );

    let during = delivered(&app, "team-a", &receiver, 1).await;
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    let verdicts = verify_with_library(&[(&new, &during), (&old, &during)]);
    assert!(
        verdicts.iter().all(|v| ok(v)),
        "both keys verify during the overlap: {verdicts:?}"
    );

    clock.set("2026-12-07T10:00:01Z");
    let after = delivered(&app, "team-a", &receiver, 2).await;
    let verdicts = verify_with_library(&[(&new, &after), (&old, &after)]);
    assert!(ok(&verdicts[0]), "{verdicts:?}");
    assert!(!ok(&verdicts[1]), "the old key no longer verifies: {verdicts:?}");
    assert_eq!(secret_of(&app, "team-a").await["previous_expires_at"], Value::Null);
}

#[tokio::test]
async fn only_a_tenant_admin_of_the_tenant_or_an_admin_rotates_and_api_keys_do_neither() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |_| {}).await;
    let forbidden = |response| assert_error(response, StatusCode::FORBIDDEN, "forbidden", None);
    forbidden(rotate(&app, &app.token("team-a"), "").await).await;
    let lead = app.token_with_roles(Some("team-a"), "lead", &["tenant_admin"]);
    forbidden(rotate(&app, &lead, "?tenant=team-b").await).await;
    assert_eq!(rotate(&app, &lead, "?tenant=team-a").await.status(), StatusCode::OK);
    let admin = app.admin_token();
    assert_error(
        rotate(&app, &admin, "").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("tenant"),
    )
    .await;
    assert_error(
        rotate(&app, &admin, "?tenant=nobody").await,
        StatusCode::FORBIDDEN,
        "unknown_tenant",
        None,
    )
    .await;
    let rotated: Value = rotate(&app, &admin, "?tenant=team-b").await.json().await.expect("json");
    assert_eq!(secret_of(&app, "team-b").await["secret"], rotated["secret"]);
    forbidden(app.get("/v1/webhooks/secret", &app.finance_token()).await).await;

    let issued: Value = app
        .client
        .post(format!("{}/v1/admin/tenants/team-a/keys", app.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "render-ci"}))
        .send()
        .await
        .expect("gateway answers")
        .json()
        .await
        .expect("json");
    let key = issued["key"].as_str().expect("key");
    forbidden(app.get("/v1/webhooks/secret", key).await).await;
    forbidden(rotate(&app, key, "").await).await;
}

#[tokio::test]
async fn keys_are_made_once_even_when_asked_for_at_the_same_time_on_two_replicas() {
    let one = spawn_app_with(Backend::Redis, quick_mock(), |_| {}).await;
    let two = one.replica().await;
    let (a, b) = tokio::join!(secret_of(&one, "team-a"), secret_of(&two, "team-a"));
    assert_eq!(a["secret"], b["secret"]);
}
