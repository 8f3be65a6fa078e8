//! Tenant API keys, managed by admins: issue (the key is shown once), list (never the key),
//! revoke (refused on every replica within 5 s).

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::admin::require_admin;
use super::body::read_json;
use super::resource;
use super::webhooks::rfc3339;
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{ApiKeyCreated, ApiKeyRecord};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/admin/tenants/{id}/keys", "GET, POST")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(resource("/v1/admin/tenants/{id}/keys/{key_id}", "DELETE").route(web::delete().to(revoke)));
}

/// `POST /v1/admin/tenants/{id}/keys` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "render-ci", "expires_at": "2027-06-30T00:00:00Z"}))]
pub struct NewApiKey {
    /// `[a-z0-9-]{1,64}`, unique within the tenant; the caller's user becomes `key:<name>`.
    #[schema(pattern = "^[a-z0-9-]{1,64}$")]
    pub name: String,
    /// RFC 3339, in the future; absent: the key does not expire.
    pub expires_at: Option<String>,
}

/// An API key as listed (never the key itself).
#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    /// `key_...`: names the key to revoke it.
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

impl From<&ApiKeyRecord> for ApiKeyView {
    fn from(record: &ApiKeyRecord) -> Self {
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            tenant: record.tenant.clone(),
            created_at: rfc3339(record.created_ms),
            expires_at: record.expires_ms.map(rfc3339),
        }
    }
}

/// A new API key: the only time `key` is shown.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "key_01JEXAMPLE", "key": "vgk_3q2-7wEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLE0",
    "name": "render-ci", "tenant": "marketing", "created_at": "2026-12-06T10:00:00Z", "expires_at": null}))]
pub struct IssuedApiKey {
    pub id: String,
    /// `vgk_...`: send as `Authorization: Bearer vgk_...`. Stored only as a hash: keep it now.
    pub key: String,
    pub name: String,
    pub tenant: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyView>,
}

/// `POST /v1/admin/tenants/{id}/keys`.
#[utoipa::path(post, path = "/v1/admin/tenants/{id}/keys", tag = "admin",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = NewApiKey,
    responses(
        (status = 201, description = "Issued: the key is in this answer only", body = IssuedApiKey),
        (status = 400, description = "`invalid_request` (`name`, `expires_at` in the past)", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (role admin missing), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`key_name_taken`", body = crate::openapi::ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&caller)?;
    let tenant = known_tenant(&state, path.into_inner()).await?;
    let body = read_json(&req, payload, state.config.server.max_body_bytes).await?;
    let now_ms = state.clock.now().timestamp_millis();
    let (name, expires_ms) = parse_new_key(body, now_ms)?;
    let (key, record) = auth::issue(&tenant, &name, now_ms, expires_ms);
    if state.store.create_api_key(&record).await? == ApiKeyCreated::NameTaken {
        return Err(ApiError::KeyNameTaken(name));
    }
    tracing::info!(tenant = %tenant, key_name = %name, key_id = %record.id, actor = %caller.user, "API key issued");
    let view = ApiKeyView::from(&record);
    Ok(HttpResponse::Created().json(IssuedApiKey {
        id: view.id,
        key,
        name: view.name,
        tenant: view.tenant,
        created_at: view.created_at,
        expires_at: view.expires_at,
    }))
}

/// `GET /v1/admin/tenants/{id}/keys`.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}/keys", tag = "admin",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's keys, by name, without the keys themselves", body = ApiKeyList),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (role admin missing), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&caller)?;
    let tenant = known_tenant(&state, path.into_inner()).await?;
    let keys = state.store.api_keys(&tenant).await?;
    Ok(HttpResponse::Ok().json(ApiKeyList {
        keys: keys.iter().map(ApiKeyView::from).collect(),
    }))
}

/// `DELETE /v1/admin/tenants/{id}/keys/{key_id}`.
#[utoipa::path(delete, path = "/v1/admin/tenants/{id}/keys/{key_id}", tag = "admin",
    params(("id" = String, Path, description = "Tenant id"), ("key_id" = String, Path, description = "`key_...`")),
    responses(
        (status = 204, description = "Revoked: refused on every replica within 5 s"),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (role admin missing), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 404, description = "`key_not_found`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&caller)?;
    let (tenant, key_id) = path.into_inner();
    let tenant = known_tenant(&state, tenant).await?;
    let revoked = state
        .store
        .revoke_api_key(&tenant, &key_id)
        .await?
        .ok_or(ApiError::KeyNotFound(key_id))?;
    state.auth.api_keys().forget(&revoked.hash);
    tracing::info!(tenant = %tenant, key_name = %revoked.name, key_id = %revoked.id, actor = %caller.user, "API key revoked");
    Ok(HttpResponse::NoContent().finish())
}

/// The tenant of the path, if the store knows it (else 403 `unknown_tenant`).
async fn known_tenant(state: &AppState, id: String) -> Result<String, ApiError> {
    match state.tenants.get(state.store.as_ref(), &id).await? {
        Some(_) => Ok(id),
        None => Err(ApiError::UnknownTenant(id)),
    }
}

/// The body's name and expiry (unix ms), checked: a valid name, an expiry in the future.
fn parse_new_key(body: Value, now_ms: i64) -> Result<(String, Option<i64>), ApiError> {
    let request: NewApiKey =
        serde_json::from_value(body).map_err(|e| ApiError::invalid_body(format!("invalid body: {e}")))?;
    if !auth::valid_key_name(&request.name) {
        return Err(ApiError::invalid(
            "name must be 1 to 64 characters from a-z, 0-9 and '-'",
            "name",
        ));
    }
    let expires_ms = match &request.expires_at {
        None => None,
        Some(text) => {
            let at = DateTime::parse_from_rfc3339(text).map_err(|e| {
                ApiError::invalid(
                    format!("expires_at must be an RFC 3339 time like 2027-06-30T00:00:00Z: {e}"),
                    "expires_at",
                )
            })?;
            if at.timestamp_millis() <= now_ms {
                return Err(ApiError::invalid("expires_at is in the past", "expires_at"));
            }
            Some(at.timestamp_millis())
        }
    };
    Ok((request.name, expires_ms))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_new_key_needs_a_valid_name_and_a_future_expiry() {
        let now = 1_800_000_000_000;
        assert_eq!(
            parse_new_key(json!({"name": "render-ci"}), now).unwrap(),
            ("render-ci".to_string(), None)
        );
        let later = parse_new_key(json!({"name": "a", "expires_at": "2027-06-30T00:00:00Z"}), now).unwrap();
        assert_eq!(later.1, Some(1_814_313_600_000));
        for bad in [
            json!({"name": "Render"}),
            json!({"name": ""}),
            json!({"name": "a", "expires_at": "2020-01-01T00:00:00Z"}),
            json!({"name": "a", "expires_at": "soon"}),
            json!({"name": "a", "extra": 1}),
            json!({}),
        ] {
            assert!(parse_new_key(bad.clone(), now).is_err(), "{bad}");
        }
    }
}
