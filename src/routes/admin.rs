//! Finance and admin routes: usage of any tenant, the ledger (JSON or CSV), and tenant
//! management (role `admin`). Handlers check the role first, then parse, then read or write.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value};

use super::body::read_json;
use super::query::{Format, QueryParams, rfc3339_ms};
use crate::auth::Caller;
use crate::billing::{self, Micros};
use crate::config::{CallbacksConfig, PeriodKind, check_alert_webhook_url, valid_tenant_id};
use crate::error::ApiError;
use crate::reports::{self, GroupBy, LedgerLine, csv};
use crate::state::AppState;
use crate::store::{
    LedgerCursor, LedgerKind, LedgerQuery, Period, TenantChange, TenantPatch, TenantRecord, ledger_page,
};
use crate::telemetry::current_request_id;

/// Rows of one ledger page when the caller does not say.
const DEFAULT_LEDGER_LIMIT: usize = 100;
const MAX_LEDGER_LIMIT: usize = 1000;
/// Where the next ledger page starts, for CSV callers (JSON has `next_cursor` too).
const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// `GET /v1/admin/usage?period=P&tenant=T&group_by=tenant|user|day|quality&format=json|csv`.
#[utoipa::path(get, path = "/v1/admin/usage", tag = "usage",
    params(
        ("period" = Option<String>, Query, description = "`2026-11`, `2026-W48`, `2026-11-25` or `total`; default: this month"),
        ("tenant" = Option<String>, Query, description = "One tenant; default: all"),
        ("group_by" = Option<String>, Query, description = "`tenant` (default), `user`, `day` or `quality` (rows carry `quality` and `audio`)"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`"),
    ),
    responses(
        (status = 200, description = "Usage rows (JSON, or CSV with a header row)", content(
            (crate::reports::AdminUsage = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_request` (a parameter, named in `param`)", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (role missing), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn usage(state: web::Data<AppState>, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    require_finance(&caller)?;
    let params = QueryParams::parse(&req, &["period", "tenant", "group_by", "format"])?;
    let period = params
        .parsed("period", str::parse::<Period>)?
        .unwrap_or_else(|| Period::current(PeriodKind::Month, state.clock.now()));
    let group_by = params
        .parsed("group_by", |value| match value {
            "tenant" => Ok(GroupBy::Tenant),
            "user" => Ok(GroupBy::User),
            "day" => Ok(GroupBy::Day),
            "quality" => Ok(GroupBy::Quality),
            other => Err(format!("group_by must be tenant, user, day or quality (got {other:?})")),
        })?
        .unwrap_or(GroupBy::Tenant);
    let format = Format::of(&params)?;
    let tenants = selected_tenants(&state, &params).await?;
    let currency = &state.config.pricing.currency;
    let report = reports::admin_usage(state.store.as_ref(), &tenants, &period, group_by, currency).await?;
    Ok(match format {
        Format::Json => HttpResponse::Ok().json(report),
        Format::Csv => {
            let mut body = csv::line(csv::USAGE_HEADER);
            report
                .rows
                .iter()
                .for_each(|row| body.push_str(&csv::usage_line(&report, row)));
            csv_response(&format!("usage-{}", report.period), body)
        }
    })
}

/// `GET /v1/admin/ledger?tenant=T&kind=K&from=RFC3339&to=RFC3339&limit=N&cursor=C&format=json|csv`.
#[utoipa::path(get, path = "/v1/admin/ledger", tag = "usage",
    params(
        ("tenant" = Option<String>, Query, description = "One tenant; default: all"),
        ("kind" = Option<String>, Query, description = "One entry kind: reserve, settle, refund, expire, late_settle, budget_change or anomaly; default: all"),
        ("from" = Option<String>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("limit" = Option<u32>, Query, description = "Rows per page, 1 to 1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`"),
    ),
    responses(
        (status = 200, description = "One page of ledger entries", content(
            (crate::openapi::LedgerPage = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_request` (a parameter, named in `param`)", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (role missing), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn ledger(state: web::Data<AppState>, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    require_finance(&caller)?;
    let params = QueryParams::parse(&req, &["tenant", "kind", "from", "to", "limit", "cursor", "format"])?;
    let query = ledger_query(&params)?;
    let format = Format::of(&params)?;
    if let Some(tenant) = &query.tenant {
        known_tenant(&state, tenant).await?;
    }
    let page = ledger_page(state.store.as_ref(), &query).await?;
    let next = page.next.as_ref().map(LedgerCursor::to_string);
    let lines: Vec<LedgerLine<'_>> = page.rows.iter().map(|row| LedgerLine::from(&row.entry)).collect();
    let mut response = match format {
        Format::Json => HttpResponse::Ok().json(serde_json::json!({"entries": lines, "next_cursor": next})),
        Format::Csv => {
            let mut body = csv::line(csv::LEDGER_HEADER);
            lines.iter().for_each(|line| body.push_str(&csv::ledger_line(line)));
            csv_response("ledger", body)
        }
    };
    // A cursor is digits, dashes and a tenant id: always a valid header value.
    if let Some(value) = next.and_then(|next| HeaderValue::from_str(&next).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(NEXT_CURSOR_HEADER), value);
    }
    Ok(response)
}

/// `GET /v1/admin/tenants`.
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin",
    responses(
        (status = 200, description = "Every tenant with its settings", body = crate::openapi::TenantList),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (role missing), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn list_tenants(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    require_admin(&caller)?;
    let tenants: Vec<Value> = state.store.tenants().await?.iter().map(tenant_view).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"tenants": tenants})))
}

/// `PUT /v1/admin/tenants/{id}`: a partial `[[tenants]]` entry; creates the tenant if missing.
#[utoipa::path(put, path = "/v1/admin/tenants/{id}", tag = "admin",
    params(("id" = String, Path, description = "Tenant id: 1-64 of a-z, A-Z, 0-9, '-', '_', '.'")),
    request_body = crate::openapi::TenantPatchBody,
    responses(
        (status = 200, description = "Changed (audited in the ledger)", body = crate::openapi::TenantView),
        (status = 201, description = "Created", body = crate::openapi::TenantView),
        (status = 400, description = "`invalid_request` (a parameter, named in `param`)", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (role missing), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn put_tenant(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&caller)?;
    let id = path.into_inner();
    if !valid_tenant_id(&id) {
        return Err(ApiError::invalid(
            "a tenant id is 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'",
            "id",
        ));
    }
    let body = read_json(&req, payload, state.config.server.max_body_bytes).await?;
    let change = TenantChange {
        patch: parse_patch(&id, &body, &state.config.callbacks)?,
        actor: caller.user.clone(),
        request_id: current_request_id().unwrap_or_default(),
        now_ms: state.clock.now().timestamp_millis(),
    };
    let update = state.store.update_tenant(&id, &change).await?;
    // This replica sees the change at once; the others when their cache entry expires.
    state.tenants.invalidate(&id);
    if update.changed {
        tracing::info!(tenant = %id, actor = %caller.user, created = update.created, "tenant changed by an admin");
    }
    let status = if update.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(tenant_view(&update.record)))
}

fn require_finance(caller: &Caller) -> Result<(), ApiError> {
    if caller.can_read_all_usage() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("this route needs the role finance or admin".into()))
    }
}

pub(super) fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("this route needs the role admin".into()))
    }
}

async fn known_tenant(state: &AppState, id: &str) -> Result<TenantRecord, ApiError> {
    state
        .store
        .tenant(id)
        .await?
        .ok_or_else(|| ApiError::invalid(format!("tenant {id:?} is not known"), "tenant"))
}

/// The tenant named by `tenant=`, or every tenant.
async fn selected_tenants(state: &AppState, params: &QueryParams) -> Result<Vec<TenantRecord>, ApiError> {
    match params.get("tenant") {
        Some(id) => Ok(vec![known_tenant(state, id).await?]),
        None => Ok(state.store.tenants().await?),
    }
}

fn ledger_query(params: &QueryParams) -> Result<LedgerQuery, ApiError> {
    let from_ms = params.parsed("from", rfc3339_ms)?.unwrap_or(0);
    let to_ms = params.parsed("to", rfc3339_ms)?.unwrap_or(u64::MAX);
    if from_ms >= to_ms {
        return Err(ApiError::invalid("to must be later than from", "to"));
    }
    let limit = params
        .parsed("limit", |value| match value.parse::<usize>() {
            Ok(n @ 1..=MAX_LEDGER_LIMIT) => Ok(n),
            _ => Err(format!("limit must be an integer from 1 to {MAX_LEDGER_LIMIT}")),
        })?
        .unwrap_or(DEFAULT_LEDGER_LIMIT);
    let tenant = params.parsed("tenant", |value| {
        if valid_tenant_id(value) {
            Ok(value.to_string())
        } else {
            Err(format!("{value:?} is not a tenant id"))
        }
    })?;
    let cursor = params.parsed("cursor", |value| {
        value
            .parse::<LedgerCursor>()
            .map_err(|()| "cursor must be a next_cursor returned by a previous page".to_string())
    })?;
    let kind = params.parsed("kind", |value| {
        LedgerKind::parse(value).ok_or_else(|| {
            "kind must be reserve, settle, refund, expire, late_settle, budget_change or anomaly".to_string()
        })
    })?;
    Ok(LedgerQuery {
        tenant,
        kind,
        from_ms,
        to_ms,
        cursor,
        limit,
    })
}

fn csv_response(name: &str, body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("content-disposition", format!("attachment; filename=\"{name}.csv\"")))
        .body(body)
}

/// A tenant as admins read it: its id and its `[[tenants]]` fields.
fn tenant_view(record: &TenantRecord) -> Value {
    let mut view = Map::new();
    view.insert("id".into(), Value::String(record.id.clone()));
    view.extend(record.settings.view());
    Value::Object(view)
}

/// A partial `[[tenants]]` entry, checked as config checks it; `id`, if given, must be the path's.
fn parse_patch(id: &str, body: &Value, callbacks: &CallbacksConfig) -> Result<TenantPatch, ApiError> {
    let map = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("the body must be a JSON object of [[tenants]] fields"))?;
    let mut patch = TenantPatch::default();
    for (field, value) in map {
        let invalid = |reason: &str| ApiError::invalid(format!("{field}: {reason}"), field.as_str());
        match field.as_str() {
            "id" if value.as_str() == Some(id) => {}
            "id" => return Err(invalid("must equal the tenant id in the path")),
            "budget" => patch.budget = Some(money(value).map_err(|r| invalid(&r))?),
            "user_budget" => patch.user_budget = Some(money(value).map_err(|r| invalid(&r))?),
            "period" => {
                patch.period = Some(
                    serde_json::from_value::<PeriodKind>(value.clone())
                        .map_err(|_| invalid("must be month, week, day or total"))?,
                )
            }
            "creates_per_minute" => patch.creates_per_minute = Some(count(value, 1).map_err(|r| invalid(&r))?),
            "reads_per_minute" => patch.reads_per_minute = Some(count(value, 1).map_err(|r| invalid(&r))?),
            "creates_burst" => patch.creates_burst = Some(count(value, 0).map_err(|r| invalid(&r))?),
            "reads_burst" => patch.reads_burst = Some(count(value, 0).map_err(|r| invalid(&r))?),
            "max_concurrent_tasks" => patch.max_concurrent_tasks = Some(count(value, 0).map_err(|r| invalid(&r))?),
            "user_creates_per_minute" => {
                patch.user_creates_per_minute = Some(count(value, 0).map_err(|r| invalid(&r))?)
            }
            "allowed_qualities" => patch.allowed_qualities = Some(qualities(value).map_err(|r| invalid(&r))?),
            "alert_webhook_url" => {
                patch.alert_webhook_url = Some(alert_webhook(value, callbacks).map_err(|r| invalid(&r))?)
            }
            _ => return Err(invalid("unknown field; use the [[tenants]] fields")),
        }
    }
    Ok(patch)
}

/// A budget: a decimal string with at most 6 decimals; "" or null removes the cap.
fn money(value: &Value) -> Result<Option<Micros>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.trim().is_empty() => Ok(None),
        Value::String(text) => billing::parse_money(text).map(Some),
        _ => Err("must be a decimal string like \"500.00\" (\"\" for no cap)".into()),
    }
}

/// An alert webhook URL under the callback egress rules; "" or null removes it.
fn alert_webhook(value: &Value, callbacks: &CallbacksConfig) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(url) if url.is_empty() => Ok(None),
        Value::String(url) => check_alert_webhook_url(url, callbacks).map(|()| Some(url.clone())),
        _ => Err("must be an https URL string (\"\" removes it)".into()),
    }
}

fn count(value: &Value, min: u32) -> Result<u32, String> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= min)
        .ok_or_else(|| format!("must be an integer of at least {min}"))
}

fn qualities(value: &Value) -> Result<Vec<String>, String> {
    let reason = || "must be an array of \"720p\" and \"1080p\"".to_string();
    value
        .as_array()
        .ok_or_else(reason)?
        .iter()
        .map(|q| match q.as_str() {
            Some(q @ ("720p" | "1080p")) => Ok(q.to_string()),
            _ => Err(reason()),
        })
        .collect()
}
