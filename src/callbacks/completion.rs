//! Settle on observe: whoever sees a task in a final state (a query, an upstream callback's
//! re-fetch, the reconciler) moves its money, exactly once, through the store's idempotent
//! steps; a completion seen after the reconciler gave up is charged late.

use serde_json::Value;

use crate::alerts;
use crate::billing;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{FinalizeOutcome, ReservationRecord, ReservationState, Settlement};
use crate::upstream::{self, TaskStatus};

/// Settles a completed task or refunds a failed/cancelled one; returns the record as it
/// stands afterwards. A running task, or one already settled or refunded, is returned
/// unchanged; an expired one is charged late if it completed (a failure moves nothing).
pub async fn observe(state: &AppState, record: ReservationRecord, task: &Value) -> Result<ReservationRecord, ApiError> {
    let status = TaskStatus::of(task);
    let late = match (record.state, status) {
        (_, TaskStatus::Running) => return Ok(record),
        (ReservationState::Reserved, _) => false,
        (ReservationState::Expired, TaskStatus::Completed) => true,
        _ => return Ok(record),
    };
    let now_ms = state.clock.now().timestamp_millis();
    let id = record.reservation_id.as_str();
    let (outcome, late) = match status {
        TaskStatus::Completed => {
            let settlement = settlement_for(state, &record, task, now_ms).await;
            if settlement.anomaly {
                tracing::warn!(reservation_id = %id, "result length not measured; billing the requested length");
            }
            match late {
                true => (state.store.late_settle(id, &settlement).await?, true),
                false => match state.store.settle(id, &settlement).await? {
                    // The reconciler expired the hold since this record was read.
                    FinalizeOutcome::AlreadyFinal(now) if now.state == ReservationState::Expired => {
                        (state.store.late_settle(id, &settlement).await?, true)
                    }
                    outcome => (outcome, false),
                },
            }
        }
        _ => (state.store.refund(id, now_ms).await?, false),
    };
    if let FinalizeOutcome::Applied(done) = &outcome {
        if late {
            tracing::warn!(
                reservation_id = %done.reservation_id, request_id = %done.request_id, tenant = %done.tenant,
                "task completed after its hold expired: charged late (late_settle, flagged anomaly)"
            );
        }
        record_metrics(state, status, done);
        alerts::check(state, done);
        ended(state, done);
    }
    Ok(outcome.record().cloned().unwrap_or(record))
}

/// After the reconciler expired a hold: counted, and the caller told.
pub(super) fn expired(state: &AppState, done: &ReservationRecord) {
    state.metrics.tasks.with_label_values(&[&done.tenant, "expired"]).inc();
    ended(state, done);
}

/// A final step moved money: if the caller asked for a callback, the relay has an event.
fn ended(state: &AppState, done: &ReservationRecord) {
    if done.callback_url.is_some() {
        state.completion.wake_relay();
    }
}

/// Bills the generated length, measured from the result file; when it cannot be measured,
/// the requested length is billed and flagged as an anomaly.
async fn settlement_for(state: &AppState, record: &ReservationRecord, task: &Value, now_ms: i64) -> Settlement {
    let measured = match upstream::result_url(task) {
        Some(url) => match state.prober.probe_result(url).await {
            Ok(video) => Some(video.duration_ms),
            Err(error) => {
                tracing::warn!(reservation_id = %record.reservation_id, "result not measurable: {error}");
                None
            }
        },
        None => None,
    };
    let output_ms = measured.unwrap_or(record.requested_output_ms);
    let charge = billing::charge(&record.reference_durations_ms, output_ms, record.price_per_second);
    Settlement {
        billed_output_ms: charge.billed_output_ms,
        amount: charge.amount,
        anomaly: measured.is_none(),
        now_ms,
    }
}

/// Counted on the replica whose store step moved the money, so each task counts once.
fn record_metrics(state: &AppState, status: TaskStatus, done: &ReservationRecord) {
    let metrics = &state.metrics;
    match status {
        TaskStatus::Completed => {
            metrics.tasks.with_label_values(&[&done.tenant, "completed"]).inc();
            metrics.record_settlement(done);
        }
        TaskStatus::Failed | TaskStatus::Cancelled => {
            let outcome = if status == TaskStatus::Failed {
                "failed"
            } else {
                "cancelled"
            };
            metrics.tasks.with_label_values(&[&done.tenant, outcome]).inc();
            metrics.record_refund(&done.tenant, &done.currency, done.reserved);
        }
        TaskStatus::Running => {}
    }
}
