//! Settle on observe: whoever sees a task in a final state (a query, an upstream callback's
//! re-fetch, the reconciler) moves its money, exactly once, through the store's idempotent
//! steps; a completion seen after the reconciler gave up is charged late.

use serde_json::Value;

use crate::alerts;
use crate::billing;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{FinalizeOutcome, RecoverOutcome, Recovery, ReservationRecord, ReservationState, Settlement};
use crate::upstream::{self, TaskStatus};

/// Settles a completed task or refunds a failed/cancelled one; returns the record as it
/// stands afterwards. A running task, or one already settled or refunded, is returned
/// unchanged; one whose hold was released before the task was known (expired, or refused
/// and then recovered) is charged late if it completed (a failure moves nothing).
pub async fn observe(state: &AppState, record: ReservationRecord, task: &Value) -> Result<ReservationRecord, ApiError> {
    let status = TaskStatus::of(task);
    let late = match (record.state, status) {
        (_, TaskStatus::Running) => return Ok(record),
        (ReservationState::Reserved, _) => false,
        (_, TaskStatus::Completed) if record.charges_late() => true,
        _ => return Ok(record),
    };
    let now_ms = state.clock.now().timestamp_millis();
    let id = record.reservation_id.as_str();
    let (outcome, late) = match status {
        TaskStatus::Completed => {
            crate::archive::enqueue(state, id, now_ms).await?;
            let settlement = settlement_for(state, &record, task, now_ms).await;
            if settlement.anomaly {
                tracing::warn!(reservation_id = %id, "result length not measured; billing the requested length");
            }
            match late {
                true => (state.store.late_settle(id, &settlement).await?, true),
                false => match state.store.settle(id, &settlement).await? {
                    // The reconciler expired the hold since this record was read.
                    FinalizeOutcome::AlreadyFinal(now) if now.charges_late() => {
                        (state.store.late_settle(id, &settlement).await?, true)
                    }
                    outcome => (outcome, false),
                },
            }
        }
        _ => (state.store.refund(id, now_ms).await?, false),
    };
    if let FinalizeOutcome::Applied(done) = &outcome {
        // For the task list: the ending as the upstream reported it (display only).
        if let Err(error) = state.store.note_task(id, &task.to_string()).await {
            tracing::warn!(reservation_id = %id, "could not keep the task's last state: {error}");
        }
        if late {
            tracing::warn!(
                reservation_id = %done.reservation_id, request_id = %done.request_id, tenant = %done.tenant,
                "task completed after its hold was released: charged late (late_settle, flagged anomaly)"
            );
        }
        record_metrics(state, status, done);
        alerts::check(state, done);
        ended(state, done);
    }
    Ok(outcome.record().cloned().unwrap_or(record))
}

/// An upstream callback named `task_id` for a reservation that has none (its create's
/// outcome was unknown, its bind did not land, or it was refused and created anyway): the
/// task is re-fetched, bound if it fits the reservation (else an `anomaly`), and its money
/// moved as for any task. An upstream error is returned, so the upstream retries its callback.
pub async fn recover(state: &AppState, record: ReservationRecord, task_id: &str) -> Result<(), ApiError> {
    let task = state.upstream.get_task_for_caller(task_id).await?;
    let refusal = recovery_refusal(&record, task_id, &task, state.config.upstream.timeout_ms);
    let recovery = Recovery {
        reservation_id: record.reservation_id.clone(),
        task_id: task_id.to_string(),
        created_task: task.to_string(),
        now_ms: state.clock.now().timestamp_millis(),
        refusal,
    };
    match state.store.recover(&recovery).await? {
        RecoverOutcome::Bound(bound) => {
            tracing::warn!(
                reservation_id = %bound.reservation_id, request_id = %bound.request_id, tenant = %bound.tenant, task_id,
                state = bound.state.as_str(), "task recovered from the upstream's callback"
            );
            state
                .metrics
                .tasks
                .with_label_values(&[&bound.tenant, "recovered"])
                .inc();
            observe(state, bound, &task).await?;
        }
        RecoverOutcome::Refused(note) => {
            tracing::error!(reservation_id = %record.reservation_id, task_id, "recovery refused: {note}")
        }
        RecoverOutcome::AlreadyBound(_) | RecoverOutcome::NotFound => {}
    }
    Ok(())
}

