//! The drop-in routes: create a video task and query it, as the upstream does, with money
//! held before the request leaves and the `vidgate` object on every answer.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::body::read_json;
use super::guard::TenantCaller;
use super::limit;
use super::validate::{CreateRequest, parse_create};
use super::view::with_vidgate;
use crate::alerts;
use crate::billing;
use crate::callbacks;
use crate::callbacks::reapply::Step;
use crate::error::ApiError;
use crate::limits::{Policy, RateCheck, RateDecision};
use crate::state::AppState;
use crate::store::{
    BindOutcome, BudgetUse, FinalizeOutcome, IdempotencyClaim, PeriodKeys, ReservationRecord, ReserveOutcome,
    ReserveRefusal, ReserveRequest,
};
use crate::telemetry::current_request_id;
use crate::upstream::{CreateOutcome, UpstreamError};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How long a create keeps retrying its bind before answering (the rest goes on in the
/// background), and the first pause between tries.
const BIND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);
const BIND_FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// `POST /v1/videos/generations`: validate → reserve → forward → bind.
#[utoipa::path(
    post,
    path = "/v1/videos/generations",
    tag = "tasks",
    request_body = crate::openapi::CreateTaskRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 printable characters, scoped to the tenant; a retry with the same key and body answers as the first request did")),
    responses(
        (status = 200, description = "The upstream task, with the money held for it", body = crate::openapi::TaskResponse),
        (status = 400, description = "`invalid_request`, `invalid_callback_url`, `reference_video_invalid`, `reference_video_unreachable`, `reference_video_forbidden`", body = crate::openapi::ErrorEnvelope),
        (status = 401, description = "`unauthenticated`", body = crate::openapi::ErrorEnvelope),
        (status = 402, description = "`budget_exceeded`", body = crate::openapi::ErrorEnvelope),
        (status = 403, description = "`forbidden`, `unknown_tenant`, `quality_not_allowed`", body = crate::openapi::ErrorEnvelope),
        (status = 405, description = "`method_not_allowed`", body = crate::openapi::ErrorEnvelope),
        (status = 413, description = "`payload_too_large`", body = crate::openapi::ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = crate::openapi::ErrorEnvelope),
        (status = 409, description = "`request_in_progress` (with Retry-After): the first request with this Idempotency-Key has not finished, or its outcome is unknown", body = crate::openapi::ErrorEnvelope),
        (status = 422, description = "`idempotency_key_reused`: same key, different body", body = crate::openapi::ErrorEnvelope),
        (status = 429, description = "`rate_limited`, `concurrency_limited`, `upstream_rate_limited` (with Retry-After)", body = crate::openapi::ErrorEnvelope),
        (status = 502, description = "`upstream_error` (the upstream refused, nothing created, the hold released), `upstream_auth_failed`, `upstream_outcome_unknown` (the upstream may have created the task: the hold stays, `error.reservation_id` names it)", body = crate::openapi::ErrorEnvelope),
        (status = 503, description = "`upstream_account_exhausted`, `store_unavailable`", body = crate::openapi::ErrorEnvelope),
        (status = 504, description = "`upstream_timeout`: no answer in time, the task may exist; the hold stays, `error.reservation_id` names it", body = crate::openapi::ErrorEnvelope),
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
    let idempotency = idempotency_claim(&req, &body, &state)?;
    let rate = limit::caller_checks(&state, &caller, Policy::Creates).await?;
    limit::prelimit(&state, Policy::Creates, &rate)?;
    // After the pre-limit: resolving the host costs a DNS lookup (up to 2 s).
    if let Some(url) = &request.callback_url {
        callbacks::check_callback_url(&state, url).await?;
    }
    let durations = probe_references(&state, &request).await?;
    let (reservation, decision, budget_use) =
        match reserve(&state, &caller, &request, durations, idempotency, rate).await? {
            Held::Replay(record) => return replay(&record),
            Held::New(record, decision, budget_use) => (record, decision, budget_use),
        };
    match budget_use {
        Some(used) => alerts::check_hold(&state, &reservation, used),
        None => alerts::check(&state, &reservation),
    }
    match forward(&state, &request, &reservation).await {
        CreateOutcome::Created { task, task_id } => {
            state
                .metrics
                .tasks
                .with_label_values(&[&caller.tenant, "created"])
                .inc();
            let record = bind_until_bound(&state, reservation, &task_id, &task).await;
            let mut response = HttpResponse::Ok();
            limit::add_headers(&mut response, Policy::Creates, decision);
            Ok(response.json(with_vidgate(task, &record)))
        }
        CreateOutcome::Refused(error) => {
            release_refused(&state, &reservation.reservation_id).await;
            Err(error.into())
        }
        CreateOutcome::Unknown(error) => Err(outcome_unknown(&state, &reservation, error)),
    }
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
        (status = 429, description = "`rate_limited`, `upstream_rate_limited`", body = crate::openapi::ErrorEnvelope),
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
    let rate = limit::caller_checks(&state, &caller, Policy::Reads).await?;
    let read = state.store.read_task(&task_id, &rate).await?;
    if let Some(decision) = read.rate.filter(|d| !d.allowed) {
        return Err(limit::refusal(Policy::Reads, decision));
    }
    let record = read
        .record
        .filter(|r| r.tenant == caller.tenant)
        .ok_or_else(|| ApiError::TaskNotFound(task_id.clone()))?;
    let task = state.upstream.get_task_for_caller(&task_id).await?;
    let record = callbacks::observe(&state, record, &task).await?;
    let mut response = HttpResponse::Ok();
    limit::add_headers(&mut response, Policy::Reads, read.rate);
    Ok(response.json(with_vidgate(task, &record)))
}

