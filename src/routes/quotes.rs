//! `POST /v1/quotes`: a create body priced without creating anything. The same validation,
//! pre-limit, probe and price as a create, so `reserve` is the hold that create would take;
//! no upstream call, no hold, and never a refusal for money or concurrency.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::body::read_json;
use super::generations::probe_references;
use super::guard::TenantCaller;
use super::limit;
use super::validate::parse_create;
use crate::billing::{Micros, format_money};
use crate::callbacks;
use crate::error::ApiError;
use crate::limits::Policy;
use crate::state::AppState;
use crate::store::{PeriodKeys, TenantRecord};

/// The answer: money as decimal strings with 6 decimals.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"currency": "USD", "reserve": "0.415000", "price_per_second": "0.050000",
    "billed_input_ms": 3300, "max_output_ms": 5000, "budget_remaining": "487.240000"}))]
pub struct Quote {
    pub currency: String,
    /// What a create with this body would hold now (and charge if it generates the full duration).
    pub reserve: String,
    /// For the body's model, quality and `model_params.generate_audio`.
    pub price_per_second: String,
    /// The reference videos' billed seconds (1 video: up to 5 s; 2: 2.5 s each; 3: 1.65 s each).
    pub billed_input_ms: u64,
    /// The requested `duration`; the final charge uses the generated length.
    pub max_output_ms: u64,
    /// The smaller of the tenant's and the caller's remaining budget this period; null without a cap.
    pub budget_remaining: Option<String>,
}

/// `POST /v1/quotes`.
#[utoipa::path(post, path = "/v1/quotes", tag = "tasks",
    request_body = crate::openapi::CreateTaskRequest,
    responses(
        (status = 200, description = "The price of this create body; also when it is over budget", body = Quote),
        (status = 400, description = "`invalid_request`, `invalid_callback_url`, `reference_video_invalid`, `reference_video_unreachable`, `reference_video_forbidden`", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden`, `unknown_tenant`, `quality_not_allowed`", body = crate::openapi::ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "`rate_limited` (the tenant's reads limit, or the in-process create pre-limit)", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn quote(
    state: web::Data<AppState>,
    caller: TenantCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, state.config.server.max_body_bytes).await?;
    let request = parse_create(&body, |model| state.config.pricing.models.contains_key(model))?;
    let rate = limit::caller_checks(&state, &caller, Policy::Creates).await?;
    limit::prelimit(&state, Policy::Creates, &rate)?;
    // After the pre-limit: resolving the host costs a DNS lookup (up to 2 s).
    if let Some(url) = &request.callback_url {
        callbacks::check_callback_url(&state, url).await?;
    }
    let durations = probe_references(&state, &request).await?;
    let tenant = state
        .tenants
        .get(state.store.as_ref(), &caller.tenant)
        .await?
        .ok_or_else(|| ApiError::UnknownTenant(caller.tenant.clone()))?;
    if !tenant.settings.allowed_qualities.contains(&request.quality) {
        return Err(ApiError::QualityNotAllowed(request.quality));
    }
    let priced = request.price(&state.config, &durations)?;
    let remaining = budget_remaining(&state, &tenant, &caller.caller.user).await?;
    Ok(HttpResponse::Ok().json(Quote {
        currency: state.config.pricing.currency.clone(),
        reserve: format_money(priced.charge.amount),
        price_per_second: format_money(priced.price_per_second),
        billed_input_ms: priced.charge.billed_input_ms,
        max_output_ms: priced.charge.billed_output_ms,
        budget_remaining: remaining.map(format_money),
    }))
}

/// What the reserve step would compare a hold with: the tenant's and the user's budget minus
/// spent and reserved in the tenant's current period (never below zero), the smaller one.
async fn budget_remaining(state: &AppState, tenant: &TenantRecord, user: &str) -> Result<Option<Micros>, ApiError> {
    let settings = &tenant.settings;
    let period = PeriodKeys::at(state.clock.now());
    let period = period.for_kind(settings.period);
    let left =
        |budget: Micros, spent: Micros, reserved: Micros| budget.saturating_sub(spent).saturating_sub(reserved).max(0);
    let mut remaining = None;
    if let Some(budget) = settings.budget {
        let used = state.store.period_usage(&tenant.id, period).await?;
        remaining = Some(left(budget, used.spent, used.reserved));
    }
    if let Some(budget) = settings.user_budget {
        let used = state.store.user_period_usage(&tenant.id, user, period).await?;
        let user_left = left(budget, used.spent, used.reserved);
        remaining = Some(remaining.map_or(user_left, |tenant_left: Micros| tenant_left.min(user_left)));
    }
    Ok(remaining)
}