/// How far the upstream's `created` (unix seconds) may lie from the reservation's creation.
const CREATED_SLACK_MS: i64 = 5_000;

/// Why a re-fetched task must not be bound to `record`: another id than asked for, another
/// model, or created outside [reservation − 5 s, reservation + create timeout + 5 s].
pub(super) fn recovery_refusal(
    record: &ReservationRecord,
    task_id: &str,
    task: &Value,
    timeout_ms: u64,
) -> Option<String> {
    if upstream::task_id(task) != Some(task_id) {
        return Some(format!("the upstream answered for task {task_id} with another id"));
    }
    let model = task.get("model").and_then(Value::as_str).unwrap_or("");
    if model != record.model {
        return Some(format!(
            "the upstream's callback named task {task_id} of model {model:?}, not the reservation's {:?}",
            record.model
        ));
    }
    let earliest = record.created_ms.saturating_sub(CREATED_SLACK_MS);
    let latest = record
        .created_ms
        .saturating_add(i64::try_from(timeout_ms).unwrap_or(i64::MAX))
        .saturating_add(CREATED_SLACK_MS);
    match task
        .get("created")
        .and_then(Value::as_i64)
        .map(|s| s.saturating_mul(1000))
    {
        Some(created_ms) if (earliest..=latest).contains(&created_ms) => None,
        created => Some(format!(
            "the upstream's callback named task {task_id} created at {created:?} ms, outside [{earliest}, {latest}] for this reservation"
        )),
    }
}

/// After the reconciler expired a hold: counted, and the caller told.
pub(super) fn expired(state: &AppState, done: &ReservationRecord) {
    state.metrics.tasks.with_label_values(&[&done.tenant, "expired"]).inc();
    ended(state, done);
}

/// A final step moved money: if the caller asked for a callback, the relay has an event.
fn ended(state: &AppState, done: &ReservationRecord) {
    crate::archive::wake(state);
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::PeriodKeys;

    fn reservation(created_ms: i64) -> ReservationRecord {
        ReservationRecord {
            reservation_id: "rsv_1".into(),
            tenant: "t".into(),
            user: "u".into(),
            request_id: String::new(),
            task_id: None,
            state: ReservationState::Reserved,
            period: "2026-12".into(),
            periods: PeriodKeys::at(chrono::DateTime::from_timestamp_millis(created_ms).unwrap()),
            model: "wan2.6-reference-video-flash".into(),
            quality: "720p".into(),
            audio: true,
            currency: "USD".into(),
            price_per_second: 50_000,
            reference_durations_ms: vec![4000],
            billed_input_ms: 4000,
            requested_output_ms: 5000,
            reserved: 450_000,
            charged: None,
            billed_output_ms: None,
            callback_url: None,
            created_ms,
            finished_ms: None,
            result_expires_ms: None,
            created_task: None,
            recovered: false,
            refused_task: None,
            claim_expires_ms: None,
            period_end_ms: None,
            last_task: None,
            archived: false,
        }
    }

    fn task(id: &str, model: &str, created_s: i64) -> Value {
        json!({"id": id, "model": model, "created": created_s, "status": "completed"})
    }

    #[test]
    fn a_recovered_task_must_match_the_reservations_model_and_creation_window() {
        let record = reservation(1_800_000_000_000);
        let model = "wan2.6-reference-video-flash";
        let ok = |created_s| {
            recovery_refusal(
                &record,
                "task-unified-1",
                &task("task-unified-1", model, created_s),
                30_000,
            )
        };
        assert_eq!(ok(1_800_000_000), None);
        assert_eq!(ok(1_799_999_995), None, "5 s before the reservation");
        assert_eq!(ok(1_800_000_035), None, "the timeout plus 5 s after");
        assert!(ok(1_799_999_994).is_some());
        assert!(ok(1_800_000_036).is_some());
        let other_model = task("task-unified-1", "wan2.6-other", 1_800_000_000);
        assert!(recovery_refusal(&record, "task-unified-1", &other_model, 30_000).is_some());
        let other_id = task("task-unified-2", model, 1_800_000_000);
        assert!(recovery_refusal(&record, "task-unified-1", &other_id, 30_000).is_some());
        let no_created = json!({"id": "task-unified-1", "model": model});
        assert!(recovery_refusal(&record, "task-unified-1", &no_created, 30_000).is_some());
    }
}
