//! Task completion over real HTTP: the upstream's callbacks to the gateway (token, re-fetch,
//! never the body), the reconciler (lost callbacks, expiry, late settlement, leases across
//! replicas, holds never bound), and the signed relay to callers (retries, egress rules).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use vidgate::callbacks::token::{TokenPayload, Verified};
use vidgate::config::Seconds;
use vidgate::mock_upstream::MockOptions;
use vidgate::probe::Resolver;
use vidgate::state::{Clock, SystemClock};
use vidgate::store::{LATE_NOTE, Queue, ReservationRecord, ReservationState};

use crate::helpers::{
    Backend, ManualClock, SIGNING_SECRET, TestApp, assert_error, own_callbacks, quick_mock, relayed_callbacks,
    spawn_app, spawn_app_full, spawn_app_with, spawn_app_with_clock,
};
use crate::support::receiver::{Receiver, signature_valid};

/// Polls `check` every 10 ms until it yields, or panics after a generous deadline.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn record(app: &TestApp, reservation_id: &str) -> ReservationRecord {
    app.state
        .store
        .reservation(reservation_id)
        .await
        .unwrap()
        .expect("the reservation exists")
}

/// Waits until the reservation is in `state` (through the store: no query settles it).
async fn wait_state(app: &TestApp, reservation_id: &str, state: ReservationState) -> ReservationRecord {
    eventually(&format!("{reservation_id} to be {state:?}"), || async {
        Some(record(app, reservation_id).await).filter(|r| r.state == state)
    })
    .await
}

/// Creates a task for team-a; returns (task id, reservation id).
async fn create(app: &TestApp, prompt: &str) -> (String, String) {
    let created = app.create_task("team-a", prompt).await;
    (
        created["id"].as_str().unwrap().to_string(),
        created["vidgate"]["reservation_id"].as_str().unwrap().to_string(),
    )
}

