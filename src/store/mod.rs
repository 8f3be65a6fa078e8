//! What the gateway keeps: tenants, reservations (the money held for a task), task
//! ownership, the ledger and usage aggregates. Every step that moves money is one atomic
//! store operation, idempotent by reservation id, that also appends its ledger entries and
//! updates the aggregates. Two backends: embedded (redb, one node) and Redis (many replicas).

mod dump;
pub mod embedded;
mod instrumented;
mod keys;
mod ledger;
mod period;
pub mod redis;
pub mod retention;
mod sessions;
mod task_index;
mod tenants;
pub mod usage;

pub use dump::{DumpCounts, DumpItem};
pub use instrumented::Instrumented;
pub use keys::{ApiKeyCreated, ApiKeyRecord, WebhookKey, WebhookKeys};
pub use ledger::{
    LATE_NOTE, LATE_UNMEASURED_NOTE, LedgerCursor, LedgerEntry, LedgerKind, LedgerPage, LedgerPosition, LedgerQuery,
    LedgerRow, REFUSED_LATE_NOTE, REFUSED_LATE_UNMEASURED_NOTE, UNMEASURED_NOTE, ledger_page,
};
pub use period::Period;
pub use sessions::ConsoleSession;
pub use task_index::{MAX_SCANNED, TaskCursor, TaskIndexEntry, TaskIndexRange, TaskListQuery, TaskPage, task_page};
pub use tenants::{TenantChange, TenantPatch, TenantUpdate};
pub use usage::{TaskCounts, Totals, UsageBucket};

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::billing::Micros;
use crate::config::{PeriodKind, StoreBackend, StoreConfig, TenantConfig};
use crate::limits::{RateCheck, RateDecision};

/// A store failure; the gateway fails closed on it (503 `store_unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data corrupt: {0}")]
    Corrupt(String),
}

/// A tenant's settings as the store keeps them (seeded from config, changed by admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSettings {
    pub budget: Option<Micros>,
    pub period: PeriodKind,
    pub creates_per_minute: u32,
    pub creates_burst: u32,
    pub reads_per_minute: u32,
    pub reads_burst: u32,
    pub max_concurrent_tasks: u32,
    pub user_budget: Option<Micros>,
    pub user_creates_per_minute: u32,
    pub allowed_qualities: Vec<String>,
    /// This tenant's budget alerts also go here (besides `alerts.webhook_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_webhook_url: Option<String>,
}

