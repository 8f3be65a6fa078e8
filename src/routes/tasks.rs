//! `GET /v1/tasks`: a team's own tasks, newest first, from the store alone: each row is the
//! task object the gateway keeps with its `vidgate` object, never an upstream call per row.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::guard::TenantCaller;
use super::query::{QueryParams, rfc3339_ms};
use super::view::{vidgate_object, with_vidgate};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{
    ReservationRecord, ReservationState, TaskCursor, TaskIndexRange, TaskListQuery, TaskPage, task_page,
};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
const PARAMS: &[&str] = &["state", "user", "reservation_id", "from", "to", "limit", "cursor"];

/// `GET /v1/tasks?state=S&user=U&reservation_id=R&from=T&to=T&limit=N&cursor=C`.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks",
    params(
        ("state" = Option<String>, Query, pattern = "^(reserved|settled|refunded|expired)$", description = "`reserved`, `settled`, `refunded` or `expired` (filters `vidgate.state`)"),
        ("user" = Option<String>, Query, min_length = 1, max_length = 255, description = "Tasks created by this user (the token's `sub`) only"),
        ("reservation_id" = Option<String>, Query, pattern = "^[A-Za-z0-9_]{1,64}$", description = "The one task of this reservation (`vidgate.reservation_id`, also named by `upstream_outcome_unknown` errors)"),
        ("from" = Option<String>, Query, format = DateTime, description = "Created at or after this RFC 3339 time"),
        ("to" = Option<String>, Query, format = DateTime, description = "Created before this RFC 3339 time"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Rows per page, 1 to 100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (repeat the same filters)"),
    ),
    responses(
        (status = 200, description = "One page of the tenant's tasks, newest first", body = crate::openapi::TaskList),
        (status = 400, description = "`invalid_request` (a parameter, named in `param`)", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden` (the token carries no tenant), `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "`rate_limited` (the tenant's reads limit)", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
    ))]
pub async fn list(
    state: web::Data<AppState>,
    caller: TenantCaller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = QueryParams::parse(&req, PARAMS)?;
    let query = list_query(&params)?;
    let page = match params.parsed("reservation_id", reservation_id)? {
        Some(id) => one_reservation(&state, &caller.tenant, &id, &query).await?,
        None => task_page(state.store.as_ref(), &caller.tenant, &query).await?,
    };
    let data: Vec<Value> = page.records.iter().map(row).collect();
    let next = page.next.as_ref().map(TaskCursor::to_string);
    Ok(HttpResponse::Ok().json(json!({"data": data, "next_cursor": next})))
}

fn list_query(params: &QueryParams) -> Result<TaskListQuery, ApiError> {
    let from_ms = params.parsed("from", rfc3339_ms)?.map(to_i64);
    let to_ms = params.parsed("to", rfc3339_ms)?.map(to_i64);
    if let (Some(from), Some(to)) = (from_ms, to_ms)
        && from >= to
    {
        return Err(ApiError::invalid("to must be later than from", "to"));
    }
    let limit = params
        .parsed("limit", |value| match value.parse::<usize>() {
            Ok(n @ 1..=MAX_LIMIT) => Ok(n),
            _ => Err(format!(
                "limit must be an integer from 1 to {MAX_LIMIT} (got {value:?})"
            )),
        })?
        .unwrap_or(DEFAULT_LIMIT);
    Ok(TaskListQuery {
        range: TaskIndexRange {
            from_ms,
            to_ms,
            before: params.parsed("cursor", str::parse::<TaskCursor>)?.map(|c| c.0),
        },
        state: params.parsed("state", task_state)?,
        user: params.parsed("user", user)?,
        limit,
    })
}

fn task_state(value: &str) -> Result<ReservationState, String> {
    match value {
        "reserved" => Ok(ReservationState::Reserved),
        "settled" => Ok(ReservationState::Settled),
        "refunded" => Ok(ReservationState::Refunded),
        "expired" => Ok(ReservationState::Expired),
        other => Err(format!(
            "state must be reserved, settled, refunded or expired (got {other:?})"
        )),
    }
}

fn user(value: &str) -> Result<String, String> {
    match value.len() {
        1..=255 => Ok(value.to_string()),
        _ => Err("user must be 1 to 255 bytes".into()),
    }
}

fn reservation_id(value: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    match valid {
        true => Ok(value.to_string()),
        false => Err(format!(
            "{value:?} is not a reservation id like rsv_01JDQ8Z3V4X5Y6Z7A8B9C0D1E2"
        )),
    }
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// `reservation_id=R`: that reservation when it is the caller's tenant's and passes the
/// other filters; another tenant's is as absent as one never made.
async fn one_reservation(
    state: &AppState,
    tenant: &str,
    id: &str,
    query: &TaskListQuery,
) -> Result<TaskPage, ApiError> {
    let record = state
        .store
        .reservation(id)
        .await?
        .filter(|r| r.tenant == tenant && query.matches(r) && query.range.contains(r.created_ms));
    Ok(TaskPage {
        records: record.into_iter().collect(),
        next: None,
    })
}

/// A row: the task object as last seen (its ending, else the create's answer), with `vidgate`. A reservation
/// with no task has `"id": null` and a status of its own: `unknown` while the create's
/// outcome is unknown (the upstream may still have made the task), `failed` when the
/// upstream refused it and the hold was released.
fn row(record: &ReservationRecord) -> Value {
    let Some(task_id) = &record.task_id else {
        let status = match record.state {
            ReservationState::Refunded => "failed",
            _ => "unknown",
        };
        return json!({
            "id": null,
            "status": status,
            "model": record.model,
            "created": record.created_ms.div_euclid(1000),
            "vidgate": vidgate_object(record),
        });
    };
    let task = record
        .last_task
        .as_deref()
        .or(record.created_task.as_deref())
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"id": task_id, "model": record.model}));
    with_vidgate(task, record)
}
