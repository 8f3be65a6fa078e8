//! The retention worker: asks the store to delete what retention says is over (see
//! `Store::purge`), on every replica, every `every`; the steps are idempotent, so replicas
//! purging at once do no harm.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Store;

/// Purges until told to stop; `now_ms` is the gateway's clock.
pub async fn run(store: Arc<dyn Store>, now_ms: impl Fn() -> i64, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match store.purge(now_ms()).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "retention purge"),
            Err(error) => tracing::warn!("retention purge failed; trying again later: {error}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How often to purge: every minute, or twice per retention when that is shorter (tests).
pub fn interval(retention: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_millis(10), Duration::from_secs(60))
}
