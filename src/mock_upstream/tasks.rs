//! Video tasks: create (validation, prompt markers), query, the lifecycle clock and the result mp4.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use rand::Rng;
use serde_json::{Map, Value, json};
use url::Url;

use super::errors::ApiError;
use super::{MockOptions, Shared, callbacks, files, lock, mp4, net};

/// The only model the mock serves.
pub(crate) const MODEL: &str = "wan2.6-reference-video-flash";
const ID_PREFIX: &str = "task-unified-";
const MAX_PROMPT_CHARS: usize = 1500;
const MAX_CALLBACK_URL_LEN: usize = 2048;
const ASPECT_RATIOS: [&str; 5] = ["16:9", "9:16", "1:1", "4:3", "3:4"];
const QUALITIES: [&str; 2] = ["720p", "1080p"];
/// Shortest generated length, whatever the offset.
const MIN_OUTPUT_MS: u64 = 500;
/// `[mock:after=huge]`: past the gateway's 1 MiB cap on upstream answers.
const HUGE_ANSWER_BYTES: usize = 2 << 20;
/// Upper bound for marker seconds, so a typo cannot park a task for days.
const MAX_MARKER_SECONDS: f64 = 3600.0;

/// How a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Failed,
    Cancelled,
}

/// What the prompt markers ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Markers {
    fail: bool,
    cancel: bool,
    out_ms: Option<u64>,
    slow: Duration,
    hang: Duration,
    http: Option<StatusCode>,
    after: Option<After>,
    /// `[mock:bytes=N]`: the result file padded to N bytes.
    bytes: Option<u64>,
    /// `[mock:result_hang=S]`: the result host answers S seconds late.
    result_hang: Duration,
}

/// `[mock:after=...]`: the task IS created (its callback scheduled), then the create answers
/// as if something broke after the upstream's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// An HTTP error status (`after=500`, `after=502`, ...).
    Status(StatusCode),
    /// 200 with a task object without its `id` (`after=noid`).
    NoId,
    /// 200 with a body over the gateway's 1 MiB cap (`after=huge`).
    Huge,
    /// 200 headers, then the connection breaks mid-body (`after=reset`).
    Reset,
}

/// Reads `[mock:NAME]` and `[mock:NAME=VALUE]` anywhere in the prompt.
pub(crate) fn parse_markers(prompt: &str) -> Result<Markers, String> {
    let mut markers = Markers::default();
    for (start, _) in prompt.match_indices("[mock:") {
        let rest = &prompt[start + "[mock:".len()..];
        let end = rest.find(']').ok_or("unterminated [mock:...] marker")?;
        let marker = &rest[..end];
        match marker.split_once('=') {
            None if marker == "fail" => markers.fail = true,
            None if marker == "cancel" => markers.cancel = true,
            Some(("out", value)) => markers.out_ms = Some(seconds(marker, value, 0.001)?.as_millis() as u64),
            Some(("slow", value)) => markers.slow = seconds(marker, value, 0.0)?,
            Some(("hang", value)) => markers.hang = seconds(marker, value, 0.0)?,
            Some(("http", value)) => markers.http = Some(http_status(marker, value)?),
            Some(("after", "noid")) => markers.after = Some(After::NoId),
            Some(("after", "huge")) => markers.after = Some(After::Huge),
            Some(("after", "reset")) => markers.after = Some(After::Reset),
            Some(("after", value)) => markers.after = Some(After::Status(http_status(marker, value)?)),
            Some(("bytes", value)) => markers.bytes = Some(byte_count(marker, value)?),
            Some(("result_hang", value)) => markers.result_hang = seconds(marker, value, 0.0)?,
            _ => return Err(format!("unknown marker [mock:{marker}]")),
        }
    }
    Ok(markers)
}

fn seconds(marker: &str, value: &str, min: f64) -> Result<Duration, String> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (min..=MAX_MARKER_SECONDS).contains(&s) => {
            Ok(Duration::from_millis((s * 1000.0).round() as u64))
        }
        _ => Err(format!(
            "[mock:{marker}]: expected seconds between {min} and {MAX_MARKER_SECONDS}"
        )),
    }
}

/// Largest `[mock:bytes=N]`: the padding is one plain mp4 box (32-bit size).
const MAX_RESULT_BYTES: u64 = 4_000_000_000;

