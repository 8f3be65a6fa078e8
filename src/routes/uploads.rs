//! The upload proxy to the upstream file host: multipart and base64 bodies are streamed
//! through as they arrive (never buffered whole), `Content-Length` required and capped
//! before a byte is forwarded; `/url` uploads pass the probe's address rules first.

use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::body::read_json;
use super::guard::TenantCaller;
use super::limit;
use crate::error::ApiError;
use crate::limits::Policy;
use crate::state::AppState;

/// 100 MB, as the upstream counts it.
pub const MAX_UPLOAD_BYTES: u64 = 100_000_000;
/// A base64 JSON body for a 100 MB file: 4/3 of it, plus room for the other fields.
const MAX_BASE64_BODY_BYTES: u64 = MAX_UPLOAD_BYTES / 3 * 4 + 65_536;
const URL_FIELDS: &[&str] = &["file_url", "file_name", "upload_path"];

/// `POST /api/v1/files/upload/stream` (multipart, field `file`).
#[utoipa::path(post, path = "/api/v1/files/upload/stream", tag = "files",
    request_body(content = crate::openapi::UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored on the file host", body = crate::openapi::UploadResponse),
        (status = 400, description = "`reference_video_invalid`: a stored video that can never be a reference", body = crate::openapi::ErrorEnvelope),
        (status = 411, description = "`length_required`", body = crate::openapi::ErrorEnvelope),
        (status = 413, description = "`payload_too_large`: over 100,000,000 bytes", body = crate::openapi::ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden`, `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `upstream_auth_failed`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`upstream_account_exhausted`, `store_unavailable`", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`upstream_timeout`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn stream(
    state: web::Data<AppState>,
    caller: TenantCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let route = Streamed {
        path: "/api/v1/files/upload/stream",
        content_type: "multipart/form-data",
        cap: MAX_UPLOAD_BYTES,
    };
    streamed(&state, &caller, &req, payload, route).await
}

/// `POST /api/v1/files/upload/base64` (JSON `base64_data`), streamed like a multipart upload.
#[utoipa::path(post, path = "/api/v1/files/upload/base64", tag = "files",
    request_body = crate::openapi::Base64Upload,
    responses(
        (status = 200, description = "Stored on the file host", body = crate::openapi::UploadResponse),
        (status = 400, description = "`reference_video_invalid`: a stored video that can never be a reference", body = crate::openapi::ErrorEnvelope),
        (status = 411, description = "`length_required`", body = crate::openapi::ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden`, `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `upstream_auth_failed`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`upstream_account_exhausted`, `store_unavailable`", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`upstream_timeout`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn base64(
    state: web::Data<AppState>,
    caller: TenantCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let route = Streamed {
        path: "/api/v1/files/upload/base64",
        content_type: "application/json",
        cap: MAX_BASE64_BODY_BYTES,
    };
    streamed(&state, &caller, &req, payload, route).await
}

/// A file-host route whose body is streamed through unparsed.
struct Streamed {
    path: &'static str,
    content_type: &'static str,
    /// Largest `Content-Length` accepted.
    cap: u64,
}

async fn streamed(
    state: &AppState,
    caller: &TenantCaller,
    req: &HttpRequest,
    payload: web::Payload,
    route: Streamed,
) -> Result<HttpResponse, ApiError> {
    let content_type = content_type(req, route.content_type)?;
    let length = content_length(req, route.cap)?;
    let answer = forward(state, route.path, &content_type, length, payload).await?;
    check_usable(state, &answer).await?;
    Ok(uploaded(caller, answer))
}

/// `POST /api/v1/files/upload/url` (JSON `file_url`): the URL must pass the probe's rules.
#[utoipa::path(post, path = "/api/v1/files/upload/url", tag = "files",
    request_body = crate::openapi::UrlUpload,
    responses(
        (status = 200, description = "Stored on the file host", body = crate::openapi::UploadResponse),
        (status = 400, description = "`invalid_request`, `reference_video_invalid`, `reference_video_unreachable`, `reference_video_forbidden`", body = crate::openapi::ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden`, `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "`rate_limited` (the tenant's reads limit, or its in-process pre-limit)", body = crate::openapi::ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `upstream_auth_failed`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`upstream_account_exhausted`, `store_unavailable`", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`upstream_timeout`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn url(
    state: web::Data<AppState>,
    caller: TenantCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, state.config.server.max_body_bytes).await?;
    let map = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("the body must be a JSON object"))?;
    if let Some(field) = map.keys().find(|k| !URL_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("unknown field {field:?}; allowed: {}", URL_FIELDS.join(", ")),
            field,
        ));
    }
    let file_url = map
        .get("file_url")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("file_url is required and must be a string", "file_url"))?;
    // Probed like a reference video: the address rules, and a file that could never be used
    // is refused before the file host spends quota on it. The probe resolves the host: only
    // after the in-process pre-limit.
    let rate = limit::caller_checks(&state, &caller, Policy::Reads).await?;
    limit::prelimit(&state, Policy::Reads, &rate)?;
    state
        .prober
        .probe(file_url)
        .await
        .map_err(|e| ApiError::reference_video(e, "file_url"))?;
    let answer = state.upstream.upload_json("/api/v1/files/upload/url", &body).await?;
    Ok(uploaded(&caller, answer))
}

