//! Test harness: a gateway on port 0 in front of a fresh mock upstream, with a chosen store
//! backend, a random key prefix, and typed helpers for the calls tests make.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use jsonwebtoken::{EncodingKey, Header};
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use vidgate::app::Application;
use vidgate::config::{Config, StoreBackend, TenantConfig};
use vidgate::mock_upstream::{MockOptions, MockServer};
use vidgate::probe::{Resolver, SystemResolver};
use vidgate::state::{AppState, Clock, SystemClock};

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";
/// `callbacks.signing_secret` for tests that relay callbacks: `whsec_` + base64 of 32 bytes.
pub const SIGNING_SECRET: &str = "whsec_dGVzdC1zaWduaW5nLWtleS10ZXN0LXNpZ25pbmcta2V5IQ==";
/// Until when the legacy `SIGNING_SECRET` still signs in tests that check it (far ahead).
pub const LEGACY_UNTIL: &str = "2100-01-01T00:00:00Z";
pub const MODEL: &str = "wan2.6-reference-video-flash";

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Embedded,
    Redis,
}

pub struct TestApp {
    pub base: String,
    pub mock: Arc<MockServer>,
    pub client: reqwest::Client,
    pub config: Config,
    pub state: AppState,
    /// A 5 s reference video on the mock's file host.
    pub reference: String,
    pub clock: Arc<dyn Clock>,
    resolver: Arc<dyn Resolver>,
    handle: ServerHandle,
    _dir: Arc<tempfile::TempDir>,
}

/// A clock tests set by hand, to cross period boundaries.
pub struct ManualClock(Mutex<chrono::DateTime<chrono::Utc>>);

impl ManualClock {
    pub fn at(rfc3339: &str) -> Arc<Self> {
        Arc::new(Self(Mutex::new(parse_time(rfc3339))))
    }

    pub fn set(&self, rfc3339: &str) {
        *self.0.lock().unwrap() = parse_time(rfc3339);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        *self.0.lock().unwrap()
    }
}

fn parse_time(rfc3339: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("an RFC 3339 time")
        .to_utc()
}

/// Options for the mock upstream behind a test gateway.
pub fn quick_mock() -> MockOptions {
    MockOptions {
        pending_ms: 50,
        processing_ms: 150,
        ..MockOptions::default()
    }
}

pub fn test_config(backend: Backend, mock: &MockServer, dir: &tempfile::TempDir) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.upstream.base_url = mock.base_url();
    config.upstream.files_base_url = mock.base_url();
    config.upstream.api_key = SecretString::from(MockOptions::default().api_key);
    config.upstream.timeout_ms = 5000;
    config.auth.hs256_secret = SecretString::from(SECRET.to_string());
    config.store.path = dir.path().join("vidgate.redb");
    config.store.key_prefix = format!("test:{}:", ulid::Ulid::new());
    // Reference videos and results live on the mock's loopback file host.
    config.probe.allow_private_networks = true;
    // Off unless a test turns it on (tests/api/archive.rs): no copies behind other tests' backs.
    config.archive.url = Some(String::new());
    if let Backend::Redis = backend {
        config.store.backend = StoreBackend::Redis;
        config.store.redis_url = crate::support::redis::shared().url();
    }
    config.tenants = vec![
        TenantConfig {
            id: "team-a".into(),
            budget: "100.00".into(),
            ..TenantConfig::default()
        },
        TenantConfig {
            id: "team-b".into(),
            budget: "100.00".into(),
            ..TenantConfig::default()
        },
    ];
    config
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, quick_mock(), |_| {}).await
}

/// A gateway with a fresh mock upstream; `adjust` edits the config before start.
pub async fn spawn_app_with(backend: Backend, mock: MockOptions, adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_clock(backend, mock, Arc::new(SystemClock), adjust).await
}

/// As `spawn_app_with`, on the given clock.
pub async fn spawn_app_with_clock(
    backend: Backend,
    mock: MockOptions,
    clock: Arc<dyn Clock>,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_app_full(backend, mock, clock, Arc::new(SystemResolver), adjust).await
}