impl TenantSettings {
    /// Settings from a validated `[[tenants]]` entry.
    pub fn from_config(entry: &TenantConfig) -> Result<Self, String> {
        Ok(Self {
            budget: entry.budget_micros()?,
            period: entry.period,
            creates_per_minute: entry.creates_per_minute,
            creates_burst: entry.creates_burst,
            reads_per_minute: entry.reads_per_minute,
            reads_burst: entry.reads_burst,
            max_concurrent_tasks: entry.max_concurrent_tasks,
            user_budget: entry.user_budget_micros()?,
            user_creates_per_minute: entry.user_creates_per_minute,
            allowed_qualities: entry.allowed_qualities.clone(),
            alert_webhook_url: Some(entry.alert_webhook_url.clone()).filter(|url| !url.is_empty()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub settings: TenantSettings,
    /// Hash of the config entry last applied; config re-applies only when it changes.
    pub config_hash: String,
}

/// The period keys for one instant, computed by the gateway from its own clock; the store
/// picks the one matching the tenant's period kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodKeys {
    /// `2026-11`
    pub month: String,
    /// `2026-W48`
    pub week: String,
    /// `2026-11-25`
    pub day: String,
}

impl PeriodKeys {
    pub fn at(now: chrono::DateTime<chrono::Utc>) -> Self {
        use chrono::Datelike;
        let week = now.iso_week();
        Self {
            month: now.format("%Y-%m").to_string(),
            week: format!("{}-W{:02}", week.year(), week.week()),
            day: now.format("%Y-%m-%d").to_string(),
        }
    }

    pub fn for_kind(&self, kind: PeriodKind) -> &str {
        match kind {
            PeriodKind::Month => &self.month,
            PeriodKind::Week => &self.week,
            PeriodKind::Day => &self.day,
            PeriodKind::Total => "total",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationState {
    Reserved,
    Settled,
    Refunded,
    Expired,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Settled => "settled",
            Self::Refunded => "refunded",
            Self::Expired => "expired",
        }
    }
}

/// Everything a create asks the store to hold, decided before the upstream call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    pub reservation_id: String,
    pub tenant: String,
    pub user: String,
    pub request_id: String,
    pub periods: PeriodKeys,
    pub model: String,
    pub quality: String,
    pub audio: bool,
    pub currency: String,
    pub price_per_second: Micros,
    pub reference_durations_ms: Vec<u64>,
    pub billed_input_ms: u64,
    pub requested_output_ms: u64,
    /// The hold: input + requested output at the price.
    pub amount: Micros,
    /// The caller's own callback URL, kept here and never sent upstream.
    pub callback_url: Option<String>,
    /// Unix ms, from the gateway clock.
    pub now_ms: i64,
    /// The caller's `Idempotency-Key`, checked in the same step.
    pub idempotency: Option<IdempotencyClaim>,
    /// Request-rate limits checked in the same step (Redis: on the Redis clock).
    pub rate: Vec<RateCheck>,
}

/// An `Idempotency-Key` and the hash of the body it was first used with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyClaim {
    /// The caller's key (scoped to the tenant by the store).
    pub key: String,
    /// SHA-256 of the canonical JSON body, hex.
    pub body_hash: String,
    pub ttl_ms: u64,
}

/// One task's money and ownership, from reserve to its final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    pub reservation_id: String,
    pub tenant: String,
    pub user: String,
    pub request_id: String,
    pub task_id: Option<String>,
    pub state: ReservationState,
    /// The period the task is booked to (the one it was reserved in).
    pub period: String,
    /// Every period key at reservation time: the usage buckets the task counts in.
    pub periods: PeriodKeys,
    pub model: String,
    pub quality: String,
    pub audio: bool,
    pub currency: String,
    pub price_per_second: Micros,
    pub reference_durations_ms: Vec<u64>,
    pub billed_input_ms: u64,
    pub requested_output_ms: u64,
    pub reserved: Micros,
    pub charged: Option<Micros>,
    pub billed_output_ms: Option<u64>,
    pub callback_url: Option<String>,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// Completion + 24 h, once settled.
    pub result_expires_ms: Option<i64>,
    /// The upstream's answer to the create (JSON), kept at bind to answer idempotent retries.
    #[serde(default)]
    pub created_task: Option<String>,
    /// Bound after its create's outcome was unknown or refused, by `Store::recover`: a
    /// completion then charges even a hold already released (`late_settle`).
    #[serde(default)]
    pub recovered: bool,
    /// The task a recovery refused to bind (its anomaly is written once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_task: Option<String>,
    /// Until when (unix ms) an idempotency claim names this record: it is kept that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_expires_ms: Option<i64>,
    /// When the booked period ends (unix ms; none for `total`): the user counters it wrote
    /// expire `retention` after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end_ms: Option<i64>,
    /// The task as last seen when its money moved (JSON), for the task list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task: Option<String>,
    /// Its video is in the archive (`Store::mark_archived`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
}

/// What a bind found.
#[derive(Debug, Clone, PartialEq)]
pub enum BindOutcome {
    /// This call bound the task to a hold that is still `reserved`: the record is the hold
    /// with `task_id` and `created_task` set (`ReservationRecord::bound`), so the store does
    /// not send it back (on the create path, a whole record is a costly reply to parse).
    Bound,
    /// Bound before, or finished meanwhile (a callback may beat the bind): the record as stored.
    Current(Box<ReservationRecord>),
    NotFound,
}

impl ReservationRecord {
    /// The hold after a `BindOutcome::Bound`.
    pub fn bound(self, task_id: &str, created_task: &str) -> Self {
        Self {
            task_id: Some(task_id.to_string()),
            created_task: Some(created_task.to_string()),
            ..self
        }
    }

    /// A fresh hold for `request`, booked to `period`.
    fn hold(request: &ReserveRequest, period: &str) -> Self {
        Self {
            reservation_id: request.reservation_id.clone(),
            tenant: request.tenant.clone(),
            user: request.user.clone(),
            request_id: request.request_id.clone(),
            task_id: None,
            state: ReservationState::Reserved,
            period: period.to_string(),
            periods: request.periods.clone(),
            model: request.model.clone(),
            quality: request.quality.clone(),
            audio: request.audio,
            currency: request.currency.clone(),
            price_per_second: request.price_per_second,
            reference_durations_ms: request.reference_durations_ms.clone(),
            billed_input_ms: request.billed_input_ms,
            requested_output_ms: request.requested_output_ms,
            reserved: request.amount,
            charged: None,
            billed_output_ms: None,
            callback_url: request.callback_url.clone(),
            created_ms: request.now_ms,
            finished_ms: None,
            result_expires_ms: None,
            created_task: None,
            recovered: false,
            refused_task: None,
            claim_expires_ms: request.idempotency.as_ref().map(|claim| {
                request
                    .now_ms
                    .saturating_add(i64::try_from(claim.ttl_ms).unwrap_or(i64::MAX))
            }),
            period_end_ms: Period::end_of(period),
            last_task: None,
            archived: false,
        }
    }