fn byte_count(marker: &str, value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= MAX_RESULT_BYTES)
        .ok_or_else(|| format!("[mock:{marker}]: expected a byte count up to {MAX_RESULT_BYTES}"))
}

fn http_status(marker: &str, value: &str) -> Result<StatusCode, String> {
    value
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|code| (400..600).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("[mock:{marker}]: expected an HTTP error status 400-599"))
}

/// A create request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CreateRequest {
    prompt: String,
    video_count: usize,
    quality: String,
    duration_s: u64,
    audio: bool,
    callback_url: Option<String>,
}

/// Validates a create body as the upstream documents it; unknown fields are tolerated.
pub(crate) fn validate(body: &Value, options: &MockOptions) -> Result<CreateRequest, ApiError> {
    let body = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("The request body must be a JSON object"))?;
    validate_model(body)?;
    let prompt = validate_prompt(body)?;
    let video_count = validate_video_urls(body)?;
    if let Some(ratio) = optional_str(body, "aspect_ratio")? {
        one_of("aspect_ratio", ratio, &ASPECT_RATIOS)?;
    }
    let quality = optional_str(body, "quality")?.unwrap_or("720p");
    one_of("quality", quality, &QUALITIES)?;
    let duration_s = match present(body, "duration") {
        None => 5,
        Some(value) => value
            .as_u64()
            .filter(|d| (2..=10).contains(d))
            .ok_or_else(|| ApiError::invalid("duration", "duration must be an integer from 2 to 10"))?,
    };
    let audio = validate_audio(body)?;
    let callback_url = validate_callback_url(body, options.allow_local_callbacks)?;
    Ok(CreateRequest {
        prompt: prompt.to_owned(),
        video_count,
        quality: quality.to_owned(),
        duration_s,
        audio,
        callback_url,
    })
}

/// A field that is present and not null.
fn present<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|value| !value.is_null())
}

fn optional_str<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match present(body, key) {
        None => Ok(None),
        Some(value) => value
            .as_str()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(key, format!("{key} must be a string"))),
    }
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            key,
            format!("{key} must be one of {}", allowed.join(", ")),
        ))
    }
}

fn validate_model(body: &Map<String, Value>) -> Result<(), ApiError> {
    match optional_str(body, "model")? {
        None => Err(ApiError::invalid("model", "model is required")),
        Some(MODEL) => Ok(()),
        Some(other) => Err(ApiError::invalid("model", format!("Unsupported model `{other}`"))),
    }
}