/// As `spawn_app_with_clock`, with the resolver for callers' callback hosts.
pub async fn spawn_app_full(
    backend: Backend,
    mock: MockOptions,
    clock: Arc<dyn Clock>,
    resolver: Arc<dyn Resolver>,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let mock = Arc::new(MockServer::start(mock).await.expect("mock upstream starts"));
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut config = test_config(backend, &mock, &dir);
    adjust(&mut config);
    start(config, mock, dir, clock, resolver).await
}

/// Callbacks from the (mock) upstream to this gateway: a fixed loopback port, so the
/// `server.public_base_url` is known before start (the mock needs `allow_local_callbacks`).
pub fn own_callbacks(config: &mut Config) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    config.server.listen = format!("127.0.0.1:{port}");
    config.server.public_base_url = format!("http://127.0.0.1:{port}");
    config.callbacks.allow_private_networks = true;
}

/// Relayed callbacks signed with the tenant's key and, as legacy receivers expect, with
/// `SIGNING_SECRET`, to receivers on loopback (plain http), retried quickly.
pub fn relayed_callbacks(config: &mut Config) {
    config.callbacks.signing_secret = SecretString::from(SIGNING_SECRET.to_string());
    config.callbacks.legacy_signature_until = LEGACY_UNTIL.into();
    config.callbacks.allowed_networks = vec!["127.0.0.0/8".into()];
    config.callbacks.retry_delays_ms = vec![50, 100, 200];
}

async fn start(
    config: Config,
    mock: Arc<MockServer>,
    dir: Arc<tempfile::TempDir>,
    clock: Arc<dyn Clock>,
    resolver: Arc<dyn Resolver>,
) -> TestApp {
    let reference = upload_reference(&mock, 5000).await;
    let app = Application::build_with_resolver(config.clone(), clock.clone(), resolver.clone())
        .await
        .expect("gateway starts");
    let base = format!("http://{}", app.addr());
    let handle = app.handle();
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        base,
        mock,
        client: reqwest::Client::new(),
        config,
        state,
        reference,
        clock,
        resolver,
        handle,
        _dir: dir,
    }
}

