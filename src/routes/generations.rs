//! The drop-in routes: create a video task and query it, as the upstream does, with money
//! held before the request leaves and the `vidgate` object on every answer.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::body::read_json;
use super::guard::TenantCaller;
use super::validate::{CreateRequest, parse_create};
use super::view::with_vidgate;
use crate::alerts;
use crate::billing;
use crate::callbacks;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{FinalizeOutcome, PeriodKeys, ReservationRecord, ReserveOutcome, ReserveRefusal, ReserveRequest};
use crate::telemetry::current_request_id;
use crate::upstream;

/// `POST /v1/videos/generations`: validate → reserve → forward → bind.
#[utoipa::path(
    post,
    path = "/v1/videos/generations",
    tag = "tasks",
    request_body = crate::openapi::CreateTaskRequest,
    responses(
        (status = 200, description = "The upstream task, with the money held for it", body = crate::openapi::TaskResponse),
        (status = 400, description = "`invalid_request`, `invalid_callback_url`, `reference_video_invalid`, `reference_video_unreachable`, `reference_video_forbidden`", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 402, description = "`budget_exceeded`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden`, `unknown_tenant`, `quality_not_allowed`", body = crate::openapi::ErrorEnvelope),
        (status = 405, description = "`method_not_allowed`", body = crate::openapi::ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "`concurrency_limited`, `upstream_rate_limited` (with Retry-After)", body = crate::openapi::ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `upstream_auth_failed`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`upstream_account_exhausted`, `store_unavailable`", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`upstream_timeout`", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    caller: TenantCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, state.config.server.max_body_bytes).await?;
    let request = parse_create(&body, |model| state.config.pricing.models.contains_key(model))?;
    if let Some(url) = &request.callback_url {
        callbacks::check_callback_url(&state, url).await?;
    }
    let durations = probe_references(&state, &request).await?;
    let reservation = reserve(&state, &caller, &request, durations).await?;
    alerts::check(&state, &reservation);
    let task = forward(&state, &request, &reservation).await?;
    let task_id = upstream::task_id(&task).ok_or_else(|| {
        tracing::error!(reservation_id = %reservation.reservation_id, "upstream created a task without an id; hold left for the reconciler");
        ApiError::UpstreamError("the upstream's answer carried no task id".into())
    })?;
    state
        .metrics
        .tasks
        .with_label_values(&[&caller.tenant, "created"])
        .inc();
    let record = state.store.bind(&reservation.reservation_id, task_id).await.map_err(|e| {
        tracing::error!(reservation_id = %reservation.reservation_id, task_id, "task created upstream but not bound: {e}");
        ApiError::from(e)
    })?;
    Ok(HttpResponse::Ok().json(with_vidgate(task, &record.unwrap_or(reservation))))
}