async fn post_callback(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/upstream/callbacks/{token}", app.base))
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

/// The money kinds of team-a's ledger, in order.
async fn ledger_kinds(app: &TestApp) -> Vec<String> {
    let ledger = app
        .get_json("/v1/admin/ledger?tenant=team-a&limit=1000", &app.finance_token())
        .await;
    ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .filter(|k| k != "budget_change")
        .collect()
}

fn quick_reconciler(config: &mut vidgate::config::Config) {
    config.reconciler.first_poll_after_secs = Seconds::from_millis(50);
    config.reconciler.poll_interval_secs = Seconds::from_millis(50);
}

async fn forged_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, rid) = create(&app, "[mock:slow=3600] waiting").await;
    let before = record(&app, &rid).await;
    let now = app.clock.now().timestamp_millis();
    // The reconciler's first look moves the hold to its first poll time.
    eventually("the first look", || async {
        app.state
            .store
            .due(Queue::Tasks, now, 10)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    let queries = app.mock.stats().queries;
    let genuine = app.state.completion.callback_token(&rid);
    let (_, tag) = genuine.split_once('.').unwrap();
    let other_rid = app.state.completion.callback_token("rsv_someone_else");
    let (_, other_tag) = other_rid.split_once('.').unwrap();
    let lie = json!({"id": "task-unified-1-x", "status": "completed", "results": ["https://x/y.mp4"]});
    for forged in [
        format!("{rid}.{other_tag}"),
        format!("{rid}.{}", &tag[1..]),
        format!("{rid}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        rid.clone(),
        format!("{rid}."),
        "garbage".to_string(),
    ] {
        let response = post_callback(&app, &forged, &lie).await;
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthenticated", None).await;
    }
    let response = app
        .client
        .get(format!("{}/v1/upstream/callbacks/{genuine}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(record(&app, &rid).await, before, "nothing changed");
    assert!(
        app.state.store.due(Queue::Tasks, now, 10).await.unwrap().is_empty(),
        "a forged callback made nothing due"
    );
    assert_eq!(app.mock.stats().queries, queries, "nothing was re-fetched");
    assert_eq!(ledger_kinds(&app).await, ["reserve"]);
}

#[tokio::test]
async fn a_forged_callback_token_gets_401_and_changes_nothing_embedded() {
    forged_tokens(Backend::Embedded).await;
}

#[tokio::test]
async fn a_forged_callback_token_gets_401_and_changes_nothing_redis() {
    forged_tokens(Backend::Redis).await;
}

#[tokio::test]
async fn a_genuine_token_for_an_unknown_reservation_finds_nothing() {
    let app = spawn_app(Backend::Redis).await;
    let token = app.state.completion.callback_token("rsv_01JNEVERRESERVED");
    let response = post_callback(&app, &token, &json!({"status": "completed"})).await;
    assert_error(response, StatusCode::NOT_FOUND, "task_not_found", None).await;
    assert!(ledger_kinds(&app).await.is_empty());
    assert!(
        app.state
            .store
            .due(Queue::Tasks, i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing entered the reconciler's queue"
    );
    assert_eq!(app.mock.stats().queries, 0);
}

async fn lying_body(backend: Backend) {
    let app = spawn_app(backend).await;
    let (task_id, rid) = create(&app, "[mock:fail] [mock:slow=3600] doomed").await;
    let token = app.state.completion.callback_token(&rid);
    let lie = json!({"id": task_id, "status": "completed", "progress": 100,
                     "results": ["https://cdn.example.com/a.mp4"]});

    // While it runs, a "completed" callback only makes the gateway ask: still running.
    let queries = app.mock.stats().queries;
    let response = post_callback(&app, &token, &lie).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"received": true}));
    eventually("the re-fetch", || async {
        (app.mock.stats().queries > queries).then_some(())
    })
    .await;
    eventually("the re-fetch to be handled", || async {
        let now = app.clock.now().timestamp_millis();
        app.state
            .store
            .due(Queue::Tasks, now, 10)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(record(&app, &rid).await.state, ReservationState::Reserved);

    // It fails; the same lie now meets the upstream's truth.
    assert!(app.mock.complete(&task_id).await);
    let response = post_callback(&app, &token, &lie).await;
    assert_eq!(response.status(), StatusCode::OK);
    let done = wait_state(&app, &rid, ReservationState::Refunded).await;
    assert_eq!(done.charged, Some(0));
    assert_eq!(ledger_kinds(&app).await, ["reserve", "refund"]);
    let usage = app.get_json("/v1/usage?period=total", &app.token("team-a")).await;
    assert_eq!(
        (usage["spent"].as_str(), usage["reserved"].as_str()),
        (Some("0.000000"), Some("0.000000"))
    );
}

#[tokio::test]
async fn a_callback_body_that_lies_loses_to_the_upstream_embedded() {
    lying_body(Backend::Embedded).await;
}

#[tokio::test]
async fn a_callback_body_that_lies_loses_to_the_upstream_redis() {
    lying_body(Backend::Redis).await;
}

#[tokio::test]
async fn the_upstreams_callback_settles_a_task_without_any_query() {
    let mock = MockOptions {
        allow_local_callbacks: true,
        ..quick_mock()
    };
    // The reconciler would first poll after a minute: only the callback can settle in time.
    let app = spawn_app_with(Backend::Redis, mock, own_callbacks).await;
    let mut body = app.create_body("character1 waves");
    body["callback_url"] = json!("https://hooks.example.com/mine");
    let response = app.post_create(&app.token("team-a"), &body).await;
    // No signing secret configured: the caller's callback_url is refused, nothing held.
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_callback_url",
        Some("callback_url"),
    )
    .await;
    assert_eq!(app.mock.stats().creates, 0);

    let (_, rid) = create(&app, "character1 waves").await;
    let sent = app.mock.stats().last_create_body.unwrap();
    let own = sent["callback_url"].as_str().unwrap();
    let token = own
        .strip_prefix(&format!("{}/v1/upstream/callbacks/", app.config.server.public_base_url))
        .unwrap_or_else(|| panic!("{own} is vidgate's callback route"));
    // A sealed payload: the reservation and what charges it, none of it readable upstream.
    let Some(Verified::Sealed(payload)) = app.state.completion.verify_token(token) else {
        panic!("{token} is a sealed token")
    };
    let record = app.state.store.reservation(&rid).await.unwrap().unwrap();
    assert_eq!(payload, TokenPayload::of(&record));
    assert!(!token.contains(&rid) && !token.contains("team-a"), "{token}");
    let done = wait_state(&app, &rid, ReservationState::Settled).await;
    assert_eq!(done.charged, Some(500_000));
    assert!(app.mock.stats().callbacks_sent >= 1);
    assert_eq!(ledger_kinds(&app).await, ["reserve", "settle"]);
}

#[tokio::test]
async fn a_relayed_callback_is_retried_with_one_event_id_and_valid_signatures() {
    let receiver = Receiver::start(vec![500, 503, 204]).await;
    let app = spawn_app_with(Backend::Redis, quick_mock(), relayed_callbacks).await;
    let mut body = app.create_body("character1 waves");
    body["callback_url"] = json!(receiver.url);
    let response = app.post_create(&app.token("team-a"), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let created: Value = response.json().await.unwrap();
    let (task_id, rid) = (
        created["id"].as_str().unwrap(),
        created["vidgate"]["reservation_id"].as_str().unwrap(),
    );
    let sent = app.mock.stats().last_create_body.unwrap();
    assert!(
        sent.get("callback_url").is_none(),
        "the caller's URL never goes upstream: {sent}"
    );

    let done = app.wait_final("team-a", task_id).await;
    assert_eq!(done["vidgate"]["state"], "settled");
    let received = receiver.wait_for(3).await;
    eventually("the outbox to empty", || async {
        app.state
            .store
            .due(Queue::Outbox, i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    let received_all = receiver.received();
    assert_eq!(received_all.len(), 3, "delivered on the third attempt, then no more");
    let id = format!("msg_{rid}_settle");
    for hit in &received {
        assert_eq!(hit.header("webhook-id"), id);
        assert_eq!(hit.header("content-type"), "application/json");
        let timestamp: i64 = hit.header("webhook-timestamp").parse().unwrap();
        assert!((timestamp - chrono::Utc::now().timestamp()).abs() < 300);
        assert!(hit.header("webhook-signature").starts_with("v1,"));
        assert!(signature_valid(SIGNING_SECRET, hit), "signature of {hit:?}");
        assert_eq!(hit.body, received[0].body, "every retry sends the same body");
    }
    let relayed = received[0].json();
    assert_eq!(relayed["id"], task_id);
    assert_eq!(relayed["status"], "completed");
    assert_eq!(relayed["vidgate"]["state"], "settled");
    assert_eq!(relayed["vidgate"]["charged"], done["vidgate"]["charged"]);
    assert_eq!(
        relayed["vidgate"]["result_expires_at"],
        done["vidgate"]["result_expires_at"]
    );
    // A tampered body fails the check the receiver makes.
    let mut tampered = received[0].clone();
    tampered.body = tampered
        .body
        .iter()
        .map(|b| if *b == b'5' { b'6' } else { *b })
        .collect();
    assert!(!signature_valid(SIGNING_SECRET, &tampered));
    let metric = |outcome: &str| app.metric(&format!("vidgate_callback_deliveries_total{{outcome=\"{outcome}\"}}"));
    assert_eq!(
        (metric("failed_attempt"), metric("delivered"), metric("gave_up")),
        (2.0, 1.0, 0.0)
    );
}

#[tokio::test]
async fn a_receiver_that_never_takes_it_gets_four_attempts_then_the_relay_gives_up() {
    let receiver = Receiver::start(vec![500]).await;
    let app = spawn_app_with(Backend::Embedded, quick_mock(), relayed_callbacks).await;
    let mut body = app.create_body("[mock:fail] doomed");
    body["callback_url"] = json!(receiver.url);
    let created: Value = app.post_create(&app.token("team-a"), &body).await.json().await.unwrap();
    app.wait_final("team-a", created["id"].as_str().unwrap()).await;
    receiver.wait_for(4).await;
    eventually("the relay to give up", || async {
        app.state
            .store
            .due(Queue::Outbox, i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(receiver.received().len(), 4);
    assert_eq!(receiver.received()[0].json()["vidgate"]["state"], "refunded");
    let metric = |outcome: &str| app.metric(&format!("vidgate_callback_deliveries_total{{outcome=\"{outcome}\"}}"));
    assert_eq!(
        (metric("failed_attempt"), metric("gave_up"), metric("delivered")),
        (4.0, 1.0, 0.0)
    );
}

/// An event whose delivery cannot be prepared (its task is unknown to the upstream: purged,
/// or the company key rotated) uses up its attempts like a failed delivery, and the outbox
/// drains instead of retrying every second for ever.
#[tokio::test]
async fn an_event_that_cannot_be_prepared_is_given_up_after_the_retry_schedule() {
    let receiver = Receiver::start(vec![200]).await;
    let app = spawn_app_with(Backend::Embedded, quick_mock(), relayed_callbacks).await;
    let store = &app.state.store;
    let now = chrono::Utc::now();
    let hold = vidgate::store::ReserveRequest {
        reservation_id: "rsv_gone".into(),
        tenant: "team-a".into(),
        user: "alice".into(),
        request_id: "req_gone".into(),
        periods: vidgate::store::PeriodKeys::at(now),
        model: crate::helpers::MODEL.into(),
        quality: "720p".into(),
        audio: true,
        currency: "USD".into(),
        price_per_second: 50_000,
        reference_durations_ms: vec![5000],
        billed_input_ms: 5000,
        requested_output_ms: 5000,
        amount: 500_000,
        callback_url: Some(receiver.url.clone()),
        now_ms: now.timestamp_millis(),
        idempotency: None,
        rate: Vec::new(),
    };
    store.reserve(&hold).await.unwrap();
    store.bind("rsv_gone", "task-unified-1-purged00", "{}").await.unwrap();
    store.refund("rsv_gone", now.timestamp_millis()).await.unwrap();
    app.state.completion.wake_relay();
    eventually("the relay to give up", || async {
        store
            .due(Queue::Outbox, i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    let metric = |outcome: &str| app.metric(&format!("vidgate_callback_deliveries_total{{outcome=\"{outcome}\"}}"));
    assert_eq!((metric("gave_up"), metric("delivered")), (1.0, 0.0));
    assert!(receiver.received().is_empty(), "nothing unsigned or half-made was sent");
    // One GET per attempt: the first try and one per retry delay, then no more.
    let polls = app.mock.stats().queries;
    assert_eq!(
        polls, 4,
        "one upstream read per attempt (a 404 is not retried), 4 attempts"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.mock.stats().queries, polls);
}

/// Resolves one name to loopback while `open`, else to the cloud metadata address; every
/// other name is unknown.
struct FlippingResolver {
    name: &'static str,
    open: AtomicBool,
}

#[async_trait::async_trait]
impl Resolver for FlippingResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        if host != self.name {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "unknown test name"));
        }
        let ip = if self.open.load(Ordering::SeqCst) {
            "127.0.0.1"
        } else {
            "169.254.169.254"
        };
        Ok(vec![ip.parse().unwrap()])
    }
}

#[tokio::test]
async fn a_receiver_whose_name_turns_internal_gets_nothing_and_the_refusal_is_counted() {
    let receiver = Receiver::start(vec![200]).await;
    let resolver = Arc::new(FlippingResolver {
        name: "hooks.flip.test",
        open: AtomicBool::new(true),
    });
    let app = spawn_app_full(
        Backend::Redis,
        quick_mock(),
        Arc::new(SystemClock),
        resolver.clone(),
        relayed_callbacks,
    )
    .await;
    let mut body = app.create_body("[mock:slow=3600] flipping");
    body["callback_url"] = json!(format!("https://hooks.flip.test:{}/hook", receiver.port));

    // At create time the name is checked too: internal now means refused, nothing held.
    resolver.open.store(false, Ordering::SeqCst);
    let response = app.post_create(&app.token("team-a"), &body).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "invalid_callback_url",
        Some("callback_url"),
    )
    .await;
    assert!(ledger_kinds(&app).await.is_empty());

    resolver.open.store(true, Ordering::SeqCst);
    let created: Value = app.post_create(&app.token("team-a"), &body).await.json().await.unwrap();
    let task_id = created["id"].as_str().unwrap();
    // Between create and delivery the name starts answering an internal address.
    resolver.open.store(false, Ordering::SeqCst);
    assert!(app.mock.complete(task_id).await);
    app.wait_final("team-a", task_id).await;
    let refused = "vidgate_callback_deliveries_total{outcome=\"refused\"}";
    eventually("the refusal", || async { (app.metric(refused) == 1.0).then_some(()) }).await;
    assert!(
        app.state
            .store
            .due(Queue::Outbox, i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(receiver.received().is_empty(), "the receiver saw nothing");
    assert_eq!(
        app.metric("vidgate_callback_deliveries_total{outcome=\"failed_attempt\"}"),
        0.0
    );
}

#[tokio::test]
async fn every_forbidden_range_is_refused_by_the_classifier_before_any_connection() {
    use vidgate::probe::fetch::{FetchError, SafeHttp};
    struct Fixed(std::net::IpAddr);
    #[async_trait::async_trait]
    impl Resolver for Fixed {
        async fn resolve(&self, _: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
            Ok(vec![self.0])
        }
    }
    let mut config = vidgate::config::Config::default();
    config.callbacks.allowed_networks = vec!["10.20.0.0/16".into()];
    for ip in [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::",
    ] {
        let http = SafeHttp::new(
            vidgate::callbacks::policy(&config.callbacks),
            true,
            Arc::new(Fixed(ip.parse().unwrap())),
        )
        .unwrap();
        let url = "https://receiver.example.com/hook";
        assert!(
            matches!(http.check_resolved(url).await, Err(FetchError::Refused(_))),
            "{ip}"
        );
        let sent = http
            .send_once(reqwest::Method::POST, url, &Default::default(), None)
            .await;
        assert!(matches!(sent, Err(FetchError::Refused(_))), "{ip}: {sent:?}");
    }
    // Inside allowed_networks: allowed.
    let http = SafeHttp::new(
        vidgate::callbacks::policy(&config.callbacks),
        true,
        Arc::new(Fixed("10.20.3.4".parse().unwrap())),
    )
    .unwrap();
    assert!(http.check_resolved("https://receiver.example.com/hook").await.is_ok());
}

async fn lost_callback(backend: Backend) {
    let clock = ManualClock::at("2026-11-25T10:00:00Z");
    let mock = MockOptions {
        allow_local_callbacks: true,
        callback_drop_pct: 100,
        ..quick_mock()
    };
    let app = spawn_app_with_clock(backend, mock, clock.clone(), |c| {
        own_callbacks(c);
        c.reconciler.first_poll_after_secs = Seconds::from_secs(60);
        c.reconciler.poll_interval_secs = Seconds::from_secs(30);
    })
    .await;
    let (task_id, rid) = create(&app, "[mock:slow=3600] long").await;
    let due_at = |at: &'static str| {
        let app = &app;
        async move {
            let at = chrono::DateTime::parse_from_rfc3339(at).unwrap().timestamp_millis();
            app.state.store.due(Queue::Tasks, at, 10).await.unwrap()
        }
    };
    // Polled at the first poll time, then (an hour in) at twice the interval: still running.
    clock.set("2026-11-25T10:01:00Z");
    eventually("the first poll", || async {
        (app.mock.stats().queries == 1).then_some(())
    })
    .await;
    clock.set("2026-11-25T11:00:00Z");
    eventually("a poll an hour in, rescheduled", || async {
        let later = due_at("2026-11-25T11:01:00Z").await;
        (app.mock.stats().queries == 2 && due_at("2026-11-25T11:00:59.999Z").await.is_empty() && later == [rid.clone()])
            .then_some(())
    })
    .await;
    // It completes now; its callback is lost.
    assert!(app.mock.complete(&task_id).await);
    assert_eq!(app.mock.stats().callbacks_dropped, 1);
    assert_eq!(record(&app, &rid).await.state, ReservationState::Reserved);
    // Two poll intervals after the completion, it is settled.
    clock.set("2026-11-25T11:01:00Z");
    let done = wait_state(&app, &rid, ReservationState::Settled).await;
    let two_intervals_later = chrono::DateTime::parse_from_rfc3339("2026-11-25T11:01:00Z")
        .unwrap()
        .timestamp_millis();
    assert_eq!(done.finished_ms, Some(two_intervals_later));
    assert_eq!(app.mock.stats().queries, 3);
}

#[tokio::test]
async fn a_task_whose_callback_is_lost_is_settled_by_polling_within_two_intervals_embedded() {
    lost_callback(Backend::Embedded).await;
}

#[tokio::test]
async fn a_task_whose_callback_is_lost_is_settled_by_polling_within_two_intervals_redis() {
    lost_callback(Backend::Redis).await;
}

async fn late_settle(backend: Backend) {
    // Reserved in November; given up on, and completed, in December.
    let clock = ManualClock::at("2026-11-30T23:50:00Z");
    let mock = MockOptions {
        allow_local_callbacks: true,
        ..quick_mock()
    };
    let app = spawn_app_with_clock(backend, mock, clock.clone(), |c| {
        own_callbacks(c);
        c.reconciler.max_task_age_secs = Seconds::from_secs(600);
    })
    .await;
    let (task_id, rid) = create(&app, "[mock:slow=3600] never on time").await;
    clock.set("2026-12-01T00:00:01Z");
    let expired = wait_state(&app, &rid, ReservationState::Expired).await;
    let expired_at = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:01Z")
        .unwrap()
        .timestamp_millis();
    assert_eq!(expired.finished_ms, Some(expired_at));
    assert_eq!(app.mock.stats().queries, 1, "polled once more before giving up");
    assert_eq!(ledger_kinds(&app).await, ["reserve", "expire"]);
    let november = app.get_json("/v1/usage?period=2026-11", &app.token("team-a")).await;
    assert_eq!(
        (november["spent"].as_str(), november["reserved"].as_str()),
        (Some("0.000000"), Some("0.000000"))
    );
    assert_eq!(november["tasks"]["expired"], 1);
    assert_eq!(
        app.metric("vidgate_tasks_total{outcome=\"expired\",tenant=\"team-a\"}"),
        1.0
    );

    // It completes after all: the upstream's callback brings it back, the re-fetch charges it.
    clock.set("2026-12-01T02:00:00Z");
    assert!(app.mock.complete(&task_id).await);
    let settled = wait_state(&app, &rid, ReservationState::Settled).await;
    assert_eq!(settled.charged, Some(500_000));
    assert_eq!(settled.result_expires_ms, Some(expired_at + 86_400_000));
    assert_eq!(
        ledger_kinds(&app).await,
        ["reserve", "expire", "late_settle", "anomaly"]
    );
    let ledger = app
        .get_json("/v1/admin/ledger?tenant=team-a", &app.finance_token())
        .await;
    let anomaly = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "anomaly")
        .unwrap()
        .clone();
    assert_eq!(anomaly["note"], LATE_NOTE);
    assert_eq!(anomaly["amount"], "0.500000");
    let november = app.get_json("/v1/usage?period=2026-11", &app.token("team-a")).await;
    assert_eq!(
        (november["spent"].as_str(), november["reserved"].as_str()),
        (Some("0.500000"), Some("0.000000"))
    );
    assert_eq!(
        november["tasks"],
        json!({"reserved": 0, "settled": 1, "refunded": 0, "expired": 0})
    );
    let december = app.get_json("/v1/usage?period=2026-12", &app.token("team-a")).await;
    assert_eq!(december["spent"], "0.000000");
    let seen: Value = app.get_task(&app.token("team-a"), &task_id).await.json().await.unwrap();
    assert_eq!(seen["vidgate"]["state"], "settled");
    assert_eq!(seen["vidgate"]["result_expires_at"], "2026-12-02T00:00:01Z");
    assert_eq!(ledger_kinds(&app).await.len(), 4, "seen again: nothing moves");
}

#[tokio::test]
async fn a_completion_after_expiry_is_charged_late_to_the_original_period_embedded() {
    late_settle(Backend::Embedded).await;
}

#[tokio::test]
async fn a_completion_after_expiry_is_charged_late_to_the_original_period_redis() {
    late_settle(Backend::Redis).await;
}

/// Without callbacks (no `public_base_url`), a task still running when its hold expired is
/// polled again later, so its completion is charged late all the same.
async fn late_settle_by_polling(backend: Backend) {
    let clock = ManualClock::at("2026-11-20T10:00:00Z");
    let app = spawn_app_with_clock(backend, quick_mock(), clock.clone(), |c| {
        c.reconciler.max_task_age_secs = Seconds::from_secs(600);
    })
    .await;
    let (task_id, rid) = create(&app, "[mock:slow=3600] never on time").await;
    clock.set("2026-11-20T10:10:01Z");
    wait_state(&app, &rid, ReservationState::Expired).await;
    assert!(app.mock.complete(&task_id).await);
    clock.set("2026-11-20T10:12:00Z");
    let settled = wait_state(&app, &rid, ReservationState::Settled).await;
    assert_eq!(settled.charged, Some(500_000));
    assert_eq!(
        ledger_kinds(&app).await,
        ["reserve", "expire", "late_settle", "anomaly"]
    );
    let polls = app.mock.stats().queries;
    clock.set("2026-11-20T12:00:00Z");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.mock.stats().queries, polls, "an ended task is not polled again");
}

#[tokio::test]
async fn a_task_completed_after_its_expiry_is_charged_late_by_polling_alone_embedded() {
    late_settle_by_polling(Backend::Embedded).await;
}

#[tokio::test]
async fn a_task_completed_after_its_expiry_is_charged_late_by_polling_alone_redis() {
    late_settle_by_polling(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_on_one_redis_poll_each_task_once_at_a_time() {
    const TASKS: usize = 30;
    let clock = ManualClock::at("2026-11-25T10:00:00Z");
    let one = spawn_app_with_clock(Backend::Redis, quick_mock(), clock.clone(), |c| {
        c.tenants[0].max_concurrent_tasks = 1000;
        c.tenants[0].creates_burst = 1000;
        c.reconciler.first_poll_after_secs = Seconds::from_secs(60);
        c.reconciler.poll_interval_secs = Seconds::from_secs(3600);
    })
    .await;
    let two = one.replica().await;
    for i in 0..TASKS {
        let app = if i % 2 == 0 { &one } else { &two };
        app.create_task("team-a", "[mock:slow=3600] long").await;
    }
    assert_eq!(one.mock.stats().queries, 0);
    // Both replicas find all of them due at once, and race for them.
    clock.set("2026-11-25T10:01:00Z");
    one.state.completion.wake_reconciler();
    two.state.completion.wake_reconciler();
    let now = clock.now().timestamp_millis();
    eventually("every task polled and rescheduled", || async {
        one.state
            .store
            .due(Queue::Tasks, now, 100)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(one.mock.stats().queries, TASKS as u64, "each task polled exactly once");
}

#[tokio::test]
async fn the_reconciler_settles_and_refunds_without_callbacks_or_queries() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), quick_reconciler).await;
    let (_, done) = create(&app, "character1 waves").await;
    let (_, failed) = create(&app, "[mock:fail] no").await;
    let (_, cancelled) = create(&app, "[mock:cancel] no").await;
    assert_eq!(
        wait_state(&app, &done, ReservationState::Settled).await.charged,
        Some(500_000)
    );
    wait_state(&app, &failed, ReservationState::Refunded).await;
    wait_state(&app, &cancelled, ReservationState::Refunded).await;
    assert!(
        app.state
            .store
            .due(Queue::Tasks, i64::MAX / 2, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let usage = app.get_json("/v1/usage?period=total", &app.token("team-a")).await;
    assert_eq!(
        usage["tasks"],
        json!({"reserved": 0, "settled": 1, "refunded": 2, "expired": 0})
    );
}
