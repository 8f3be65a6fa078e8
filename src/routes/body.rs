//! Reading JSON request bodies with the configured size cap, refusing with our envelope
//! (never actix's plain-text extractor errors).

use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde_json::Value;

use crate::error::ApiError;

/// Reads at most `limit` bytes and parses them as JSON.
pub async fn read_json(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Value, ApiError> {
    if let Some(content_type) = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
        && !content_type.to_ascii_lowercase().starts_with("application/json")
    {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type must be application/json (got {content_type:?})"
        )));
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid_body(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        return Err(ApiError::invalid_body("the body must be a JSON object"));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::invalid_body(format!("malformed JSON: {e}")))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("the JSON body must be at most {limit} bytes"))
}
