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
pub async fn create(
    state: web::Data<AppState>,
    caller: TenantCaller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, state.config.server.max_body_bytes).await?;
    let request = parse_create(&body, |model| state.config.pricing.models.contains_key(model))?;
    if let Some(url) = &request.callback_url {
        callbacks::check_callback_url(url, &state.config.callbacks)?;
    }
    let reservation = reserve(&state, &caller, &request).await?;
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

/// Until reference videos are probed, the hold assumes every reference bills its full
/// per-video cap: an upper bound, so the budget check never lets a task through too cheaply.
fn assumed_reference_durations_ms(count: usize) -> Vec<u64> {
    vec![billing::per_video_cap_ms(count); count]
}

async fn reserve(
    state: &AppState,
    caller: &TenantCaller,
    request: &CreateRequest,
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
    let durations = assumed_reference_durations_ms(request.video_urls.len());
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
    match state.upstream.create_task(&request.upstream_body(None)).await {
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
