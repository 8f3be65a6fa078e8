//! Embedded store (redb): durable on disk, for one node; every write is one transaction,
//! which also appends the step's ledger entries and updates its usage aggregates.

use std::path::Path;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use self::export_import::{export_in, hashed_claim_key, import_in, parse_json};
use super::tenants::{self, TenantWrite};
use super::*;
use crate::limits::LocalLimiter;

mod export_import;

/// Tenant id → `TenantRecord` as JSON.
const TENANTS: TableDefinition<&str, &str> = TableDefinition::new("tenants");
/// Reservation id → `ReservationRecord` as JSON.
const RESERVATIONS: TableDefinition<&str, &str> = TableDefinition::new("reservations");
/// Upstream task id → reservation id.
const TASKS: TableDefinition<&str, &str> = TableDefinition::new("tasks");
/// Money and in-flight counters, named as in the Redis layout (see `CounterKeys`).
const COUNTERS: TableDefinition<&str, i64> = TableDefinition::new("counters");
/// (tenant, ms, seq) → `LedgerEntry` as JSON, positioned as `append` says.
const LEDGER: TableDefinition<(&str, u64, u64), &str> = TableDefinition::new("ledger");
/// `bucket␟tenant␟t␟field` (by quality/audio) or `bucket␟tenant␟u␟field` (by user) → count;
/// fields as in `usage`, so one bucket of one tenant is one key range.
const AGGREGATES: TableDefinition<&str, i64> = TableDefinition::new("aggregates");
/// `tenant␟day` for every day a tenant reserved on.
const DAYS: TableDefinition<&str, ()> = TableDefinition::new("days");
/// `tenant␟period␟threshold` of every budget alert claimed.
const ALERTS: TableDefinition<&str, ()> = TableDefinition::new("alerts");
/// tenant \0 idempotency key → JSON `Claim`.
const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");
/// The reconciler's queue: (due ms, reservation id) of every reservation not yet final,
/// and each one's due ms (to move it).
const PENDING: TableDefinition<(u64, &str), ()> = TableDefinition::new("pending");
const PENDING_DUE: TableDefinition<&str, u64> = TableDefinition::new("pending_due");
/// The relay's outbox: (due ms, event id), each event's due ms, and the events as JSON.
const OUTBOX: TableDefinition<(u64, &str), ()> = TableDefinition::new("outbox");
const OUTBOX_DUE: TableDefinition<&str, u64> = TableDefinition::new("outbox_due");
const EVENTS: TableDefinition<&str, &str> = TableDefinition::new("events");
/// The archive-copy queue: (due ms, reservation id), and each one's due ms.
const ARCHIVE: TableDefinition<(u64, &str), ()> = TableDefinition::new("archive");
const ARCHIVE_DUE: TableDefinition<&str, u64> = TableDefinition::new("archive_due");
/// `queue:id` → (lease expiry ms, owner).
const LEASES: TableDefinition<&str, (u64, &str)> = TableDefinition::new("leases");
/// Secrets shared by every user of the store (the callback token key).
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Tenant id → `WebhookKeys` as JSON.
const WEBHOOK_KEYS: TableDefinition<&str, &str> = TableDefinition::new("webhook_keys");
/// SHA-256 (hex) of an API key → `ApiKeyRecord` as JSON.
const API_KEYS: TableDefinition<&str, &str> = TableDefinition::new("api_keys");
/// `tenant␟name` → the hash of that key (names are unique per tenant).
const API_KEY_NAMES: TableDefinition<&str, &str> = TableDefinition::new("api_key_names");
/// Reservation id → until when (unix ms) a reserve with that id may not hold: its caller gave
/// up on it (`release_unsent`).
const UNSENT: TableDefinition<&str, u64> = TableDefinition::new("unsent");
/// How long such a mark lasts (as the Redis store's).
const UNSENT_MARK_MS: u64 = 3_600_000;
/// What retention deletes, in order: (when, `kind␟key`), kind `res` (a final record, its task
/// index and task list entries), `idem` (an idempotency claim) or `ctr` (a user counter).
const EXPIRIES: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiries");
/// Retention until `with_retention` says otherwise (the config default).
const DEFAULT_RETENTION_MS: i64 = 35 * 86_400_000;
/// Expiry entries handled per write transaction.
const PURGE_BATCH: usize = 500;
/// The task list: (tenant, created ms, reservation id) of every reservation.
const TASK_INDEX: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("task_index");
/// Used `console-link` tickets: jti → when the ticket expires (ms); then the entry may go.
const CONSOLE_TICKETS: TableDefinition<&str, u64> = TableDefinition::new("console_tickets");
/// Console sessions: hashed session id → JSON `ConsoleSession`.
const CONSOLE_SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("console_sessions");

/// Separates the parts of a composite string key; tenant ids and period keys never hold it.
const SEP: char = '\u{1f}';

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Rate limits live in process: one node only.
    limiter: Arc<LocalLimiter>,
    path: std::path::PathBuf,
    /// How long a final record is kept (see `ReservationRecord::kept_until_ms`).
    retention_ms: i64,
}

impl EmbeddedStore {
    /// Opens or creates the database file and its parent directories. The key prefix is
    /// not used: one file serves one deployment.
    pub fn open(path: &Path, _prefix: &str) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        // Create every table now, so read transactions never meet a missing one.
        let tx = db.begin_write().map_err(db_error)?;
        tx.open_table(TENANTS).map_err(db_error)?;
        tx.open_table(RESERVATIONS).map_err(db_error)?;
        tx.open_table(TASKS).map_err(db_error)?;
        tx.open_table(COUNTERS).map_err(db_error)?;
        tx.open_table(LEDGER).map_err(db_error)?;
        tx.open_table(AGGREGATES).map_err(db_error)?;
        tx.open_table(DAYS).map_err(db_error)?;
        tx.open_table(ALERTS).map_err(db_error)?;
        tx.open_table(IDEMPOTENCY).map_err(db_error)?;
        for queue in Queue::ALL {
            let (index, due) = queue_tables(queue);
            tx.open_table(index).map_err(db_error)?;
            tx.open_table(due).map_err(db_error)?;
        }
        tx.open_table(EVENTS).map_err(db_error)?;
        tx.open_table(LEASES).map_err(db_error)?;
        tx.open_table(SECRETS).map_err(db_error)?;
        tx.open_table(TASK_INDEX).map_err(db_error)?;
        tx.open_table(EXPIRIES).map_err(db_error)?;
        tx.open_table(CONSOLE_TICKETS).map_err(db_error)?;
        tx.open_table(CONSOLE_SESSIONS).map_err(db_error)?;
        for credentials in [WEBHOOK_KEYS, API_KEYS, API_KEY_NAMES] {
            tx.open_table(credentials).map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        Ok(Self {
            db: Arc::new(db),
            limiter: Arc::default(),
            path: path.to_path_buf(),
            retention_ms: DEFAULT_RETENTION_MS,
        })
    }