fn validate_prompt(body: &Map<String, Value>) -> Result<&str, ApiError> {
    let prompt = optional_str(body, "prompt")?.ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?;
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            format!("prompt must be at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    Ok(prompt)
}

fn validate_video_urls(body: &Map<String, Value>) -> Result<usize, ApiError> {
    let urls = present(body, "video_urls")
        .ok_or_else(|| ApiError::invalid("video_urls", "video_urls is required"))?
        .as_array()
        .ok_or_else(|| ApiError::invalid("video_urls", "video_urls must be an array of URLs"))?;
    if urls.is_empty() || urls.len() > 3 {
        return Err(ApiError::invalid("video_urls", "video_urls must hold 1 to 3 URLs"));
    }
    for (i, value) in urls.iter().enumerate() {
        let ok = value
            .as_str()
            .and_then(|text| Url::parse(text).ok())
            .is_some_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
        if !ok {
            return Err(ApiError::invalid(
                &format!("video_urls[{i}]"),
                "each video URL must be an http or https URL",
            ));
        }
    }
    Ok(urls.len())
}

fn validate_audio(body: &Map<String, Value>) -> Result<bool, ApiError> {
    let Some(params) = present(body, "model_params") else {
        return Ok(true);
    };
    let params = params
        .as_object()
        .ok_or_else(|| ApiError::invalid("model_params", "model_params must be an object"))?;
    match present(params, "generate_audio") {
        None => Ok(true),
        Some(value) => value
            .as_bool()
            .ok_or_else(|| ApiError::invalid("model_params.generate_audio", "generate_audio must be a boolean")),
    }
}

fn validate_callback_url(body: &Map<String, Value>, allow_local: bool) -> Result<Option<String>, ApiError> {
    const PARAM: &str = "callback_url";
    let Some(text) = optional_str(body, PARAM)? else {
        return Ok(None);
    };
    if text.len() > MAX_CALLBACK_URL_LEN {
        return Err(ApiError::invalid(
            PARAM,
            format!("callback_url must be at most {MAX_CALLBACK_URL_LEN} characters"),
        ));
    }
    let url = Url::parse(text).map_err(|_| ApiError::invalid(PARAM, "callback_url must be a valid URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_local => {}
        _ => return Err(ApiError::invalid(PARAM, "callback_url must use https")),
    }
    if !allow_local && net::is_internal_host(&url) {
        return Err(ApiError::invalid(
            PARAM,
            "callback_url must not point to an internal address",
        ));
    }
    Ok(Some(text.to_owned()))
}

/// One task, its fate fixed at creation; its status follows from the time elapsed.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    id: String,
    created: i64,
    started: Instant,
    pending: Duration,
    processing: Duration,
    outcome: Outcome,
    output_ms: u64,
    credits_reserved: f64,
    pub(crate) callback_url: Option<String>,
    /// Set by the completion timer, so the final state never waits on the wall clock alone.
    finalized: bool,
    prompt: String,
    /// What became of its callback: `none` (not asked, or not yet), `dropped` (the
    /// `callback_drop_pct` fault), `delivered` (an attempt got a 2xx) or `failed`.
    callback: &'static str,
    result_bytes: Option<u64>,
    result_hang: Duration,
}

/// What the file host serves for a completed task.
struct ResultFile {
    output_ms: u64,
    bytes: Option<u64>,
    hang: Duration,
}

enum Phase {
    Pending,
    Processing(u8),
    Final,
}

impl Task {
    fn new(id: String, created: i64, request: CreateRequest, markers: &Markers, options: &MockOptions) -> Self {
        let outcome = if markers.fail {
            Outcome::Failed
        } else if markers.cancel {
            Outcome::Cancelled
        } else {
            Outcome::Completed
        };
        let requested_ms = request.duration_s as i64 * 1000 + options.output_offset_ms;
        let output_ms = markers
            .out_ms
            .unwrap_or_else(|| requested_ms.max(MIN_OUTPUT_MS as i64) as u64);
        Task {
            id,
            created,
            started: Instant::now(),
            pending: Duration::from_millis(options.pending_ms),
            processing: Duration::from_millis(options.processing_ms) + markers.slow,
            outcome,
            output_ms,
            credits_reserved: credits(&request),
            callback_url: request.callback_url,
            finalized: false,
            prompt: request.prompt,
            callback: "none",
            result_bytes: markers.bytes,
            result_hang: markers.result_hang,
        }
    }

    fn total(&self) -> Duration {
        self.pending + self.processing
    }

    fn phase(&self, now: Instant) -> Phase {
        let elapsed = now.saturating_duration_since(self.started);
        if self.finalized || elapsed >= self.total() {
            Phase::Final
        } else if elapsed < self.pending {
            Phase::Pending
        } else {
            let done = (elapsed - self.pending).as_secs_f64() / self.processing.as_secs_f64().max(f64::EPSILON);
            Phase::Processing((1.0 + 98.0 * done).clamp(1.0, 99.0) as u8)
        }
    }

    pub(crate) fn is_open(&self, now: Instant) -> bool {
        !matches!(self.phase(now), Phase::Final)
    }

    /// The generated length, once the task has completed.
    fn completed_result(&self, now: Instant) -> Option<ResultFile> {
        (matches!(self.phase(now), Phase::Final) && self.outcome == Outcome::Completed).then_some(ResultFile {
            output_ms: self.output_ms,
            bytes: self.result_bytes,
            hang: self.result_hang,
        })
    }

    /// The upstream's task object as a query (or a callback) would show it at `now`.
    pub(crate) fn to_json(&self, base_url: &str, now: Instant) -> Value {
        let remaining = self.total().saturating_sub(now.saturating_duration_since(self.started));
        let (status, progress) = match self.phase(now) {
            Phase::Pending => ("pending", 0),
            Phase::Processing(progress) => ("processing", progress),
            Phase::Final => match self.outcome {
                Outcome::Completed => ("completed", 100),
                Outcome::Failed => ("failed", 0),
                Outcome::Cancelled => ("cancelled", 0),
            },
        };
        let open = matches!(status, "pending" | "processing");
        let mut task = json!({
            "created": self.created,
            "id": self.id,
            "model": MODEL,
            "object": "video.generation.task",
            "progress": progress,
            "status": status,
            "type": "video",
            "task_info": {
                "can_cancel": open,
                "estimated_time": if open { remaining.as_millis().div_ceil(1000) as u64 } else { 0 },
            },
            "usage": {
                "billing_rule": "per_second",
                "credits_reserved": self.credits_reserved,
                "user_group": "default",
            },
        });
        match (status, &mut task) {
            ("completed", Value::Object(map)) => {
                map.insert(
                    "results".into(),
                    json!([format!("{base_url}/files/results/{}.mp4", self.id)]),
                );
            }
            ("failed", Value::Object(map)) => {
                let message = "The model produced no content for this request (simulated by [mock:fail])";
                map.insert(
                    "error".into(),
                    json!({"code": "generation_failed_no_content", "message": message}),
                );
            }
            ("cancelled", Value::Object(map)) => {
                let message = "The task was cancelled (simulated by [mock:cancel])";
                map.insert("error".into(), json!({"code": "request_cancelled", "message": message}));
            }
            _ => {}
        }
        task
    }
}

/// Credits held at creation: requested output plus at most 5 s of input, at a per-second rate
/// by quality and audio (100 credits per list-price dollar).
fn credits(request: &CreateRequest) -> f64 {
    let per_second = match (request.quality.as_str(), request.audio) {
        ("1080p", true) => 7.5,
        ("1080p", false) => 3.75,
        (_, true) => 5.0,
        (_, false) => 2.5,
    };
    let input_s = if request.video_count == 3 { 4.95 } else { 5.0 };
    ((input_s + request.duration_s as f64) * per_second * 100.0).round() / 100.0
}

/// `task-unified-<unix>-<8 lowercase alphanumerics>`.
fn new_task_id(unix: i64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..8)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("{ID_PREFIX}{unix}-{suffix}")
}

