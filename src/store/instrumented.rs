//! A `Store` wrapper that times every operation and counts failures, so both backends are
//! measured the same way without knowing about metrics.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::*;
use crate::metrics::Metrics;

pub struct Instrumented {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    pub fn wrap(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<dyn Store> {
        Arc::new(Self { inner, metrics })
    }

    async fn timed<T>(
        &self,
        operation: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.observe_store(operation, result.is_ok(), started.elapsed());
        result
    }
}

#[async_trait]
impl Store for Instrumented {
    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn apply_config_tenant(
        &self,
        id: &str,
        settings: &TenantSettings,
        hash: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.timed(
            "apply_config_tenant",
            self.inner.apply_config_tenant(id, settings, hash, now_ms),
        )
        .await
    }

    async fn update_tenant(&self, id: &str, change: &TenantChange) -> Result<TenantUpdate, StoreError> {
        self.timed("update_tenant", self.inner.update_tenant(id, change)).await
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        self.timed("tenant", self.inner.tenant(id)).await
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.timed("tenants", self.inner.tenants()).await
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveReceipt, StoreError> {
        self.timed("reserve", self.inner.reserve(request)).await
    }

    async fn read_task(&self, task_id: &str, rate: &[RateCheck]) -> Result<TaskRead, StoreError> {
        self.timed("read_task", self.inner.read_task(task_id, rate)).await
    }

    async fn check_rate(&self, rate: &[RateCheck]) -> Result<Option<RateDecision>, StoreError> {
        self.timed("check_rate", self.inner.check_rate(rate)).await
    }

    async fn bind(&self, reservation_id: &str, task_id: &str, created_task: &str) -> Result<BindOutcome, StoreError> {
        self.timed("bind", self.inner.bind(reservation_id, task_id, created_task))
            .await
    }

    async fn reservation(&self, reservation_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        self.timed("reservation", self.inner.reservation(reservation_id)).await
    }

    async fn task(&self, task_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        self.timed("task", self.inner.task(task_id)).await
    }

    async fn settle(&self, reservation_id: &str, settlement: &Settlement) -> Result<FinalizeOutcome, StoreError> {
        self.timed("settle", self.inner.settle(reservation_id, settlement))
            .await
    }

    async fn refund(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        self.timed("refund", self.inner.refund(reservation_id, now_ms)).await
    }

    async fn expire(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        self.timed("expire", self.inner.expire(reservation_id, now_ms)).await
    }

    async fn late_settle(&self, reservation_id: &str, settlement: &Settlement) -> Result<FinalizeOutcome, StoreError> {
        self.timed("late_settle", self.inner.late_settle(reservation_id, settlement))
            .await
    }

    async fn note_task(&self, reservation_id: &str, task: &str) -> Result<(), StoreError> {
        self.timed("note_task", self.inner.note_task(reservation_id, task))
            .await
    }

    async fn purge(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.timed("purge", self.inner.purge(now_ms)).await
    }

    async fn recover(&self, recovery: &Recovery) -> Result<RecoverOutcome, StoreError> {
        self.timed("recover", self.inner.recover(recovery)).await
    }

    async fn release_unsent(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        self.timed("release_unsent", self.inner.release_unsent(reservation_id, now_ms))
            .await
    }

    async fn due(&self, queue: Queue, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.timed("due", self.inner.due(queue, now_ms, limit)).await
    }

    async fn claim(
        &self,
        queue: Queue,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: u64,
    ) -> Result<Option<i64>, StoreError> {
        self.timed("claim", self.inner.claim(queue, id, owner, now_ms, lease_ms))
            .await
    }

    async fn release(
        &self,
        queue: Queue,
        id: &str,
        owner: &str,
        claimed_due_ms: i64,
        next_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.timed("release", self.inner.release(queue, id, owner, claimed_due_ms, next_ms))
            .await
    }

    async fn mark_due(&self, reservation_id: &str, now_ms: i64) -> Result<Option<ReservationState>, StoreError> {
        self.timed("mark_due", self.inner.mark_due(reservation_id, now_ms))
            .await
    }

    async fn outbox_event(&self, id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        self.timed("outbox_event", self.inner.outbox_event(id)).await
    }

    async fn save_outbox_event(&self, event: &OutboxEvent) -> Result<(), StoreError> {
        self.timed("save_outbox_event", self.inner.save_outbox_event(event))
            .await
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.timed("shared_secret", self.inner.shared_secret(name, candidate))
            .await
    }

    async fn period_usage(&self, tenant: &str, period: &str) -> Result<PeriodUsage, StoreError> {
        self.timed("period_usage", self.inner.period_usage(tenant, period))
            .await
    }

    async fn usage(&self, tenant: &str, bucket: &str, by_user: bool) -> Result<UsageBucket, StoreError> {
        self.timed("usage", self.inner.usage(tenant, bucket, by_user)).await
    }

    async fn usage_days(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        self.timed("usage_days", self.inner.usage_days(tenant)).await
    }

    async fn ledger_range(
        &self,
        tenant: &str,
        start: LedgerPosition,
        end_ms: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        self.timed("ledger_range", self.inner.ledger_range(tenant, start, end_ms, limit))
            .await
    }

    async fn claim_alert(&self, tenant: &str, period: &str, threshold_ppm: u32) -> Result<bool, StoreError> {
        self.timed("claim_alert", self.inner.claim_alert(tenant, period, threshold_ppm))
            .await
    }

    async fn task_index(
        &self,
        tenant: &str,
        range: &TaskIndexRange,
        limit: usize,
    ) -> Result<Vec<TaskIndexEntry>, StoreError> {
        self.timed("task_index", self.inner.task_index(tenant, range, limit))
            .await
    }

    async fn reservations(&self, ids: &[String]) -> Result<Vec<ReservationRecord>, StoreError> {
        self.timed("reservations", self.inner.reservations(ids)).await
    }

    async fn user_period_usage(&self, tenant: &str, user: &str, period: &str) -> Result<PeriodUsage, StoreError> {
        self.timed("user_period_usage", self.inner.user_period_usage(tenant, user, period))
            .await
    }

    async fn describe(&self) -> Result<String, StoreError> {
        self.inner.describe().await
    }

    async fn export(&self, sink: tokio::sync::mpsc::Sender<DumpItem>) -> Result<(), StoreError> {
        self.inner.export(sink).await
    }

    async fn holds(&self) -> Result<Option<String>, StoreError> {
        self.inner.holds().await
    }

    async fn import(&self, items: Vec<DumpItem>) -> Result<(), StoreError> {
        self.inner.import(items).await
    }

    async fn index_earlier_tasks(&self) -> Result<u64, StoreError> {
        self.inner.index_earlier_tasks().await
    }

    async fn webhook_keys(&self, tenant: &str, candidate: &WebhookKey) -> Result<WebhookKeys, StoreError> {
        self.timed("webhook_keys", self.inner.webhook_keys(tenant, candidate))
            .await
    }

    async fn rotate_webhook_key(
        &self,
        tenant: &str,
        fresh: &WebhookKey,
        previous_until_ms: i64,
    ) -> Result<WebhookKeys, StoreError> {
        self.timed(
            "rotate_webhook_key",
            self.inner.rotate_webhook_key(tenant, fresh, previous_until_ms),
        )
        .await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<ApiKeyCreated, StoreError> {
        self.timed("create_api_key", self.inner.create_api_key(key)).await
    }

    async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.timed("api_keys", self.inner.api_keys(tenant)).await
    }

    async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.timed("revoke_api_key", self.inner.revoke_api_key(tenant, id))
            .await
    }