    /// Keeps final records `retention` after they ended (default: 35 days).
    pub fn with_retention(mut self, retention: std::time::Duration) -> Self {
        self.retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Runs `op` in one write transaction on the blocking pool; commits when it returns Ok.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let tx = db.begin_write().map_err(db_error)?;
            let out = op(&tx)?;
            tx.commit().map_err(db_error)?;
            Ok(out)
        })
        .await
    }

    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(move || op(&db.begin_read().map_err(db_error)?)).await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|tx| tx.open_table(TENANTS).map(drop).map_err(db_error)).await
    }

    async fn apply_config_tenant(
        &self,
        id: &str,
        settings: &TenantSettings,
        config_hash: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (id, settings, config_hash) = (id.to_string(), settings.clone(), config_hash.to_string());
        self.write(move |tx| {
            let write = TenantWrite::Config {
                settings: &settings,
                config_hash: &config_hash,
                now_ms,
            };
            Ok(write_tenant(tx, &id, &write)?.is_some())
        })
        .await
    }

    async fn update_tenant(&self, id: &str, change: &TenantChange) -> Result<TenantUpdate, StoreError> {
        let (id, change) = (id.to_string(), change.clone());
        self.write(move |tx| {
            let stored: Option<TenantRecord> = get_json(&tx.open_table(TENANTS).map_err(db_error)?, &id)?;
            match write_tenant(tx, &id, &TenantWrite::Admin(&change))? {
                Some(record) => Ok(TenantUpdate {
                    record,
                    created: stored.is_none(),
                    changed: true,
                }),
                None => Ok(TenantUpdate {
                    record: stored.ok_or_else(|| StoreError::Corrupt(format!("tenant {id} vanished")))?,
                    created: false,
                    changed: false,
                }),
            }
        })
        .await
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.read(|tx| {
            let tenants = tx.open_table(TENANTS).map_err(db_error)?;
            let mut out = Vec::new();
            for item in tenants.iter().map_err(db_error)? {
                let (id, json) = item.map_err(db_error)?;
                out.push(
                    serde_json::from_str(json.value())
                        .map_err(|e| StoreError::Corrupt(format!("tenant {}: {e}", id.value())))?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |tx| get_json(&tx.open_table(TENANTS).map_err(db_error)?, &id))
            .await
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveReceipt, StoreError> {
        let (request, limiter) = (request.clone(), Arc::clone(&self.limiter));
        let retention_ms = self.retention_ms;
        self.write(move |tx| reserve_in(tx, &request, &limiter, retention_ms))
            .await
    }

    async fn read_task(&self, task_id: &str, rate: &[RateCheck]) -> Result<TaskRead, StoreError> {
        let rate = self.check_rate(rate).await?;
        if rate.is_some_and(|d| !d.allowed) {
            return Ok(TaskRead { rate, record: None });
        }
        Ok(TaskRead {
            rate,
            record: self.task(task_id).await?,
        })
    }

    async fn check_rate(&self, rate: &[RateCheck]) -> Result<Option<RateDecision>, StoreError> {
        Ok(self.limiter.check(rate))
    }

    async fn bind(&self, reservation_id: &str, task_id: &str, created_task: &str) -> Result<BindOutcome, StoreError> {
        let (reservation_id, task_id) = (reservation_id.to_string(), task_id.to_string());
        let created_task = created_task.to_string();
        self.write(move |tx| {
            let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
            let Some(mut record) = get_json::<ReservationRecord>(&reservations, &reservation_id)? else {
                return Ok(BindOutcome::NotFound);
            };
            // A reservation pays for one upstream task: the first bind wins.
            if record.task_id.is_some() {
                return Ok(BindOutcome::Current(Box::new(record)));
            }
            record.task_id = Some(task_id.clone());
            record.created_task = Some(created_task);
            put_json(&mut reservations, &reservation_id, &record)?;
            tx.open_table(TASKS)
                .map_err(db_error)?
                .insert(task_id.as_str(), reservation_id.as_str())
                .map_err(db_error)?;
            Ok(match record.state {
                ReservationState::Reserved => BindOutcome::Bound,
                _ => BindOutcome::Current(Box::new(record)),
            })
        })
        .await
    }

    async fn reservation(&self, reservation_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        let reservation_id = reservation_id.to_string();
        self.read(move |tx| get_json(&tx.open_table(RESERVATIONS).map_err(db_error)?, &reservation_id))
            .await
    }

    async fn task(&self, task_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        let task_id = task_id.to_string();
        self.read(move |tx| {
            let tasks = tx.open_table(TASKS).map_err(db_error)?;
            let Some(reservation_id) = tasks.get(task_id.as_str()).map_err(db_error)? else {
                return Ok(None);
            };
            get_json(&tx.open_table(RESERVATIONS).map_err(db_error)?, reservation_id.value())
        })
        .await
    }

    async fn settle(&self, reservation_id: &str, settlement: &Settlement) -> Result<FinalizeOutcome, StoreError> {
        let (reservation_id, finish) = (reservation_id.to_string(), Finish::settle(settlement));
        let retention_ms = self.retention_ms;
        self.write(move |tx| finish_in(tx, &reservation_id, &finish, retention_ms))
            .await
    }

    async fn refund(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        let (reservation_id, finish) = (reservation_id.to_string(), Finish::refund(now_ms));
        let retention_ms = self.retention_ms;
        self.write(move |tx| finish_in(tx, &reservation_id, &finish, retention_ms))
            .await
    }

    async fn expire(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        let (reservation_id, finish) = (reservation_id.to_string(), Finish::expire(now_ms));
        let retention_ms = self.retention_ms;
        self.write(move |tx| finish_in(tx, &reservation_id, &finish, retention_ms))
            .await
    }

    async fn late_settle(&self, reservation_id: &str, settlement: &Settlement) -> Result<FinalizeOutcome, StoreError> {
        let (reservation_id, settlement) = (reservation_id.to_string(), settlement.clone());
        let retention_ms = self.retention_ms;
        self.write(move |tx| late_settle_in(tx, &reservation_id, &settlement, retention_ms))
            .await
    }

    async fn note_task(&self, reservation_id: &str, task: &str) -> Result<(), StoreError> {
        let (reservation_id, task) = (reservation_id.to_string(), task.to_string());
        self.write(move |tx| {
            let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
            if let Some(mut record) = get_json::<ReservationRecord>(&reservations, &reservation_id)? {
                record.last_task = Some(task);
                put_json(&mut reservations, &reservation_id, &record)?;
            }
            Ok(())
        })
        .await
    }

    async fn purge(&self, now_ms: i64) -> Result<usize, StoreError> {
        let retention_ms = self.retention_ms;
        let mut purged = 0;
        // In batches, so a long backlog never holds the one writer for long.
        loop {
            let batch = self
                .write(move |tx| purge_in(tx, now_ms, retention_ms, PURGE_BATCH))
                .await?;
            purged += batch;
            if batch < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    async fn recover(&self, recovery: &Recovery) -> Result<RecoverOutcome, StoreError> {
        let recovery = recovery.clone();
        self.write(move |tx| recover_in(tx, &recovery)).await
    }

    async fn release_unsent(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        let (reservation_id, retention_ms) = (reservation_id.to_string(), self.retention_ms);
        self.write(move |tx| {
            let record: Option<ReservationRecord> =
                get_json(&tx.open_table(RESERVATIONS).map_err(db_error)?, &reservation_id)?;
            match record {
                Some(record) if record.task_id.is_some() => Ok(FinalizeOutcome::AlreadyFinal(record)),
                Some(_) => finish_in(tx, &reservation_id, &Finish::refund(now_ms), retention_ms),
                None => {
                    let mut unsent = tx.open_table(UNSENT).map_err(db_error)?;
                    // Old marks go here, so the table holds only the last hour's.
                    unsent.retain(|_, until| until > ms(now_ms)).map_err(db_error)?;
                    unsent
                        .insert(reservation_id.as_str(), ms(now_ms).saturating_add(UNSENT_MARK_MS))
                        .map_err(db_error)?;
                    Ok(FinalizeOutcome::NotFound)
                }
            }
        })
        .await
    }

    async fn due(&self, queue: Queue, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.read(move |tx| {
            let index = tx.open_table(queue_tables(queue).0).map_err(db_error)?;
            let end = (ms(now_ms).saturating_add(1), "");
            let mut ids = Vec::new();
            for item in index.range((0, "")..end).map_err(db_error)?.take(limit) {
                let (key, _) = item.map_err(db_error)?;
                ids.push(key.value().1.to_string());
            }
            Ok(ids)
        })
        .await
    }

    async fn claim(
        &self,
        queue: Queue,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: u64,
    ) -> Result<Option<i64>, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.write(move |tx| {
            let Some(due) = due_of(tx, queue, &id)? else {
                return Ok(None);
            };
            if due > ms(now_ms) {
                return Ok(None);
            }
            let mut leases = tx.open_table(LEASES).map_err(db_error)?;
            let key = lease_key(queue, &id);
            let held = leases.get(key.as_str()).map_err(db_error)?.map(|lease| lease.value().0);
            if held.is_some_and(|expires| expires > ms(now_ms)) {
                return Ok(None);
            }
            let expires = ms(now_ms).saturating_add(lease_ms);
            leases
                .insert(key.as_str(), (expires, owner.as_str()))
                .map_err(db_error)?;
            Ok(Some(i64::try_from(due).unwrap_or(i64::MAX)))
        })
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
        let (id, owner) = (id.to_string(), owner.to_string());
        self.write(move |tx| {
            if due_of(tx, queue, &id)? == Some(ms(claimed_due_ms)) {
                match next_ms {
                    Some(next) => schedule(tx, queue, &id, next)?,
                    None => {
                        unschedule(tx, queue, &id)?;
                        if queue == Queue::Outbox {
                            tx.open_table(EVENTS)
                                .map_err(db_error)?
                                .remove(id.as_str())
                                .map_err(db_error)?;
                        }
                    }
                }
            }
            let mut leases = tx.open_table(LEASES).map_err(db_error)?;
            let key = lease_key(queue, &id);
            let ours = leases
                .get(key.as_str())
                .map_err(db_error)?
                .is_some_and(|lease| lease.value().1 == owner);
            if ours {
                leases.remove(key.as_str()).map_err(db_error)?;
            }
            Ok(())
        })
        .await
    }

    async fn mark_due(&self, reservation_id: &str, now_ms: i64) -> Result<Option<ReservationState>, StoreError> {
        let reservation_id = reservation_id.to_string();
        self.write(move |tx| {
            let record: Option<ReservationRecord> =
                get_json(&tx.open_table(RESERVATIONS).map_err(db_error)?, &reservation_id)?;
            let Some(record) = record else {
                return Ok(None);
            };
            if record.state == ReservationState::Reserved || record.charges_late() {
                make_due(tx, &reservation_id, now_ms)?;
            }
            Ok(Some(record.state))
        })
        .await
    }

    async fn outbox_event(&self, id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        let id = id.to_string();
        self.read(move |tx| get_json(&tx.open_table(EVENTS).map_err(db_error)?, &id))
            .await
    }

    async fn save_outbox_event(&self, event: &OutboxEvent) -> Result<(), StoreError> {
        let event = event.clone();
        self.write(move |tx| {
            let mut events = tx.open_table(EVENTS).map_err(db_error)?;
            if events.get(event.id.as_str()).map_err(db_error)?.is_some() {
                put_json(&mut events, &event.id, &event)?;
            }
            Ok(())
        })
        .await
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (name, candidate) = (name.to_string(), candidate.to_vec());
        self.write(move |tx| {
            let mut secrets = tx.open_table(SECRETS).map_err(db_error)?;
            if let Some(stored) = secrets.get(name.as_str()).map_err(db_error)? {
                return Ok(stored.value().to_vec());
            }
            secrets.insert(name.as_str(), candidate.as_slice()).map_err(db_error)?;
            Ok(candidate)
        })
        .await
    }

    async fn period_usage(&self, tenant: &str, period: &str) -> Result<PeriodUsage, StoreError> {
        let keys = CounterKeys::new(tenant, "", period);
        self.read(move |tx| {
            let counters = tx.open_table(COUNTERS).map_err(db_error)?;
            Ok(PeriodUsage {
                spent: counter(&counters, &keys.spent)?,
                reserved: counter(&counters, &keys.reserved)?,
                in_flight: u32::try_from(counter(&counters, &keys.in_flight)?).unwrap_or(0),
            })
        })
        .await
    }

    async fn usage(&self, tenant: &str, bucket: &str, by_user: bool) -> Result<UsageBucket, StoreError> {
        let (tenant, bucket) = (tenant.to_string(), bucket.to_string());
        self.read(move |tx| {
            let aggregates = tx.open_table(AGGREGATES).map_err(db_error)?;
            let by_kind = aggregate_fields(&aggregates, &aggregate_key(&bucket, &tenant, 't', ""))?;
            let by_user = match by_user {
                true => aggregate_fields(&aggregates, &aggregate_key(&bucket, &tenant, 'u', ""))?,
                false => Vec::new(),
            };
            Ok(UsageBucket::from_fields(by_kind, by_user))
        })
        .await
    }

    async fn usage_days(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{tenant}{SEP}");
        self.read(move |tx| {
            let days = tx.open_table(DAYS).map_err(db_error)?;
            let mut out = Vec::new();
            for item in days.range(prefix.as_str()..).map_err(db_error)? {
                let (key, _) = item.map_err(db_error)?;
                match key.value().strip_prefix(prefix.as_str()) {
                    Some(day) => out.push(day.to_string()),
                    None => break,
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ledger_range(
        &self,
        tenant: &str,
        start: LedgerPosition,
        end_ms: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let tenant = tenant.to_string();
        self.read(move |tx| {
            let ledger = tx.open_table(LEDGER).map_err(db_error)?;
            if start.ms >= end_ms {
                return Ok(Vec::new());
            }
            let range = (tenant.as_str(), start.ms, start.seq)..(tenant.as_str(), end_ms, 0);
            let mut rows = Vec::new();
            for item in ledger.range(range).map_err(db_error)?.take(limit) {
                let (key, json) = item.map_err(db_error)?;
                let (_, ms, seq) = key.value();
                let entry = serde_json::from_str(json.value())
                    .map_err(|e| StoreError::Corrupt(format!("ledger entry {ms}-{seq}: {e}")))?;
                rows.push(LedgerRow {
                    position: LedgerPosition { ms, seq },
                    entry,
                });
            }
            Ok(rows)
        })
        .await
    }

    async fn claim_alert(&self, tenant: &str, period: &str, threshold_ppm: u32) -> Result<bool, StoreError> {
        let key = format!("{tenant}{SEP}{period}{SEP}{threshold_ppm}");
        self.write(move |tx| {
            let mut alerts = tx.open_table(ALERTS).map_err(db_error)?;
            Ok(alerts.insert(key.as_str(), ()).map_err(db_error)?.is_none())
        })
        .await
    }

    async fn task_index(
        &self,
        tenant: &str,
        range: &TaskIndexRange,
        limit: usize,
    ) -> Result<Vec<TaskIndexEntry>, StoreError> {
        let (tenant, range) = (tenant.to_string(), range.clone());
        self.read(move |tx| {
            let index = tx.open_table(TASK_INDEX).map_err(db_error)?;
            let from = ms(range.from_ms.unwrap_or(0));
            let to = range.to_ms.map_or(u64::MAX, ms);
            let end = match &range.before {
                Some(before) if ms(before.created_ms) < to => (ms(before.created_ms), before.reservation_id.as_str()),
                _ => (to, ""),
            };
            if (from, "") >= end {
                return Ok(Vec::new());
            }
            let mut entries = Vec::new();
            let span = (tenant.as_str(), from, "")..(tenant.as_str(), end.0, end.1);
            for item in index.range(span).map_err(db_error)?.rev().take(limit) {
                let (key, _) = item.map_err(db_error)?;
                let (_, created_ms, reservation_id) = key.value();
                entries.push(TaskIndexEntry {
                    created_ms: i64::try_from(created_ms).unwrap_or(i64::MAX),
                    reservation_id: reservation_id.to_string(),
                });
            }
            Ok(entries)
        })
        .await
    }

    async fn reservations(&self, ids: &[String]) -> Result<Vec<ReservationRecord>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |tx| {
            let reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                out.extend(get_json::<ReservationRecord>(&reservations, id)?);
            }
            Ok(out)
        })
        .await
    }

    async fn user_period_usage(&self, tenant: &str, user: &str, period: &str) -> Result<PeriodUsage, StoreError> {
        let keys = CounterKeys::new(tenant, user, period);
        self.read(move |tx| {
            let counters = tx.open_table(COUNTERS).map_err(db_error)?;
            Ok(PeriodUsage {
                spent: counter(&counters, &keys.user_spent)?,
                reserved: counter(&counters, &keys.user_reserved)?,
                in_flight: u32::try_from(counter(&counters, &keys.in_flight)?).unwrap_or(0),
            })
        })
        .await
    }

    async fn describe(&self) -> Result<String, StoreError> {
        Ok(format!("embedded (redb) at {}", self.path.display()))
    }

    async fn export(&self, sink: tokio::sync::mpsc::Sender<DumpItem>) -> Result<(), StoreError> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let tx = db.begin_read().map_err(db_error)?;
            let send = |item: DumpItem| {
                sink.blocking_send(item)
                    .map_err(|_| StoreError::Unavailable("export stopped: nobody reads the dump".into()))
            };
            export_in(&tx, &send)
        })
        .await
    }

    async fn holds(&self) -> Result<Option<String>, StoreError> {
        self.read(|tx| {
            let counts = [
                (
                    "tenants",
                    tx.open_table(TENANTS).map_err(db_error)?.len().map_err(db_error)?,
                ),
                (
                    "reservations",
                    tx.open_table(RESERVATIONS).map_err(db_error)?.len().map_err(db_error)?,
                ),
                (
                    "ledger entries",
                    tx.open_table(LEDGER).map_err(db_error)?.len().map_err(db_error)?,
                ),
                (
                    "counters",
                    tx.open_table(COUNTERS).map_err(db_error)?.len().map_err(db_error)?,
                ),
                (
                    "secrets",
                    tx.open_table(SECRETS).map_err(db_error)?.len().map_err(db_error)?,
                ),
                (
                    "outbox events",
                    tx.open_table(EVENTS).map_err(db_error)?.len().map_err(db_error)?,
                ),
                (
                    "idempotency claims",
                    tx.open_table(IDEMPOTENCY).map_err(db_error)?.len().map_err(db_error)?,
                ),
            ];
            let held: Vec<String> = counts
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(what, n)| format!("{what}: {n}"))
                .collect();
            Ok((!held.is_empty()).then(|| held.join(", ")))
        })
        .await
    }

    async fn import(&self, items: Vec<DumpItem>) -> Result<(), StoreError> {
        self.write(move |tx| {
            for item in &items {
                import_in(tx, item)?;
            }
            Ok(())
        })
        .await
    }

    async fn index_earlier_tasks(&self) -> Result<u64, StoreError> {
        /// The fields of a stored reservation its index entry needs.
        #[derive(Deserialize)]
        struct Entry {
            reservation_id: String,
            tenant: String,
            created_ms: i64,
        }
        self.write(|tx| {
            // Every reserve since the task list exists writes an entry: an empty index with
            // reservations means they all came before.
            if !tx
                .open_table(TASK_INDEX)
                .map_err(db_error)?
                .is_empty()
                .map_err(db_error)?
            {
                return Ok(0);
            }
            let mut entries = Vec::new();
            for item in tx
                .open_table(RESERVATIONS)
                .map_err(db_error)?
                .iter()
                .map_err(db_error)?
            {
                let (id, json) = item.map_err(db_error)?;
                entries.push(parse_json::<Entry>(id.value(), json.value())?);
            }
            let mut index = tx.open_table(TASK_INDEX).map_err(db_error)?;
            for entry in &entries {
                let key = (
                    entry.tenant.as_str(),
                    ms(entry.created_ms),
                    entry.reservation_id.as_str(),
                );
                index.insert(key, ()).map_err(db_error)?;
            }
            Ok(entries.len() as u64)
        })
        .await
    }

    async fn webhook_keys(&self, tenant: &str, candidate: &WebhookKey) -> Result<WebhookKeys, StoreError> {
        let owned = tenant.to_string();
        // Read first: every delivery asks, and only a tenant's first ask needs the writer.
        let stored = self
            .read(move |tx| get_json(&tx.open_table(WEBHOOK_KEYS).map_err(db_error)?, &owned))
            .await?;
        if let Some(stored) = stored {
            return Ok(stored);
        }
        let (tenant, candidate) = (tenant.to_string(), candidate.clone());
        self.write(move |tx| {
            let mut keys = tx.open_table(WEBHOOK_KEYS).map_err(db_error)?;
            if let Some(stored) = get_json(&keys, &tenant)? {
                return Ok(stored);
            }
            let fresh = WebhookKeys::rotated(None, candidate, 0);
            put_json(&mut keys, &tenant, &fresh)?;
            Ok(fresh)
        })
        .await
    }

    async fn rotate_webhook_key(
        &self,
        tenant: &str,
        fresh: &WebhookKey,
        previous_until_ms: i64,
    ) -> Result<WebhookKeys, StoreError> {
        let (tenant, fresh) = (tenant.to_string(), fresh.clone());
        self.write(move |tx| {
            let mut keys = tx.open_table(WEBHOOK_KEYS).map_err(db_error)?;
            let rotated = WebhookKeys::rotated(get_json(&keys, &tenant)?, fresh, previous_until_ms);
            put_json(&mut keys, &tenant, &rotated)?;
            Ok(rotated)
        })
        .await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<ApiKeyCreated, StoreError> {
        let key = key.clone();
        self.write(move |tx| {
            let mut names = tx.open_table(API_KEY_NAMES).map_err(db_error)?;
            let name = format!("{}{SEP}{}", key.tenant, key.name);
            if names.get(name.as_str()).map_err(db_error)?.is_some() {
                return Ok(ApiKeyCreated::NameTaken);
            }
            names.insert(name.as_str(), key.hash.as_str()).map_err(db_error)?;
            put_json(&mut tx.open_table(API_KEYS).map_err(db_error)?, &key.hash, &key)?;
            Ok(ApiKeyCreated::Created)
        })
        .await
    }

    async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let prefix = format!("{tenant}{SEP}");
        self.read(move |tx| {
            let (names, keys) = (
                tx.open_table(API_KEY_NAMES).map_err(db_error)?,
                tx.open_table(API_KEYS).map_err(db_error)?,
            );
            let mut out = Vec::new();
            for item in names.range(prefix.as_str()..).map_err(db_error)? {
                let (name, hash) = item.map_err(db_error)?;
                if !name.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.extend(get_json::<ApiKeyRecord>(&keys, hash.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let found = self.api_keys(tenant).await?.into_iter().find(|key| key.id == id);
        let Some(found) = found else {
            return Ok(None);
        };
        self.write(move |tx| {
            let mut keys = tx.open_table(API_KEYS).map_err(db_error)?;
            // Re-read inside the transaction: a concurrent revoke deleted it already.
            let Some(stored) = get_json::<ApiKeyRecord>(&keys, &found.hash)? else {
                return Ok(None);
            };
            keys.remove(stored.hash.as_str()).map_err(db_error)?;
            let name = format!("{}{SEP}{}", stored.tenant, stored.name);
            tx.open_table(API_KEY_NAMES)
                .map_err(db_error)?
                .remove(name.as_str())
                .map_err(db_error)?;
            Ok(Some(stored))
        })
        .await
    }

    async fn api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let hash = hash.to_string();
        self.read(move |tx| get_json(&tx.open_table(API_KEYS).map_err(db_error)?, &hash))
            .await
    }

    async fn open_console_session(
        &self,
        jti: &str,
        jti_expires_ms: i64,
        key: &str,
        session: &ConsoleSession,
    ) -> Result<bool, StoreError> {
        let (jti, key) = (jti.to_string(), key.to_string());
        let json = serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = ms(session.created_ms);
        self.write(move |tx| {
            let mut tickets = tx.open_table(CONSOLE_TICKETS).map_err(db_error)?;
            if tickets.get(jti.as_str()).map_err(db_error)?.is_some() {
                return Ok(false);
            }
            // Sign-ins are rare: dropping what has expired here keeps both tables small.
            tickets.retain(|_, expires| expires > now).map_err(db_error)?;
            tickets.insert(jti.as_str(), ms(jti_expires_ms)).map_err(db_error)?;
            let mut sessions = tx.open_table(CONSOLE_SESSIONS).map_err(db_error)?;
            sessions
                .retain(|_, json| serde_json::from_str::<ConsoleSession>(json).is_ok_and(|s| s.is_live(now as i64)))
                .map_err(db_error)?;
            sessions.insert(key.as_str(), json.as_str()).map_err(db_error)?;
            Ok(true)
        })
        .await
    }

    async fn console_session(&self, key: &str, now_ms: i64) -> Result<Option<ConsoleSession>, StoreError> {
        let key = key.to_string();
        self.read(move |tx| {
            let sessions = tx.open_table(CONSOLE_SESSIONS).map_err(db_error)?;
            let Some(json) = sessions.get(key.as_str()).map_err(db_error)? else {
                return Ok(None);
            };
            let session: ConsoleSession = parse_json("console session", json.value())?;
            Ok(session.is_live(now_ms).then_some(session))
        })
        .await
    }

    async fn end_console_session(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(move |tx| {
            tx.open_table(CONSOLE_SESSIONS)
                .map_err(db_error)?
                .remove(key.as_str())
                .map_err(db_error)?;
            Ok(())
        })
        .await
    }

    async fn rebuild(&self, rebuild: &Rebuild) -> Result<RebuildOutcome, StoreError> {
        let (rebuild, retention_ms) = (rebuild.clone(), self.retention_ms);
        self.write(move |tx| rebuild_in(tx, &rebuild, retention_ms)).await
    }

    async fn enqueue_archive(&self, reservation_id: &str, due_ms: i64) -> Result<(), StoreError> {
        let id = reservation_id.to_string();
        self.write(move |tx| match due_of(tx, Queue::Archive, &id)? {
            Some(_) => Ok(()),
            None => schedule(tx, Queue::Archive, &id, due_ms),
        })
        .await
    }

    async fn mark_archived(&self, reservation_id: &str) -> Result<(), StoreError> {
        let id = reservation_id.to_string();
        self.write(move |tx| {
            let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
            if let Some(mut record) = get_json::<ReservationRecord>(&reservations, &id)? {
                record.archived = true;
                put_json(&mut reservations, &id, &record)?;
            }
            Ok(())
        })
        .await
    }
}

/// Enters a new hold in its tenant's task list.
fn index_task(tx: &WriteTransaction, record: &ReservationRecord) -> Result<(), StoreError> {
    let key = (
        record.tenant.as_str(),
        ms(record.created_ms),
        record.reservation_id.as_str(),
    );
    tx.open_table(TASK_INDEX)
        .map_err(db_error)?
        .insert(key, ())
        .map_err(db_error)?;
    Ok(())
}

/// Applies a tenant write planned by `tenants::plan` with its audit entry; the record
/// written, or `None` when there was nothing to write.
fn write_tenant(tx: &WriteTransaction, id: &str, write: &TenantWrite<'_>) -> Result<Option<TenantRecord>, StoreError> {
    let mut tenants = tx.open_table(TENANTS).map_err(db_error)?;
    let stored: Option<TenantRecord> = get_json(&tenants, id)?;
    let Some((record, entry)) = tenants::plan(id, write, stored.as_ref()) else {
        return Ok(None);
    };
    put_json(&mut tenants, id, &record)?;
    append(tx, &entry)?;
    Ok(Some(record))
}

/// Appends one ledger entry to its tenant's ledger at the position Redis would give it: its
/// time, or the tenant's last ms if that is later (so the ledger is in write order), numbered
/// within the ms.
fn append(tx: &WriteTransaction, entry: &LedgerEntry) -> Result<(), StoreError> {
    let mut ledger = tx.open_table(LEDGER).map_err(db_error)?;
    let tenant = entry.tenant.as_str();
    let last = ledger
        .range((tenant, 0, 0)..=(tenant, u64::MAX, u64::MAX))
        .map_err(db_error)?
        .next_back()
        .transpose()
        .map_err(db_error)?
        .map(|(key, _)| {
            let (_, ms, seq) = key.value();
            (ms, seq)
        });
    let ms = u64::try_from(entry.time_ms).unwrap_or(0);
    let (ms, seq) = match last {
        Some((last_ms, last_seq)) if last_ms >= ms => (last_ms, last_seq.saturating_add(1)),
        _ => (ms, 0),
    };
    let json = serde_json::to_string(entry).map_err(|e| StoreError::Corrupt(format!("ledger entry: {e}")))?;
    ledger.insert((tenant, ms, seq), json.as_str()).map_err(db_error)?;
    Ok(())
}

/// Adds a step's deltas to every bucket of its task, by quality/audio and by user.
fn aggregate(tx: &WriteTransaction, record: &ReservationRecord, deltas: &[(&str, i64)]) -> Result<(), StoreError> {
    let mut aggregates = tx.open_table(AGGREGATES).map_err(db_error)?;
    for bucket in usage::buckets(record) {
        for (metric, delta) in deltas {
            let by_kind = aggregate_key(bucket, &record.tenant, 't', &usage::tenant_field(metric, record));
            add(&mut aggregates, &by_kind, *delta)?;
            let by_user = aggregate_key(bucket, &record.tenant, 'u', &usage::user_field(metric, record));
            add(&mut aggregates, &by_user, *delta)?;
        }
    }
    Ok(())
}

fn aggregate_key(bucket: &str, tenant: &str, group: char, field: &str) -> String {
    format!("{bucket}{SEP}{tenant}{SEP}{group}{SEP}{field}")
}

/// Every (field, value) under `prefix`.
fn aggregate_fields(
    table: &impl ReadableTable<&'static str, i64>,
    prefix: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut out = Vec::new();
    for item in table.range(prefix..).map_err(db_error)? {
        let (key, value) = item.map_err(db_error)?;
        match key.value().strip_prefix(prefix) {
            Some(field) => out.push((field.to_string(), value.value())),
            None => break,
        }
    }
    Ok(out)
}

/// The reserve step inside its write transaction.
fn reserve_in(
    tx: &WriteTransaction,
    request: &ReserveRequest,
    limiter: &LocalLimiter,
    retention_ms: i64,
) -> Result<ReserveReceipt, StoreError> {
    let refused = |refusal, rate| {
        Ok(ReserveReceipt {
            outcome: ReserveOutcome::Refused(refusal),
            rate,
            budget_use: None,
        })
    };
    let tenant: Option<TenantRecord> = get_json(&tx.open_table(TENANTS).map_err(db_error)?, &request.tenant)?;
    let Some(tenant) = tenant else {
        return refused(ReserveRefusal::UnknownTenant, None);
    };
    let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
    if let Some(existing) = get_json(&reservations, &request.reservation_id)? {
        return Ok(ReserveReceipt {
            outcome: ReserveOutcome::Reserved(existing),
            rate: None,
            budget_use: None,
        });
    }
    let released = tx
        .open_table(UNSENT)
        .map_err(db_error)?
        .get(request.reservation_id.as_str())
        .map_err(db_error)?
        .is_some_and(|until| until.value() > ms(request.now_ms));
    if released {
        return Err(StoreError::Unavailable(format!(
            "reservation {} was released after its reserve timed out",
            request.reservation_id
        )));
    }
    if let Some(claim) = &request.idempotency {
        match idempotency_in(tx, &reservations, request, claim)? {
            Some(ReserveOutcome::Refused(refusal)) => return refused(refusal, None),
            Some(outcome) => {
                return Ok(ReserveReceipt {
                    outcome,
                    rate: None,
                    budget_use: None,
                });
            }
            None => {}
        }
    }
    let rate = limiter.check(&request.rate);
    if let Some(decision) = rate.filter(|d| !d.allowed) {
        return refused(ReserveRefusal::RateLimited(decision), rate);
    }
    let period = request.periods.for_kind(tenant.settings.period);
    let keys = CounterKeys::new(&request.tenant, &request.user, period);
    let mut counters = tx.open_table(COUNTERS).map_err(db_error)?;
    if let Some(refusal) = refusal(&tenant.settings, request, &keys, &counters)? {
        return refused(refusal, rate);
    }
    let record = ReservationRecord::hold(request, period);
    put_json(&mut reservations, &record.reservation_id, &record)?;
    add(&mut counters, &keys.reserved, request.amount)?;
    add(&mut counters, &keys.user_reserved, request.amount)?;
    add(&mut counters, &keys.in_flight, 1)?;
    let budget_use = BudgetUse {
        budget: tenant.settings.budget,
        spent: counter(&counters, &keys.spent)?,
        reserved: counter(&counters, &keys.reserved)?,
    };
    drop(counters);
    append(tx, &reserve_entry(&record))?;
    aggregate(tx, &record, &usage::reserve_deltas(&record))?;
    let day = format!("{}{SEP}{}", record.tenant, record.periods.day);
    tx.open_table(DAYS)
        .map_err(db_error)?
        .insert(day.as_str(), ())
        .map_err(db_error)?;
    // completion: every hold enters the reconciler's queue, due for a first look at once.
    schedule(tx, Queue::Tasks, &record.reservation_id, record.created_ms)?;
    index_task(tx, &record)?;
    expire_user_counters(tx, &record, retention_ms)?;
    if let Some(claim) = &request.idempotency {
        let stored = Claim {
            rid: record.reservation_id.clone(),
            hash: claim.body_hash.clone(),
            expires_ms: request
                .now_ms
                .saturating_add(i64::try_from(claim.ttl_ms).unwrap_or(i64::MAX)),
        };
        let key = format!("{}{SEP}{}", request.tenant, claim.key);
        put_json(&mut tx.open_table(IDEMPOTENCY).map_err(db_error)?, &key, &stored)?;
        expire_at(tx, stored.expires_ms, "idem", &key)?;
    }
    Ok(ReserveReceipt {
        outcome: ReserveOutcome::Reserved(record),
        rate,
        budget_use: Some(budget_use),
    })
}

/// What an idempotency key's first request used.
#[derive(Serialize, Deserialize)]
struct Claim {
    rid: String,
    hash: String,
    expires_ms: i64,
}

/// The key's first request decides (as `reserve.lua`): a live claim with another body is
/// refused; with a task, replayed; still running, or released with its outcome unknown
/// (expired unbound), in progress; refused before creating a task, `None`: this request
/// runs anew.
fn idempotency_in(
    tx: &WriteTransaction,
    reservations: &Table<&str, &str>,
    request: &ReserveRequest,
    claim: &IdempotencyClaim,
) -> Result<Option<ReserveOutcome>, StoreError> {
    let key = format!("{}{SEP}{}", request.tenant, claim.key);
    let claims = tx.open_table(IDEMPOTENCY).map_err(db_error)?;
    // store import: a claim moved from Redis is known by the key's hash only.
    let stored: Option<Claim> = match get_json(&claims, &key)? {
        Some(claim) => Some(claim),
        None => get_json(
            &claims,
            &hashed_claim_key(&request.tenant, &dump::key_sha256(&claim.key)),
        )?,
    };
    drop(claims);
    let Some(stored) = stored.filter(|c| c.expires_ms > request.now_ms) else {
        return Ok(None);
    };
    if stored.hash != claim.body_hash {
        return Ok(Some(ReserveOutcome::Refused(ReserveRefusal::IdempotencyKeyReused)));
    }
    let first: Option<ReservationRecord> = get_json(reservations, &stored.rid)?;
    Ok(match first {
        Some(first) if first.task_id.is_some() => Some(ReserveOutcome::Replay(first)),
        Some(first) if first.state == ReservationState::Reserved => {
            Some(ReserveOutcome::Refused(ReserveRefusal::RequestInProgress {
                outcome_unknown: false,
            }))
        }
        Some(first) if first.state == ReservationState::Expired => {
            Some(ReserveOutcome::Refused(ReserveRefusal::RequestInProgress {
                outcome_unknown: true,
            }))
        }
        _ => None,
    })
}

/// Why `request` may not be held now, checked in the contract's order.
fn refusal(
    settings: &TenantSettings,
    request: &ReserveRequest,
    keys: &CounterKeys,
    counters: &Table<&str, i64>,
) -> Result<Option<ReserveRefusal>, StoreError> {
    if !settings.allowed_qualities.contains(&request.quality) {
        return Ok(Some(ReserveRefusal::QualityNotAllowed));
    }
    if counter(counters, &keys.in_flight)? >= i64::from(settings.max_concurrent_tasks) {
        return Ok(Some(ReserveRefusal::ConcurrencyLimited {
            max: settings.max_concurrent_tasks,
        }));
    }
    let budgets = [
        (settings.budget, &keys.spent, &keys.reserved, false),
        (settings.user_budget, &keys.user_spent, &keys.user_reserved, true),
    ];
    for (budget, spent, reserved, user_scope) in budgets {
        let Some(budget) = budget else { continue };
        let used = counter(counters, spent)?.saturating_add(counter(counters, reserved)?);
        if used.saturating_add(request.amount) > budget {
            let remaining = budget.saturating_sub(used).max(0);
            return Ok(Some(ReserveRefusal::BudgetExceeded { remaining, user_scope }));
        }
    }
    Ok(None)
}

/// Settle, refund or expire inside its write transaction: moves money once, in the record's
/// period; the task leaves the reconciler's queue and its callback (if any) enters the outbox.
fn finish_in(
    tx: &WriteTransaction,
    reservation_id: &str,
    finish: &Finish,
    retention_ms: i64,
) -> Result<FinalizeOutcome, StoreError> {
    let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
    let Some(mut record) = get_json::<ReservationRecord>(&reservations, reservation_id)? else {
        return Ok(FinalizeOutcome::NotFound);
    };
    if record.state != ReservationState::Reserved {
        return Ok(FinalizeOutcome::AlreadyFinal(record));
    }
    finish.apply(&mut record);
    put_json(&mut reservations, reservation_id, &record)?;
    let keys = CounterKeys::new(&record.tenant, &record.user, &record.period);
    let mut counters = tx.open_table(COUNTERS).map_err(db_error)?;
    add(&mut counters, &keys.reserved, -record.reserved)?;
    add(&mut counters, &keys.user_reserved, -record.reserved)?;
    add(&mut counters, &keys.spent, finish.charged)?;
    add(&mut counters, &keys.user_spent, finish.charged)?;
    add(&mut counters, &keys.in_flight, -1)?;
    drop(counters);
    for entry in finish.entries(&record) {
        append(tx, &entry)?;
    }
    aggregate(tx, &record, &finish.deltas(&record))?;
    ended(tx, &record, finish, retention_ms)?;
    Ok(FinalizeOutcome::Applied(record))
}

/// A late settlement inside its write transaction: only a record that `charges_late` moves;
/// the charge goes to its own period, the hold and the slot went at its release.
fn late_settle_in(
    tx: &WriteTransaction,
    reservation_id: &str,
    settlement: &Settlement,
    retention_ms: i64,
) -> Result<FinalizeOutcome, StoreError> {
    let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
    let Some(mut record) = get_json::<ReservationRecord>(&reservations, reservation_id)? else {
        return Ok(FinalizeOutcome::NotFound);
    };
    if !record.charges_late() {
        return Ok(FinalizeOutcome::AlreadyFinal(record));
    }
    let finish = &Finish::late_settle(settlement, record.state);
    let expired_ms = record.finished_ms.unwrap_or(record.created_ms);
    finish.apply(&mut record);
    record.result_expires_ms = Some(late_result_expiry(expired_ms));
    put_json(&mut reservations, reservation_id, &record)?;
    let keys = CounterKeys::new(&record.tenant, &record.user, &record.period);
    let mut counters = tx.open_table(COUNTERS).map_err(db_error)?;
    add(&mut counters, &keys.spent, finish.charged)?;
    add(&mut counters, &keys.user_spent, finish.charged)?;
    drop(counters);
    for entry in finish.entries(&record) {
        append(tx, &entry)?;
    }
    aggregate(tx, &record, &finish.deltas(&record))?;
    ended(tx, &record, finish, retention_ms)?;
    Ok(FinalizeOutcome::Applied(record))
}

/// A recovery inside its write transaction (see `Store::recover`).
fn recover_in(tx: &WriteTransaction, recovery: &Recovery) -> Result<RecoverOutcome, StoreError> {
    let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
    let Some(mut record) = get_json::<ReservationRecord>(&reservations, &recovery.reservation_id)? else {
        return Ok(RecoverOutcome::NotFound);
    };
    if record.task_id.is_some() {
        return Ok(RecoverOutcome::AlreadyBound(record));
    }
    let mut tasks = tx.open_table(TASKS).map_err(db_error)?;
    let owner = tasks
        .get(recovery.task_id.as_str())
        .map_err(db_error)?
        .map(|owner| owner.value().to_string());
    let refusal = recovery.refusal.clone().or_else(|| {
        owner.filter(|owner| *owner != recovery.reservation_id).map(|owner| {
            format!(
                "the upstream's callback named task {}, which belongs to reservation {owner}",
                recovery.task_id
            )
        })
    });
    if let Some(note) = refusal {
        if record.refused_task.as_deref() != Some(recovery.task_id.as_str()) {
            record.refused_task = Some(recovery.task_id.clone());
            put_json(&mut reservations, &recovery.reservation_id, &record)?;
            drop((reservations, tasks));
            append(
                tx,
                &recovery_anomaly(&record, &recovery.task_id, &note, recovery.now_ms),
            )?;
        }
        return Ok(RecoverOutcome::Refused(note));
    }
    record.task_id = Some(recovery.task_id.clone());
    record.created_task = Some(recovery.created_task.clone());
    record.recovered = true;
    put_json(&mut reservations, &recovery.reservation_id, &record)?;
    tasks
        .insert(recovery.task_id.as_str(), recovery.reservation_id.as_str())
        .map_err(db_error)?;
    drop((reservations, tasks));
    make_due(tx, &recovery.reservation_id, recovery.now_ms)?;
    Ok(RecoverOutcome::Bound(record))
}

/// Makes a reservation due for the reconciler now: earlier than both the due time a
/// reconciler may have claimed and now, so that its release sees the change and leaves the
/// entry due.
fn make_due(tx: &WriteTransaction, reservation_id: &str, now_ms: i64) -> Result<(), StoreError> {
    let due = match due_of(tx, Queue::Tasks, reservation_id)? {
        Some(due) => due.min(ms(now_ms)).saturating_sub(1),
        None => ms(now_ms),
    };
    schedule(tx, Queue::Tasks, reservation_id, i64::try_from(due).unwrap_or(i64::MAX))
}

/// What every final step does besides money: the task leaves the reconciler's queue, its
/// caller's callback enters the outbox, and the record and its user counters count down
/// their retention.
fn ended(
    tx: &WriteTransaction,
    record: &ReservationRecord,
    finish: &Finish,
    retention_ms: i64,
) -> Result<(), StoreError> {
    unschedule(tx, Queue::Tasks, &record.reservation_id)?;
    if let Some(until) = record.kept_until_ms(retention_ms) {
        expire_at(tx, until, "res", &record.reservation_id)?;
    }
    expire_user_counters(tx, record, retention_ms)?;
    if relays(record) {
        let event = OutboxEvent::new(record, finish.kind, finish.finished_ms);
        put_json(&mut tx.open_table(EVENTS).map_err(db_error)?, &event.id, &event)?;
        schedule(tx, Queue::Outbox, &event.id, finish.finished_ms)?;
    }
    Ok(())
}

/// Deletes `kind␟key` at `at_ms` (see `EXPIRIES`).
fn expire_at(tx: &WriteTransaction, at_ms: i64, kind: &str, key: &str) -> Result<(), StoreError> {
    let entry = format!("{kind}{SEP}{key}");
    tx.open_table(EXPIRIES)
        .map_err(db_error)?
        .insert((ms(at_ms), entry.as_str()), ())
        .map_err(db_error)?;
    Ok(())
}

/// The user counters of the record's period go `retention` after it ends ('total' ones stay).
fn expire_user_counters(
    tx: &WriteTransaction,
    record: &ReservationRecord,
    retention_ms: i64,
) -> Result<(), StoreError> {
    if let Some(end) = record.period_end_ms {
        let keys = CounterKeys::new(&record.tenant, &record.user, &record.period);
        let at = end.saturating_add(retention_ms);
        expire_at(tx, at, "ctr", &keys.user_spent)?;
        expire_at(tx, at, "ctr", &keys.user_reserved)?;
    }
    Ok(())
}

/// Deletes what is due in `EXPIRIES` at `now_ms`, at most `limit` entries; how many went.
fn purge_in(tx: &WriteTransaction, now_ms: i64, retention_ms: i64, limit: usize) -> Result<usize, StoreError> {
    let due: Vec<(u64, String)> = {
        let expiries = tx.open_table(EXPIRIES).map_err(db_error)?;
        let range = expiries.range((0, "")..=(ms(now_ms), "\u{10ffff}")).map_err(db_error)?;
        let mut due = Vec::new();
        for entry in range.take(limit) {
            let (key, _) = entry.map_err(db_error)?;
            let (at, name) = key.value();
            due.push((at, name.to_string()));
        }
        due
    };
    for (at, name) in &due {
        tx.open_table(EXPIRIES)
            .map_err(db_error)?
            .remove((*at, name.as_str()))
            .map_err(db_error)?;
        match name.split_once(SEP) {
            Some(("res", rid)) => purge_record(tx, rid, now_ms, retention_ms)?,
            Some(("idem", key)) => {
                let mut claims = tx.open_table(IDEMPOTENCY).map_err(db_error)?;
                let claim: Option<Claim> = get_json(&claims, key)?;
                if claim.is_some_and(|c| c.expires_ms <= now_ms) {
                    claims.remove(key).map_err(db_error)?;
                }
            }
            Some(("ctr", key)) => {
                tx.open_table(COUNTERS)
                    .map_err(db_error)?
                    .remove(key)
                    .map_err(db_error)?;
            }
            _ => return Err(StoreError::Corrupt(format!("expiry entry {name:?}"))),
        }
    }
    Ok(due.len())
}

/// A final record past its retention, with its task index and task list entries (a record
/// a later step kept longer has a later entry of its own, so it stays now).
fn purge_record(tx: &WriteTransaction, rid: &str, now_ms: i64, retention_ms: i64) -> Result<(), StoreError> {
    let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
    let Some(record) = get_json::<ReservationRecord>(&reservations, rid)? else {
        return Ok(());
    };
    if record.kept_until_ms(retention_ms).is_none_or(|until| until > now_ms) {
        return Ok(());
    }
    reservations.remove(rid).map_err(db_error)?;
    drop(reservations);
    if let Some(task_id) = &record.task_id {
        let mut tasks = tx.open_table(TASKS).map_err(db_error)?;
        let owned = tasks
            .get(task_id.as_str())
            .map_err(db_error)?
            .is_some_and(|owner| owner.value() == rid);
        if owned {
            tasks.remove(task_id.as_str()).map_err(db_error)?;
        }
    }
    tx.open_table(TASK_INDEX)
        .map_err(db_error)?
        .remove((record.tenant.as_str(), ms(record.created_ms), rid))
        .map_err(db_error)?;
    unschedule(tx, Queue::Tasks, rid)
}

/// A queue's index: (due ms, id) in due order.
type QueueIndex = TableDefinition<'static, (u64, &'static str), ()>;
/// A queue's id → due ms, to find an entry in its index.
type QueueDue = TableDefinition<'static, &'static str, u64>;

/// The tables of a queue.
fn queue_tables(queue: Queue) -> (QueueIndex, QueueDue) {
    match queue {
        Queue::Tasks => (PENDING, PENDING_DUE),
        Queue::Outbox => (OUTBOX, OUTBOX_DUE),
        Queue::Archive => (ARCHIVE, ARCHIVE_DUE),
    }
}

fn due_of(tx: &WriteTransaction, queue: Queue, id: &str) -> Result<Option<u64>, StoreError> {
    let due = tx.open_table(queue_tables(queue).1).map_err(db_error)?;
    Ok(due.get(id).map_err(db_error)?.map(|value| value.value()))
}

/// Puts `id` in `queue` (or moves it) at `due_ms`.
fn schedule(tx: &WriteTransaction, queue: Queue, id: &str, due_ms: i64) -> Result<(), StoreError> {
    let (index, due) = queue_tables(queue);
    let (mut index, mut due) = (
        tx.open_table(index).map_err(db_error)?,
        tx.open_table(due).map_err(db_error)?,
    );
    if let Some(old) = due.insert(id, ms(due_ms)).map_err(db_error)? {
        index.remove((old.value(), id)).map_err(db_error)?;
    }
    index.insert((ms(due_ms), id), ()).map_err(db_error)?;
    Ok(())
}

fn unschedule(tx: &WriteTransaction, queue: Queue, id: &str) -> Result<(), StoreError> {
    let (index, due) = queue_tables(queue);
    let (mut index, mut due) = (
        tx.open_table(index).map_err(db_error)?,
        tx.open_table(due).map_err(db_error)?,
    );
    if let Some(old) = due.remove(id).map_err(db_error)? {
        index.remove((old.value(), id)).map_err(db_error)?;
    }
    Ok(())
}

fn lease_key(queue: Queue, id: &str) -> String {
    format!("{}:{id}", queue.as_str())
}

/// Unix ms as the tables keep them (times before 1970 do not occur).
fn ms(unix_ms: i64) -> u64 {
    u64::try_from(unix_ms).unwrap_or(0)
}

/// Counter names of one tenant, user and period; the same names as the Redis keys.
struct CounterKeys {
    spent: String,
    reserved: String,
    user_spent: String,
    user_reserved: String,
    in_flight: String,
}

impl CounterKeys {
    fn new(tenant: &str, user: &str, period: &str) -> Self {
        Self {
            spent: format!("spent:{tenant}:{period}"),
            reserved: format!("reserved:{tenant}:{period}"),
            user_spent: format!("uspent:{tenant}:{period}:{user}"),
            user_reserved: format!("ureserved:{tenant}:{period}:{user}"),
            in_flight: format!("inflight:{tenant}"),
        }
    }
}

async fn blocking<T, F>(op: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
}

fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {}", error.into()))
}

fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static str>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let Some(value) = table.get(key).map_err(db_error)? else {
        return Ok(None);
    };
    serde_json::from_str(value.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("record {key}: {e}")))
}

fn put_json<T: Serialize>(table: &mut Table<&str, &str>, key: &str, value: &T) -> Result<(), StoreError> {
    let json = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("record {key}: {e}")))?;
    table.insert(key, json.as_str()).map_err(db_error)?;
    Ok(())
}

