//! HTTP client for the upstream API: pooled rustls client, timeouts, bounded retries for
//! reads (never for creates), errors parsed from either `code` shape.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde_json::Value;
use tracing::Instrument;
use url::Url;

use super::UpstreamError;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// Attempts for an idempotent read that meets 429/502/503 (the first try included).
const READ_ATTEMPTS: u32 = 3;
const READ_BACKOFF: Duration = Duration::from_millis(200);
/// 100 MB at a slow 2 Mbit/s still fits; the configured timeout is for API calls.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest answer read from the upstream or its file host: a task object is a few KiB,
/// so anything near this is not one, and it is never held whole in memory.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Holds the company key; cloning shares the connection pool.
#[derive(Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
    /// `{base_url}/v1/videos/generations` and `{base_url}/v1/tasks`, parsed once (a URL
    /// parse per call was 5 % of a create's CPU).
    create_url: Url,
    tasks_url: Url,
    files_base_url: String,
    /// `Bearer <key>`, marked sensitive (never shown by `Debug`), built once.
    authorization: HeaderValue,
    timeout_ms: u64,
    metrics: Arc<Metrics>,
}

impl UpstreamClient {
    pub fn new(config: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the upstream HTTP client: {e}"))?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose_secret()))
            .map_err(|_| "upstream.api_key: not a valid HTTP header value".to_string())?;
        authorization.set_sensitive(true);
        let base_url = config.base_url.trim_end_matches('/');
        let endpoint = |path: &str| {
            Url::parse(&format!("{base_url}{path}"))
                .ok()
                .filter(|url| !url.cannot_be_a_base())
                .ok_or_else(|| format!("upstream.base_url: {base_url:?} is not an http(s) URL"))
        };
        Ok(Self {
            http,
            create_url: endpoint("/v1/videos/generations")?,
            tasks_url: endpoint("/v1/tasks")?,
            files_base_url: config.files_base_url.trim_end_matches('/').to_string(),
            authorization,
            timeout_ms: config.timeout_ms,
            metrics,
        })
    }

    /// `POST /v1/videos/generations`, sent once: a create that may have reached the upstream
    /// is never retried (the upstream has no idempotency key).
    pub async fn create_task(&self, body: &Value) -> Result<Value, UpstreamError> {
        let request = self
            .http
            .post(self.create_url.clone())
            .header(AUTHORIZATION, self.bearer())
            .json(body);
        self.send("create_task", request).await
    }

    /// `GET /v1/tasks/{id}` for background work (reconciler, relay): each attempt may take the
    /// configured timeout; retried with backoff on 429/502/503 and unreachable (within the
    /// worker's lease, so an upstream's long `Retry-After` is left to the next look).
    pub async fn get_task(&self, task_id: &str) -> Result<Value, UpstreamError> {
        self.read_task(task_id, None).await
    }

    /// `GET /v1/tasks/{id}` for a caller who is waiting: the same retries, after the
    /// upstream's `Retry-After` when it gives one, all within one `upstream.timeout_ms` in
    /// total; a retry that would start past it is not made.
    pub async fn get_task_for_caller(&self, task_id: &str) -> Result<Value, UpstreamError> {
        self.read_task(task_id, Some(Instant::now() + Duration::from_millis(self.timeout_ms)))
            .await
    }

    async fn read_task(&self, task_id: &str, deadline: Option<Instant>) -> Result<Value, UpstreamError> {
        let mut url = self.tasks_url.clone();
        url.path_segments_mut()
            .expect("checked in new: the tasks URL can be a base")
            .push(task_id);
        let mut attempt = 1;
        loop {
            let mut request = self.http.get(url.clone()).header(AUTHORIZATION, self.bearer());
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(UpstreamError::Timeout(self.timeout_ms));
                }
                request = request.timeout(left);
            }
            let result = self.send("get_task", request).await;
            let wait = match &result {
                Err(e) if attempt < READ_ATTEMPTS && retryable(e) => {
                    let backoff = READ_BACKOFF * 2u32.pow(attempt - 1);
                    deadline.and_then(|_| retry_after(e)).unwrap_or(backoff)
                }
                _ => return result,
            };
            if deadline.is_some_and(|deadline| Instant::now() + wait >= deadline) {
                return result;
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Streams an upload body (multipart or base64 JSON) to the file host as it arrives;
    /// `path` is the file host's route, e.g. `/api/v1/files/upload/stream`.
    pub async fn upload_stream(
        &self,
        path: &str,
        content_type: &str,
        length: u64,
        body: reqwest::Body,
    ) -> Result<Value, UpstreamError> {
        let request = self
            .http
            .post(format!("{}{path}", self.files_base_url))
            .header(AUTHORIZATION, self.bearer())
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, length)
            .timeout(UPLOAD_TIMEOUT)
            .body(body);
        self.send("upload", request).await
    }

