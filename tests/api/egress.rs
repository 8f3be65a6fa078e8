//! Egress that follows its own rules: a tenant's alerts also go to its own webhook; alert
//! webhooks are set under the callback egress rules and resolved through the checking
//! client; a callback URL's DNS lookup happens only after the in-process pre-limit and gives
//! up after 2 s. Internal addresses are only ever checked, never contacted.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use vidgate::probe::Resolver;
use vidgate::probe::fetch::FetchError;
use vidgate::state::SystemClock;

use crate::helpers::{Backend, assert_error, quick_mock, spawn_app_full, spawn_app_with};
use crate::support::receiver::Receiver;

/// Names mapped to fixed addresses, and names that never answer; counts every lookup.
#[derive(Default)]
struct FakeDns {
    names: HashMap<String, IpAddr>,
    silent: Vec<String>,
    lookups: Mutex<Vec<String>>,
}

impl FakeDns {
    fn lookups_of(&self, host: &str) -> usize {
        self.lookups.lock().unwrap().iter().filter(|h| *h == host).count()
    }
}

#[async_trait]
impl Resolver for FakeDns {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.lookups.lock().unwrap().push(host.to_string());
        if self.silent.iter().any(|h| h == host) {
            std::future::pending::<()>().await;
        }
        self.names
            .get(host)
            .map(|ip| vec![*ip])
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
    }
}

async fn texts(receiver: &Receiver, count: usize) -> Vec<String> {
    let mut texts: Vec<String> = receiver
        .wait_for(count)
        .await
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_string())
        .collect();
    texts.sort();
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_alerts_go_to_its_own_webhook_as_well_as_the_global_one() {
    let global = Receiver::start(vec![200]).await;
    let own = Receiver::start(vec![500, 200]).await;
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        config.tenants[0].budget = "0.50".into();
        config.tenants[0].alert_webhook_url = format!("{}?token=tenant-secret", own.url);
        config.alerts.webhook_url = global.url.clone();
        config.callbacks.allow_private_networks = true;
        config.callbacks.retry_delays_ms = vec![50, 100];
    })
    .await;
    // One hold of 0.50 reaches 80 %, 95 % and 100 % at once.
    app.create_task("team-a", "dear").await;
    let (to_global, to_own) = (texts(&global, 3).await, texts(&own, 4).await);
    assert_eq!(to_global.len(), 3, "{to_global:?}");
    assert!(
        to_global.iter().all(|t| t.contains("tenant team-a reached")),
        "{to_global:?}"
    );
    // Three alerts, the first post failed and was retried.
    assert_eq!(to_own.len(), 4, "{to_own:?}");
    assert!(to_own.iter().all(|t| t.contains("tenant team-a reached")), "{to_own:?}");
    let tenants = app.get_json("/v1/admin/tenants", &app.admin_token()).await;
    let shown = tenants.to_string();
    assert!(!shown.contains("tenant-secret"), "{shown}");
    assert!(
        shown.contains(&format!("http://127.0.0.1:{}/********", own.port)),
        "{shown}"
    );
}

async fn put_tenant(app: &crate::helpers::TestApp, tenant: &str, body: Value) -> reqwest::Response {
    app.client
        .put(format!("{}/v1/admin/tenants/{tenant}", app.base))
        .bearer_auth(app.admin_token())
        .json(&body)
        .send()
        .await
        .expect("gateway answers")
}

#[tokio::test]
async fn an_admin_sets_a_tenants_alert_webhook_under_the_egress_rules_and_it_is_never_shown_whole() {
    let app = spawn_app_with(Backend::Redis, quick_mock(), |_| {}).await;
    for refused in [
        "https://10.0.0.1/hook",
        "https://168.63.129.16/hook",
        "http://hooks.example.com/services/x",
        "ftp://hooks.example.com/x",
        "not a url",
    ] {
        assert_error(
            put_tenant(&app, "team-b", json!({"alert_webhook_url": refused})).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("alert_webhook_url"),
        )
        .await;
    }
    let url = "https://hooks.example.com/services/T0/B0/t0k3n";
    let response = put_tenant(&app, "team-b", json!({"alert_webhook_url": url})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let view: Value = response.json().await.expect("json");
    assert_eq!(view["alert_webhook_url"], "https://hooks.example.com/********");
    let record = app.state.store.tenant("team-b").await.unwrap().expect("tenant");
    assert_eq!(
        record.settings.alert_webhook_url.as_deref(),
        Some(url),
        "kept whole in the store"
    );
    let ledger = app
        .get_json("/v1/admin/ledger?tenant=team-b", &app.finance_token())
        .await;
    assert!(
        !ledger.to_string().contains("t0k3n"),
        "the audit note masks it: {ledger}"
    );
    let cleared: Value = put_tenant(&app, "team-b", json!({"alert_webhook_url": ""}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cleared["alert_webhook_url"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_webhooks_are_resolved_and_checked_by_the_egress_client() {
    let dns = Arc::new(FakeDns {
        names: HashMap::from([
            ("alerts.example.test".to_string(), "10.1.2.3".parse().unwrap()),
            ("team-alerts.example.test".to_string(), "168.63.129.16".parse().unwrap()),
        ]),
        ..FakeDns::default()
    });
    let app = spawn_app_full(
        Backend::Embedded,
        quick_mock(),
        Arc::new(SystemClock),
        dns.clone(),
        |config| {
            config.tenants[0].budget = "0.50".into();
            config.tenants[0].alert_webhook_url = "https://team-alerts.example.test/hook".into();
            config.alerts.webhook_url = "https://alerts.example.test/hook".into();
        },
    )
    .await;
    // The hold reaches every threshold: both webhooks are looked up through the gateway's
    // checking resolver, which refuses the internal answers before any connection.
    app.create_task("team-a", "dear").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.lookups_of("alerts.example.test") < 3 || dns.lookups_of("team-alerts.example.test") < 3 {
        assert!(Instant::now() < deadline, "{:?}", dns.lookups.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refused, not retried: one lookup per alert and webhook.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dns.lookups_of("alerts.example.test"), 3);
    assert_eq!(dns.lookups_of("team-alerts.example.test"), 3);
    let refused = app
        .state
        .completion
        .egress()
        .send_once(
            reqwest::Method::POST,
            "https://alerts.example.test/hook",
            &HeaderMap::new(),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, FetchError::Refused(ref r) if r.contains("10.1.2.3")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_host_is_resolved_only_after_the_pre_limit_and_for_two_seconds_at_most() {
    let dns = Arc::new(FakeDns {
        silent: vec!["silent.example.test".into()],
        ..FakeDns::default()
    });
    let app = spawn_app_full(
        Backend::Embedded,
        quick_mock(),
        Arc::new(SystemClock),
        dns.clone(),
        |config| {
            // The pre-limit admits twice the tenant's burst: two creates, then 429.
            config.tenants[0].creates_per_minute = 1;
            config.tenants[0].creates_burst = 1;
        },
    )
    .await;
    let mut body = app.create_body("hook");
    body["callback_url"] = json!("https://silent.example.test/hook");
    for _ in 0..2 {
        let started = Instant::now();
        let refused = assert_error(
            app.post_create(&app.token("team-a"), &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_callback_url",
            Some("callback_url"),
        )
        .await;
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("no DNS answer within 2 s"),
            "{refused}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "the lookup gave up");
    }
    assert_error(
        app.post_create(&app.token("team-a"), &body).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        None,
    )
    .await;
    assert_eq!(dns.lookups_of("silent.example.test"), 2, "no lookup past the pre-limit");
}