impl Shared {
    /// Stores a new task, starts its completion timer and returns its first task object.
    fn create_task(self: &Arc<Self>, request: CreateRequest, markers: &Markers) -> Value {
        let (id, task) = {
            let mut tasks = lock(&self.tasks);
            let created = chrono::Utc::now().timestamp();
            let id = loop {
                let id = new_task_id(created);
                if !tasks.contains_key(&id) {
                    break id;
                }
            };
            let task = Task::new(id.clone(), created, request, markers, &self.options);
            tasks.insert(id.clone(), task.clone());
            (id, task)
        };
        self.count(|stats| stats.tasks_created += 1);
        let shared = Arc::clone(self);
        let total = task.total();
        self.spawn(async move {
            tokio::time::sleep(total).await;
            shared.finish(&id).await;
        });
        task.to_json(&self.base_url, task.started)
    }

    /// Marks a task final (once) and, if it asked for one, delivers its callback (subject to
    /// the drop, duplicate and delay options). False for an unknown task.
    pub(crate) async fn finish(&self, id: &str) -> bool {
        let (body, callback_url) = {
            let mut tasks = lock(&self.tasks);
            let Some(task) = tasks.get_mut(id) else {
                return false;
            };
            if task.finalized {
                return true;
            }
            task.finalized = true;
            (task.to_json(&self.base_url, Instant::now()), task.callback_url.clone())
        };
        if let Some(url) = callback_url {
            let callback = match callbacks::deliver_faulty(self, &url, &body).await {
                None => "dropped",
                Some(true) => "delivered",
                Some(false) => "failed",
            };
            if let Some(task) = lock(&self.tasks).get_mut(id) {
                task.callback = callback;
            }
        }
        true
    }

    /// Every task: id, prompt, status and what became of its callback.
    pub(crate) fn task_list(&self) -> Vec<Value> {
        let now = Instant::now();
        let tasks = lock(&self.tasks);
        let mut list: Vec<Value> = tasks
            .values()
            .map(|task| {
                json!({"id": task.id, "prompt": task.prompt, "status": task.to_json(&self.base_url, now)["status"],
                       "callback": task.callback})
            })
            .collect();
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        list
    }

    fn task_json(&self, id: &str) -> Option<Value> {
        lock(&self.tasks)
            .get(id)
            .map(|task| task.to_json(&self.base_url, Instant::now()))
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::bad_request(format!("Malformed JSON body: {error}")))
}