    /// Until when a final record is kept: `retention` after it ended, and at least as long
    /// as an idempotency claim names it. `None` while it has not ended.
    pub fn kept_until_ms(&self, retention_ms: i64) -> Option<i64> {
        let ended = self.finished_ms.filter(|_| self.state != ReservationState::Reserved)?;
        Some(
            ended
                .saturating_add(retention_ms)
                .max(self.claim_expires_ms.unwrap_or(i64::MIN)),
        )
    }

    /// Whether a completion seen now is charged late: the hold was released before the task
    /// was known to exist (expired, or refunded as refused and then recovered).
    pub fn charges_late(&self) -> bool {
        match self.state {
            ReservationState::Expired => true,
            ReservationState::Refunded => self.recovered,
            _ => false,
        }
    }
}

/// How long a settled result stays available: 24 h after completion.
const RESULT_TTL_MS: i64 = 86_400_000;

/// What a final step writes onto a `reserved` record. Field names match
/// `ReservationRecord`, so the Redis backend writes it as hash fields unchanged (the
/// skipped fields only steer the ledger).
#[derive(Debug, Clone, Serialize)]
struct Finish {
    #[serde(skip)]
    kind: LedgerKind,
    /// Set when the settlement is flagged: the note of its `anomaly` entry.
    #[serde(skip)]
    anomaly: Option<&'static str>,
    /// The state the step moves from: `reserved`, or for a late settlement, the released one.
    #[serde(skip)]
    from: ReservationState,
    state: ReservationState,
    /// Also what the step adds to spent.
    charged: Micros,
    #[serde(skip_serializing_if = "Option::is_none")]
    billed_output_ms: Option<u64>,
    finished_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_expires_ms: Option<i64>,
}

impl Finish {
    fn settle(settlement: &Settlement) -> Self {
        Self {
            kind: LedgerKind::Settle,
            anomaly: settlement.anomaly.then_some(UNMEASURED_NOTE),
            from: ReservationState::Reserved,
            state: ReservationState::Settled,
            charged: settlement.amount,
            billed_output_ms: Some(settlement.billed_output_ms),
            finished_ms: settlement.now_ms,
            result_expires_ms: Some(settlement.now_ms.saturating_add(RESULT_TTL_MS)),
        }
    }

    fn refund(now_ms: i64) -> Self {
        Self {
            kind: LedgerKind::Refund,
            anomaly: None,
            from: ReservationState::Reserved,
            state: ReservationState::Refunded,
            charged: 0,
            billed_output_ms: None,
            finished_ms: now_ms,
            result_expires_ms: None,
        }
    }

    /// Like a refund (the hold and the slot go, nothing is charged), but the outcome is unknown.
    fn expire(now_ms: i64) -> Self {
        Self {
            kind: LedgerKind::Expire,
            state: ReservationState::Expired,
            ..Self::refund(now_ms)
        }
    }

    /// A completion seen after the hold was released (`from`: expired, or refunded and then
    /// recovered): charged, always flagged. The store sets `result_expires_ms` from the
    /// release time (see `late_result_expiry`).
    fn late_settle(settlement: &Settlement, from: ReservationState) -> Self {
        let note = match (from, settlement.anomaly) {
            (ReservationState::Refunded, false) => REFUSED_LATE_NOTE,
            (ReservationState::Refunded, true) => REFUSED_LATE_UNMEASURED_NOTE,
            (_, false) => LATE_NOTE,
            (_, true) => LATE_UNMEASURED_NOTE,
        };
        Self {
            kind: LedgerKind::LateSettle,
            anomaly: Some(note),
            from,
            result_expires_ms: None,
            ..Self::settle(settlement)
        }
    }

    fn apply(&self, record: &mut ReservationRecord) {
        record.state = self.state;
        record.charged = Some(self.charged);
        record.billed_output_ms = self.billed_output_ms.or(record.billed_output_ms);
        record.finished_ms = Some(self.finished_ms);
        record.result_expires_ms = self.result_expires_ms.or(record.result_expires_ms);
    }

