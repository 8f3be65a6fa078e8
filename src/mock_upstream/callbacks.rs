//! Callback delivery by the upstream's rules: 2xx within 10 s, else 3 retries after 1, 2, 4 s;
//! and, on request, the faults a real network adds: callbacks lost, duplicated, delayed.

use std::time::Duration;

use rand::Rng;
use serde_json::Value;

use super::Shared;

/// When a callback attempt counts as failed, and how long to wait before each retry.
#[derive(Debug, Clone)]
pub(crate) struct CallbackPolicy {
    pub(crate) timeout: Duration,
    pub(crate) retry_delays: Vec<Duration>,
}

impl CallbackPolicy {
    /// The documented upstream behaviour.
    pub(crate) fn upstream() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retry_delays: [1, 2, 4].into_iter().map(Duration::from_secs).collect(),
        }
    }
}

/// `deliver`, with the configured faults: dropped (never sent), delayed by a random
/// 0..=`callback_delay_ms`, or sent twice at once.
/// `None` when dropped, else whether an attempt got a 2xx.
pub(crate) async fn deliver_faulty(shared: &Shared, url: &str, body: &Value) -> Option<bool> {
    let options = &shared.options;
    let (dropped, duplicated, delay) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0..100u8) < options.callback_drop_pct,
            rng.random_range(0..100u8) < options.callback_dup_pct,
            rng.random_range(0..=options.callback_delay_ms),
        )
    };
    if dropped {
        shared.count(|stats| stats.callbacks_dropped += 1);
        return None;
    }
    tokio::time::sleep(Duration::from_millis(delay)).await;
    if duplicated {
        shared.count(|stats| stats.callbacks_duplicated += 1);
        let (a, b) = futures_util::future::join(deliver(shared, url, body), deliver(shared, url, body)).await;
        Some(a || b)
    } else {
        Some(deliver(shared, url, body).await)
    }
}

/// POSTs the task object to `url` until one attempt gets a 2xx (true), or the retries run out.
pub(crate) async fn deliver(shared: &Shared, url: &str, body: &Value) -> bool {
    let policy = &shared.callback_policy;
    let waits = std::iter::once(Duration::ZERO).chain(policy.retry_delays.iter().copied());
    for (attempt, wait) in waits.enumerate() {
        tokio::time::sleep(wait).await;
        shared.count(|stats| stats.callbacks_sent += 1);
        let sent = shared.http.post(url).timeout(policy.timeout).json(body).send().await;
        match sent {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => {
                tracing::debug!(attempt, status = %response.status(), "mock callback refused")
            }
            Err(error) => tracing::debug!(attempt, %error, "mock callback failed"),
        }
    }
    tracing::debug!(task = %body["id"], "mock callback given up");
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use actix_web::{App, HttpResponse, HttpServer, web};
    use serde_json::json;

    use super::*;
    use crate::mock_upstream::{MockOptions, MockServer};

    /// A callback receiver answering `statuses` in turn (the last one forever), after `delay`.
    struct Receiver {
        url: String,
        hits: Arc<AtomicUsize>,
        bodies: Arc<std::sync::Mutex<Vec<Value>>>,
        handle: actix_web::dev::ServerHandle,
    }

    async fn receiver(statuses: Vec<u16>, delay: Duration) -> Receiver {
        let hits = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, b) = (hits.clone(), bodies.clone());
        let server = HttpServer::new(move || {
            let (hits, bodies, statuses) = (h.clone(), b.clone(), statuses.clone());
            App::new().route(
                "/cb",
                web::post().to(move |body: web::Json<Value>| {
                    let n = hits.fetch_add(1, Ordering::SeqCst);
                    bodies.lock().unwrap().push(body.into_inner());
                    let status = statuses[n.min(statuses.len() - 1)];
                    async move {
                        tokio::time::sleep(delay).await;
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .bind("127.0.0.1:0")
        .unwrap();
        let url = format!("http://{}/cb", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver {
            url,
            hits,
            bodies,
            handle,
        }
    }

    async fn mock(retry_ms: [u64; 3], timeout: Duration) -> MockServer {
        let options = MockOptions {
            pending_ms: 10,
            processing_ms: 20,
            allow_local_callbacks: true,
            ..MockOptions::default()
        };
        let policy = CallbackPolicy {
            timeout,
            retry_delays: retry_ms.into_iter().map(Duration::from_millis).collect(),
        };
        MockServer::start_with(options, policy).await.unwrap()
    }

    async fn create(mock: &MockServer, callback_url: &str, prompt: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/videos/generations", mock.base_url()))
            .bearer_auth("sk-evo-mock")
            .json(&json!({
                "model": "wan2.6-reference-video-flash",
                "prompt": prompt,
                "video_urls": ["https://cdn.example.com/a.mp4"],
                "callback_url": callback_url,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn wait_for_hits(receiver: &Receiver, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while receiver.hits.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "only {} callbacks",
                receiver.hits.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn the_default_policy_is_the_upstreams() {
        let policy = CallbackPolicy::upstream();
        assert_eq!(policy.timeout, Duration::from_secs(10));
        assert_eq!(policy.retry_delays, [1, 2, 4].map(Duration::from_secs));
    }

    #[tokio::test]
    async fn a_receiver_failing_twice_gets_three_attempts_with_the_final_task() {
        let receiver = receiver(vec![500, 503, 204], Duration::ZERO).await;
        let mock = mock([20, 40, 80], Duration::from_secs(2)).await;
        let id = create(&mock, &receiver.url, "character1 dances").await;
        wait_for_hits(&receiver, 3).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(receiver.hits.load(Ordering::SeqCst), 3);
        assert_eq!(mock.stats().callbacks_sent, 3);
        for body in receiver.bodies.lock().unwrap().iter() {
            assert_eq!(body["id"], json!(id));
            assert_eq!(body["status"], "completed");
            assert_eq!(body["results"].as_array().map(Vec::len), Some(1));
        }
        mock.stop().await;
        receiver.handle.stop(false).await;
    }

    #[tokio::test]
    async fn a_receiver_that_never_succeeds_gets_four_attempts() {
        let receiver = receiver(vec![500], Duration::ZERO).await;
        let mock = mock([10, 10, 10], Duration::from_secs(2)).await;
        create(&mock, &receiver.url, "[mock:fail] x").await;
        wait_for_hits(&receiver, 4).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(receiver.hits.load(Ordering::SeqCst), 4);
        assert_eq!(mock.stats().callbacks_sent, 4);
        assert_eq!(receiver.bodies.lock().unwrap()[0]["status"], "failed");
        mock.stop().await;
        receiver.handle.stop(false).await;
    }

    #[tokio::test]
    async fn a_slow_answer_counts_as_a_failure() {
        let receiver = receiver(vec![200], Duration::from_millis(300)).await;
        let mock = mock([10, 10, 10], Duration::from_millis(50)).await;
        create(&mock, &receiver.url, "[mock:cancel] x").await;
        wait_for_hits(&receiver, 4).await;
        assert_eq!(receiver.bodies.lock().unwrap()[0]["status"], "cancelled");
        mock.stop().await;
        receiver.handle.stop(false).await;
    }
}
