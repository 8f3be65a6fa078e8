//! `GET /v1/tasks/{task_id}/content`: a completed task's video, for its own tenant only: from
//! the archive once copied (found by tenant and task id, so also after the task's record was
//! deleted by retention), else streamed from the upstream's result link while it lives.
//! `Range` (one range; several are answered whole) and `ETag`/`If-None-Match`/`If-Range`.

use actix_web::http::StatusCode;
use actix_web::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, IF_RANGE, RANGE,
};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use futures_util::TryStreamExt;
use object_store::ObjectMeta;
use object_store::path::Path;
use reqwest::header::HeaderMap;

use super::guard::TenantCaller;
use super::limit;
use crate::archive::Archive;
use crate::callbacks;
use crate::error::ApiError;
use crate::limits::Policy;
use crate::state::AppState;
use crate::store::{ReservationRecord, ReservationState};
use crate::upstream::{self, TaskStatus};

const VIDEO_MP4: &str = "video/mp4";

pub fn configure(cfg: &mut web::ServiceConfig) {
    // HEAD as GET (actix sends no body for it): players and `curl -I` ask for the length first.
    cfg.service(
        super::resource("/v1/tasks/{task_id}/content", "GET, HEAD")
            .route(web::get().to(content))
            .route(web::head().to(content)),
    );
}

/// Where the video is served from.
enum Source {
    Archive(Path, ObjectMeta),
    Link(String),
}

