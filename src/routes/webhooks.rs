//! A tenant's webhook signing key: read it (any member of the tenant with a JWT), rotate it
//! (`tenant_admin` of the tenant, or `admin` for any tenant). API keys are machine
//! credentials and may do neither.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use utoipa::ToSchema;

use super::guard::TenantCaller;
use super::query::QueryParams;
use super::resource;
use crate::auth::{Caller, ROLE_TENANT_ADMIN};
use crate::callbacks::webhook_keys;
use crate::config::valid_tenant_id;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::WebhookKeys;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/webhooks/secret", "GET").route(web::get().to(secret)))
        .service(resource("/v1/webhooks/secret/rotate", "POST").route(web::post().to(rotate)));
}

/// The tenant's current signing key, as a receiver configures it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwc2VjcmV0LWtleQ==",
    "created_at": "2026-12-06T10:00:00Z", "previous_expires_at": null}))]
pub struct WebhookSecret {
    /// `whsec_` + base64 of 32 random bytes: the Standard Webhooks secret to verify with.
    pub secret: String,
    /// RFC 3339: when this key was made.
    pub created_at: String,
    /// RFC 3339: until when deliveries also carry a signature by the key this one replaced
    /// (24 h after a rotation); null when there is none.
    pub previous_expires_at: Option<String>,
}

impl WebhookSecret {
    fn of(keys: &WebhookKeys, now_ms: i64) -> Self {
        let previous_until = keys
            .previous_expires_ms
            .filter(|until| keys.previous.is_some() && now_ms < *until);
        Self {
            secret: keys.current.secret.clone(),
            created_at: rfc3339(keys.current.created_ms),
            previous_expires_at: previous_until.map(rfc3339),
        }
    }
}

/// A unix-ms time as RFC 3339 UTC to the second, as the API shows times.
pub(super) fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `GET /v1/webhooks/secret`.
#[utoipa::path(get, path = "/v1/webhooks/secret", tag = "webhooks",
    responses(
        (status = 200, description = "The tenant's own signing key (made on first use)", body = WebhookSecret),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (an API key, or a token without a tenant), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "`rate_limited`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn secret(state: web::Data<AppState>, caller: TenantCaller) -> Result<HttpResponse, ApiError> {
    refuse_api_keys(&caller.caller)?;
    let keys = webhook_keys::keys(&state, &caller.tenant).await?;
    Ok(HttpResponse::Ok().json(WebhookSecret::of(&keys, now_ms(&state))))
}

/// `POST /v1/webhooks/secret/rotate[?tenant=T]`.
#[utoipa::path(post, path = "/v1/webhooks/secret/rotate", tag = "webhooks",
    params(("tenant" = Option<String>, Query, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The tenant to rotate \
        (role admin); default and for `tenant_admin`: the token's own tenant")),
    responses(
        (status = 200, description = "The new key; for 24 h deliveries carry a signature by the old key too", body = WebhookSecret),
        (status = 400, description = "`invalid_request` (`tenant` missing or malformed)", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (not `tenant_admin` of that tenant nor `admin`; an API key), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "`rate_limited`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn rotate(state: web::Data<AppState>, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    refuse_api_keys(&caller)?;
    let params = QueryParams::parse(&req, &["tenant"])?;
    let tenant = target_tenant(&caller, params.get("tenant"))?;
    may_rotate(&caller, &tenant)?;
    if state.tenants.get(state.store.as_ref(), &tenant).await?.is_none() {
        return Err(ApiError::UnknownTenant(tenant));
    }
    let keys = webhook_keys::rotate(&state, &tenant).await?;
    tracing::info!(tenant = %tenant, actor = %caller.user, "webhook signing key rotated");
    Ok(HttpResponse::Ok().json(WebhookSecret::of(&keys, now_ms(&state))))
}

fn refuse_api_keys(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_api_key() {
        return Err(ApiError::Forbidden(
            "API keys cannot read or rotate webhook keys; use a JWT of the tenant".into(),
        ));
    }
    Ok(())
}

/// `?tenant=`, else the token's own tenant.
fn target_tenant(caller: &Caller, asked: Option<&str>) -> Result<String, ApiError> {
    match (asked, &caller.tenant) {
        (Some(tenant), _) if valid_tenant_id(tenant) => Ok(tenant.to_string()),
        (Some(tenant), _) => Err(ApiError::invalid(format!("{tenant:?} is not a tenant id"), "tenant")),
        (None, Some(own)) => Ok(own.clone()),
        (None, None) => Err(ApiError::invalid(
            "the token carries no tenant: name one with ?tenant=",
            "tenant",
        )),
    }
}

/// `admin` may rotate any tenant's key, `tenant_admin` its own tenant's only.
fn may_rotate(caller: &Caller, tenant: &str) -> Result<(), ApiError> {
    let own = caller.tenant.as_deref() == Some(tenant);
    if caller.is_admin() || (own && caller.has_role(ROLE_TENANT_ADMIN)) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "rotating a webhook key needs the role {ROLE_TENANT_ADMIN} of that tenant, or admin"
        )))
    }
}

fn now_ms(state: &AppState) -> i64 {
    state.clock.now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(tenant: Option<&str>, roles: &[&str]) -> Caller {
        Caller {
            tenant: tenant.map(str::to_string),
            user: "u".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn a_tenant_admin_rotates_its_own_tenant_only_and_an_admin_any() {
        let tenant_admin = caller(Some("a"), &[ROLE_TENANT_ADMIN]);
        assert!(may_rotate(&tenant_admin, "a").is_ok());
        assert!(may_rotate(&tenant_admin, "b").is_err());
        assert!(may_rotate(&caller(Some("a"), &[]), "a").is_err());
        assert!(may_rotate(&caller(None, &["admin"]), "b").is_ok());
        assert!(may_rotate(&caller(None, &["finance"]), "b").is_err());
    }

    #[test]
    fn the_tenant_is_the_query_or_the_tokens_own() {
        assert_eq!(target_tenant(&caller(Some("a"), &[]), None).unwrap(), "a");
        assert_eq!(target_tenant(&caller(Some("a"), &[]), Some("b")).unwrap(), "b");
        assert!(target_tenant(&caller(None, &["admin"]), None).is_err());
        assert!(target_tenant(&caller(None, &["admin"]), Some("a b")).is_err());
    }
}
