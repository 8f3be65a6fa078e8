//! vidgate's own callback route for the upstream: authenticated by the HMAC token in the
//! path, answered at once; the body is never read, let alone trusted.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// `POST /v1/upstream/callbacks/{token}`: the upstream says a task ended. Nothing in the
/// body counts: the reservation is made due for an immediate re-fetch (durably, in the
/// store) and this replica's reconciler is woken; what the upstream answers then decides.
#[utoipa::path(
    post,
    path = "/v1/upstream/callbacks/{token}",
    tag = "callbacks",
    security(()),
    params(("token" = String, Path, description = "`{reservation_id}.{base64url HMAC}`, minted by the gateway for each create")),
    request_body(content = serde_json::Value, description = "The upstream's task object (ignored: the task is re-fetched)"),
    responses(
        (status = 200, description = "Received; the task will be re-fetched", body = crate::openapi::CallbackAck),
        (status = 401, description = "`unauthenticated`: not a token this gateway minted", body = crate::openapi::ErrorEnvelope),
        (status = 404, description = "`task_not_found`: a genuine token whose reservation this store does not hold", body = crate::openapi::ErrorEnvelope),
        (status = 405, description = "`method_not_allowed`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn upstream_callback(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let reservation_id = state
        .completion
        .verify_token(&path.into_inner())
        .ok_or_else(|| ApiError::Unauthenticated("not a valid callback token".into()))?;
    let now_ms = state.clock.now().timestamp_millis();
    match state.store.mark_due(&reservation_id, now_ms).await? {
        Some(_) => {
            state.completion.wake_reconciler();
            Ok(HttpResponse::Ok().json(json!({"received": true})))
        }
        None => {
            tracing::warn!(reservation_id = %reservation_id, "genuine callback token for an unknown reservation");
            Err(ApiError::TaskNotFound(reservation_id))
        }
    }
}