/// `GET /v1/tasks/{task_id}/content`.
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}/content",
    tag = "tasks",
    params(
        ("task_id" = String, Path, description = "The upstream task id"),
        ("Range" = Option<String>, Header, description = "One byte range (`bytes=0-1023`, `bytes=1024-`, `bytes=-1024`); several ranges are answered whole"),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` from an earlier answer: 304 when the video is unchanged"),
        ("If-Range" = Option<String>, Header, description = "An `ETag`: the `Range` applies only while the video still has it"),
    ),
    responses(
        (status = 200, description = "The video (from the archive once copied, else from the upstream's link); `ETag`, `Accept-Ranges: bytes`", body = crate::openapi::VideoFile, content_type = "video/mp4"),
        (status = 206, description = "The requested byte range, with `Content-Range`", body = crate::openapi::VideoFile, content_type = "video/mp4"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (the token carries no tenant), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 404, description = "`task_not_found`: not the caller's tenant's task, or never seen", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`result_not_ready`: the task is still running", body = crate::openapi::ErrorEnvelope),
        (status = 410, description = "`result_gone`: the task failed or was cancelled, or its video is neither archived nor still at the upstream", body = crate::openapi::ErrorEnvelope),
        (status = 416, description = "The range lies outside the video (`Content-Range: bytes */SIZE`)"),
        (status = 429, description = "`rate_limited`", body = crate::openapi::ErrorEnvelope),
        (status = 502, description = "`upstream_error`: the upstream's result host failed", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn content(
    state: web::Data<AppState>,
    caller: TenantCaller,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let task_id = path.into_inner();
    let rate = limit::caller_checks(&state, &caller, Policy::Reads).await?;
    let read = state.store.read_task(&task_id, &rate).await?;
    if let Some(decision) = read.rate.filter(|d| !d.allowed) {
        return Err(limit::refusal(Policy::Reads, decision));
    }
    let source = match read.record {
        Some(record) if record.tenant == caller.tenant => source_of(&state, record, &task_id).await?,
        Some(_) => return Err(ApiError::TaskNotFound(task_id)),
        // No record (retention deleted it, or never seen): only this tenant's archive can
        // have the video, since its name holds the tenant.
        None => archived(&state, &caller.tenant, &task_id)
            .await?
            .ok_or_else(|| ApiError::TaskNotFound(task_id.clone()))?,
    };
    let mut response = match source {
        Source::Archive(path, meta) => from_archive(&state, &req, &path, &meta).await?,
        Source::Link(url) => from_link(&state, &req, &url).await?,
    };
    if let Some(decision) = read.rate {
        for (name, value) in decision.headers(Policy::Reads) {
            if let (Ok(name), Ok(value)) = (
                actix_web::http::header::HeaderName::try_from(name),
                actix_web::http::header::HeaderValue::from_str(&value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    Ok(response)
}

/// The caller's own task: its video's source, once the task has completed.
async fn source_of(state: &AppState, record: ReservationRecord, task_id: &str) -> Result<Source, ApiError> {
    let record = current(state, record, task_id).await?;
    match archived(state, &record.tenant, task_id).await {
        Ok(Some(found)) => return Ok(found),
        Ok(None) => {}
        // The archive is away: the upstream's link may still serve the video.
        Err(error) => tracing::warn!(
            task_id,
            "content: the archive did not answer ({error}); trying the upstream's link"
        ),
    }
    let now_ms = state.clock.now().timestamp_millis();
    if record.result_expires_ms.is_some_and(|expires| now_ms >= expires) {
        return Err(ApiError::ResultGone(
            "the video was not archived and the upstream's link has expired".into(),
        ));
    }
    let kept = record
        .last_task
        .as_deref()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|task| upstream::result_url(&task).map(str::to_string));
    let url = match kept {
        Some(url) => url,
        None => {
            let task = state.upstream.get_task_for_caller(task_id).await?;
            upstream::result_url(&task)
                .map(str::to_string)
                .ok_or_else(|| ApiError::ResultGone("the upstream names no result for this task".into()))?
        }
    };
    Ok(Source::Link(url))
}

/// The record once its task is known to have completed: a task not yet final here is asked of
/// the upstream (and settled, like a query); 409 while it runs, 410 when it produced nothing.
async fn current(state: &AppState, record: ReservationRecord, task_id: &str) -> Result<ReservationRecord, ApiError> {
    let mut running = false;
    let record = if record.state == ReservationState::Reserved || record.charges_late() {
        let task = state.upstream.get_task_for_caller(task_id).await?;
        running = TaskStatus::of(&task) == TaskStatus::Running;
        callbacks::observe(state, record, &task).await?
    } else {
        record
    };
    match record.state {
        ReservationState::Settled => Ok(record),
        _ if running => Err(ApiError::ResultNotReady(
            "the task is still running: its video is not ready".into(),
        )),
        _ => Err(ApiError::ResultGone(
            "the task failed or was cancelled: it has no video".into(),
        )),
    }
}

/// The tenant's archived copy of the task's video, if any.
async fn archived(state: &AppState, tenant: &str, task_id: &str) -> Result<Option<Source>, ApiError> {
    let (Some(archive), Some(path)) = (&state.archive, Archive::path(tenant, task_id)) else {
        return Ok(None);
    };
    let meta = archive
        .head(&path)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(meta.map(|meta| Source::Archive(path, meta)))
}

/// Serves the archived object: 304 on a matching `If-None-Match`, 206/416 for a `Range`.
async fn from_archive(
    state: &AppState,
    req: &HttpRequest,
    path: &Path,
    meta: &ObjectMeta,
) -> Result<HttpResponse, ApiError> {
    let Some(archive) = &state.archive else {
        return Err(ApiError::Internal("archive source without an archive".into()));
    };
    let etag = quoted_etag(meta);
    let mut response = HttpResponse::Ok();
    response
        .insert_header((ETAG, etag.clone()))
        .insert_header((ACCEPT_RANGES, "bytes"))
        .insert_header((CACHE_CONTROL, "private"));
    if header(req, IF_NONE_MATCH).is_some_and(|tags| etag_listed(tags, &etag)) {
        return Ok(response.status(StatusCode::NOT_MODIFIED).finish());
    }
    let size = meta.size;
    let range = match requested_range(req, &etag, size) {
        Ranged::Whole => None,
        Ranged::Part(range) => Some(range),
        Ranged::Unsatisfiable => {
            return Ok(response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .insert_header((CONTENT_RANGE, format!("bytes */{size}")))
                .finish());
        }
    };
    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    let body = archive
        .get(path, range.clone())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(range) = range {
        response
            .status(StatusCode::PARTIAL_CONTENT)
            .insert_header((CONTENT_RANGE, format!("bytes {}-{}/{size}", range.start, range.end - 1)));
    }
    Ok(response.content_type(VIDEO_MP4).no_chunking(length).streaming(body))
}

/// Streams from the upstream's result link, passing the conditional and range headers on
/// and its answer back; a link that is gone is 410.
async fn from_link(state: &AppState, req: &HttpRequest, url: &str) -> Result<HttpResponse, ApiError> {
    let mut headers = HeaderMap::new();
    for name in ["range", "if-range", "if-none-match"] {
        if let Some(value) = req.headers().get(name)
            && let Ok(value) = reqwest::header::HeaderValue::from_bytes(value.as_bytes())
        {
            headers.insert(name, value);
        }
    }
    let wait = std::time::Duration::from_millis(state.config.probe.timeout_ms);
    let sending = state
        .prober
        .result_client()
        .send(reqwest::Method::GET, url, &headers, None);
    let fetched = match tokio::time::timeout(wait, sending).await {
        Err(_) => {
            return Err(ApiError::UpstreamError(format!(
                "the upstream's result host did not answer within {} ms",
                wait.as_millis()
            )));
        }
        Ok(Err(error)) => return Err(ApiError::UpstreamError(format!("the upstream's result host: {error}"))),
        Ok(Ok(fetched)) => fetched.response,
    };
    let status = fetched.status();
    match status.as_u16() {
        200 | 206 | 304 | 416 => {}
        403 | 404 | 410 => {
            return Err(ApiError::ResultGone(
                "the video was not archived and the upstream no longer has it".into(),
            ));
        }
        other => {
            return Err(ApiError::UpstreamError(format!(
                "the upstream's result host answered {other}"
            )));
        }
    }
    let mut response = HttpResponseBuilder::new(StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::OK));
    response.insert_header((CACHE_CONTROL, "private"));
    for name in [CONTENT_RANGE, ETAG, ACCEPT_RANGES] {
        if let Some(value) = fetched.headers().get(name.as_str()).and_then(|v| v.to_str().ok()) {
            response.insert_header((name, value.to_string()));
        }
    }
    if matches!(status.as_u16(), 304 | 416) {
        return Ok(response.finish());
    }
    response.insert_header((CONTENT_TYPE, VIDEO_MP4));
    if let Some(length) = fetched.content_length() {
        response.no_chunking(length);
    }
    Ok(response.streaming(fetched.bytes_stream().map_err(std::io::Error::other)))
}

enum Ranged {
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

/// The one range asked for; several ranges, a malformed header, or an `If-Range` naming
/// another version get the whole video.
fn requested_range(req: &HttpRequest, etag: &str, size: u64) -> Ranged {
    let Some(range) = header(req, RANGE) else {
        return Ranged::Whole;
    };
    if header(req, IF_RANGE).is_some_and(|tag| tag.trim() != etag) {
        return Ranged::Whole;
    }
    match http_range::HttpRange::parse(range, size) {
        Ok(ranges) if ranges.len() == 1 => {
            let one = ranges[0];
            Ranged::Part(one.start..one.start.saturating_add(one.length))
        }
        Ok(_) | Err(http_range::HttpRangeParseError::InvalidRange) => Ranged::Whole,
        Err(http_range::HttpRangeParseError::NoOverlap) => Ranged::Unsatisfiable,
    }
}

fn header(req: &HttpRequest, name: actix_web::http::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The object's `ETag`, quoted as HTTP wants it (S3 quotes its own, a directory does not).
fn quoted_etag(meta: &ObjectMeta) -> String {
    let tag = meta
        .e_tag
        .clone()
        .unwrap_or_else(|| format!("{:x}-{:x}", meta.size, meta.last_modified.timestamp_millis()));
    format!("\"{}\"", tag.trim_matches('"'))
}

/// Whether an `If-None-Match` list names `etag` (weak comparison) or is `*`.
fn etag_listed(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_are_compared_weakly() {
        assert!(etag_listed("\"a\"", "\"a\""));
        assert!(etag_listed("\"x\", W/\"a\"", "\"a\""));
        assert!(etag_listed("*", "\"a\""));
        assert!(!etag_listed("\"b\"", "\"a\""));
    }
}
