//! The reconciler: the polling safety net. It visits every reservation not yet final (the
//! store's `Tasks` queue: entered at reserve, left at the final step), oldest due first, one
//! replica at a time per task (a lease), and polls the upstream: settles or refunds what
//! ended, expires what is too old to wait for, and expires holds that were never bound to a
//! task (the create died or timed out), logging them for manual reconciliation.

use futures_util::StreamExt;
use futures_util::stream;
use tokio::sync::watch;

use super::completion;
use crate::config::ReconcilerConfig;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{FinalizeOutcome, Queue, ReservationRecord, ReservationState};
use crate::upstream::TaskStatus;

/// Due entries read per round.
const BATCH: usize = 64;
/// Tasks visited at once per replica (each visit may poll the upstream and probe a result).
const CONCURRENCY: usize = 16;

pub(super) async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let config = &state.config.reconciler;
    let tick = super::tick_for(
        [
            config.first_poll_after_secs,
            config.poll_interval_secs,
            config.unbound_hold_grace_secs,
        ]
        .map(|s| s.as_millis()),
    );
    tracing::info!(tick_ms = tick.as_millis() as u64, "reconciler started");
    loop {
        // Until a round finds nothing this replica could take.
        while round(&state).await && !*stop.borrow() {}
        if !super::pause(tick, &state.completion.reconcile_now, &mut stop).await {
            tracing::info!("reconciler stopped");
            return;
        }
    }
}

/// Visits the due tasks; true when it took any (there may be more).
async fn round(state: &AppState) -> bool {
    let now = super::now_ms(state);
    let ids = match state.store.due(Queue::Tasks, now, BATCH).await {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!("reconciler cannot read its queue: {error}");
            return false;
        }
    };
    let taken: Vec<bool> = stream::iter(ids)
        .map(|id| visit(state, id, now))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    taken.contains(&true)
}

/// Claims one task, looks at it, and gives it back with its next due time.
async fn visit(state: &AppState, id: String, now: i64) -> bool {
    let (store, owner) = (&state.store, state.completion.owner.as_str());
    let claimed = match store.claim(Queue::Tasks, &id, owner, now, lease_ms(state)).await {
        Ok(Some(due)) => due,
        Ok(None) => return false,
        Err(error) => {
            tracing::warn!(reservation_id = %id, "reconciler cannot claim: {error}");
            return false;
        }
    };
    let next = match look(state, &id, now, claimed).await {
        Ok(next) => next,
        Err(error) => {
            tracing::warn!(reservation_id = %id, "reconciler: {error}; trying again later");
            Some(now.saturating_add(state.config.reconciler.poll_interval_secs.as_millis_i64()))
        }
    };
    if let Err(error) = store.release(Queue::Tasks, &id, owner, claimed, next).await {
        // The lease runs out by itself; the task stays due.
        tracing::warn!(reservation_id = %id, "reconciler cannot release: {error}");
    }
    true
}

/// What to do with a task now (`due`: when it was due); returns when to look next (`None`:
/// never again).
async fn look(state: &AppState, id: &str, now: i64, due: i64) -> Result<Option<i64>, ApiError> {
    let Some(record) = state.store.reservation(id).await? else {
        return Ok(None);
    };
    match (record.state, record.task_id.clone()) {
        (ReservationState::Reserved, None) => unbound(state, record, now).await,
        (ReservationState::Reserved, Some(task_id)) => bound(state, record, &task_id, now, due).await,
        (_, Some(task_id)) if record.charges_late() => released(state, record, &task_id, now).await,
        _ => Ok(None),
    }
}

/// A task whose hold was released before it ended (expired, or refused and then recovered):
/// polled until it ends, a completion charged late, at most until twice the maximum task
/// age (so a poll that failed at expiry does not lose a completion, even without callbacks).
async fn released(
    state: &AppState,
    record: ReservationRecord,
    task_id: &str,
    now: i64,
) -> Result<Option<i64>, ApiError> {
    let config = &state.config.reconciler;
    let id = record.reservation_id.clone();
    let ended = match state.upstream.get_task(task_id).await {
        Ok(task) => {
            super::observe(state, record.clone(), &task).await?;
            TaskStatus::of(&task).is_final()
        }
        Err(error) => {
            tracing::warn!(reservation_id = %id, task_id, "poll of a released task failed: {error}");
            false
        }
    };
    let give_up = record
        .created_ms
        .saturating_add(config.max_task_age_secs.as_millis_i64().saturating_mul(2));
    if ended || now >= give_up {
        return Ok(None);
    }
    Ok(Some(now.saturating_add(released_interval(config))))
}

/// How often a released task is polled: the slowest regular rate.
fn released_interval(config: &ReconcilerConfig) -> i64 {
    config.poll_interval_secs.as_millis_i64().saturating_mul(2)
}