impl TestApp {
    /// Stops this gateway and starts a new one on the same config and store (a restart).
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// A restart with `adjust` applied to the config first (an operator's edit).
    pub async fn restart_with(mut self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        self.handle.stop(true).await;
        adjust(&mut self.config);
        let (config, mock, dir, clock, resolver) = (self.config, self.mock, self._dir, self.clock, self.resolver);
        // redb allows one open handle per file: wait until the old server dropped its state.
        for _ in 0..100 {
            if Arc::strong_count(&self.state.store) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(self.state);
        start(config, mock, dir, clock, resolver).await
    }

    /// Stops this gateway and releases its store (redb: the file is free for other
    /// processes), keeping the mock upstream running; `StoppedApp::start` starts it again.
    pub async fn stop(self) -> StoppedApp {
        self.handle.stop(true).await;
        for _ in 0..100 {
            if Arc::strong_count(&self.state.store) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (config, mock, dir, clock, resolver) = (self.config, self.mock, self._dir, self.clock, self.resolver);
        drop(self.state);
        StoppedApp {
            config,
            mock,
            dir,
            clock,
            resolver,
        }
    }

    /// Another gateway on the same config, store, mock and clock (Redis: a second replica),
    /// listening on a port of its own.
    pub async fn replica(&self) -> TestApp {
        let mut config = self.config.clone();
        config.server.listen = "127.0.0.1:0".into();
        start(
            config,
            self.mock.clone(),
            self._dir.clone(),
            self.clock.clone(),
            self.resolver.clone(),
        )
        .await
    }

    /// The value of one metric series (`name{labels}` as rendered), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.state
            .metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn token(&self, tenant: &str) -> String {
        self.token_for(tenant, "alice")
    }

    pub fn token_for(&self, tenant: &str, user: &str) -> String {
        sign(&json!({"sub": user, "tenant": tenant, "aud": "vidgate", "exp": now() + 3600}))
    }

    /// A token with roles (`finance`, `admin`) and maybe no tenant.
    pub fn token_with_roles(&self, tenant: Option<&str>, user: &str, roles: &[&str]) -> String {
        let mut claims = json!({"sub": user, "roles": roles, "aud": "vidgate", "exp": now() + 3600});
        if let Some(tenant) = tenant {
            claims["tenant"] = json!(tenant);
        }
        sign(&claims)
    }

    pub fn finance_token(&self) -> String {
        self.token_with_roles(None, "fin", &["finance"])
    }

    pub fn admin_token(&self) -> String {
        self.token_with_roles(None, "root", &["admin"])
    }

    /// `GET path` (with its query string) with a bearer token.
    pub async fn get(&self, path_and_query: &str, token: &str) -> Response {
        self.client
            .get(format!("{}{path_and_query}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("gateway answers")
    }

    /// `GET path` answered 200 with JSON.
    pub async fn get_json(&self, path_and_query: &str, token: &str) -> Value {
        let response = self.get(path_and_query, token).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{path_and_query}: {:?}",
            response.text().await
        );
        response.json().await.expect("json")
    }

    /// A reference-video URL on the mock's own (loopback) file host.
    pub fn reference_url(&self) -> String {
        self.reference.clone()
    }

    pub fn create_body(&self, prompt: &str) -> Value {
        json!({"model": MODEL, "prompt": prompt, "video_urls": [self.reference_url()], "duration": 5})
    }

    pub async fn post_create(&self, token: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}/v1/videos/generations", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("gateway answers")
    }

    pub async fn get_task(&self, token: &str, task_id: &str) -> Response {
        self.client
            .get(format!("{}/v1/tasks/{task_id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("gateway answers")
    }

    /// Creates a task for `tenant` and returns the gateway's answer (asserting 200).
    pub async fn create_task(&self, tenant: &str, prompt: &str) -> Value {
        let response = self.post_create(&self.token(tenant), &self.create_body(prompt)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "create failed: {:?}",
            response.text().await
        );
        response.json().await.expect("json")
    }

    /// Polls until the task is final (or panics after ~10 s).
    pub async fn wait_final(&self, tenant: &str, task_id: &str) -> Value {
        for _ in 0..500 {
            let task: Value = self
                .get_task(&self.token(tenant), task_id)
                .await
                .json()
                .await
                .expect("json");
            if matches!(task["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {task_id} never became final");
    }
}

/// A gateway stopped by `TestApp::stop`: its config, mock upstream and files.
pub struct StoppedApp {
    pub config: Config,
    pub mock: Arc<MockServer>,
    pub dir: Arc<tempfile::TempDir>,
    clock: Arc<dyn Clock>,
    resolver: Arc<dyn Resolver>,
}

impl StoppedApp {
    /// Starts the gateway again with `adjust` applied to its config (another store, say).
    pub async fn start(mut self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        adjust(&mut self.config);
        start(self.config, self.mock, self.dir, self.clock, self.resolver).await
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Signs arbitrary claims with the test HS256 secret.
pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign")
}

/// Asserts the error envelope: status, code, and (when given) param.
pub async fn assert_error(response: Response, status: StatusCode, code: &str, param: Option<&str>) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "body: {body}"
    );
    assert!(
        body["error"]["message"].as_str().is_some_and(|s| !s.is_empty()),
        "body: {body}"
    );
    if let Some(param) = param {
        assert_eq!(body["error"]["param"], param, "body: {body}");
    }
    body
}

/// Puts a real mp4 of `duration_ms` on the mock's file host; returns its URL.
pub async fn upload_reference(mock: &MockServer, duration_ms: u64) -> String {
    upload_reference_to(&mock.base_url(), duration_ms).await
}

/// As `upload_reference`, for a mock upstream running as its own process at `base_url`.
pub async fn upload_reference_to(base_url: &str, duration_ms: u64) -> String {
    use base64::Engine;
    let video = vidgate::mock_upstream::mp4_with_duration(duration_ms);
    let body = json!({"base64_data": base64::engine::general_purpose::STANDARD.encode(video), "file_name": "ref.mp4"});
    let answer: Value = reqwest::Client::new()
        .post(format!("{base_url}/api/v1/files/upload/base64"))
        .bearer_auth(MockOptions::default().api_key)
        .json(&body)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    answer["data"]["file_url"].as_str().expect("file_url").to_string()
}
