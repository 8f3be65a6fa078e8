//! Replicated acknowledgement (`store.min_replicas_acked`): a money step counts as done once
//! that many replicas have it (`WAIT`), so a failover to one of them cannot lose it.

use std::sync::Arc;

use ::redis::aio::ConnectionManager;
use ::redis::cmd;

/// Told the name of each money step that too few replicas acknowledged in time.
pub type ShortfallHook = Arc<dyn Fn(&'static str) + Send + Sync>;

#[derive(Default)]
pub(super) struct ReplicaAcks {
    pub min: u32,
    pub timeout_ms: u64,
    pub on_shortfall: Option<ShortfallHook>,
}

/// Whether a money step reached enough replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acked {
    /// Enough replicas have it, or none are asked for.
    Enough,
    /// Fewer than `min_replicas_acked` had it within `replica_ack_timeout_ms` (reported).
    Short,
}

impl ReplicaAcks {
    /// `WAIT min timeout` on the connection that just wrote: `WAIT` waits for every write
    /// this connection made so far (on a shared connection, possibly others' too: never
    /// fewer). A failed `WAIT` counts as a shortfall: the step's replication is not known.
    pub async fn wait(&self, operation: &'static str, conn: &mut ConnectionManager) -> Acked {
        if self.min == 0 {
            return Acked::Enough;
        }
        let acked: Result<u64, _> = cmd("WAIT").arg(self.min).arg(self.timeout_ms).query_async(conn).await;
        let reached = match &acked {
            Ok(n) => *n >= u64::from(self.min),
            Err(_) => false,
        };
        if reached {
            return Acked::Enough;
        }
        match acked {
            Ok(n) => tracing::warn!(
                operation,
                "redis: {n} of {} replicas acknowledged this step within {} ms",
                self.min,
                self.timeout_ms
            ),
            Err(error) => tracing::warn!(operation, "redis: WAIT for the replicas failed: {error}"),
        }
        if let Some(hook) = &self.on_shortfall {
            hook(operation);
        }
        Acked::Short
    }
}