    /// A small JSON call to the file host (`/api/v1/files/upload/url`).
    pub async fn upload_json(&self, path: &str, body: &Value) -> Result<Value, UpstreamError> {
        let request = self
            .http
            .post(format!("{}{path}", self.files_base_url))
            .header(AUTHORIZATION, self.bearer())
            .json(body);
        self.send("upload", request).await
    }

    fn bearer(&self) -> HeaderValue {
        self.authorization.clone()
    }

    /// One upstream call in its own span (operation, status, latency), counted in the metrics.
    async fn send(&self, operation: &str, request: reqwest::RequestBuilder) -> Result<Value, UpstreamError> {
        let span = tracing::info_span!("upstream", operation, status = tracing::field::Empty);
        let started = Instant::now();
        let result = self.exchange(request).instrument(span.clone()).await;
        let status: Cow<'static, str> = match &result {
            Ok(_) => "200".into(),
            Err(UpstreamError::Status { status, .. }) => status.to_string().into(),
            Err(UpstreamError::Timeout(_)) => "timeout".into(),
            Err(UpstreamError::Unreachable(_)) => "unreachable".into(),
            Err(UpstreamError::Interrupted(_)) => "interrupted".into(),
            Err(UpstreamError::Unparseable(_)) => "unparseable".into(),
            Err(UpstreamError::TooLarge(_)) => "too_large".into(),
        };
        self.metrics.observe_upstream(operation, &status, started.elapsed());
        if crate::telemetry::exporting_traces() {
            span.record("status", &*status);
        }
        span.in_scope(|| {
            tracing::debug!(
                status = &*status,
                latency_ms = started.elapsed().as_millis() as u64,
                "upstream call"
            )
        });
        result
    }

    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<Value, UpstreamError> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = self.read_capped(response).await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Unparseable(e.to_string()));
        }
        Err(status_error(status, &bytes, retry_after))
    }

    /// The body, chunk by chunk, refused once it passes `MAX_ANSWER_BYTES`.
    async fn read_capped(&self, mut response: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport_error(&e))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(UpstreamError::TooLarge(MAX_ANSWER_BYTES));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A connection that was never made is definite (nothing sent), checked first: a connect
    /// timeout is both. After sending, a timeout or any other break leaves the outcome open.
    fn transport_error(&self, error: &reqwest::Error) -> UpstreamError {
        if error.is_connect() {
            // The error text names the host only; the key is never part of it.
            UpstreamError::Unreachable(without_url(error))
        } else if error.is_timeout() {
            UpstreamError::Timeout(self.timeout_ms)
        } else {
            UpstreamError::Interrupted(without_url(error))
        }
    }
}

/// The wait an upstream 429/503 asked for (`Retry-After` in seconds), at most a minute.
fn retry_after(error: &UpstreamError) -> Option<Duration> {
    match error {
        UpstreamError::Status {
            retry_after: Some(value),
            ..
        } => value
            .trim()
            .parse::<u64>()
            .ok()
            .map(|secs| Duration::from_secs(secs.min(60))),
        _ => None,
    }
}

fn retryable(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Status { status, .. } => matches!(status, 429 | 502 | 503),
        UpstreamError::Unreachable(_) => true,
        _ => false,
    }
}

/// The upstream's `{"error": {"code", "message"}}`; `code` may be a string or a number.
fn status_error(status: StatusCode, body: &[u8], retry_after: Option<String>) -> UpstreamError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = match error.and_then(|e| e.get("code")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => status.as_u16().to_string(),
    };
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    UpstreamError::Status {
        status: status.as_u16(),
        code,
        message,
        retry_after,
    }
}

fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_may_be_a_string_or_a_number() {
        let e = status_error(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"error":{"code":429,"message":"retry after 60 seconds"}}"#,
            Some("60".into()),
        );
        assert!(
            matches!(e, UpstreamError::Status { status: 429, ref code, ref message, .. } if code == "429" && message == "retry after 60 seconds")
        );
        let e = status_error(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"code":"invalid_task_id","message":"bad id"}}"#,
            None,
        );
        assert!(matches!(e, UpstreamError::Status { ref code, .. } if code == "invalid_task_id"));
        let e = status_error(StatusCode::BAD_GATEWAY, b"<html>", None);
        assert!(matches!(e, UpstreamError::Status { status: 502, ref code, .. } if code == "502"));
    }
}