/// The `Idempotency-Key` header (1–255 printable characters) with the body's hash.
fn idempotency_claim(req: &HttpRequest, body: &Value, state: &AppState) -> Result<Option<IdempotencyClaim>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key must be 1 to 255 printable characters",
                "Idempotency-Key",
            )
        })?;
    // serde_json keeps object keys sorted, so this text is canonical for equal bodies.
    let body_hash = Sha256::digest(body.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(IdempotencyClaim {
        key: key.to_string(),
        body_hash,
        ttl_ms: state.config.idempotency.ttl_secs.saturating_mul(1000),
    }))
}

/// An idempotent retry: the first request's answer, with the task's money as it stands.
fn replay(record: &ReservationRecord) -> Result<HttpResponse, ApiError> {
    let task: Value = record
        .created_task
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or_else(|| ApiError::Internal(format!("reservation {} has no stored answer", record.reservation_id)))?;
    Ok(HttpResponse::Ok()
        .insert_header(("idempotent-replayed", "true"))
        .json(with_vidgate(task, record)))
}

/// Measures every reference video before any money is held; a refusal names its
/// `video_urls[i]` and what was found.
pub(super) async fn probe_references(state: &AppState, request: &CreateRequest) -> Result<Vec<u64>, ApiError> {
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

/// What the store step gave a create.
// Built once per create and matched at once: boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Held {
    /// A new hold, the rate decision for the headers, and the budget use for the alerts.
    New(ReservationRecord, Option<RateDecision>, Option<BudgetUse>),
    /// The idempotency key's first request already created the task.
    Replay(ReservationRecord),
}

async fn reserve(
    state: &AppState,
    caller: &TenantCaller,
    request: &CreateRequest,
    durations: Vec<u64>,
    idempotency: Option<IdempotencyClaim>,
    rate: Vec<RateCheck>,
) -> Result<Held, ApiError> {
    let config = &state.config;
    let priced = request.price(config, &durations)?;
    let (price, charge) = (priced.price_per_second, priced.charge);
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
        requested_output_ms: charge.billed_output_ms,
        amount: charge.amount,
        callback_url: request.callback_url.clone(),
        now_ms: now.timestamp_millis(),
        idempotency,
        rate,
    };
    let receipt = state.store.reserve(&reserve).await.inspect_err(|_| {
        // The step may have run: its hold goes as soon as the store answers again.
        callbacks::reapply::spawn(
            state,
            Step::ReleaseUnsent {
                reservation_id: reserve.reservation_id.clone(),
            },
        );
    })?;
    match receipt.outcome {
        ReserveOutcome::Reserved(record) => Ok(Held::New(record, receipt.rate, receipt.budget_use)),
        ReserveOutcome::Replay(record) => Ok(Held::Replay(record)),
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
        ReserveRefusal::RateLimited(decision) => limit::refusal(Policy::Creates, decision),
        ReserveRefusal::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
        ReserveRefusal::RequestInProgress { outcome_unknown } => ApiError::RequestInProgress {
            retry_after_secs: if outcome_unknown { 60 } else { 1 },
        },
    }
}