fn content_type(req: &HttpRequest, expected: &str) -> Result<String, ApiError> {
    let value = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if value.to_ascii_lowercase().starts_with(expected) {
        Ok(value.to_string())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be {expected}"
        )))
    }
}

fn content_length(req: &HttpRequest, cap: u64) -> Result<u64, ApiError> {
    let length = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(ApiError::LengthRequired)?;
    if length > cap {
        return Err(ApiError::PayloadTooLarge(format!(
            "uploads are limited to {MAX_UPLOAD_BYTES} bytes (100 MB)"
        )));
    }
    Ok(length)
}

/// Pumps the caller's body into the upstream request chunk by chunk. The payload stream is
/// bound to this worker thread, so it feeds a channel the (Send) upstream body reads from.
async fn forward(
    state: &AppState,
    path: &str,
    content_type: &str,
    length: u64,
    mut payload: web::Payload,
) -> Result<Value, ApiError> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let pump = async move {
        let mut seen = 0u64;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::invalid_body(format!("upload interrupted: {e}")))?;
            seen += chunk.len() as u64;
            if seen > length {
                let _ = tx
                    .send(Err(std::io::Error::other("body longer than Content-Length")))
                    .await;
                return Err(ApiError::invalid_body("the body is longer than its Content-Length"));
            }
            if tx.send(Ok(chunk)).await.is_err() {
                break; // the upstream request ended early; its answer says why
            }
        }
        Ok(())
    };
    let (pumped, answer) = tokio::join!(pump, state.upstream.upload_stream(path, content_type, length, body));
    pumped?;
    Ok(answer?)
}

/// A stored video that could never be a reference (wrong container, too long) is reported
/// now rather than at create time; other files (images, audio) pass as the file host took them.
async fn check_usable(state: &AppState, answer: &Value) -> Result<(), ApiError> {
    let data = &answer["data"];
    let is_video = data["mime_type"].as_str().is_some_and(|m| m.starts_with("video/"));
    let Some(url) = data["file_url"].as_str().filter(|_| is_video) else {
        return Ok(());
    };
    state.prober.probe_upload(url).await.map(|_| ()).map_err(|e| {
        ApiError::reference_video(
            crate::probe::ProbeError::Invalid(format!("stored, but it can never be a reference video: {e}")),
            "file",
        )
    })
}

fn uploaded(caller: &TenantCaller, answer: Value) -> HttpResponse {
    tracing::info!(
        tenant = %caller.tenant,
        file_size = answer["data"]["file_size"].as_u64().unwrap_or(0),
        success = answer["success"].as_bool().unwrap_or(false),
        "file uploaded"
    );
    HttpResponse::Ok().json(if answer.is_object() {
        answer
    } else {
        json!({"success": false})
    })
}
