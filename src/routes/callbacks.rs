//! vidgate's own callback route for the upstream: authenticated by the sealed token in the
//! path (or a pre-AEAD HMAC token), answered at once; of the body only the task `id` is read, and only for a
//! reservation that has no task id yet (the task's state always comes from a re-fetch).

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::callbacks;
use crate::error::ApiError;
use crate::state::AppState;
use crate::upstream;

/// `POST /v1/upstream/callbacks/{token}`: the upstream says a task ended. For a reservation
/// whose create's outcome was unknown, the body's `id` is re-fetched and bound if it fits
/// (see `callbacks::recover`). Then the reservation is made due for an immediate re-fetch
/// (durably, in the store) and this replica's reconciler is woken; what the upstream
/// answers then decides.
#[utoipa::path(
    post,
    path = "/v1/upstream/callbacks/{token}",
    tag = "callbacks",
    security(()),
    params(("token" = String, Path, description = "base64url of an XChaCha20-Poly1305-sealed payload (the reservation and what charges it), minted by the gateway for each create; `{reservation_id}.{base64url HMAC}` from before still verifies")),
    request_body(content = serde_json::Value, description = "The upstream's task object: only its `id` is read, for a reservation whose create's outcome was unknown; the task is always re-fetched"),
    responses(
        (status = 200, description = "Received; the task will be re-fetched", body = crate::openapi::CallbackAck),
        (status = 401, description = "`unauthenticated`: not a token this gateway minted", body = crate::openapi::ErrorEnvelope),
        (status = 404, description = "`task_not_found`: a genuine token whose reservation this store does not hold and cannot rebuild (a token from before tokens were sealed, or a body without a task id)", body = crate::openapi::ErrorEnvelope),
        (status = 405, description = "`method_not_allowed`", body = crate::openapi::ErrorEnvelope),
        (status = 502, description = "`upstream_error`: the named task could not be re-fetched (the upstream retries its callback)", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn upstream_callback(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let token = state
        .completion
        .verify_token(&path.into_inner())
        .ok_or_else(|| ApiError::Unauthenticated("not a valid callback token".into()))?;
    let reservation_id = token.reservation_id();
    recover_unbound(&state, reservation_id, &body).await?;
    let now_ms = state.clock.now().timestamp_millis();
    if state.store.mark_due(reservation_id, now_ms).await?.is_some() {
        state.completion.wake_reconciler();
    } else {
        // Boxed: the rebuild's future (re-fetch, store step, settlement) is large and rare.
        Box::pin(callbacks::lost_record(&state, &token, &body)).await?;
    }
    Ok(HttpResponse::Ok().json(json!({"received": true})))
}

/// The body's task `id`, when the reservation still waits for one.
async fn recover_unbound(state: &AppState, reservation_id: &str, body: &[u8]) -> Result<(), ApiError> {
    let Ok(task) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    let Some(task_id) = upstream::task_id(&task) else {
        return Ok(());
    };
    match state.store.reservation(reservation_id).await? {
        Some(record) if record.task_id.is_none() => callbacks::recover(state, record, task_id).await,
        _ => Ok(()),
    }
}