/// `GET /v1/tasks/{task_id}`: the owner's tenant only; a final state settles or refunds.
#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The upstream task id")),
    responses(
        (status = 200, description = "The upstream task, with what it costs", body = crate::openapi::TaskResponse),
        (status = 400, description = "Invalid request (`invalid_request`, `invalid_callback_url`)", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden`, `unknown_tenant`", body = crate::openapi::ErrorEnvelope),
        (status = 404, description = "`task_not_found`: not the caller's tenant's task, or never seen", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "`upstream_rate_limited`", body = crate::openapi::ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `upstream_auth_failed`", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`store_unavailable`", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`upstream_timeout`", body = crate::openapi::ErrorEnvelope),
    )
)]
pub async fn get_task(
    state: web::Data<AppState>,
    caller: TenantCaller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let task_id = path.into_inner();
    let record = state
        .store
        .task(&task_id)
        .await?
        .filter(|r| r.tenant == caller.tenant)
        .ok_or_else(|| ApiError::TaskNotFound(task_id.clone()))?;
    let task = state.upstream.get_task(&task_id).await?;
    let record = callbacks::observe(&state, record, &task).await?;
    Ok(HttpResponse::Ok().json(with_vidgate(task, &record)))
}

/// Measures every reference video before any money is held; a refusal names its
/// `video_urls[i]` and what was found.
async fn probe_references(state: &AppState, request: &CreateRequest) -> Result<Vec<u64>, ApiError> {
    let started = state.prober.stats().bytes_read;
    let outcome = state.prober.probe_references(&request.video_urls).await;
    state
        .metrics
        .probe_bytes
        .inc_by(state.prober.stats().bytes_read.saturating_sub(started));
    match outcome {
        Ok(videos) => {
            state
                .metrics
                .probes
                .with_label_values(&["ok"])
                .inc_by(videos.len() as u64);
            Ok(videos.iter().map(|v| v.duration_ms).collect())
        }
        Err((index, error)) => {
            state.metrics.probes.with_label_values(&[error.code()]).inc();
            Err(ApiError::reference_video(error, format!("video_urls[{index}]")))
        }
    }
}

async fn reserve(
    state: &AppState,
    caller: &TenantCaller,
    request: &CreateRequest,
    durations: Vec<u64>,
) -> Result<ReservationRecord, ApiError> {
    let config = &state.config;
    let price = config
        .price_per_second(&request.model, &request.quality, request.generate_audio)
        .ok_or_else(|| {
            ApiError::invalid(
                format!("quality {:?} is not priced for this model", request.quality),
                "quality",
            )
        })?;
    let output_ms = u64::from(request.duration) * 1000;
    let charge = billing::charge(&durations, output_ms, price);
    let now = state.clock.now();
    let reserve = ReserveRequest {
        reservation_id: format!("rsv_{}", ulid::Ulid::new()),
        tenant: caller.tenant.clone(),
        user: caller.caller.user.clone(),
        request_id: current_request_id().unwrap_or_default(),
        periods: PeriodKeys::at(now),
        model: request.model.clone(),
        quality: request.quality.clone(),
        audio: request.generate_audio,
        currency: config.pricing.currency.clone(),
        price_per_second: price,
        reference_durations_ms: durations,
        billed_input_ms: charge.billed_input_ms,
        requested_output_ms: output_ms,
        amount: charge.amount,
        callback_url: request.callback_url.clone(),
        now_ms: now.timestamp_millis(),
    };
    match state.store.reserve(&reserve).await? {
        ReserveOutcome::Reserved(record) => Ok(record),
        ReserveOutcome::Refused(refusal) => Err(refused(refusal, caller, request, reserve.amount)),
    }
}

fn refused(refusal: ReserveRefusal, caller: &TenantCaller, request: &CreateRequest, amount: i64) -> ApiError {
    match refusal {
        ReserveRefusal::UnknownTenant => ApiError::UnknownTenant(caller.tenant.clone()),
        ReserveRefusal::QualityNotAllowed => ApiError::QualityNotAllowed(request.quality.clone()),
        ReserveRefusal::BudgetExceeded { remaining, user_scope } => ApiError::BudgetExceeded(format!(
            "this task needs {} but the {} budget has {} left this period",
            billing::format_money(amount),
            if user_scope { "user's" } else { "tenant's" },
            billing::format_money(remaining.max(0)),
        )),
        ReserveRefusal::ConcurrencyLimited { max } => ApiError::ConcurrencyLimited {
            message: format!("at most {max} tasks of this tenant may run at once; retry when one ends"),
            retry_after_secs: 5,
        },
    }
}

/// Sends the create once. A definite refusal releases the hold at once; an ambiguous
/// outcome (timeout) keeps it for the reconciler, since the task may exist upstream.
async fn forward(
    state: &AppState,
    request: &CreateRequest,
    reservation: &ReservationRecord,
) -> Result<Value, ApiError> {
    let body = request.upstream_body(callbacks::upstream_callback_url(state, &reservation.reservation_id).as_deref());
    match state.upstream.create_task(&body).await {
        Ok(task) => Ok(task),
        Err(error) if error.is_definite() => {
            let now_ms = state.clock.now().timestamp_millis();
            match state.store.refund(&reservation.reservation_id, now_ms).await {
                Ok(FinalizeOutcome::Applied(done)) => {
                    state.metrics.record_refund(&done.tenant, &done.currency, done.reserved)
                }
                Ok(_) => {}
                Err(store_error) => tracing::error!(
                    reservation_id = %reservation.reservation_id,
                    "refund after upstream refusal failed: {store_error}"
                ),
            }
            Err(error.into())
        }
        Err(error) => {
            tracing::warn!(reservation_id = %reservation.reservation_id, "create outcome unknown ({error}); hold kept for reconciliation");
            Err(error.into())
        }
    }
}
