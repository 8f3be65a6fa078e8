//! Settle on observe: whoever sees a task in a final state (a query now; callbacks and the
//! reconciler later) moves its money, exactly once, through the store's idempotent steps.

use serde_json::Value;

use crate::alerts;
use crate::billing;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{FinalizeOutcome, ReservationRecord, ReservationState, Settlement};
use crate::upstream::{self, TaskStatus};

/// Settles a completed task or refunds a failed/cancelled one; returns the record as it
/// stands afterwards. A running task, or one already final, is returned unchanged.
pub async fn observe(state: &AppState, record: ReservationRecord, task: &Value) -> Result<ReservationRecord, ApiError> {
    if record.state != ReservationState::Reserved {
        return Ok(record);
    }
    let now_ms = state.clock.now().timestamp_millis();
    let status = TaskStatus::of(task);
    let outcome = match status {
        TaskStatus::Running => return Ok(record),
        TaskStatus::Completed => {
            let settlement = settlement_for(state, &record, task, now_ms).await;
            if settlement.anomaly {
                tracing::warn!(reservation_id = %record.reservation_id, "result length not measured; billing the requested length");
            }
            state.store.settle(&record.reservation_id, &settlement).await?
        }
        TaskStatus::Failed | TaskStatus::Cancelled => state.store.refund(&record.reservation_id, now_ms).await?,
    };
    if let FinalizeOutcome::Applied(done) = &outcome {
        record_metrics(state, status, done);
        alerts::check(state, done);
    }
    Ok(outcome.record().cloned().unwrap_or(record))
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
