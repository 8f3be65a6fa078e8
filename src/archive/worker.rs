//! The copy worker: takes due entries of the store's archive queue (one replica at a time per
//! task, by lease, like the relay), copies the result, and gives the entry back: gone once
//! copied or given up, else due again with a growing delay, until the upstream's link has
//! expired (then counted `failed`). It also applies `archive.retention_days` to `file:`
//! archives, once an hour.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::sync::watch;

use super::{Archive, CopyError};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Queue, ReservationRecord, ReservationState};
use crate::upstream;

/// Due entries read per round.
const BATCH: usize = 32;
/// Copies in flight at once per replica: each holds at most two upload parts in memory.
const COPIES: usize = 8;
/// How long one copy may hold its entry (a slow 200 MB result included).
const LEASE_MS: u64 = 30 * 60_000;
/// How soon a task whose money step is still on its way is looked at again.
const UNSETTLED_RETRY_MS: i64 = 5_000;
/// How often the worker looks for due work when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);
/// How often retention runs over a `file:` archive.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// The upstream keeps a result this long after completion (when the record has no expiry).
const RESULT_TTL_MS: i64 = 86_400_000;

pub async fn run(state: AppState, archive: Arc<Archive>, mut stop: watch::Receiver<bool>) {
    tracing::info!(archive = %archive.describe(), "archive worker started");
    let mut purged_at: Option<tokio::time::Instant> = None;
    loop {
        if purged_at.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
            purge(&state, &archive).await;
            purged_at = Some(tokio::time::Instant::now());
        }
        while round(&state, &archive).await && !*stop.borrow() {}
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = archive.wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

async fn purge(state: &AppState, archive: &Archive) {
    match archive.purge(state.clock.now()).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "archive: videos past archive.retention_days deleted"),
        Err(error) => tracing::warn!("archive retention: {error}"),
    }
}

/// Copies the due entries; true when it took any.
async fn round(state: &AppState, archive: &Archive) -> bool {
    let now = state.clock.now().timestamp_millis();
    let ids = match state.store.due(Queue::Archive, now, BATCH).await {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!("archive worker cannot read its queue: {error}");
            return false;
        }
    };
    let taken: Vec<bool> = stream::iter(ids)
        .map(|id| visit(state, archive, id, now))
        .buffer_unordered(COPIES)
        .collect()
        .await;
    taken.contains(&true)
}

/// Claims one entry, makes one attempt, and gives it back with its next due time.
async fn visit(state: &AppState, archive: &Archive, id: String, now: i64) -> bool {
    let (store, owner) = (&state.store, archive.owner.as_str());
    let claimed = match store.claim(Queue::Archive, &id, owner, now, LEASE_MS).await {
        Ok(Some(due)) => due,
        Ok(None) => return false,
        Err(error) => {
            tracing::warn!(reservation_id = %id, "archive worker cannot claim: {error}");
            return false;
        }
    };
    let next = match attempt(state, archive, &id).await {
        Ok(next) => next,
        Err(error) => {
            tracing::warn!(reservation_id = %id, "archive copy not attempted: {error}; trying again later");
            Some(now.saturating_add(UNSETTLED_RETRY_MS))
        }
    };
    if let Err(error) = store.release(Queue::Archive, &id, owner, claimed, next).await {
        tracing::warn!(reservation_id = %id, "archive worker cannot release: {error}");
    }
    true
}

/// One look at a queued task; returns when to look again (`None`: done with it).
async fn attempt(state: &AppState, archive: &Archive, id: &str) -> Result<Option<i64>, ApiError> {
    let now = state.clock.now().timestamp_millis();
    let Some(record) = state.store.reservation(id).await? else {
        return Ok(None);
    };
    match record.state {
        ReservationState::Settled => {}
        // The completion's money step has not landed yet (or its process died): the
        // reconciler or a query will settle it; until it gives up, wait.
        _ if record.state == ReservationState::Reserved || record.charges_late() => {
            return Ok(unsettled(state, &record, now));
        }
        _ => return Ok(None),
    }
    let (Some(task_id), false) = (record.task_id.as_deref(), record.archived) else {
        return Ok(None);
    };
    let Some(path) = Archive::path(&record.tenant, task_id) else {
        tracing::error!(reservation_id = %id, tenant = %record.tenant, task_id, "archive: no object name for this tenant and task id; not archived");
        return Ok(None);
    };
    if archive.head(&path).await.map_err(internal)?.is_some() {
        // Copied before, and the process stopped before it could say so.
        state.store.mark_archived(id).await?;
        count(state, "archived");
        return Ok(None);
    }
    let expires = result_expires_ms(&record);
    if now >= expires {
        count(state, "failed");
        tracing::error!(reservation_id = %id, tenant = %record.tenant, task_id,
            "archive: the upstream's result link expired before the video could be copied; it is lost");
        return Ok(None);
    }
    let url = result_url(state, &record, task_id).await?;
    match copy(state, archive, &url, &path).await {
        Ok(bytes) => {
            state.store.mark_archived(id).await?;
            count(state, "archived");
            state.metrics.archive_bytes.inc_by(bytes);
            tracing::info!(reservation_id = %id, tenant = %record.tenant, task_id, bytes, "video archived");
            Ok(None)
        }
        Err(CopyError::TooLarge(seen)) => {
            count(state, "too_large");
            tracing::warn!(reservation_id = %id, tenant = %record.tenant, task_id, seen,
                max_bytes = archive.max_bytes(), "archive: the result is larger than archive.max_bytes; not archived");
            Ok(None)
        }
        Err(error) => {
            let finished = record.finished_ms.unwrap_or(now);
            let next = now
                .saturating_add(retry_delay_ms(now.saturating_sub(finished)))
                .min(expires);
            tracing::warn!(reservation_id = %id, task_id, "archive copy failed: {error}; retrying in {} ms", next - now);
            Ok(Some(next))
        }
    }
}