/// `POST /v1/videos/generations`.
pub(crate) async fn create(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    shared.count(|stats| stats.creates += 1);
    shared.authorize(&req)?;
    let value = parse_json(&body)?;
    shared.count(|stats| stats.last_create_body = Some(value.clone()));
    let markers = match value.get("prompt").and_then(Value::as_str) {
        Some(prompt) => parse_markers(prompt).map_err(|message| ApiError::invalid("prompt", message))?,
        None => Markers::default(),
    };
    if let Some(status) = markers.http {
        return Err(ApiError::simulated(status));
    }
    let request = validate(&value, &shared.options)?;
    let task = shared.into_inner().create_task(request, &markers);
    if !markers.hang.is_zero() {
        tokio::time::sleep(markers.hang).await;
    }
    match markers.after {
        None => Ok(HttpResponse::Ok().json(task)),
        Some(after) => Ok(answer_after_create(after, task)?),
    }
}

/// The broken answer `[mock:after=...]` asks for, to a create that did create its task.
fn answer_after_create(after: After, mut task: Value) -> Result<HttpResponse, ApiError> {
    match after {
        After::Status(status) => Err(ApiError::simulated(status)),
        After::NoId => {
            if let Some(object) = task.as_object_mut() {
                object.remove("id");
            }
            Ok(HttpResponse::Ok().json(task))
        }
        After::Huge => {
            task["padding"] = Value::String("x".repeat(HUGE_ANSWER_BYTES));
            Ok(HttpResponse::Ok().json(task))
        }
        After::Reset => {
            let head =
                futures_util::stream::once(async { Ok::<_, std::io::Error>(web::Bytes::from_static(b"{\"id\":")) });
            let broken = futures_util::stream::once(async {
                Err::<web::Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated reset",
                ))
            });
            Ok(HttpResponse::Ok()
                .content_type("application/json")
                .streaming(futures_util::StreamExt::chain(head, broken)))
        }
    }
}

/// `GET /v1/tasks/{task_id}`.
pub(crate) async fn query(
    req: HttpRequest,
    path: web::Path<String>,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    shared.count(|stats| stats.queries += 1);
    shared.authorize(&req)?;
    let id = path.into_inner();
    if !id.starts_with(ID_PREFIX) {
        return Err(ApiError::invalid_task_id(&id));
    }
    let task = shared
        .task_json(&id)
        .ok_or_else(|| ApiError::not_found(format!("Task `{id}` not found")))?;
    Ok(HttpResponse::Ok().json(task))
}

