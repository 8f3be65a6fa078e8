//! `GET /v1/usage`: the caller's own tenant, one period (the current one by default).

use actix_web::{HttpRequest, HttpResponse, web};

use super::guard::TenantCaller;
use super::query::QueryParams;
use crate::error::ApiError;
use crate::reports;
use crate::state::AppState;
use crate::store::Period;

/// `GET /v1/usage[?period=P]`: the caller's tenant.
#[utoipa::path(get, path = "/v1/usage", tag = "usage",
    params(("period" = Option<String>, Query, description = "`2026-11`, `2026-W48`, `2026-11-25` or `total`; default: the tenant's current period")),
    responses(
        (status = 200, description = "Budget, spent, reserved and remaining, by quality/audio", body = crate::reports::TenantUsage),
        (status = 400, description = "`invalid_request` (a parameter, named in `param`)", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (role missing), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn usage(
    state: web::Data<AppState>,
    caller: TenantCaller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = QueryParams::parse(&req, &["period"])?;
    let tenant = state
        .tenants
        .get(state.store.as_ref(), &caller.tenant)
        .await?
        .ok_or_else(|| ApiError::UnknownTenant(caller.tenant.clone()))?;
    let period = params
        .parsed("period", str::parse::<Period>)?
        .unwrap_or_else(|| Period::current(tenant.settings.period, state.clock.now()));
    let report = reports::tenant_usage(state.store.as_ref(), &tenant, &period, &state.config.pricing.currency).await?;
    Ok(HttpResponse::Ok().json(report))
}