/// Sends the create once (never retried: the upstream has no idempotency key) and says
/// what it did.
async fn forward(state: &AppState, request: &CreateRequest, reservation: &ReservationRecord) -> CreateOutcome {
    let body = request.upstream_body(callbacks::upstream_callback_url(state, reservation).as_deref());
    CreateOutcome::of(state.upstream.create_task(&body).await)
}

/// Binds the created task, retrying within `BIND_DEADLINE`; then the bind goes on in the
/// background (and the upstream's callback can recover it). Either way the caller gets the
/// task: it exists, and it will be charged once the bind lands.
async fn bind_until_bound(
    state: &AppState,
    reservation: ReservationRecord,
    task_id: &str,
    task: &Value,
) -> ReservationRecord {
    let created_task = task.to_string();
    let deadline = tokio::time::Instant::now() + BIND_DEADLINE;
    let mut delay = BIND_FIRST_DELAY;
    loop {
        match state
            .store
            .bind(&reservation.reservation_id, task_id, &created_task)
            .await
        {
            Ok(BindOutcome::Bound) => return reservation.bound(task_id, &created_task),
            Ok(BindOutcome::Current(record)) => return *record,
            Ok(BindOutcome::NotFound) => {
                tracing::error!(reservation_id = %reservation.reservation_id, task_id, "created task's reservation is gone");
                return reservation.bound(task_id, &created_task);
            }
            Err(error) if tokio::time::Instant::now() + delay >= deadline => {
                tracing::error!(
                    reservation_id = %reservation.reservation_id, task_id,
                    "task created upstream but not bound yet ({error}); binding in the background"
                );
                callbacks::reapply::spawn(
                    state,
                    Step::Bind {
                        reservation_id: reservation.reservation_id.clone(),
                        task_id: task_id.to_string(),
                        created_task: created_task.clone(),
                    },
                );
                return reservation.bound(task_id, &created_task);
            }
            Err(error) => {
                tracing::warn!(reservation_id = %reservation.reservation_id, task_id, "bind failed, retrying: {error}")
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// A create the upstream refused created nothing: the hold goes at once (in the background
/// until the store answers).
async fn release_refused(state: &AppState, reservation_id: &str) {
    let now_ms = state.clock.now().timestamp_millis();
    match state.store.refund(reservation_id, now_ms).await {
        Ok(FinalizeOutcome::Applied(done)) => state.metrics.record_refund(&done.tenant, &done.currency, done.reserved),
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(
                reservation_id,
                "refund after an upstream refusal not applied yet: {error}"
            );
            callbacks::reapply::spawn(
                state,
                Step::Refund {
                    reservation_id: reservation_id.to_string(),
                },
            );
        }
    }
}

/// The task may exist: the hold stays unbound (the upstream's callback can still reveal the
/// task; else the reconciler releases it after the grace period), and the caller learns
/// which reservation to ask about.
fn outcome_unknown(state: &AppState, reservation: &ReservationRecord, error: UpstreamError) -> ApiError {
    let recoverable = if state.config.server.public_base_url.is_empty() {
        "no server.public_base_url, so no upstream callback can reveal it"
    } else {
        "the upstream's callback will reveal it if it exists"
    };
    tracing::warn!(reservation_id = %reservation.reservation_id, "create outcome unknown ({error}); hold kept: {recoverable}");
    let timed_out = matches!(error, UpstreamError::Timeout(_));
    ApiError::UpstreamOutcomeUnknown {
        message: format!(
            "the upstream may have created the task ({error}); the hold {} stays until it is known; do not retry without the same Idempotency-Key",
            reservation.reservation_id
        ),
        reservation_id: reservation.reservation_id.clone(),
        timed_out,
    }
}