/// `GET|HEAD /files/results/{task id}.mp4`: the generated video, once completed (no key needed,
/// like the upstream's result links).
pub(crate) async fn result_file(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    let name = path.into_inner();
    let result = name.strip_suffix(".mp4").and_then(|id| {
        lock(&shared.tasks)
            .get(id)
            .and_then(|task| task.completed_result(Instant::now()))
    });
    let Some(result) = result else {
        return files::not_found();
    };
    if !result.hang.is_zero() {
        tokio::time::sleep(result.hang).await;
    }
    let video = mp4::mp4_with_duration(result.output_ms);
    match result.bytes {
        Some(total) if total >= video.len() as u64 + 8 => files::serve_padded(&req, video, total, "video/mp4"),
        _ => files::serve_bytes(&req, video.into(), "video/mp4"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Value {
        json!({"model": MODEL, "prompt": "character1 waves", "video_urls": ["https://cdn.example.com/a.mp4"]})
    }

    fn param_of(body: &Value, allow_local: bool) -> Option<Value> {
        let options = MockOptions {
            allow_local_callbacks: allow_local,
            ..MockOptions::default()
        };
        validate(body, &options)
            .err()
            .map(|error| error.body()["error"]["param"].clone())
    }

    #[test]
    fn markers_are_read_anywhere_in_the_prompt() {
        let m = parse_markers("a [mock:out=4.8] b [mock:slow=0.5][mock:hang=1] [mock:fail] [mock:http=429]").unwrap();
        assert_eq!(
            parse_markers("[mock:after=504]").unwrap().after,
            Some(After::Status(StatusCode::GATEWAY_TIMEOUT))
        );
        assert_eq!(parse_markers("[mock:after=noid]").unwrap().after, Some(After::NoId));
        assert_eq!(parse_markers("[mock:after=reset]").unwrap().after, Some(After::Reset));
        assert_eq!(m.out_ms, Some(4800));
        assert_eq!(m.slow, Duration::from_millis(500));
        assert_eq!(m.hang, Duration::from_secs(1));
        assert!(m.fail && !m.cancel);
        assert_eq!(m.http, Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(parse_markers("plain prompt").unwrap(), Markers::default());
        for bad in [
            "[mock:out=abc]",
            "[mock:out=0]",
            "[mock:http=200]",
            "[mock:after=200]",
            "[mock:after=later]",
            "[mock:nope]",
            "[mock:fail",
            "[mock:slow=-1]",
        ] {
            assert!(parse_markers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_documented_body_passes_and_defaults_apply() {
        let request = validate(&body(), &MockOptions::default()).unwrap();
        assert_eq!(
            (request.duration_s, request.audio, request.quality.as_str()),
            (5, true, "720p")
        );
        let mut full = body();
        full["aspect_ratio"] = json!("9:16");
        full["quality"] = json!("1080p");
        full["duration"] = json!(10);
        full["model_params"] = json!({"generate_audio": false});
        full["callback_url"] = json!("https://hooks.example.com/cb");
        full["seed"] = json!(42);
        let request = validate(&full, &MockOptions::default()).unwrap();
        assert_eq!(request.callback_url.as_deref(), Some("https://hooks.example.com/cb"));
        assert_eq!(credits(&request), 56.25);
    }

    #[test]
    fn each_invalid_field_is_named_in_param() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("model", json!("other-model"), "model"),
            ("prompt", json!("x".repeat(1501)), "prompt"),
            ("prompt", json!(""), "prompt"),
            ("video_urls", json!([]), "video_urls"),
            (
                "video_urls",
                json!(["https://a/1", "https://a/2", "https://a/3", "https://a/4"]),
                "video_urls",
            ),
            ("video_urls", json!(["https://a/1", "ftp://a/2"]), "video_urls[1]"),
            ("aspect_ratio", json!("2:1"), "aspect_ratio"),
            ("quality", json!("4k"), "quality"),
            ("duration", json!(11), "duration"),
            ("duration", json!(1), "duration"),
            ("duration", json!(5.5), "duration"),
            ("duration", json!("5"), "duration"),
            (
                "model_params",
                json!({"generate_audio": "yes"}),
                "model_params.generate_audio",
            ),
            ("callback_url", json!("http://hooks.example.com/cb"), "callback_url"),
            ("callback_url", json!("https://127.0.0.1/cb"), "callback_url"),
            ("callback_url", json!("https://10.0.0.7/cb"), "callback_url"),
            ("callback_url", json!("https://localhost/cb"), "callback_url"),
            (
                "callback_url",
                json!(format!("https://example.com/{}", "a".repeat(2048))),
                "callback_url",
            ),
        ];
        for (field, value, param) in cases {
            let mut request = body();
            request[field] = value;
            assert_eq!(param_of(&request, false), Some(json!(param)), "{field}");
        }
        let mut missing = body();
        missing.as_object_mut().unwrap().remove("video_urls");
        assert_eq!(param_of(&missing, false), Some(json!("video_urls")));
        assert_eq!(param_of(&json!([1]), false), Some(Value::Null));
    }

    #[test]
    fn local_callbacks_pass_only_when_allowed() {
        let mut request = body();
        request["callback_url"] = json!("http://127.0.0.1:9000/cb");
        assert_eq!(param_of(&request, false), Some(json!("callback_url")));
        assert_eq!(param_of(&request, true), None);
    }

    #[test]
    fn task_ids_have_the_upstream_shape() {
        let id = new_task_id(1_700_000_000);
        let suffix = id.strip_prefix("task-unified-1700000000-").unwrap();
        assert_eq!(suffix.len(), 8);
        assert!(suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }

    #[test]
    fn result_markers_size_and_delay_the_result_file() {
        let m = parse_markers("[mock:bytes=1000000] [mock:result_hang=2.5]").unwrap();
        assert_eq!(m.bytes, Some(1_000_000));
        assert_eq!(m.result_hang, Duration::from_millis(2500));
        for bad in ["[mock:bytes=-1]", "[mock:bytes=5000000000]", "[mock:result_hang=x]"] {
            assert!(parse_markers(bad).is_err(), "{bad}");
        }
    }
}
