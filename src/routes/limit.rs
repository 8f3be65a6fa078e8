//! Request-rate limits at the HTTP edge: which limits a caller meets, the 429 and the
//! `RateLimit` headers, and the middleware that limits every authenticated call other than
//! creates and task queries (those fold the check into their one store step).

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpResponseBuilder, ResponseError, web};

use super::guard::TenantCaller;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::limits::{Policy, RateCheck, RateDecision, checks_for};
use crate::state::AppState;

/// The limits of `caller`'s tenant (and user) for `policy`, from the tenant cache.
pub async fn caller_checks(
    state: &AppState,
    caller: &TenantCaller,
    policy: Policy,
) -> Result<Vec<RateCheck>, ApiError> {
    tenant_checks(state, &caller.tenant, &caller.caller.user, policy).await
}

async fn tenant_checks(state: &AppState, tenant: &str, user: &str, policy: Policy) -> Result<Vec<RateCheck>, ApiError> {
    let record = state
        .tenants
        .get(state.store.as_ref(), tenant)
        .await?
        .ok_or_else(|| ApiError::UnknownTenant(tenant.to_string()))?;
    Ok(checks_for(policy, tenant, user, &record.settings))
}

/// The in-process shield in front of work that costs DNS lookups and fetches (probing a URL
/// a caller gave): twice the tenant's `policy` limits, so only a flood meets it; the store
/// step still holds the real limit.
pub fn prelimit(state: &AppState, policy: Policy, rate: &[RateCheck]) -> Result<(), ApiError> {
    let doubled: Vec<RateCheck> = rate
        .iter()
        .map(|c| RateCheck {
            key: c.key.clone(),
            per_minute: c.per_minute.saturating_mul(2),
            burst: c.burst.saturating_mul(2),
        })
        .collect();
    match state.prelimit.check(&doubled) {
        Some(decision) if !decision.allowed => Err(refusal(policy, decision)),
        _ => Ok(()),
    }
}

pub fn refusal(policy: Policy, decision: RateDecision) -> ApiError {
    ApiError::RateLimited {
        message: format!(
            "the tenant's {} limit ({} per minute) is reached; retry in {} s",
            policy.name(),
            decision.per_minute,
            decision.retry_after_secs()
        ),
        policy,
        decision,
    }
}

pub fn add_headers(response: &mut HttpResponseBuilder, policy: Policy, decision: Option<RateDecision>) {
    if let Some(decision) = decision {
        for header in decision.headers(policy) {
            response.insert_header(header);
        }
    }
}

/// Creates and task queries check their limits inside their own store step.
fn folded(req: &ServiceRequest) -> bool {
    (req.method() == Method::POST && req.path() == "/v1/videos/generations")
        || (req.method() == Method::GET && req.path().starts_with("/v1/tasks/"))
}

/// The `reads` limit for every other call a tenant's token makes (usage, uploads, ...).
pub async fn limit_reads(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let caller = req.extensions().get::<Caller>().cloned();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let (
        Some(Caller {
            tenant: Some(tenant),
            user,
            ..
        }),
        Some(state),
    ) = (caller, state)
    else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    if folded(&req) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let decision = match check(&state, &tenant, &user).await {
        Ok(decision) => decision,
        Err(error) => return Ok(req.into_response(error.error_response()).map_into_right_body()),
    };
    if let Some(decision) = decision.filter(|d| !d.allowed) {
        let error = refusal(Policy::Reads, decision);
        return Ok(req.into_response(error.error_response()).map_into_right_body());
    }
    let mut response = next.call(req).await?;
    if let Some(decision) = decision {
        for (name, value) in decision.headers(Policy::Reads) {
            if let Ok(value) = value.parse() {
                response.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static(name_lower(name)),
                    value,
                );
            }
        }
    }
    Ok(response.map_into_left_body())
}

async fn check(state: &AppState, tenant: &str, user: &str) -> Result<Option<RateDecision>, ApiError> {
    let checks = tenant_checks(state, tenant, user, Policy::Reads).await?;
    Ok(state.store.check_rate(&checks).await?)
}

fn name_lower(name: &'static str) -> &'static str {
    match name {
        "RateLimit-Policy" => "ratelimit-policy",
        _ => "ratelimit",
    }
}
