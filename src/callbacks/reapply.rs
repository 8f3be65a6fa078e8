//! Store steps whose outcome is unknown (a store timeout, a stalled Redis) are applied again
//! in the background until the store answers, never undone: each is idempotent by
//! reservation id, so one that had landed changes nothing the second time.

use std::time::{Duration, Instant};

use crate::state::AppState;
use crate::store::{FinalizeOutcome, RecoverOutcome, Recovery, StoreError};

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// A step to apply until the store confirms it.
#[derive(Debug, Clone)]
pub enum Step {
    /// A reserve whose answer was lost before anything was sent upstream: its hold (if it
    /// was made) is released, and a reserve still on its way can hold nothing.
    ReleaseUnsent { reservation_id: String },
    /// The hold of a create the upstream refused.
    Refund { reservation_id: String },
    /// A task the upstream created whose bind did not land in time.
    Bind {
        reservation_id: String,
        task_id: String,
        created_task: String,
    },
}

impl Step {
    fn reservation_id(&self) -> &str {
        match self {
            Self::ReleaseUnsent { reservation_id }
            | Self::Refund { reservation_id }
            | Self::Bind { reservation_id, .. } => reservation_id,
        }
    }
}

/// Applies `step` in the background, retrying with backoff until the store answers or the
/// unbound-hold grace period is over (then the reconciler's expiry and the upstream's
/// callback are what is left, and an error line names the step).
pub fn spawn(state: &AppState, step: Step) {
    let state = state.clone();
    tokio::spawn(async move { until_applied(&state, step).await });
}

async fn until_applied(state: &AppState, step: Step) {
    let give_up = Instant::now() + state.config.reconciler.unbound_hold_grace_secs.as_duration();
    let mut delay = FIRST_DELAY;
    loop {
        match apply(state, &step).await {
            Ok(()) => return,
            Err(error) if Instant::now() >= give_up => {
                tracing::error!(
                    reservation_id = %step.reservation_id(), ?step,
                    "store step still not applied after the unbound-hold grace period; giving up: {error}"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(reservation_id = %step.reservation_id(), "store step not applied yet: {error}")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

async fn apply(state: &AppState, step: &Step) -> Result<(), StoreError> {
    let now_ms = state.clock.now().timestamp_millis();
    match step {
        Step::ReleaseUnsent { reservation_id } => {
            let outcome = state.store.release_unsent(reservation_id, now_ms).await?;
            if let FinalizeOutcome::Applied(done) = &outcome {
                tracing::warn!(reservation_id = %reservation_id, "hold of a reserve that timed out released");
                state.metrics.record_refund(&done.tenant, &done.currency, done.reserved);
            }
        }
        Step::Refund { reservation_id } => {
            if let FinalizeOutcome::Applied(done) = state.store.refund(reservation_id, now_ms).await? {
                state.metrics.record_refund(&done.tenant, &done.currency, done.reserved);
            }
        }
        Step::Bind {
            reservation_id,
            task_id,
            created_task,
        } => {
            let recovery = Recovery {
                reservation_id: reservation_id.clone(),
                task_id: task_id.clone(),
                created_task: created_task.clone(),
                now_ms,
                refusal: None,
            };
            match state.store.recover(&recovery).await? {
                RecoverOutcome::Bound(_) => {
                    tracing::warn!(reservation_id = %reservation_id, task_id = %task_id, "late bind landed");
                    state.completion.wake_reconciler();
                }
                RecoverOutcome::AlreadyBound(_) => {}
                RecoverOutcome::Refused(note) => {
                    tracing::error!(reservation_id = %reservation_id, task_id = %task_id, "late bind refused: {note}")
                }
                RecoverOutcome::NotFound => {
                    tracing::error!(reservation_id = %reservation_id, task_id = %task_id, "late bind found no reservation")
                }
            }
        }
    }
    Ok(())
}