    /// The ledger entries of this step on `record` (already applied): the step's own, plus
    /// an `anomaly` repeating a flagged settlement.
    fn entries(&self, record: &ReservationRecord) -> Vec<LedgerEntry> {
        let entry = match self.kind {
            LedgerKind::Refund | LedgerKind::Expire => {
                LedgerEntry::for_reservation(self.kind, record, (0, 0), record.reserved, self.finished_ms)
            }
            kind => LedgerEntry::for_reservation(
                kind,
                record,
                (record.billed_input_ms, self.billed_output_ms.unwrap_or(0)),
                self.charged,
                self.finished_ms,
            ),
        };
        let anomaly = self.anomaly.map(|note| LedgerEntry {
            kind: LedgerKind::Anomaly,
            note: note.to_string(),
            ..entry.clone()
        });
        std::iter::once(entry).chain(anomaly).collect()
    }

    /// What the step adds to each usage bucket of `record`.
    fn deltas(&self, record: &ReservationRecord) -> Vec<(&'static str, i64)> {
        match self.kind {
            LedgerKind::Refund => usage::finish_deltas(record, None),
            LedgerKind::Expire => usage::expire_deltas(record),
            LedgerKind::LateSettle => usage::late_settle_deltas(record, self.charged, self.from),
            _ => usage::finish_deltas(record, Some(self.charged)),
        }
    }
}

/// When the result of a late settlement stops being downloadable, at the latest: the task
/// completed after the hold expired (the last poll still saw it running), and the upstream
/// keeps results 24 h after completion. The completion itself may have been seen much later
/// (a query days after), so the expiry time is the bound that never promises too much.
fn late_result_expiry(expired_ms: i64) -> i64 {
    expired_ms.saturating_add(RESULT_TTL_MS)
}

/// Whether a final step on `record` owes its caller a relayed callback: the caller asked
/// for one, and a task exists to report on (an unbound hold's create already failed).
fn relays(record: &ReservationRecord) -> bool {
    record.callback_url.is_some() && record.task_id.is_some()
}

/// The work queues the background workers share across replicas: reservations to reconcile
/// (`Tasks`, entered at reserve, left when final), callbacks to relay (`Outbox`, entered
/// by the final money steps) and results to copy into the archive (`Archive`, by reservation
/// id, entered when a completion is seen, left once copied or given up). Each entry has a
/// due time; a worker claims a due entry with a lease, so one replica at a time works on it,
/// and a dead replica's lease just runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Tasks,
    Outbox,
    Archive,
}

impl Queue {
    /// Every queue, for the backends' table setup and for export.
    pub const ALL: [Queue; 3] = [Queue::Tasks, Queue::Outbox, Queue::Archive];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tasks => "tasks",
            Self::Outbox => "outbox",
            Self::Archive => "archive",
        }
    }

    /// The queue a dump names.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|queue| queue.as_str() == name)
    }
}

/// A callback to relay to a caller, enqueued by the money step that ended its task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// `msg_{reservation_id}_{kind}` (see `event_id`): the `webhook-id`, stable across retries.
    pub id: String,
    pub reservation_id: String,
    /// The step that ended the task: settle, refund, expire or late_settle.
    pub kind: LedgerKind,
    pub created_ms: i64,
    /// Failed delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// The JSON body, fixed at the first attempt so that every retry sends the same bytes.
    #[serde(default)]
    pub body: Option<String>,
}

impl OutboxEvent {
    fn new(record: &ReservationRecord, kind: LedgerKind, now_ms: i64) -> Self {
        Self {
            id: event_id(&record.reservation_id, kind),
            reservation_id: record.reservation_id.clone(),
            kind,
            created_ms: now_ms,
            attempts: 0,
            body: None,
        }
    }
}

/// A step applies once per reservation, so (reservation, step) names its event uniquely.
/// lua/completion.lua builds the same id.
pub fn event_id(reservation_id: &str, kind: LedgerKind) -> String {
    format!("msg_{reservation_id}_{}", kind.as_str())
}

/// The ledger entry of a hold.
fn reserve_entry(record: &ReservationRecord) -> LedgerEntry {
    LedgerEntry::for_reservation(
        LedgerKind::Reserve,
        record,
        (record.billed_input_ms, record.requested_output_ms),
        record.reserved,
        record.created_ms,
    )
}