fn counter(table: &impl ReadableTable<&'static str, i64>, key: &str) -> Result<i64, StoreError> {
    Ok(table.get(key).map_err(db_error)?.map_or(0, |value| value.value()))
}

fn add(table: &mut Table<&str, i64>, key: &str, delta: i64) -> Result<(), StoreError> {
    let value = counter(table, key)?.saturating_add(delta);
    table.insert(key, value).map_err(db_error)?;
    Ok(())
}

/// See `Store::rebuild`; every check before the first write.
fn rebuild_in(tx: &WriteTransaction, rebuild: &Rebuild, retention_ms: i64) -> Result<RebuildOutcome, StoreError> {
    let hold = &rebuild.hold;
    let mut reservations = tx.open_table(RESERVATIONS).map_err(db_error)?;
    if let Some(existing) = get_json(&reservations, &hold.reservation_id)? {
        return Ok(RebuildOutcome::Exists(existing));
    }
    let tenant: Option<TenantRecord> = get_json(&tx.open_table(TENANTS).map_err(db_error)?, &hold.tenant)?;
    let Some(tenant) = tenant else {
        return Ok(RebuildOutcome::UnknownTenant);
    };
    let period = hold.periods.for_kind(tenant.settings.period);
    let mut tasks = tx.open_table(TASKS).map_err(db_error)?;
    let owner = tasks
        .get(rebuild.task_id.as_str())
        .map_err(db_error)?
        .map(|owner| owner.value().to_string());
    if let Some(note) = rebuild.refusal.clone().or_else(|| owner.map(|o| rebuild.owned_by(&o))) {
        let tombstone = rebuild.tombstone(period);
        put_json(&mut reservations, &tombstone.reservation_id, &tombstone)?;
        drop((reservations, tasks));
        if let Some(until) = tombstone.kept_until_ms(retention_ms) {
            expire_at(tx, until, "res", &tombstone.reservation_id)?;
        }
        append(
            tx,
            &recovery_anomaly(&tombstone, &rebuild.task_id, &note, rebuild.now_ms),
        )?;
        return Ok(RebuildOutcome::Refused(note));
    }
    let record = rebuild.record(period);
    put_json(&mut reservations, &record.reservation_id, &record)?;
    tasks
        .insert(rebuild.task_id.as_str(), record.reservation_id.as_str())
        .map_err(db_error)?;
    drop((reservations, tasks));
    let keys = CounterKeys::new(&record.tenant, &record.user, period);
    let mut counters = tx.open_table(COUNTERS).map_err(db_error)?;
    add(&mut counters, &keys.reserved, record.reserved)?;
    add(&mut counters, &keys.user_reserved, record.reserved)?;
    add(&mut counters, &keys.in_flight, 1)?;
    drop(counters);
    append(tx, &reserve_entry(&record))?;
    aggregate(tx, &record, &usage::reserve_deltas(&record))?;
    let day = format!("{}{SEP}{}", record.tenant, record.periods.day);
    tx.open_table(DAYS)
        .map_err(db_error)?
        .insert(day.as_str(), ())
        .map_err(db_error)?;
    schedule(tx, Queue::Tasks, &record.reservation_id, rebuild.now_ms)?;
    index_task(tx, &record)?;
    expire_user_counters(tx, &record, retention_ms)?;
    Ok(RebuildOutcome::Rebuilt(record))
}