/// A queued task whose money has not moved: looked at again soon, until the reconciler
/// itself would have stopped looking at it.
fn unsettled(state: &AppState, record: &ReservationRecord, now: i64) -> Option<i64> {
    let horizon = record.created_ms.saturating_add(
        state
            .config
            .reconciler
            .max_task_age_secs
            .as_millis_i64()
            .saturating_mul(2),
    );
    (now < horizon).then(|| now.saturating_add(UNSETTLED_RETRY_MS))
}

fn result_expires_ms(record: &ReservationRecord) -> i64 {
    record.result_expires_ms.unwrap_or_else(|| {
        record
            .finished_ms
            .unwrap_or(record.created_ms)
            .saturating_add(RESULT_TTL_MS)
    })
}

/// The wait before the next attempt: a quarter of the time since completion, from 2 s to
/// 15 min, so a short outage of the result host costs seconds and a long one few requests.
fn retry_delay_ms(since_completion_ms: i64) -> i64 {
    (since_completion_ms / 4).clamp(2_000, 900_000)
}

/// The result link: from the task as kept when its money moved, else asked of the upstream.
async fn result_url(state: &AppState, record: &ReservationRecord, task_id: &str) -> Result<String, ApiError> {
    let kept = record
        .last_task
        .as_deref()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|task| upstream::result_url(&task).map(str::to_string));
    if let Some(url) = kept {
        return Ok(url);
    }
    let task = state.upstream.get_task(task_id).await?;
    upstream::result_url(&task)
        .map(str::to_string)
        .ok_or_else(|| ApiError::Internal(format!("task {task_id} completed without a result URL")))
}

/// Streams the result from its host into the archive: the probe's rules for results (the
/// host is allowed, every address checked), the answer and every chunk within
/// `probe.timeout_ms`, the announced length checked before anything is stored.
async fn copy(
    state: &AppState,
    archive: &Archive,
    url: &str,
    path: &object_store::path::Path,
) -> Result<u64, CopyError> {
    let idle = Duration::from_millis(state.config.probe.timeout_ms);
    let http = state.prober.result_client();
    let headers = HeaderMap::new();
    let sending = http.send(Method::GET, url, &headers, None);
    let fetched = match tokio::time::timeout(idle, sending).await {
        Err(_) => return Err(CopyError::Source(format!("no answer within {} ms", idle.as_millis()))),
        Ok(Err(error)) => return Err(CopyError::Source(error.to_string())),
        Ok(Ok(fetched)) => fetched,
    };
    let response = fetched.response;
    if response.status() != reqwest::StatusCode::OK {
        return Err(CopyError::Source(format!(
            "the result host answered {}",
            response.status()
        )));
    }
    if let Some(length) = response.content_length().filter(|n| *n > archive.max_bytes()) {
        return Err(CopyError::TooLarge(length));
    }
    archive.write(path, response.bytes_stream(), idle).await
}

fn count(state: &AppState, outcome: &str) {
    state.metrics.archive.with_label_values(&[outcome]).inc();
}

fn internal(error: super::ArchiveError) -> ApiError {
    ApiError::Internal(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_slow_down_from_two_seconds_to_fifteen_minutes() {
        assert_eq!(retry_delay_ms(0), 2_000);
        assert_eq!(retry_delay_ms(40_000), 10_000);
        assert_eq!(retry_delay_ms(86_400_000), 900_000);
    }
}