/// The `anomaly` entry of a recovery that was refused: nothing moves, finance is told.
fn recovery_anomaly(record: &ReservationRecord, task_id: &str, note: &str, now_ms: i64) -> LedgerEntry {
    LedgerEntry {
        task_id: task_id.to_string(),
        note: note.to_string(),
        ..LedgerEntry::for_reservation(LedgerKind::Anomaly, record, (0, 0), 0, now_ms)
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveRefusal {
    UnknownTenant,
    QualityNotAllowed,
    /// Remaining budget (micro-units) of the tenant or of the user.
    BudgetExceeded {
        remaining: Micros,
        user_scope: bool,
    },
    ConcurrencyLimited {
        max: u32,
    },
    RateLimited(RateDecision),
    /// The idempotency key was used with another body.
    IdempotencyKeyReused,
    /// The idempotency key's first request has not finished, or (`outcome_unknown`) its
    /// hold was released without ever learning whether the upstream created the task.
    RequestInProgress {
        outcome_unknown: bool,
    },
}

// Returned once per create and never kept in bulk, so the large variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved(ReservationRecord),
    /// The idempotency key already created a task: its record, to answer as before.
    Replay(ReservationRecord),
    Refused(ReserveRefusal),
}

/// What `reserve` did, and the rate decision it made on the way (for the headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveReceipt {
    pub outcome: ReserveOutcome,
    pub rate: Option<RateDecision>,
    /// After a new hold: the tenant's budget and its period's money, as the step saw them.
    pub budget_use: Option<BudgetUse>,
}

/// A tenant's budget and its period's money right after a hold: what the budget alerts need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUse {
    pub budget: Option<Micros>,
    pub spent: Micros,
    /// Including the new hold.
    pub reserved: Micros,
}

/// A task read with its rate check: `record` is `None` when refused or unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRead {
    pub rate: Option<RateDecision>,
    pub record: Option<ReservationRecord>,
}

/// The final charge of a completed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub billed_output_ms: u64,
    pub amount: Micros,
    /// True when the result could not be measured and the requested length was billed.
    pub anomaly: bool,
    pub now_ms: i64,
}

/// Result of a final step (settle/refund/expire). Applying it twice is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalizeOutcome {
    /// This call moved the money.
    Applied(ReservationRecord),
    /// Already final before this call; nothing moved.
    AlreadyFinal(ReservationRecord),
    NotFound,
}

impl FinalizeOutcome {
    pub fn record(&self) -> Option<&ReservationRecord> {
        match self {
            Self::Applied(r) | Self::AlreadyFinal(r) => Some(r),
            Self::NotFound => None,
        }
    }
}

/// A task revealed by an upstream callback for a reservation that has no task id: its
/// create's outcome was unknown, its bind never landed, or it was refused and created anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub reservation_id: String,
    pub task_id: String,
    /// The task as re-fetched from the upstream (JSON), kept like a create's answer.
    pub created_task: String,
    pub now_ms: i64,
    /// Why the task must not be bound (its model or creation time does not fit the
    /// reservation): written as an `anomaly` instead, once per task.
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecoverOutcome {
    /// Bound now, and due for the reconciler at once: the record as it stands.
    Bound(ReservationRecord),
    /// The reservation already had a task id: nothing changed.
    AlreadyBound(ReservationRecord),
    /// Not bound (the refusal, or another reservation owns the task): an `anomaly` entry says why.
    Refused(String),
    NotFound,
}

/// A reservation whose record the store lost (a Redis failover), rebuilt from the sealed
/// payload of its callback token once the upstream's callback named its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    /// The hold as it was reserved: `now_ms` is its creation time; no idempotency key, rate
    /// checks or caller's callback URL (the token does not carry them).
    pub hold: ReserveRequest,
    pub task_id: String,
    /// The task as re-fetched from the upstream (JSON).
    pub created_task: String,
    pub now_ms: i64,
    /// Why the task must not be charged (its model or creation time does not fit, or the
    /// token is older than retention): written as an `anomaly` instead, once.
    pub refusal: Option<String>,
}

impl Rebuild {
    /// The record a rebuild writes, booked to `period`: the hold, bound to the task, due for
    /// the reconciler like a recovered one.
    pub fn record(&self, period: &str) -> ReservationRecord {
        ReservationRecord {
            task_id: Some(self.task_id.clone()),
            created_task: Some(self.created_task.clone()),
            recovered: true,
            ..ReservationRecord::hold(&self.hold, period)
        }
    }

    /// What a refused rebuild keeps, so that the upstream's next callback finds it and the
    /// `anomaly` is written once: nothing held, refunded, the refused task named.
    fn tombstone(&self, period: &str) -> ReservationRecord {
        ReservationRecord {
            state: ReservationState::Refunded,
            charged: Some(0),
            finished_ms: Some(self.now_ms),
            refused_task: Some(self.task_id.clone()),
            ..ReservationRecord::hold(&self.hold, period)
        }
    }

