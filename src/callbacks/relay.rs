//! The relay: delivers the outbox's events to callers' `callback_url`s, at least once, signed
//! in the Standard Webhooks format with the tenant's own key (see `webhook_keys`: during a
//! rotation the previous key too, and the legacy shared key until its date), through the
//! SSRF-safe client (every attempt resolves and
//! checks the receiver's addresses again), with the upstream's retry contract: a 2xx within
//! `callbacks.timeout_ms`, else retries after each `callbacks.retry_delays_ms`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use hmac::{Hmac, Mac};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::probe::fetch::FetchError;
use crate::routes::view::with_vidgate;
use crate::state::AppState;
use crate::store::{OutboxEvent, Queue};

/// Due events read per round.
const BATCH: usize = 64;
/// Deliveries in flight at once per replica.
const CONCURRENCY: usize = 32;

pub(super) async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let tick = super::tick_for(state.config.callbacks.retry_delays_ms.iter().copied());
    loop {
        while round(&state).await && !*stop.borrow() {}
        if !super::pause(tick, &state.completion.deliver_now, &mut stop).await {
            return;
        }
    }
}

/// Delivers the due events; true when it took any.
async fn round(state: &AppState) -> bool {
    let now = super::now_ms(state);
    let ids = match state.store.due(Queue::Outbox, now, BATCH).await {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!("relay cannot read the outbox: {error}");
            return false;
        }
    };
    let taken: Vec<bool> = stream::iter(ids)
        .map(|id| deliver(state, id, now))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    taken.contains(&true)
}

/// Claims one event, makes one attempt, and gives it back: gone, or due for its retry.
async fn deliver(state: &AppState, id: String, now: i64) -> bool {
    let (store, owner) = (&state.store, state.completion.owner.as_str());
    let claimed = match store.claim(Queue::Outbox, &id, owner, now, lease_ms(state)).await {
        Ok(Some(due)) => due,
        Ok(None) => return false,
        Err(error) => {
            tracing::warn!(event_id = %id, "relay cannot claim: {error}");
            return false;
        }
    };
    let next = match attempt(state, &id).await {
        Ok(next) => next,
        Err(error) => not_prepared(state, &id, &error).await,
    };
    if let Err(error) = store.release(Queue::Outbox, &id, owner, claimed, next).await {
        tracing::warn!(event_id = %id, "relay cannot release: {error}");
    }
    true
}

/// A delivery that could not even be prepared (the task is gone upstream, the key was
/// rotated, a record is corrupt, the store is away) uses up an attempt like a failed one, so
/// the outbox always drains: retried on the same schedule, then given up and logged.
async fn not_prepared(state: &AppState, id: &str, error: &ApiError) -> Option<i64> {
    let retry = Some(super::now_ms(state).saturating_add(first_delay(state)));
    let mut event = match state.store.outbox_event(id).await {
        Ok(Some(event)) => event,
        Ok(None) => return None,
        // The store is away: the attempt cannot be counted; the lease keeps it from spinning.
        Err(store_error) => {
            tracing::warn!(event_id = %id, "relay could not prepare a delivery: {error}; store: {store_error}");
            return retry;
        }
    };
    event.attempts = event.attempts.saturating_add(1);
    let delays = &state.config.callbacks.retry_delays_ms;
    match usize::try_from(event.attempts - 1).ok().and_then(|i| delays.get(i)) {
        Some(delay) => {
            tracing::warn!(event_id = %id, reservation_id = %event.reservation_id, attempt = event.attempts,
                "relay could not prepare a delivery: {error}; retrying in {delay} ms");
            if let Err(store_error) = state.store.save_outbox_event(&event).await {
                tracing::warn!(event_id = %id, "relay cannot count the attempt: {store_error}");
            }
            Some(super::now_ms(state).saturating_add(i64::try_from(*delay).unwrap_or(i64::MAX)))
        }
        None => {
            count(state, "gave_up");
            tracing::error!(event_id = %id, reservation_id = %event.reservation_id, attempts = event.attempts,
                "callback NOT delivered, it could not be prepared: {error}");
            None
        }
    }
}

