//! A genuine callback whose reservation the store does not hold: its record was lost (a Redis
//! failover lost the last writes before it) or deleted by retention. A sealed token carries
//! what is needed to charge the task, so the reservation is rebuilt and the task charged as
//! usual, while the token is younger than `store.retention_secs`; an older one was deleted
//! by retention and is written as an `anomaly`, never charged. A token minted before tokens
//! were sealed names the reservation only: logged and counted as an anomaly.

use serde_json::Value;

use super::completion::{observe, recovery_refusal};
use super::token::{TokenPayload, Verified};
use crate::billing;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{PeriodKeys, Rebuild, RebuildOutcome, ReserveRequest};
use crate::upstream;

/// Handles a genuine callback token whose reservation the store does not hold. `Ok` when the
/// callback was dealt with (rebuilt and charged, refused as an anomaly); an error (404 for
/// what cannot be rebuilt, an upstream error the upstream's retry may cure) otherwise.
pub async fn lost_record(state: &AppState, token: &Verified, body: &[u8]) -> Result<(), ApiError> {
    let payload = match token {
        Verified::Sealed(payload) => payload,
        Verified::Legacy(reservation_id) => {
            tracing::error!(
                reservation_id = %reservation_id,
                "anomaly: a callback for a reservation this store does not hold, with a token minted before \
                 tokens carried their reservation: it cannot be rebuilt; reconcile it by hand against the upstream"
            );
            state.metrics.tasks.with_label_values(&["", "anomaly"]).inc();
            return Err(ApiError::TaskNotFound(reservation_id.clone()));
        }
    };
    let task_id = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|task| upstream::task_id(&task).map(str::to_string));
    let Some(task_id) = task_id else {
        tracing::warn!(reservation_id = %payload.reservation_id, "callback for a lost reservation names no task");
        return Err(ApiError::TaskNotFound(payload.reservation_id.clone()));
    };
    let now_ms = state.clock.now().timestamp_millis();
    let retention_ms = i64::try_from(state.config.store.retention_secs.as_millis()).unwrap_or(i64::MAX);
    let (task, refusal) = if now_ms.saturating_sub(payload.created_ms) >= retention_ms {
        // Deleted by retention, not lost: whatever it was, it was settled long ago.
        let note = format!(
            "callback for task {task_id} of reservation {}, whose record retention deleted (token older than \
             store.retention_secs): not charged",
            payload.reservation_id
        );
        (Value::Null, Some(note))
    } else {
        let task = state.upstream.get_task_for_caller(&task_id).await?;
        (task, None)
    };
    let Some(mut rebuild) = rebuild_of(state, payload, &task_id, &task, now_ms) else {
        let note = format!(
            "callback for task {task_id} of lost reservation {}: model {:?} quality {:?} is no longer priced",
            payload.reservation_id, payload.model, payload.quality
        );
        tracing::error!("anomaly: {note}");
        return Ok(());
    };
    rebuild.refusal =
        refusal.or_else(|| recovery_refusal(&rebuild.record(""), &task_id, &task, state.config.upstream.timeout_ms));
    match state.store.rebuild(&rebuild).await? {
        RebuildOutcome::Rebuilt(record) => {
            tracing::warn!(
                reservation_id = %record.reservation_id, tenant = %record.tenant, task_id,
                "reservation record lost (a store failover?): rebuilt from the callback token, charging the task"
            );
            state
                .metrics
                .tasks
                .with_label_values(&[&record.tenant, "recovered"])
                .inc();
            observe(state, record, &task).await?;
            state.completion.wake_reconciler();
        }
        RebuildOutcome::Exists(_) => {
            state.store.mark_due(&payload.reservation_id, now_ms).await?;
            state.completion.wake_reconciler();
        }
        RebuildOutcome::Refused(note) => {
            tracing::error!(reservation_id = %payload.reservation_id, task_id, "anomaly, not charged: {note}");
            state
                .metrics
                .tasks
                .with_label_values(&[&payload.tenant, "anomaly"])
                .inc();
        }
        RebuildOutcome::UnknownTenant => {
            tracing::error!(
                reservation_id = %payload.reservation_id, tenant = %payload.tenant, task_id,
                "anomaly: callback for a lost reservation of a tenant this store does not know: not charged"
            );
            state.metrics.tasks.with_label_values(&["", "anomaly"]).inc();
        }
    }
    Ok(())
}

/// The hold as it was reserved, priced by today's price list (the token carries no price);
/// `None` when the model and quality are no longer priced.
fn rebuild_of(state: &AppState, payload: &TokenPayload, task_id: &str, task: &Value, now_ms: i64) -> Option<Rebuild> {
    let config = &state.config;
    let price = config.price_per_second(&payload.model, &payload.quality, payload.audio)?;
    let created = chrono::DateTime::from_timestamp_millis(payload.created_ms)?;
    Some(Rebuild {
        hold: ReserveRequest {
            reservation_id: payload.reservation_id.clone(),
            tenant: payload.tenant.clone(),
            user: payload.user.clone(),
            request_id: String::new(),
            periods: PeriodKeys::at(created),
            model: payload.model.clone(),
            quality: payload.quality.clone(),
            audio: payload.audio,
            currency: config.pricing.currency.clone(),
            price_per_second: price,
            // One reference of the billed length bills it again at settlement (the billed
            // input of any count of references is at most one reference's 5 s cap).
            reference_durations_ms: vec![payload.billed_input_ms].into_iter().filter(|ms| *ms > 0).collect(),
            billed_input_ms: payload.billed_input_ms,
            requested_output_ms: payload.requested_output_ms,
            amount: billing::cost_micros(price, payload.billed_input_ms, payload.requested_output_ms),
            callback_url: None,
            now_ms: payload.created_ms,
            idempotency: None,
            rate: Vec::new(),
        },
        task_id: task_id.to_string(),
        created_task: task.to_string(),
        now_ms,
        refusal: None,
    })
}