/// A hold without a task id: its create is still on the way, or died (process killed,
/// upstream timeout) and never will bind. After the grace period it is released as expired,
/// logged at error level with its request id so an operator can check the upstream by hand.
async fn unbound(state: &AppState, record: ReservationRecord, now: i64) -> Result<Option<i64>, ApiError> {
    let config = &state.config.reconciler;
    let grace_end = record
        .created_ms
        .saturating_add(config.unbound_hold_grace_secs.as_millis_i64());
    if now < grace_end {
        // Bound by then, normally: look at the first poll time, then every interval.
        let first_poll = record
            .created_ms
            .saturating_add(config.first_poll_after_secs.as_millis_i64());
        // (A hold looked at before its bind landed is looked at again at the first poll time,
        // so the bound task is polled then, not an interval later.)
        let next = if now < first_poll {
            first_poll
        } else {
            now.saturating_add(config.poll_interval_secs.as_millis_i64())
        };
        return Ok(Some(grace_end.min(next)));
    }
    if let FinalizeOutcome::Applied(done) = state.store.expire(&record.reservation_id, now).await? {
        tracing::error!(
            request_id = %done.request_id, reservation_id = %done.reservation_id, tenant = %done.tenant,
            user = %done.user, reserved = %crate::billing::format_money(done.reserved), created_ms = done.created_ms,
            "unbound hold expired: its create never recorded an upstream task (the process died or the upstream \
             call timed out); the hold is released; if the upstream did create a task then, reconcile it by hand"
        );
        completion::expired(state, &done);
    }
    Ok(None)
}

/// A bound task: polled from the first poll time on, or earlier when an upstream callback
/// asked; after the maximum age, polled once more and then expired.
async fn bound(
    state: &AppState,
    record: ReservationRecord,
    task_id: &str,
    now: i64,
    due: i64,
) -> Result<Option<i64>, ApiError> {
    let config = &state.config.reconciler;
    let first_poll = record
        .created_ms
        .saturating_add(config.first_poll_after_secs.as_millis_i64());
    // Before the first poll time a task is due only for the look every hold gets when it is
    // made (due at its creation time) or because a callback marked it (due at any other
    // time, see `Store::mark_due`): only the callback is worth a poll.
    if now < first_poll && due == record.created_ms {
        return Ok(Some(first_poll));
    }
    let record = match state.upstream.get_task(task_id).await {
        Ok(task) => super::observe(state, record, &task).await?,
        Err(error) => {
            tracing::warn!(reservation_id = %record.reservation_id, task_id, "reconciler poll failed: {error}");
            record
        }
    };
    if record.state != ReservationState::Reserved {
        return Ok(None);
    }
    let max_age = config.max_task_age_secs.as_millis_i64();
    if now.saturating_sub(record.created_ms) >= max_age {
        if let FinalizeOutcome::Applied(done) = state.store.expire(&record.reservation_id, now).await? {
            tracing::warn!(
                request_id = %done.request_id, reservation_id = %done.reservation_id, tenant = %done.tenant, task_id,
                "task still not final after reconciler.max_task_age_secs: hold released as expired; a later \
                 completion will be charged as late_settle"
            );
            completion::expired(state, &done);
            // The expiry took it off the queue: it stays there, polled as a released task.
            state
                .store
                .mark_due(&done.reservation_id, now.saturating_add(released_interval(config)))
                .await?;
        }
        return Ok(None);
    }
    Ok(Some(
        now.saturating_add(backoff(config, now.saturating_sub(first_poll))),
    ))
}

/// The wait before the next poll: the poll interval, growing by a quarter of the time
/// already spent polling, up to twice the interval. A long task is polled less often, and a
/// completion whose callback was lost is still seen within two intervals.
fn backoff(config: &ReconcilerConfig, polling_for_ms: i64) -> i64 {
    let interval = config.poll_interval_secs.as_millis_i64();
    interval.saturating_add(interval.min(polling_for_ms.max(0) / 4))
}

/// How long a claim may take: a poll with its retries, a result probe, and the store steps.
fn lease_ms(state: &AppState) -> u64 {
    let config = &state.config;
    config
        .upstream
        .timeout_ms
        .saturating_mul(3)
        .saturating_add(config.probe.timeout_ms)
        .saturating_add(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Seconds;

    #[test]
    fn polls_slow_down_to_twice_the_interval_and_no_further() {
        let config = ReconcilerConfig {
            poll_interval_secs: Seconds::from_secs(30),
            ..ReconcilerConfig::default()
        };
        assert_eq!(backoff(&config, 0), 30_000);
        assert_eq!(backoff(&config, 60_000), 45_000);
        assert_eq!(backoff(&config, 120_000), 60_000);
        assert_eq!(backoff(&config, 86_400_000), 60_000);
    }
}