/// One delivery attempt; returns when the next is due (`None`: the event is done).
async fn attempt(state: &AppState, id: &str) -> Result<Option<i64>, ApiError> {
    let store = &state.store;
    let Some(mut event) = store.outbox_event(id).await? else {
        return Ok(None);
    };
    let Some(record) = store.reservation(&event.reservation_id).await? else {
        tracing::error!(event_id = %id, reservation_id = %event.reservation_id, "relay: the event's reservation is gone");
        return Ok(None);
    };
    let Some(url) = record.callback_url.clone() else {
        return Ok(None);
    };
    let keys = super::webhook_keys::signing_keys(state, &record.tenant, &state.completion.legacy).await?;
    let body = match &event.body {
        Some(body) => body.clone(),
        None => {
            let Some(task_id) = &record.task_id else {
                return Ok(None);
            };
            let task = state.upstream.get_task(task_id).await?;
            let body = serde_json::to_string(&with_vidgate(task, &record))
                .map_err(|e| ApiError::Internal(format!("callback body: {e}")))?;
            event.body = Some(body.clone());
            store.save_outbox_event(&event).await?;
            body
        }
    };
    let sent = send(state, &event, &url, &keys, body).await;
    let reservation_id = record.reservation_id.as_str();
    match sent {
        Sent::Delivered => {
            count(state, "delivered");
            tracing::info!(event_id = %id, reservation_id, attempts = event.attempts + 1, "callback delivered");
            Ok(None)
        }
        Sent::Refused(reason) => {
            count(state, "refused");
            tracing::error!(event_id = %id, reservation_id, "callback refused by the egress rules, not sent: {reason}");
            Ok(None)
        }
        Sent::Failed(reason) => {
            count(state, "failed_attempt");
            event.attempts = event.attempts.saturating_add(1);
            let delays = &state.config.callbacks.retry_delays_ms;
            match usize::try_from(event.attempts - 1).ok().and_then(|i| delays.get(i)) {
                Some(delay) => {
                    tracing::warn!(event_id = %id, reservation_id, attempt = event.attempts, "callback attempt failed: {reason}; retrying in {delay} ms");
                    store.save_outbox_event(&event).await?;
                    Ok(Some(
                        super::now_ms(state).saturating_add(i64::try_from(*delay).unwrap_or(i64::MAX)),
                    ))
                }
                None => {
                    count(state, "gave_up");
                    tracing::error!(event_id = %id, reservation_id, attempts = event.attempts, "callback NOT delivered, retries exhausted: {reason}");
                    Ok(None)
                }
            }
        }
    }
}

enum Sent {
    Delivered,
    /// The address rules said no: never sent, never retried.
    Refused(String),
    /// No 2xx in time: retried.
    Failed(String),
}

/// POSTs the body with the Standard Webhooks headers, once (a redirect is not a delivery);
/// one signature per key, space-separated, as the specification allows during rotations.
async fn send(state: &AppState, event: &OutboxEvent, url: &str, keys: &[Vec<u8>], body: String) -> Sent {
    // The receiver checks the timestamp against its own clock: real time, never a test clock.
    let timestamp = chrono::Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let signed = [
        ("webhook-id", event.id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            keys.iter()
                .map(|key| signature(key, &event.id, timestamp, body.as_bytes()))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ];
    for (name, value) in signed {
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                headers.insert(HeaderName::from_static(name), value);
            }
            Err(error) => return Sent::Refused(format!("{name} is not a header value: {error}")),
        }
    }
    let timeout_ms = state.config.callbacks.timeout_ms;
    let sending = state
        .completion
        .relay
        .send_once(Method::POST, url, &headers, Some(Bytes::from(body)));
    match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), sending).await {
        Err(_) => Sent::Failed(format!("no answer within {timeout_ms} ms")),
        Ok(Err(FetchError::Refused(reason) | FetchError::InvalidUrl(reason))) => Sent::Refused(reason),
        Ok(Err(FetchError::Unreachable(reason))) => Sent::Failed(reason),
        Ok(Ok(response)) if response.status().is_success() => Sent::Delivered,
        Ok(Ok(response)) => Sent::Failed(format!("the receiver answered {}", response.status())),
    }
}

/// The Standard Webhooks signature of a message: `v1,` + base64 of HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` with the key from `whsec_...`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // Invariant: HMAC takes keys of any length, so this never fails.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn count(state: &AppState, outcome: &str) {
    state.metrics.callback_deliveries.with_label_values(&[outcome]).inc();
}

fn first_delay(state: &AppState) -> i64 {
    let delay = state.config.callbacks.retry_delays_ms.first().copied().unwrap_or(1000);
    i64::try_from(delay).unwrap_or(i64::MAX)
}

/// How long one attempt may take: preparing the body (an upstream read with its retries)
/// and the delivery itself.
fn lease_ms(state: &AppState) -> u64 {
    let config = &state.config;
    config
        .callbacks
        .timeout_ms
        .saturating_add(config.upstream.timeout_ms.saturating_mul(3))
        .saturating_add(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
