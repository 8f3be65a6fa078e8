//! `GET /metrics`: the Prometheus text exposition, budget gauges refreshed from the store
//! first so every replica reports the truth; optionally behind its own bearer token.

use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::stream::{self, StreamExt};
use secrecy::ExposeSecret;

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::PeriodKeys;

/// Tenants whose budget gauges are read at once during a scrape.
const REFRESH_CONCURRENCY: usize = 32;

#[utoipa::path(get, path = "/metrics", tag = "operations", security((), ("bearer" = [])),
    description = "Prometheus text format. Needs the metrics bearer token when `metrics.bearer_token` is set; \
absent when `metrics.listen` serves it elsewhere.",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let expected = state.config.metrics.bearer_token.expose_secret();
    if !expected.is_empty() {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), expected.as_bytes())) {
            return Err(ApiError::Unauthenticated(
                "/metrics requires the metrics bearer token".into(),
            ));
        }
    }
    refresh_budgets(&state).await;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}

/// Budget gauges come from the store at scrape time, `REFRESH_CONCURRENCY` tenants at a
/// time (pipelined on the worker's Redis connection); a store error leaves the last values.
async fn refresh_budgets(state: &AppState) {
    let periods = &PeriodKeys::at(state.clock.now());
    let currency = &state.config.pricing.currency;
    stream::iter(&state.config.tenants)
        .map(|entry| async move {
            let Ok(Some(tenant)) = state.tenants.get(state.store.as_ref(), &entry.id).await else {
                return;
            };
            let period = periods.for_kind(tenant.settings.period);
            if let Ok(usage) = state.store.period_usage(&tenant.id, period).await {
                state.metrics.set_budget(
                    &tenant.id,
                    currency,
                    tenant.settings.budget,
                    usage.spent,
                    usage.reserved,
                );
            }
        })
        .buffer_unordered(REFRESH_CONCURRENCY)
        .collect::<()>()
        .await;
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
