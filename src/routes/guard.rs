//! Deny-by-default authentication: a middleware around the whole app verifies the bearer
//! token, a JWT or a tenant API key (except on the public routes listed here), checks the
//! tenant is known, and puts the `Caller` in the request for handlers to extract.

use std::future::{Ready, ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::middleware::Next;
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest, ResponseError, web};

use crate::auth::{API_KEY_PREFIX, Caller, bearer_token};
use crate::error::ApiError;
use crate::state::AppState;

/// Exact paths served without a token.
const PUBLIC_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/console/link",
    "/console/auth/login",
    "/console/auth/callback",
];
/// Path prefixes served without a token (their own checks apply).
const PUBLIC_PREFIXES: &[&str] = &["/docs/", "/v1/upstream/callbacks/", "/console/assets/"];

pub fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path) || PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p))
}

pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    if !is_public(req.path()) {
        let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
            return Ok(refuse(req, ApiError::Internal("application state missing".into())));
        };
        match identify(&state, &req).await {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
            }
            // A console page without a session answers with its own sign-in hint.
            Err(_) if super::session::is_console_page(req.method(), req.path()) => {}
            Err(error) => return Ok(refuse(req, error)),
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Answers here, as a response rather than an `Err`, so outer middleware still sees it.
fn refuse<B>(req: ServiceRequest, error: ApiError) -> ServiceResponse<EitherBody<B>> {
    req.into_response(error.error_response()).map_into_right_body()
}

async fn identify(state: &AppState, req: &ServiceRequest) -> Result<Caller, ApiError> {
    let caller = match super::session::cookie_caller(state, req).await {
        Some(session) => session?,
        None => bearer_caller(state, req).await?,
    };
    if let Some(tenant) = &caller.tenant
        && state.tenants.get(state.store.as_ref(), tenant).await?.is_none()
    {
        return Err(ApiError::UnknownTenant(tenant.clone()));
    }
    Ok(caller)
}

async fn bearer_caller(state: &AppState, req: &ServiceRequest) -> Result<Caller, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthenticated("missing Authorization: Bearer token".into()))?;
    let token =
        header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ApiError::Unauthenticated("Authorization header is not of the form `Bearer <token>`".into())
        })?;
    let verified = if token.starts_with(API_KEY_PREFIX) {
        let now_ms = state.clock.now().timestamp_millis();
        state
            .auth
            .api_keys()
            .authenticate(state.store.as_ref(), token, now_ms)
            .await?
    } else {
        state.auth.verify(token).await
    };
    let caller = verified.map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
    Ok(caller)
}

/// A caller acting for a tenant (team). Finance/admin tokens without a tenant get 403.
pub struct TenantCaller {
    pub tenant: String,
    pub caller: Caller,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| ApiError::Unauthenticated("missing Authorization: Bearer token".into())),
        )
    }
}

impl FromRequest for TenantCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(
            Caller::from_request(req, payload)
                .into_inner()
                .and_then(|caller| match caller.tenant.clone() {
                    Some(tenant) => Ok(TenantCaller { tenant, caller }),
                    None => Err(ApiError::Forbidden(
                        "this route acts for a tenant; the token carries none".into(),
                    )),
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_routes_are_public() {
        assert!(is_public("/healthz"));
        assert!(is_public("/v1/upstream/callbacks/abc"));
        assert!(!is_public("/v1/upstream/callbacks"));
        assert!(!is_public("/v1/tasks/x"));
        assert!(!is_public("/healthz/"));
        assert!(!is_public("/docsx"));
    }
}
