//! Liveness and readiness probes.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Up", body = crate::openapi::Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: the store answers and token keys are loaded.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Readiness),
        (status = 503, description = "Store unreachable or no usable key", body = crate::openapi::Readiness),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.store.ping().await;
    let keys = state.auth.keys_loaded();
    let body = json!({
        "status": if store.is_ok() && keys { "ready" } else { "not_ready" },
        "store": store.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into()),
        "keys": if keys { "ok" } else { "no usable key" },
    });
    if store.is_ok() && keys {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
