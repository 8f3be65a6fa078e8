//! Budget alerts: each threshold fires once per tenant and period, even with two replicas
//! sharing one Redis, delivered to a local webhook receiver with retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::Value;

use crate::helpers::{Backend, quick_mock, spawn_app_with, test_config};
use crate::support;

/// A webhook receiver on loopback that answers 500 to its first `failures` posts.
struct Receiver {
    url: String,
    texts: Arc<Mutex<Vec<String>>>,
    attempts: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ReceiverState {
    texts: Arc<Mutex<Vec<String>>>,
    attempts: Arc<AtomicUsize>,
    failures: usize,
}

async fn receive(state: web::Data<ReceiverState>, body: web::Json<Value>) -> HttpResponse {
    if state.attempts.fetch_add(1, Ordering::SeqCst) < state.failures {
        return HttpResponse::InternalServerError().finish();
    }
    let text = body["text"].as_str().unwrap_or_default().to_string();
    state.texts.lock().unwrap().push(text);
    HttpResponse::Ok().finish()
}

impl Receiver {
    fn start(failures: usize) -> Self {
        let state = ReceiverState {
            texts: Arc::default(),
            attempts: Arc::default(),
            failures,
        };
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/hook", web::post().to(receive))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .expect("bind the receiver");
        let url = format!("http://{}/hook", server.addrs()[0]);
        tokio::spawn(server.run());
        Self {
            url,
            texts: state.texts,
            attempts: state.attempts,
        }
    }

    /// The alert texts received once `count` arrived (or 10 s passed), after a pause to
    /// catch any extra.
    async fn texts_after(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.texts.lock().unwrap().len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut texts = self.texts.lock().unwrap().clone();
        texts.sort();
        texts
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_fires_once_across_two_replicas_and_survives_a_failing_webhook() {
    let receiver = Receiver::start(1);
    let prefix = support::random_prefix();
    let configure = |c: &mut vidgate::config::Config| {
        c.tenants[0].budget = "2.00".into();
        c.store.key_prefix = prefix.clone();
        c.alerts.webhook_url = receiver.url.clone();
        c.callbacks.allow_private_networks = true;
        c.callbacks.retry_delays_ms = vec![50, 100];
    };
    let one = spawn_app_with(Backend::Redis, quick_mock(), configure).await;
    let two = spawn_app_with(Backend::Redis, quick_mock(), configure).await;
    // Four holds of 0.50 at once, two through each replica: 25 %, 50 %, 75 %, 100 %.
    let (a, b, c, d) = tokio::join!(
        one.create_task("team-a", "one"),
        two.create_task("team-a", "two"),
        one.create_task("team-a", "three"),
        two.create_task("team-a", "four"),
    );
    let texts = receiver.texts_after(3).await;
    assert_eq!(texts.len(), 3, "{texts:?}");
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    for (text, percent) in texts.iter().zip(["100%", "80%", "95%"]) {
        assert!(
            text.contains(&format!("team-a reached {percent} of its budget for {month}")),
            "{text}"
        );
    }
    assert!(texts[0].contains("2.000000 of 2.000000 USD used"), "{}", texts[0]);
    assert_eq!(
        receiver.attempts.load(Ordering::SeqCst),
        4,
        "one failed post was retried"
    );

    // Settling the same money moves nothing past a threshold again.
    for (app, task) in [(&one, &a), (&two, &b), (&one, &c), (&two, &d)] {
        app.wait_final("team-a", task["id"].as_str().unwrap()).await;
    }
    assert_eq!(receiver.texts_after(0).await.len(), 3);
}

#[tokio::test]
async fn a_webhook_on_an_internal_address_is_refused_at_startup() {
    let mock = vidgate::mock_upstream::MockServer::start(quick_mock()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(Backend::Embedded, &mock, &dir);
    config.alerts.webhook_url = "https://169.254.169.254/hook".into();
    let error = config
        .validate()
        .expect_err("an internal address is refused")
        .to_string();
    assert!(error.contains("alerts.webhook_url"), "{error}");
    config.alerts.webhook_url = "https://hooks.example.com/services/x".into();
    config.validate().expect("a public name is fine");
}