    async fn api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.timed("api_key", self.inner.api_key(hash)).await
    }

    async fn open_console_session(
        &self,
        jti: &str,
        jti_expires_ms: i64,
        key: &str,
        session: &ConsoleSession,
    ) -> Result<bool, StoreError> {
        self.timed(
            "open_console_session",
            self.inner.open_console_session(jti, jti_expires_ms, key, session),
        )
        .await
    }

    async fn console_session(&self, key: &str, now_ms: i64) -> Result<Option<ConsoleSession>, StoreError> {
        self.timed("console_session", self.inner.console_session(key, now_ms))
            .await
    }

    async fn end_console_session(&self, key: &str) -> Result<(), StoreError> {
        self.timed("end_console_session", self.inner.end_console_session(key))
            .await
    }

    async fn rebuild(&self, rebuild: &Rebuild) -> Result<RebuildOutcome, StoreError> {
        self.timed("rebuild", self.inner.rebuild(rebuild)).await
    }

    async fn enqueue_archive(&self, reservation_id: &str, due_ms: i64) -> Result<(), StoreError> {
        self.timed("enqueue_archive", self.inner.enqueue_archive(reservation_id, due_ms))
            .await
    }

    async fn mark_archived(&self, reservation_id: &str) -> Result<(), StoreError> {
        self.timed("mark_archived", self.inner.mark_archived(reservation_id))
            .await
    }
}
