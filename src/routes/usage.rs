//! `GET /v1/usage`: the caller's own tenant, one period (the current one by default).

use actix_web::{HttpRequest, HttpResponse, web};

use super::guard::TenantCaller;
use super::query::QueryParams;
use crate::error::ApiError;
use crate::reports;
use crate::state::AppState;
use crate::store::Period;

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