    /// The note of a refusal because another reservation owns the task.
    fn owned_by(&self, owner: &str) -> String {
        format!(
            "the upstream's callback named task {}, which belongs to reservation {owner}",
            self.task_id
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RebuildOutcome {
    /// Written now (its `reserve` entry too), bound and due at once: its money moves as any
    /// task's.
    Rebuilt(ReservationRecord),
    /// The store holds a record with this id (never lost, or rebuilt before): nothing written.
    Exists(ReservationRecord),
    /// Nothing charged: an `anomaly` entry says why (written once).
    Refused(String),
    UnknownTenant,
}

/// A tenant's money in one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodUsage {
    pub spent: Micros,
    pub reserved: Micros,
    /// Reserved but not ended right now (all periods).
    pub in_flight: u32,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts the tenant, or re-applies its settings when `config_hash` differs from the
    /// stored one, with a `budget_change` entry by `config`. Returns true when it wrote.
    async fn apply_config_tenant(
        &self,
        id: &str,
        settings: &TenantSettings,
        config_hash: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// An admin's partial change (creating the tenant if missing) and its `budget_change`
    /// entry, atomically; a change that changes nothing writes nothing. The config hash is
    /// kept, so the change persists until the config entry itself changes.
    async fn update_tenant(&self, id: &str, change: &TenantChange) -> Result<TenantUpdate, StoreError>;

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError>;

    /// Every tenant, by id.
    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;

    /// One atomic step: tenant exists, quality allowed, concurrency cap, tenant and user
    /// budgets (spent + reserved + amount ≤ budget), then hold the amount. Idempotent: a
    /// second call with the same reservation id returns the existing record.
    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveReceipt, StoreError>;

    /// One step for a task query: the rate limits, then the task's record (any tenant's:
    /// the caller checks ownership).
    async fn read_task(&self, task_id: &str, rate: &[RateCheck]) -> Result<TaskRead, StoreError>;

    /// The rate limits of any other authenticated call.
    async fn check_rate(&self, rate: &[RateCheck]) -> Result<Option<RateDecision>, StoreError>;

    /// Attaches the upstream task id, and keeps the upstream's answer (`created_task`, JSON)
    /// for idempotent retries. Idempotent: the first bind wins.
    async fn bind(&self, reservation_id: &str, task_id: &str, created_task: &str) -> Result<BindOutcome, StoreError>;

    async fn reservation(&self, reservation_id: &str) -> Result<Option<ReservationRecord>, StoreError>;

    /// The reservation bound to an upstream task id.
    async fn task(&self, task_id: &str) -> Result<Option<ReservationRecord>, StoreError>;

    /// Charges the settlement and releases the hold and the concurrency slot, once.
    async fn settle(&self, reservation_id: &str, settlement: &Settlement) -> Result<FinalizeOutcome, StoreError>;

    /// Releases the hold and the concurrency slot, charging nothing, once.
    async fn refund(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError>;

    /// The reconciler gave up: releases the hold and the slot of a `reserved` task as
    /// `expired`, charging nothing, once (ledger kind `expire`).
    async fn expire(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError>;

    /// A completion seen after the hold was released: charges the settlement to the
    /// reservation's own period with a `late_settle` and an `anomaly` entry, once; only a
    /// record that `charges_late` moves (an `expired` one, or a `refunded` one recovered after
    /// its create was refused). The record becomes `settled`.
    async fn late_settle(&self, reservation_id: &str, settlement: &Settlement) -> Result<FinalizeOutcome, StoreError>;

    /// Binds a task found after the create (see `Recovery`), once, atomically: unless the
    /// reservation has a task id already, another reservation owns the task, or the
    /// recovery is refused. A bound reservation is due for the reconciler at once, whatever
    /// its state, so its completion is charged (late, if the hold was released meanwhile).
    async fn recover(&self, recovery: &Recovery) -> Result<RecoverOutcome, StoreError>;

    /// Deletes what retention says is over at `now_ms`: final records (and their task index
    /// and task list entries) `retention` after they ended, expired idempotency claims, user
    /// counters of periods closed `retention` ago. Redis expires most of it by itself (this
    /// trims the task lists and gives keys written before retention existed their expiry);
    /// the embedded store deletes it here. Returns how many things went.
    async fn purge(&self, now_ms: i64) -> Result<usize, StoreError>;

    /// Keeps `task` (JSON), the task as just seen, on its reservation for the task list;
    /// moves no money (a reservation gone meanwhile is left alone).
    async fn note_task(&self, reservation_id: &str, task: &str) -> Result<(), StoreError>;

    /// Undoes a reserve whose answer was lost (a store timeout) before anything was sent
    /// upstream: refunds the hold if it exists and is unbound, and otherwise makes sure a
    /// reserve with this id still on its way can never hold anything. Idempotent.
    async fn release_unsent(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError>;

    /// Ids of `queue` due at `now_ms`, most overdue first, at most `limit`.
    async fn due(&self, queue: Queue, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Takes the lease on a due entry for `lease_ms`: its due time, or `None` when it is not
    /// due, gone, or leased by someone else.
    async fn claim(
        &self,
        queue: Queue,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: u64,
    ) -> Result<Option<i64>, StoreError>;

    /// Ends a claim: the entry becomes due at `next_ms` (`None`: it leaves the queue, an
    /// outbox event with it), unless its due time changed since the claim (a callback asked
    /// for an immediate look meanwhile: that wins); then drops the lease if still ours.
    async fn release(
        &self,
        queue: Queue,
        id: &str,
        owner: &str,
        claimed_due_ms: i64,
        next_ms: Option<i64>,
    ) -> Result<(), StoreError>;

    /// An upstream callback for the reservation: makes it due at once, also an `expired`
    /// one (a completion then is charged late). Returns its state; `None` if unknown.
    async fn mark_due(&self, reservation_id: &str, now_ms: i64) -> Result<Option<ReservationState>, StoreError>;

    async fn outbox_event(&self, id: &str) -> Result<Option<OutboxEvent>, StoreError>;

    /// Stores an event's attempts and body (an event no longer queued is not recreated).
    async fn save_outbox_event(&self, event: &OutboxEvent) -> Result<(), StoreError>;

    /// The secret named `name` shared by every replica: the stored one, or `candidate`
    /// stored now if there is none yet (the first replica to start wins).
    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Spent and reserved of a tenant in a period key (as `PeriodKeys::for_kind` gives).
    async fn period_usage(&self, tenant: &str, period: &str) -> Result<PeriodUsage, StoreError>;

    /// A tenant's usage aggregates in one bucket: a day, week, month key or `total`; by
    /// user too when `by_user` (else `by_user` is left empty: the bigger half of a bucket).
    async fn usage(&self, tenant: &str, bucket: &str, by_user: bool) -> Result<UsageBucket, StoreError>;

    /// The days (`2026-11-25`) on which a tenant reserved anything, in order.
    async fn usage_days(&self, tenant: &str) -> Result<Vec<String>, StoreError>;

    /// One tenant's ledger rows with position ≥ `start` and ms < `end_ms`, in order, at most
    /// `limit` (see `ledger_page` for reading across tenants).
    async fn ledger_range(
        &self,
        tenant: &str,
        start: LedgerPosition,
        end_ms: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError>;

    /// Claims a budget alert (threshold in millionths of the budget) for a tenant and
    /// period: true for exactly one caller across all replicas.
    async fn claim_alert(&self, tenant: &str, period: &str, threshold_ppm: u32) -> Result<bool, StoreError>;

    // Team self-service: the task list, the user's budget for quotes, the startup log.

    /// A tenant's task index (written by `reserve`), newest first: the entries in `range`,
    /// at most `limit` (see `task_page` for a filtered page).
    async fn task_index(
        &self,
        tenant: &str,
        range: &TaskIndexRange,
        limit: usize,
    ) -> Result<Vec<TaskIndexEntry>, StoreError>;

    /// The reservations with these ids that exist, in any order.
    async fn reservations(&self, ids: &[String]) -> Result<Vec<ReservationRecord>, StoreError>;

    /// Spent and reserved of one user of a tenant in a period key: what the user budget
    /// is checked against (`in_flight` is the tenant's).
    async fn user_period_usage(&self, tenant: &str, user: &str, period: &str) -> Result<PeriodUsage, StoreError>;

    /// The backend in a few words for the startup log (`redis 7.2.4`, `embedded (redb) at PATH`);
    /// never a credential.
    async fn describe(&self) -> Result<String, StoreError>;

    /// Sends everything the store holds to `sink` (`vidgate store export`; every gateway on
    /// the store stopped).
    async fn export(&self, sink: tokio::sync::mpsc::Sender<DumpItem>) -> Result<(), StoreError>;

    /// What the store holds, in a few words, or `None` when it is empty (import refuses a
    /// store that holds anything).
    async fn holds(&self) -> Result<Option<String>, StoreError>;

    /// Writes dumped items as they were (`vidgate store import`, into an empty store; any
    /// order, in as many calls as wanted).
    async fn import(&self, items: Vec<DumpItem>) -> Result<(), StoreError>;

    /// Enters reservations made before the task list existed into it, once per store (at
    /// startup); returns how many it entered.
    async fn index_earlier_tasks(&self) -> Result<u64, StoreError>;

    // Credentials: each tenant's webhook signing keys and its API keys (see keys.rs).

    /// The tenant's webhook keys; `candidate` becomes its first key when it has none (the
    /// first caller wins, so every replica signs with the same key).
    async fn webhook_keys(&self, tenant: &str, candidate: &WebhookKey) -> Result<WebhookKeys, StoreError>;

    /// Makes `fresh` the tenant's key, atomically; the key it replaces keeps signing until
    /// `previous_until_ms` (an older previous key is dropped).
    async fn rotate_webhook_key(
        &self,
        tenant: &str,
        fresh: &WebhookKey,
        previous_until_ms: i64,
    ) -> Result<WebhookKeys, StoreError>;

    /// Stores a new API key, unless its tenant already has one of that name.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<ApiKeyCreated, StoreError>;

    /// A tenant's API keys, by name.
    async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Deletes one of a tenant's API keys: the deleted record, `None` if it has no such key.
    async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// The API key whose SHA-256 (hex) is `hash`: the authentication lookup.
    async fn api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    // Console sessions (`/console/`): a ticket's one use and the sessions it opens, shared by
    // every replica, so a sign-out or a used ticket holds everywhere at once.

    /// Redeems a `console-link` ticket: records `jti` (kept until `jti_expires_ms`) and stores
    /// `session` under `key`. False when the `jti` was already used: nothing is stored.
    async fn open_console_session(
        &self,
        jti: &str,
        jti_expires_ms: i64,
        key: &str,
        session: &ConsoleSession,
    ) -> Result<bool, StoreError>;

    /// The session stored under `key`, unless it was ended or expired before `now_ms`.
    async fn console_session(&self, key: &str, now_ms: i64) -> Result<Option<ConsoleSession>, StoreError>;

    /// Ends a session (sign-out); ending an unknown one changes nothing.
    async fn end_console_session(&self, key: &str) -> Result<(), StoreError>;

    // Redis failover: a reservation whose record was lost comes back from its callback token.

    /// Writes the reservation of `rebuild` (see `Rebuild::record`) with its hold, counters,
    /// aggregates, task list and `reserve` entry, and binds its task, once, atomically:
    /// unless a record with its id exists, the tenant is unknown, another reservation owns
    /// the task, or the rebuild is refused (then `Rebuild::tombstone` and one `anomaly`).
    /// No budget, cap or rate check: the task ran; the upstream will be paid for it.
    async fn rebuild(&self, rebuild: &Rebuild) -> Result<RebuildOutcome, StoreError>;

    // The archive of finished videos (see `archive/`): its copy queue is `Queue::Archive`.

    /// Puts a reservation in the archive-copy queue, due at `due_ms`, unless it is queued
    /// already (its due time then stays).
    async fn enqueue_archive(&self, reservation_id: &str, due_ms: i64) -> Result<(), StoreError>;

    /// Records that the reservation's video is archived; a record gone meanwhile is left alone.
    async fn mark_archived(&self, reservation_id: &str) -> Result<(), StoreError>;
}

/// The CA certificates of `store.redis_ca_file`, if set (checked by `Config::validate`).
fn redis_ca(config: &StoreConfig) -> Result<Option<Vec<u8>>, StoreError> {
    let path = &config.redis_ca_file;
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    std::fs::read(path)
        .map(Some)
        .map_err(|e| StoreError::Unavailable(format!("store.redis_ca_file {}: {e}", path.display())))
}

/// Opens the configured backend.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    open_observed(config, Arc::new(|_| {})).await
}

/// Opens the configured backend; `on_shortfall` hears of each money step too few replicas
/// acknowledged (Redis with `min_replicas_acked` ≥ 1).
pub async fn open_observed(
    config: &StoreConfig,
    on_shortfall: redis::ShortfallHook,
) -> Result<Arc<dyn Store>, StoreError> {
    let retention = config.retention_secs.as_duration();
    Ok(match config.backend {
        StoreBackend::Embedded => {
            Arc::new(embedded::EmbeddedStore::open(&config.path, &config.key_prefix)?.with_retention(retention))
        }
        StoreBackend::Redis => Arc::new(
            redis::RedisStore::connect_with_ca(&config.redis_url, &config.key_prefix, redis_ca(config)?)
                .await?
                .with_retention(retention)
                .with_replica_acks(
                    config.min_replicas_acked,
                    std::time::Duration::from_millis(config.replica_ack_timeout_ms),
                    on_shortfall,
                ),
        ),
    })
}
