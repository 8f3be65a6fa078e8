//! Redis store: shared by all replicas; one Lua script per money step.
//!
//! Keys (all under the configured prefix `P`):
//! - `P tenant:{id}`: `TenantRecord` as JSON; `P tenants`: set of every tenant id;
//! - `P res:{reservation_id}`: hash of `ReservationRecord` fields, each value JSON-encoded,
//!   so scripts read and write single fields without re-encoding the record;
//! - `P task:{task_id}`: reservation id;
//! - `P spent:{tenant}:{period}`, `P reserved:{tenant}:{period}`,
//!   `P uspent:{tenant}:{period}:{user}`, `P ureserved:{tenant}:{period}:{user}`: micro-units;
//! - `P inflight:{tenant}`: reservations not yet final;
//! - `P ledger:{tenant}`: stream, one entry per ledger line, field `e` = `LedgerEntry` JSON,
//!   id `{ms}-{seq}` = the entry time (kept increasing per tenant) and Redis's sequence; never
//!   trimmed (the ledger is the record of account);
//! - `P agg:{bucket}:{tenant}` (fields `metric|quality|audio`) and `P aggu:{bucket}:{tenant}`
//!   (fields `metric|quality|audio|user`): usage aggregates, bucket = the reservation's day
//!   or month (a week is read as its days, the total as its months: see `usage`);
//!   `P days:{tenant}`: set of days with usage;
//! - `P alert:{tenant}:{period}:{threshold_ppm}`: a budget alert claimed (`SET NX`);
//! - `P pending`: sorted set of the reservations not yet final, scored by when the
//!   reconciler looks next (ms); `P outbox`: sorted set of the callback events to relay,
//!   scored by the next attempt (ms); `P evt:{event_id}`: hash of `OutboxEvent` fields, each
//!   value JSON-encoded; `P lease:{tasks|outbox}:{id}`: the replica working on an entry
//!   (`SET NX PX`);
//! - `P secret:{name}`: a secret shared by every replica (`SET NX`, the first one wins);
//! - `P unsent:{reservation_id}`: a reserve that timed out and was released before anything was
//!   sent upstream: if the stalled script still runs, it holds nothing (expires after an hour).
//! - `P tasklist:{tenant}`: sorted set of the tenant's reservations for the task list, all
//!   scores 0, members `{created ms, 15 digits}:{reservation id}` read by text range;
//! - `P whkey:{tenant}`: the tenant's `WebhookKeys` as JSON; `P apikey:{sha256}`: an
//!   `ApiKeyRecord` as JSON; `P apikeys:{tenant}`: hash of the tenant's key names → key hash;
//! - `P console_ticket:{jti}`: a used `console-link` ticket, its expiry (ms) as value (`SET NX PX`);
//!   `P console_session:{sha256 of the session id}`: JSON `ConsoleSession` (`PX` until its
//!   expiry; the lifetimes come from the gateway's clock, as relative durations).
//!
//! The money scripts derive counter keys from stored data, so this layout is for a single
//! Redis (or a primary with replicas), not Redis Cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{
    Cmd, FromRedisValue, RedisError, RedisWrite, Script, ScriptInvocation, ToRedisArgs, Value, cmd, from_redis_value,
};
use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;

pub use self::acks::ShortfallHook;
use self::acks::{Acked, ReplicaAcks};
use self::export_import::{EXPORT_CHUNK, Sink, glob_escape};
use self::link::Links;
pub use self::link::{Target, check_ca_pem};
use super::tenants::{self, TenantWrite};
use super::*;

mod acks;
mod export_import;
mod link;
mod retention;

/// How long `connect` waits for a first answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per connection attempt, so a call fails instead of hanging while Redis is unreachable.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Per command; the scripts are short, a slow answer means Redis is in trouble.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Retention until `with_retention` says otherwise (the config default).
const DEFAULT_RETENTION_MS: i64 = 35 * 86_400_000;
/// The oldest Redis the scripts run on (major, minor).
const MIN_VERSION: (u32, u32) = (7, 0);
/// How long a reserve whose caller gave up stays unable to hold (`release_unsent`): longer
/// than any stall a queued command survives in practice; after that the reconciler's unbound
/// grace still releases it.
const UNSENT_MARK_MS: u64 = 3_600_000;

pub struct RedisStore {
    /// The primary and the connections to it (found again after a failover).
    links: Links,
    target: Target,
    /// Replicated acknowledgement of the money steps (`store.min_replicas_acked`).
    acks: ReplicaAcks,
    prefix: String,
    scripts: Scripts,
    /// How long a final record is kept (see `ReservationRecord::kept_until_ms`).
    retention_ms: i64,
    /// Whether keys written before retention existed were given their expiry (once per process).
    retention_migrated: std::sync::atomic::AtomicBool,
}

struct Scripts {
    put_tenant: Script,
    reserve: Script,
    read_task: Script,
    check_rate: Script,
    bind: Script,
    finish: Script,
    late_settle: Script,
    claim: Script,
    release: Script,
    mark_due: Script,
    save_event: Script,
    recover: Script,
    mark_unsent: Script,
    note_task: Script,
    rebuild: Script,
}

impl Scripts {
    fn load() -> Self {
        Self {
            put_tenant: Script::new(concat!(
                include_str!("lua/keys.lua"),
                include_str!("lua/put_tenant.lua")
            )),
            reserve: Script::new(concat!(
                include_str!("lua/keys.lua"),
                include_str!("lua/gcra.lua"),
                include_str!("lua/reserve.lua")
            )),
            read_task: Script::new(concat!(include_str!("lua/gcra.lua"), include_str!("lua/read_task.lua"))),
            check_rate: Script::new(concat!(
                include_str!("lua/gcra.lua"),
                include_str!("lua/check_rate.lua")
            )),
            bind: Script::new(include_str!("lua/bind.lua")),
            finish: Script::new(concat!(
                include_str!("lua/keys.lua"),
                include_str!("lua/completion.lua"),
                include_str!("lua/finish.lua")
            )),
            late_settle: Script::new(concat!(
                include_str!("lua/keys.lua"),
                include_str!("lua/completion.lua"),
                include_str!("lua/late_settle.lua")
            )),
            claim: Script::new(include_str!("lua/claim.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            mark_due: Script::new(concat!(include_str!("lua/due.lua"), include_str!("lua/mark_due.lua"))),
            recover: Script::new(concat!(
                include_str!("lua/keys.lua"),
                include_str!("lua/completion.lua"),
                include_str!("lua/due.lua"),
                include_str!("lua/recover.lua")
            )),
            rebuild: Script::new(concat!(include_str!("lua/keys.lua"), include_str!("lua/rebuild.lua"))),
            // A reservation gone meanwhile (retention) is not brought back as a stub.
            note_task: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'last_task', ARGV[1]) end return 1",
            ),
            // A reserve whose caller gave up: marked so that it cannot hold if it still runs.
            mark_unsent: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end \
                 redis.call('SET', KEYS[2], '1', 'PX', ARGV[1]) return 0",
            ),
            // An event that left the outbox (delivered, given up) is not brought back.
            save_event: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], unpack(ARGV)) end return 1",
            ),
        }
    }
}

impl RedisStore {
    /// Connects and checks Redis answers, within `CONNECT_TIMEOUT`. Later the connection
    /// manager reconnects by itself, and a failover is followed (see `link`); calls fail with
    /// `Unavailable` while no primary answers.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with_ca(url, prefix, None).await
    }

    /// `connect`, trusting only the PEM CA certificates `ca` (instead of the platform's
    /// roots) for a `rediss://` URL.
    pub async fn connect_with_ca(url: &str, prefix: &str, ca: Option<Vec<u8>>) -> Result<Self, StoreError> {
        let target = Target::parse(url).map_err(|e| StoreError::Unavailable(format!("invalid redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(ATTEMPT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // Few, short retries: a caller waits for them when Redis is down.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            let links = Links::open(target.clone(), ca, config, ATTEMPT_TIMEOUT)
                .await
                .map_err(unavailable)?;
            let store = Self {
                links,
                target,
                acks: ReplicaAcks::default(),
                prefix: prefix.to_string(),
                scripts: Scripts::load(),
                retention_ms: DEFAULT_RETENTION_MS,
                retention_migrated: std::sync::atomic::AtomicBool::new(false),
            };
            store.ping().await?;
            store.check_version().await?;
            Ok(store)
        })
        .await
        .map_err(|_| StoreError::Unavailable(format!("redis did not answer within {}s", CONNECT_TIMEOUT.as_secs())))?
    }

    /// Money steps wait until `min` replicas have them (at most `timeout`); a shortfall is
    /// reported to `on_shortfall` with the step's name.
    pub fn with_replica_acks(mut self, min: u32, timeout: Duration, on_shortfall: ShortfallHook) -> Self {
        self.acks = ReplicaAcks {
            min,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1),
            on_shortfall: Some(on_shortfall),
        };
        self
    }

    /// Refuses a server older than `MIN_VERSION`: the scripts need Redis 7.0 (XADD with
    /// `<ms>-*` ids), and a script that fails there would have written half its step.
    async fn check_version(&self) -> Result<(), StoreError> {
        let info: String = self.query(cmd("INFO").arg("server")).await?;
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .map(str::trim)
            .unwrap_or("unknown");
        if version_at_least(version, MIN_VERSION) {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "Redis {version} is too old: vidgate needs Redis >= {}.{}",
                MIN_VERSION.0, MIN_VERSION.1
            )))
        }
    }

    /// A spent and a reserved counter (names after the prefix) with the tenant's in-flight count.
    async fn usage_counters(&self, tenant: &str, spent: &str, reserved: &str) -> Result<PeriodUsage, StoreError> {
        let prefix = &self.prefix;
        let mut mget = cmd("MGET");
        mget.arg(format!("{prefix}{spent}"))
            .arg(format!("{prefix}{reserved}"))
            .arg(format!("{prefix}inflight:{tenant}"));
        let (spent, reserved, in_flight): (Option<i64>, Option<i64>, Option<u32>) = self.query(&mget).await?;
        Ok(PeriodUsage {
            spent: spent.unwrap_or(0),
            reserved: reserved.unwrap_or(0),
            in_flight: in_flight.unwrap_or(0),
        })
    }

    /// Keeps final records `retention` after they ended (default: 35 days).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// A connection to the current primary, for pipelines (a failed one makes the next
    /// single command look for the primary again).
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        self.links
            .connection(false)
            .await
            .map(|(_, conn)| conn)
            .map_err(no_primary)
    }

    async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, StoreError> {
        let mut retried = false;
        loop {
            let (generation, mut conn) = self.links.connection(false).await.map_err(no_primary)?;
            match command.query_async(&mut conn).await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    if self.links.after_error(&error, generation).await && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(unavailable(error));
                }
            }
        }
    }

    async fn invoke<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        self.invoke_on(invocation, false).await.map(|(value, _)| value)
    }

    /// A script (reloaded by the redis crate on NOSCRIPT, as after a failover), and the
    /// connection it ran on. Repeated once on the new primary after `READONLY`: a replica
    /// wrote nothing.
    async fn invoke_on<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        waits: bool,
    ) -> Result<(T, ConnectionManager), StoreError> {
        let mut retried = false;
        loop {
            let (generation, mut conn) = self.links.connection(waits).await.map_err(no_primary)?;
            match invocation.invoke_async(&mut conn).await {
                Ok(value) => return Ok((value, conn)),
                Err(error) => {
                    if self.links.after_error(&error, generation).await && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(unavailable(error));
                }
            }
        }
    }

    /// A money step: the script, then (with `min_replicas_acked` ≥ 1) `WAIT` on the same
    /// connection. Whether enough replicas have it is returned; a shortfall is reported.
    async fn invoke_money<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<(T, Acked), StoreError> {
        let (value, mut conn) = self.invoke_on(invocation, self.acks.min > 0).await?;
        Ok((value, self.acks.wait(operation, &mut conn).await))
    }

    /// Settle or refund: one `finish.lua` call.
    async fn finish(&self, reservation_id: &str, finish: &Finish) -> Result<FinalizeOutcome, StoreError> {
        self.finish_acked(reservation_id, finish, true).await
    }

    /// `finish`; `acked`: wait for the replicas when the step moved money (a step that
    /// found the record final wrote nothing to wait for).
    async fn finish_acked(
        &self,
        reservation_id: &str,
        finish: &Finish,
        acked: bool,
    ) -> Result<FinalizeOutcome, StoreError> {
        let mut invocation = self.scripts.finish.key(self.key("res", reservation_id));
        invocation
            .arg(&self.prefix)
            .arg(finish.charged)
            .arg(finish.kind.as_str())
            .arg(finish.billed_output_ms.unwrap_or(0))
            .arg(finish.finished_ms)
            .arg(finish.anomaly.unwrap_or(""))
            .arg(self.retention_ms)
            .arg(json_fields(finish)?);
        let (reply, mut conn) = self.invoke_on(&invocation, self.acks.min > 0).await?;
        let outcome = finalized("finish", reply)?;
        if acked && matches!(outcome, FinalizeOutcome::Applied(_)) {
            self.acks.wait(finish.kind.as_str(), &mut conn).await;
        }
        Ok(outcome)
    }

    /// `release_unsent`; `acked` as for `finish_acked`.
    async fn release_unsent_acked(
        &self,
        reservation_id: &str,
        now_ms: i64,
        acked: bool,
    ) -> Result<FinalizeOutcome, StoreError> {
        let mut invocation = self.scripts.mark_unsent.key(self.key("res", reservation_id));
        invocation.key(self.key("unsent", reservation_id)).arg(UNSENT_MARK_MS);
        match self.invoke::<i64>(&invocation).await? {
            0 => Ok(FinalizeOutcome::NotFound),
            _ => match self.reservation(reservation_id).await? {
                Some(record) if record.task_id.is_some() => Ok(FinalizeOutcome::AlreadyFinal(record)),
                _ => self.finish_acked(reservation_id, &Finish::refund(now_ms), acked).await,
            },
        }
    }

    /// What the reserve script needs to expire user counters: the retention and the end of
    /// each period the tenant may be booked to.
    fn retention_json(&self, periods: &PeriodKeys) -> String {
        let end = |key: &str| Period::end_of(key);
        serde_json::json!({
            "retention_ms": self.retention_ms,
            "ends": {"month": end(&periods.month), "week": end(&periods.week), "day": end(&periods.day)},
        })
        .to_string()
    }

    /// The sorted set of a queue.
    fn queue_key(&self, queue: Queue) -> String {
        match queue {
            Queue::Tasks => format!("{}pending", self.prefix),
            Queue::Outbox => format!("{}outbox", self.prefix),
            Queue::Archive => format!("{}archive", self.prefix),
        }
    }

    fn lease_key(&self, queue: Queue, id: &str) -> String {
        format!("{}lease:{}:{id}", self.prefix, queue.as_str())
    }
}

/// Whether `version` ("7.2.4") is at least `min`; an unreadable version is not.
fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// The reply of a final step's script.
fn finalized(script: &str, reply: Vec<Value>) -> Result<FinalizeOutcome, StoreError> {
    match status(reply)? {
        (status, None) if status == "not_found" => Ok(FinalizeOutcome::NotFound),
        (status, Some(fields)) if status == "already_final" => Ok(FinalizeOutcome::AlreadyFinal(record(fields)?)),
        (status, Some(fields)) if status == "applied" => Ok(FinalizeOutcome::Applied(record(fields)?)),
        (status, _) => Err(unexpected(script, &status)),
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(&cmd("PING")).await.map(drop)
    }

    async fn apply_config_tenant(
        &self,
        id: &str,
        settings: &TenantSettings,
        config_hash: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let write = TenantWrite::Config {
            settings,
            config_hash,
            now_ms,
        };
        Ok(self.write_tenant(id, &write).await?.1.is_some())
    }

    async fn update_tenant(&self, id: &str, change: &TenantChange) -> Result<TenantUpdate, StoreError> {
        match self.write_tenant(id, &TenantWrite::Admin(change)).await? {
            (stored, Some(record)) => Ok(TenantUpdate {
                record,
                created: stored.is_none(),
                changed: true,
            }),
            (Some(stored), None) => Ok(TenantUpdate {
                record: stored,
                created: false,
                changed: false,
            }),
            (None, None) => Err(StoreError::Corrupt(format!(
                "tenant {id}: nothing stored and nothing to write"
            ))),
        }
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let mut ids: Vec<String> = self
            .query(cmd("SMEMBERS").arg(format!("{}tenants", self.prefix)))
            .await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key("tenant", id)).collect();
        let records: Vec<Option<String>> = self.query(cmd("MGET").arg(keys)).await?;
        records
            .into_iter()
            .flatten()
            .map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("tenant record: {e}"))))
            .collect()
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        let json: Option<String> = self.query(cmd("GET").arg(self.key("tenant", id))).await?;
        json.map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("tenant {id}: {e}"))))
            .transpose()
    }

    async fn reserve(&self, request: &ReserveRequest) -> Result<ReserveReceipt, StoreError> {
        // The script books the record to the tenant's period, which only it can read; the
        // ledger entry does not name the period.
        let hold = ReservationRecord::hold(request, "");
        let entry = serde_json::to_string(&reserve_entry(&hold)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let fields = json_fields(&hold)?;
        let periods = &request.periods;
        let claim = request.idempotency.as_ref();
        let idempotency_key = self.key("idem", &idempotency_key(&request.tenant, claim.map_or("", |c| &c.key)));
        let mut invocation = self.scripts.reserve.key(self.key("tenant", &request.tenant));
        invocation
            .key(self.key("res", &request.reservation_id))
            .key(idempotency_key)
            .key(self.key("unsent", &request.reservation_id))
            .arg(&self.prefix)
            .arg(&request.tenant)
            .arg(&request.user)
            .arg(&request.quality)
            .arg(request.amount)
            .arg(&periods.month)
            .arg(&periods.week)
            .arg(&periods.day)
            .arg(if request.audio { "1" } else { "0" })
            .arg(request.now_ms)
            .arg(entry)
            .arg(claim.map_or("", |c| c.body_hash.as_str()))
            .arg(claim.map_or(0, |c| c.ttl_ms))
            .arg(rate_checks_json(&request.rate)?)
            .arg(fields)
            .arg(self.retention_json(periods));
        let (reply, acked) = self.invoke_money::<Vec<Value>>("reserve", &invocation).await?;
        let mut reply = reply.into_iter();
        let status: String = parse(reply.next())?;
        let (refusal, rate) = match status.as_str() {
            "held" if acked == Acked::Short => {
                // Too few replicas have the hold: undone before anything goes upstream (not
                // waited for: the replicas are what is missing).
                if let Err(error) = self
                    .release_unsent_acked(&request.reservation_id, request.now_ms, false)
                    .await
                {
                    tracing::warn!(reservation_id = %request.reservation_id, "undoing an unreplicated hold failed: {error}");
                }
                return Err(StoreError::Unavailable(format!(
                    "fewer than {} replicas acknowledged the hold within {} ms",
                    self.acks.min, self.acks.timeout_ms
                )));
            }
            "held" => {
                let period: String = parse(reply.next())?;
                let rate = rate_decision(parse(reply.next())?)?;
                let budget_use = budget_use(parse(reply.next())?)?;
                return Ok(ReserveReceipt {
                    outcome: ReserveOutcome::Reserved(ReservationRecord {
                        period_end_ms: Period::end_of(&period),
                        period,
                        ..hold
                    }),
                    rate,
                    budget_use: Some(budget_use),
                });
            }
            "reserved" => {
                return Ok(ReserveReceipt {
                    outcome: ReserveOutcome::Reserved(record(parse(reply.next())?)?),
                    rate: None,
                    budget_use: None,
                });
            }
            "replay" => {
                let record = record(parse(reply.next())?)?;
                return Ok(ReserveReceipt {
                    outcome: ReserveOutcome::Replay(record),
                    rate: None,
                    budget_use: None,
                });
            }
            "rate_limited" => {
                let rate = rate_decision(parse(reply.next())?)?;
                let decision = rate.ok_or_else(|| unexpected("reserve", "rate_limited without a decision"))?;
                (ReserveRefusal::RateLimited(decision), rate)
            }
            "unknown_tenant" => (ReserveRefusal::UnknownTenant, None),
            "idempotency_key_reused" => (ReserveRefusal::IdempotencyKeyReused, None),
            "request_in_progress" => (
                ReserveRefusal::RequestInProgress {
                    outcome_unknown: parse::<i64>(reply.next())? == 1,
                },
                None,
            ),
            "released" => {
                return Err(StoreError::Unavailable(format!(
                    "reservation {} was released after its reserve timed out",
                    request.reservation_id
                )));
            }
            "quality_not_allowed" => (ReserveRefusal::QualityNotAllowed, None),
            "concurrency_limited" => (
                ReserveRefusal::ConcurrencyLimited {
                    max: parse(reply.next())?,
                },
                None,
            ),
            "budget_exceeded" => (
                ReserveRefusal::BudgetExceeded {
                    remaining: parse(reply.next())?,
                    user_scope: parse(reply.next())?,
                },
                None,
            ),
            other => return Err(unexpected("reserve", other)),
        };
        Ok(ReserveReceipt {
            outcome: ReserveOutcome::Refused(refusal),
            rate,
            budget_use: None,
        })
    }

    async fn read_task(&self, task_id: &str, rate: &[RateCheck]) -> Result<TaskRead, StoreError> {
        let mut invocation = self.scripts.read_task.key(self.key("task", task_id));
        invocation.arg(&self.prefix).arg(rate_checks_json(rate)?);
        let mut reply = self.invoke::<Vec<Value>>(&invocation).await?.into_iter();
        let status: String = parse(reply.next())?;
        let rate = rate_decision(parse(reply.next())?)?;
        let record = match status.as_str() {
            "found" => {
                let json: String = parse(reply.next())?;
                Some(
                    serde_json::from_str(&json)
                        .map_err(|e| StoreError::Corrupt(format!("reservation of {task_id}: {e}")))?,
                )
            }
            "not_found" | "rate_limited" => None,
            other => return Err(unexpected("read_task", other)),
        };
        Ok(TaskRead { rate, record })
    }

    async fn check_rate(&self, rate: &[RateCheck]) -> Result<Option<RateDecision>, StoreError> {
        let mut invocation = self.scripts.check_rate.prepare_invoke();
        invocation.arg(&self.prefix).arg(rate_checks_json(rate)?);
        rate_decision(self.invoke(&invocation).await?)
    }

    async fn bind(&self, reservation_id: &str, task_id: &str, created_task: &str) -> Result<BindOutcome, StoreError> {
        let task_json = serde_json::Value::from(task_id).to_string();
        let created_json = serde_json::Value::from(created_task).to_string();
        let mut invocation = self.scripts.bind.key(self.key("res", reservation_id));
        invocation
            .key(self.key("task", task_id))
            .arg(task_json)
            .arg(reservation_id)
            .arg(created_json);
        match status(self.invoke_money("bind", &invocation).await?.0)? {
            (status, None) if status == "not_found" => Ok(BindOutcome::NotFound),
            (status, None) if status == "bound" => Ok(BindOutcome::Bound),
            (status, Some(fields)) if status == "current" => record(fields).map(|r| BindOutcome::Current(Box::new(r))),
            (status, _) => Err(unexpected("bind", &status)),
        }
    }

    async fn reservation(&self, reservation_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        let fields: Fields = self.query(cmd("HGETALL").arg(self.key("res", reservation_id))).await?;
        if fields.is_empty() {
            Ok(None)
        } else {
            record(fields).map(Some)
        }
    }

    async fn task(&self, task_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        // The index never changes once written (the first bind wins), so two reads are safe.
        let reservation_id: Option<String> = self.query(cmd("GET").arg(self.key("task", task_id))).await?;
        match reservation_id {
            Some(reservation_id) => self.reservation(&reservation_id).await,
            None => Ok(None),
        }
    }

    async fn settle(&self, reservation_id: &str, settlement: &Settlement) -> Result<FinalizeOutcome, StoreError> {
        self.finish(reservation_id, &Finish::settle(settlement)).await
    }

    async fn refund(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        self.finish(reservation_id, &Finish::refund(now_ms)).await
    }

    async fn expire(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        self.finish(reservation_id, &Finish::expire(now_ms)).await
    }

    async fn late_settle(&self, reservation_id: &str, settlement: &Settlement) -> Result<FinalizeOutcome, StoreError> {
        // The script picks the note by the state it finds.
        let finish = Finish::late_settle(settlement, ReservationState::Expired);
        let after_refusal = Finish::late_settle(settlement, ReservationState::Refunded);
        let mut invocation = self.scripts.late_settle.key(self.key("res", reservation_id));
        invocation
            .arg(&self.prefix)
            .arg(finish.charged)
            .arg(finish.billed_output_ms.unwrap_or(0))
            .arg(finish.finished_ms)
            .arg(finish.anomaly.unwrap_or(""))
            .arg(RESULT_TTL_MS)
            .arg(after_refusal.anomaly.unwrap_or(""))
            .arg(self.retention_ms)
            .arg(json_fields(&finish)?);
        finalized("late_settle", self.invoke_money("late_settle", &invocation).await?.0)
    }

    async fn note_task(&self, reservation_id: &str, task: &str) -> Result<(), StoreError> {
        let mut invocation = self.scripts.note_task.key(self.key("res", reservation_id));
        invocation.arg(serde_json::Value::from(task).to_string());
        self.invoke::<i64>(&invocation).await.map(drop)
    }

    async fn purge(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.purge_now(now_ms).await
    }

    async fn recover(&self, recovery: &Recovery) -> Result<RecoverOutcome, StoreError> {
        let json = |text: &str| serde_json::Value::from(text).to_string();
        let mut invocation = self.scripts.recover.key(self.key("res", &recovery.reservation_id));
        invocation
            .key(self.key("task", &recovery.task_id))
            .key(self.queue_key(Queue::Tasks))
            .arg(&self.prefix)
            .arg(&recovery.reservation_id)
            .arg(json(&recovery.task_id))
            .arg(&recovery.task_id)
            .arg(json(&recovery.created_task))
            .arg(recovery.now_ms)
            .arg(recovery.refusal.as_deref().unwrap_or(""));
        let mut reply = self
            .invoke_money::<Vec<Value>>("recover", &invocation)
            .await?
            .0
            .into_iter();
        let status: String = parse(reply.next())?;
        match status.as_str() {
            "not_found" => Ok(RecoverOutcome::NotFound),
            "already_bound" => Ok(RecoverOutcome::AlreadyBound(record(parse(reply.next())?)?)),
            "bound" => Ok(RecoverOutcome::Bound(record(parse(reply.next())?)?)),
            "refused" => Ok(RecoverOutcome::Refused(parse(reply.next())?)),
            other => Err(unexpected("recover", other)),
        }
    }

    async fn release_unsent(&self, reservation_id: &str, now_ms: i64) -> Result<FinalizeOutcome, StoreError> {
        self.release_unsent_acked(reservation_id, now_ms, true).await
    }

    async fn due(&self, queue: Queue, now_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut range = cmd("ZRANGEBYSCORE");
        range
            .arg(self.queue_key(queue))
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        self.query(&range).await
    }

    async fn claim(
        &self,
        queue: Queue,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: u64,
    ) -> Result<Option<i64>, StoreError> {
        let mut invocation = self.scripts.claim.key(self.queue_key(queue));
        invocation
            .key(self.lease_key(queue, id))
            .arg(id)
            .arg(now_ms)
            .arg(owner)
            .arg(lease_ms.max(1));
        let due: Option<String> = self.invoke(&invocation).await?;
        due.map(|due| {
            due.parse::<f64>()
                .map(|due| due as i64)
                .map_err(|e| StoreError::Corrupt(format!("queue score {due:?}: {e}")))
        })
        .transpose()
    }

    async fn release(
        &self,
        queue: Queue,
        id: &str,
        owner: &str,
        claimed_due_ms: i64,
        next_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut invocation = self.scripts.release.key(self.queue_key(queue));
        invocation.key(self.lease_key(queue, id));
        if queue == Queue::Outbox {
            invocation.key(self.key("evt", id));
        }
        invocation
            .arg(id)
            .arg(owner)
            .arg(claimed_due_ms)
            .arg(next_ms.map(|ms| ms.to_string()).unwrap_or_default());
        self.invoke::<i64>(&invocation).await.map(drop)
    }

    async fn mark_due(&self, reservation_id: &str, now_ms: i64) -> Result<Option<ReservationState>, StoreError> {
        let mut invocation = self.scripts.mark_due.key(self.key("res", reservation_id));
        invocation
            .key(self.queue_key(Queue::Tasks))
            .arg(reservation_id)
            .arg(now_ms);
        let state: Option<String> = self.invoke(&invocation).await?;
        state
            .map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("state {json}: {e}"))))
            .transpose()
    }

    async fn outbox_event(&self, id: &str) -> Result<Option<OutboxEvent>, StoreError> {
        let fields: Fields = self.query(cmd("HGETALL").arg(self.key("evt", id))).await?;
        if fields.is_empty() {
            Ok(None)
        } else {
            from_fields(fields).map(Some)
        }
    }

    async fn save_outbox_event(&self, event: &OutboxEvent) -> Result<(), StoreError> {
        let mut invocation = self.scripts.save_event.key(self.key("evt", &event.id));
        invocation.arg(json_fields(event)?);
        self.invoke::<i64>(&invocation).await.map(drop)
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = self.key("secret", name);
        self.query::<Option<String>>(cmd("SET").arg(&key).arg(candidate).arg("NX"))
            .await?;
        let stored: Option<Vec<u8>> = self.query(cmd("GET").arg(&key)).await?;
        stored.ok_or_else(|| StoreError::Corrupt(format!("secret {name} vanished after it was set")))
    }

    async fn period_usage(&self, tenant: &str, period: &str) -> Result<PeriodUsage, StoreError> {
        // Same names as `counter_keys` in lua/keys.lua.
        self.usage_counters(
            tenant,
            &format!("spent:{tenant}:{period}"),
            &format!("reserved:{tenant}:{period}"),
        )
        .await
    }

    async fn usage(&self, tenant: &str, bucket: &str, by_user: bool) -> Result<UsageBucket, StoreError> {
        // The money steps keep days and months only (8 increments a step instead of 16).
        let stored: Vec<String> = match bucket.parse::<Period>() {
            Ok(week @ Period::Week(_)) => week.days().unwrap_or_default(),
            Ok(Period::Total) => {
                let months: BTreeSet<String> = self
                    .usage_days(tenant)
                    .await?
                    .iter()
                    .filter_map(|day| day.get(..7).map(str::to_owned))
                    .collect();
                months.into_iter().collect()
            }
            _ => vec![bucket.to_string()],
        };
        let mut pipe = ::redis::pipe();
        for bucket in &stored {
            pipe.cmd("HGETALL").arg(format!("{}agg:{bucket}:{tenant}", self.prefix));
            if by_user {
                pipe.cmd("HGETALL")
                    .arg(format!("{}aggu:{bucket}:{tenant}", self.prefix));
            }
        }
        let replies: Vec<Fields64> = pipe
            .query_async(&mut self.connection().await?)
            .await
            .map_err(unavailable)?;
        let (mut by_kind, mut by_users) = (Vec::new(), Vec::new());
        for (i, fields) in replies.into_iter().enumerate() {
            if by_user && i % 2 == 1 {
                by_users.extend(fields);
            } else {
                by_kind.extend(fields);
            }
        }
        Ok(UsageBucket::from_fields(by_kind, by_users))
    }

    async fn usage_days(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let mut days: Vec<String> = self.query(cmd("SMEMBERS").arg(self.key("days", tenant))).await?;
        days.sort();
        Ok(days)
    }

    async fn ledger_range(
        &self,
        tenant: &str,
        start: LedgerPosition,
        end_ms: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        if start.ms >= end_ms || limit == 0 {
            return Ok(Vec::new());
        }
        let mut xrange = cmd("XRANGE");
        xrange
            .arg(self.key("ledger", tenant))
            .arg(format!("{}-{}", start.ms, start.seq))
            .arg(format!("({end_ms}-0"))
            .arg("COUNT")
            .arg(limit);
        let entries: Vec<(String, Vec<(String, String)>)> = self.query(&xrange).await?;
        entries
            .into_iter()
            .map(|(id, fields)| ledger_row(&id, fields))
            .collect()
    }

    async fn claim_alert(&self, tenant: &str, period: &str, threshold_ppm: u32) -> Result<bool, StoreError> {
        let key = format!("{}alert:{tenant}:{period}:{threshold_ppm}", self.prefix);
        let claimed: Option<String> = self.query(cmd("SET").arg(key).arg(1).arg("NX")).await?;
        Ok(claimed.is_some())
    }

    async fn task_index(
        &self,
        tenant: &str,
        range: &TaskIndexRange,
        limit: usize,
    ) -> Result<Vec<TaskIndexEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let max = match (&range.before, range.to_ms) {
            (Some(before), Some(to)) if before.created_ms >= to => format!("({}", task_index::padded_ms(to)),
            (Some(before), _) => format!("({}", before.member()),
            (None, Some(to)) => format!("({}", task_index::padded_ms(to)),
            (None, None) => "+".to_string(),
        };
        let min = range
            .from_ms
            .map_or_else(|| "-".to_string(), |from| format!("[{}", task_index::padded_ms(from)));
        let mut zrange = cmd("ZRANGE");
        zrange
            .arg(self.key("tasklist", tenant))
            .arg(max)
            .arg(min)
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let members: Vec<String> = self.query(&zrange).await?;
        members.iter().map(|m| TaskIndexEntry::from_member(m)).collect()
    }

    async fn reservations(&self, ids: &[String]) -> Result<Vec<ReservationRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.key("res", id));
        }
        let replies: Vec<Fields> = pipe
            .query_async(&mut self.connection().await?)
            .await
            .map_err(unavailable)?;
        replies
            .into_iter()
            .filter(|fields| !fields.is_empty())
            .map(record)
            .collect()
    }

    async fn user_period_usage(&self, tenant: &str, user: &str, period: &str) -> Result<PeriodUsage, StoreError> {
        // Same names as `counter_keys` in lua/keys.lua.
        let (spent, reserved) = (
            format!("uspent:{tenant}:{period}:{user}"),
            format!("ureserved:{tenant}:{period}:{user}"),
        );
        self.usage_counters(tenant, &spent, &reserved).await
    }

    async fn describe(&self) -> Result<String, StoreError> {
        let info: String = self.query(cmd("INFO").arg("server")).await?;
        let version = info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .map_or("(version unknown)", str::trim);
        Ok(match self.target.describe() {
            Some(sentinel) => format!("redis {version} ({sentinel})"),
            None => format!("redis {version}"),
        })
    }

    async fn export(&self, sink: tokio::sync::mpsc::Sender<DumpItem>) -> Result<(), StoreError> {
        let out = Sink(sink);
        for record in self.tenants().await? {
            out.send(DumpItem::Tenant(record)).await?;
        }
        for key in self.scan("res:*").await? {
            let fields: Fields = self.query(cmd("HGETALL").arg(&key)).await?;
            if !fields.is_empty() {
                out.send(DumpItem::Reservation(record(fields)?)).await?;
            }
        }
        self.export_counters(&out).await?;
        self.export_ledgers(&out).await?;
        self.export_usage(&out).await?;
        self.export_claims(&out).await?;
        self.export_queues(&out).await?;
        self.export_credentials(&out).await?;
        self.export_console(&out).await?;
        for key in self.scan("secret:*").await? {
            let value: Option<Vec<u8>> = self.query(cmd("GET").arg(&key)).await?;
            if let Some(value) = value {
                out.send(DumpItem::Secret {
                    name: self.unprefixed(&key, "secret:")?.to_string(),
                    value_base64: base64::engine::general_purpose::STANDARD.encode(value),
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn holds(&self) -> Result<Option<String>, StoreError> {
        let mut cursor = 0u64;
        loop {
            let mut scan = cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", glob_escape(&self.prefix)))
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.query(&scan).await?;
            if let Some(key) = keys.first() {
                return Ok(Some(format!(
                    "keys under the prefix {:?}, such as {key:?}",
                    self.prefix
                )));
            }
            if next == 0 {
                return Ok(None);
            }
            cursor = next;
        }
    }

    async fn import(&self, items: Vec<DumpItem>) -> Result<(), StoreError> {
        let mut pipe = ::redis::pipe();
        let now_ms = chrono::Utc::now().timestamp_millis();
        for item in &items {
            self.import_one(&mut pipe, item, now_ms)?;
        }
        pipe.query_async::<()>(&mut self.connection().await?)
            .await
            .map_err(unavailable)
    }

    async fn index_earlier_tasks(&self) -> Result<u64, StoreError> {
        let done = format!("{}tasklist-complete", self.prefix);
        if self.query::<bool>(cmd("EXISTS").arg(&done)).await? {
            return Ok(0);
        }
        // Replicas starting together may each do this: entering an entry twice changes nothing.
        let keys = self.scan("res:*").await?;
        for chunk in keys.chunks(EXPORT_CHUNK) {
            let mut read = ::redis::pipe();
            for key in chunk {
                read.cmd("HMGET").arg(key).arg("tenant").arg("created_ms");
            }
            let found: Vec<(Option<String>, Option<String>)> = read
                .query_async(&mut self.connection().await?)
                .await
                .map_err(unavailable)?;
            let mut write = ::redis::pipe();
            for (key, (tenant, created_ms)) in chunk.iter().zip(found) {
                let (Some(tenant), Some(created_ms)) = (tenant, created_ms) else {
                    continue;
                };
                let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("{key}: {e}"));
                let tenant: String = serde_json::from_str(&tenant).map_err(corrupt)?;
                let entry = TaskIndexEntry {
                    created_ms: serde_json::from_str(&created_ms).map_err(corrupt)?,
                    reservation_id: self.unprefixed(key, "res:")?.to_string(),
                };
                write
                    .cmd("ZADD")
                    .arg(self.key("tasklist", &tenant))
                    .arg(0)
                    .arg(entry.member())
                    .ignore();
            }
            write
                .query_async::<()>(&mut self.connection().await?)
                .await
                .map_err(unavailable)?;
        }
        // Marked only once there was something to index, so that an empty store stays empty
        // (`store import` needs one).
        if !keys.is_empty() {
            self.query::<()>(cmd("SET").arg(&done).arg(1)).await?;
        }
        Ok(keys.len() as u64)
    }

    async fn webhook_keys(&self, tenant: &str, candidate: &WebhookKey) -> Result<WebhookKeys, StoreError> {
        let fresh = WebhookKeys::rotated(None, candidate.clone(), 0);
        let json = serde_json::to_string(&fresh).map_err(|e| StoreError::Corrupt(format!("webhook key: {e}")))?;
        // One command: sets the candidate when there is no key yet, and answers the stored one.
        let stored: Option<String> = self
            .query(cmd("SET").arg(self.key("whkey", tenant)).arg(json).arg("NX").arg("GET"))
            .await?;
        match stored {
            None => Ok(fresh),
            Some(json) => {
                serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("webhook keys of {tenant}: {e}")))
            }
        }
    }

    async fn rotate_webhook_key(
        &self,
        tenant: &str,
        fresh: &WebhookKey,
        previous_until_ms: i64,
    ) -> Result<WebhookKeys, StoreError> {
        const ATTEMPTS: usize = 20;
        let key = self.key("whkey", tenant);
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("webhook keys of {tenant}: {e}"));
        let script = Script::new(include_str!("lua/compare_and_set.lua"));
        for _ in 0..ATTEMPTS {
            let raw: Option<String> = self.query(cmd("GET").arg(&key)).await?;
            let stored = raw.as_deref().map(serde_json::from_str).transpose().map_err(corrupt)?;
            let rotated = WebhookKeys::rotated(stored, fresh.clone(), previous_until_ms);
            let mut invocation = script.key(&key);
            invocation
                .arg(raw.unwrap_or_default())
                .arg(serde_json::to_string(&rotated).map_err(corrupt)?);
            if self.invoke::<i64>(&invocation).await? == 1 {
                return Ok(rotated);
            }
        }
        Err(StoreError::Unavailable(format!(
            "the webhook keys of {tenant} kept changing during {ATTEMPTS} attempts to rotate them"
        )))
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<ApiKeyCreated, StoreError> {
        let json = serde_json::to_string(key).map_err(|e| StoreError::Corrupt(format!("api key: {e}")))?;
        let script = Script::new(include_str!("lua/api_key_create.lua"));
        let mut invocation = script.key(self.key("apikeys", &key.tenant));
        invocation
            .key(self.key("apikey", &key.hash))
            .arg(&key.name)
            .arg(&key.hash)
            .arg(json);
        Ok(match self.invoke::<i64>(&invocation).await? {
            1 => ApiKeyCreated::Created,
            _ => ApiKeyCreated::NameTaken,
        })
    }

    async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let names: BTreeMap<String, String> = self.query(cmd("HGETALL").arg(self.key("apikeys", tenant))).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = cmd("MGET");
        names.values().for_each(|hash| {
            mget.arg(self.key("apikey", hash));
        });
        let records: Vec<Option<String>> = self.query(&mget).await?;
        records
            .into_iter()
            .flatten()
            .map(|json| {
                serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("api key of {tenant}: {e}")))
            })
            .collect()
    }

    async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let Some(found) = self.api_keys(tenant).await?.into_iter().find(|key| key.id == id) else {
            return Ok(None);
        };
        let script = Script::new(include_str!("lua/api_key_revoke.lua"));
        let mut invocation = script.key(self.key("apikeys", tenant));
        invocation
            .key(self.key("apikey", &found.hash))
            .arg(&found.name)
            .arg(&found.hash);
        Ok((self.invoke::<i64>(&invocation).await? == 1).then_some(found))
    }

    async fn api_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let json: Option<String> = self.query(cmd("GET").arg(self.key("apikey", hash))).await?;
        json.map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("api key: {e}"))))
            .transpose()
    }

    async fn open_console_session(
        &self,
        jti: &str,
        jti_expires_ms: i64,
        key: &str,
        session: &ConsoleSession,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let claimed: Option<String> = self
            .query(
                cmd("SET")
                    .arg(self.key("console_ticket", jti))
                    .arg(jti_expires_ms)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms(session.created_ms, jti_expires_ms)),
            )
            .await?;
        if claimed.is_none() {
            return Ok(false);
        }
        // The ticket is spent first: a failure here leaves it unusable, never usable twice.
        self.query::<()>(
            cmd("SET")
                .arg(self.key("console_session", key))
                .arg(json)
                .arg("PX")
                .arg(ttl_ms(session.created_ms, session.expires_ms)),
        )
        .await?;
        Ok(true)
    }

    async fn console_session(&self, key: &str, now_ms: i64) -> Result<Option<ConsoleSession>, StoreError> {
        let json: Option<String> = self.query(cmd("GET").arg(self.key("console_session", key))).await?;
        let Some(json) = json else { return Ok(None) };
        let session: ConsoleSession =
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("console session: {e}")))?;
        Ok(session.is_live(now_ms).then_some(session))
    }

    async fn end_console_session(&self, key: &str) -> Result<(), StoreError> {
        self.query::<()>(cmd("DEL").arg(self.key("console_session", key))).await
    }

    async fn rebuild(&self, rebuild: &Rebuild) -> Result<RebuildOutcome, StoreError> {
        let hold = &rebuild.hold;
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        // The script books the record to the tenant's period (as `reserve`).
        let hold_record = rebuild.record("");
        let tombstone = rebuild.tombstone("");
        let anomaly = recovery_anomaly(&tombstone, &rebuild.task_id, "", rebuild.now_ms);
        let tombstone_fields = json_fields(&tombstone)?;
        let periods = &hold.periods;
        let mut invocation = self.scripts.rebuild.key(self.key("tenant", &hold.tenant));
        invocation
            .key(self.key("res", &hold.reservation_id))
            .key(self.key("task", &rebuild.task_id))
            .key(self.queue_key(Queue::Tasks))
            .arg(&self.prefix)
            .arg(&hold.tenant)
            .arg(&hold.user)
            .arg(&hold.quality)
            .arg(hold.amount)
            .arg(&periods.month)
            .arg(&periods.week)
            .arg(&periods.day)
            .arg(if hold.audio { "1" } else { "0" })
            .arg(hold.now_ms)
            .arg(serde_json::to_string(&reserve_entry(&hold_record)).map_err(corrupt)?)
            .arg(&hold.reservation_id)
            .arg(&rebuild.task_id)
            .arg(rebuild.now_ms)
            .arg(rebuild.refusal.as_deref().unwrap_or(""))
            .arg(serde_json::to_string(&anomaly).map_err(corrupt)?)
            .arg(self.retention_json(periods))
            .arg(2 * tombstone_fields.fields.len())
            .arg(tombstone_fields)
            .arg(json_fields(&hold_record)?);
        let (reply, _) = self.invoke_money::<Vec<Value>>("rebuild", &invocation).await?;
        let mut reply = reply.into_iter();
        let status: String = parse(reply.next())?;
        match status.as_str() {
            "exists" => Ok(RebuildOutcome::Exists(record(parse(reply.next())?)?)),
            "unknown_tenant" => Ok(RebuildOutcome::UnknownTenant),
            "refused" => Ok(RebuildOutcome::Refused(parse(reply.next())?)),
            "rebuilt" => Ok(RebuildOutcome::Rebuilt(record(parse(reply.next())?)?)),
            other => Err(unexpected("rebuild", other)),
        }
    }

    async fn enqueue_archive(&self, reservation_id: &str, due_ms: i64) -> Result<(), StoreError> {
        let mut add = cmd("ZADD");
        add.arg(self.queue_key(Queue::Archive))
            .arg("NX")
            .arg(due_ms)
            .arg(reservation_id);
        self.query::<i64>(&add).await.map(drop)
    }

    async fn mark_archived(&self, reservation_id: &str) -> Result<(), StoreError> {
        let invocation = MARK_ARCHIVED.key(self.key("res", reservation_id));
        self.invoke::<i64>(&invocation).await.map(drop)
    }
}

/// A reservation gone meanwhile (retention) is not brought back as a stub.
static MARK_ARCHIVED: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'archived', 'true') end return 1",
    )
});

impl RedisStore {
    /// Plans from the stored record and writes with `put_tenant.lua` if it is still the one
    /// read; retries on a concurrent change. Returns (stored before, written).
    async fn write_tenant(
        &self,
        id: &str,
        write: &TenantWrite<'_>,
    ) -> Result<(Option<TenantRecord>, Option<TenantRecord>), StoreError> {
        const ATTEMPTS: usize = 20;
        for _ in 0..ATTEMPTS {
            let raw: Option<String> = self.query(cmd("GET").arg(self.key("tenant", id))).await?;
            let stored: Option<TenantRecord> = raw
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("tenant {id}: {e}")))?;
            let Some((record, entry)) = tenants::plan(id, write, stored.as_ref()) else {
                return Ok((stored, None));
            };
            let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("tenant {id}: {e}"));
            let mut invocation = self.scripts.put_tenant.key(self.key("tenant", id));
            invocation
                .key(format!("{}tenants", self.prefix))
                .arg(&self.prefix)
                .arg(id)
                .arg(raw.unwrap_or_default())
                .arg(serde_json::to_string(&record).map_err(corrupt)?)
                .arg(entry.time_ms)
                .arg(serde_json::to_string(&entry).map_err(corrupt)?);
            if self.invoke::<i64>(&invocation).await? == 1 {
                return Ok((stored, Some(record)));
            }
        }
        Err(StoreError::Unavailable(format!(
            "tenant {id} kept changing during {ATTEMPTS} attempts to write it"
        )))
    }
}

/// A stream entry `{ms}-{seq}` with field `e` as a ledger row.
fn ledger_row(id: &str, fields: Vec<(String, String)>) -> Result<LedgerRow, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("ledger entry {id}: {what}"));
    let (ms, seq) = id.split_once('-').ok_or_else(|| corrupt("bad id"))?;
    let position = LedgerPosition {
        ms: ms.parse().map_err(|_| corrupt("bad id"))?,
        seq: seq.parse().map_err(|_| corrupt("bad id"))?,
    };
    let json = fields
        .into_iter()
        .find_map(|(name, value)| (name == "e").then_some(value))
        .ok_or_else(|| corrupt("no field e"))?;
    let entry = serde_json::from_str(&json).map_err(|e| corrupt(&e.to_string()))?;
    Ok(LedgerRow { position, entry })
}

fn no_primary(reason: String) -> StoreError {
    StoreError::Unavailable(format!("redis: {reason}"))
}

fn unavailable(error: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {error}"))
}

fn unexpected(script: &str, status: &str) -> StoreError {
    StoreError::Corrupt(format!("{script} script replied {status:?}"))
}

/// One element of a script reply.
fn parse<T: FromRedisValue>(value: Option<Value>) -> Result<T, StoreError> {
    let value = value.ok_or_else(|| StoreError::Corrupt("script reply too short".into()))?;
    from_redis_value(value).map_err(|e| StoreError::Corrupt(format!("script reply: {e}")))
}

/// The rate checks as `gcra.lua` reads them.
fn rate_checks_json(checks: &[RateCheck]) -> Result<String, StoreError> {
    let checks: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            serde_json::json!({"key": c.key, "interval": c.emission_interval_ms(), "burst": c.burst.max(1),
                               "per_minute": c.per_minute})
        })
        .collect();
    serde_json::to_string(&checks).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// `gcra.lua`'s decision array; empty when nothing was checked.
fn rate_decision(values: Vec<i64>) -> Result<Option<RateDecision>, StoreError> {
    match values.as_slice() {
        [] => Ok(None),
        [allowed, remaining, retry_after, reset, per_minute] => Ok(Some(RateDecision {
            allowed: *allowed == 1,
            remaining: u32::try_from(*remaining).unwrap_or(0),
            retry_after_ms: u64::try_from(*retry_after).unwrap_or(0),
            reset_ms: u64::try_from(*reset).unwrap_or(0),
            per_minute: u32::try_from(*per_minute).unwrap_or(0),
        })),
        other => Err(StoreError::Corrupt(format!("rate decision {other:?}"))),
    }
}

/// `reserve.lua`'s budget use: `{spent, reserved}`, then the budget when there is one.
fn budget_use(values: Vec<i64>) -> Result<BudgetUse, StoreError> {
    match values.as_slice() {
        [spent, reserved, budget @ ..] if budget.len() <= 1 => Ok(BudgetUse {
            budget: budget.first().copied(),
            spent: *spent,
            reserved: *reserved,
        }),
        other => Err(StoreError::Corrupt(format!("budget use {other:?}"))),
    }
}

/// Idempotency keys are scoped to the tenant and hashed: any printable key, fixed-size names.
fn idempotency_key(tenant: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    format!(
        "{tenant}:{}",
        digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A hash as HGETALL gives it: (field, value) pairs.
type Fields = Vec<(String, String)>;
/// A hash of counters.
type Fields64 = Vec<(String, i64)>;

/// A reply `{status}` or `{status, HGETALL of a record}`.
fn status(reply: Vec<Value>) -> Result<(String, Option<Fields>), StoreError> {
    let mut reply = reply.into_iter();
    let status = parse(reply.next())?;
    let fields = reply.next().map(|fields| parse(Some(fields))).transpose()?;
    Ok((status, fields))
}

/// A struct as hash field arguments (`name`, JSON value, ...): one serialisation, the
/// fields written as slices of it (a create writes a 25-field record: no string per field).
struct JsonFields {
    json: String,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

fn json_fields<T: Serialize>(value: &T) -> Result<JsonFields, StoreError> {
    let json = serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let map: Vec<(&str, &RawValue)> = serde_json::from_str::<BTreeMap<&str, &RawValue>>(&json)
        .map_err(|e| StoreError::Corrupt(format!("expected an object: {e}")))?
        .into_iter()
        .collect();
    let start = json.as_ptr() as usize;
    let span = |text: &str| {
        let from = text.as_ptr() as usize - start;
        from..from + text.len()
    };
    let fields = map
        .into_iter()
        .map(|(name, value)| (span(name), span(value.get())))
        .collect();
    Ok(JsonFields { json, fields })
}

impl ToRedisArgs for JsonFields {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        for (name, value) in &self.fields {
            out.write_arg(self.json[name.clone()].as_bytes());
            out.write_arg(self.json[value.clone()].as_bytes());
        }
    }
}

/// The inverse of `json_fields`: the hash fields joined into one JSON object, parsed once.
// Names are the record's own and values JSON already: only the scripts write these hashes.
fn record(fields: Fields) -> Result<ReservationRecord, StoreError> {
    from_fields(fields)
}

/// The inverse of `json_fields`.
fn from_fields<T: serde::de::DeserializeOwned>(fields: Fields) -> Result<T, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("hash of {}: {e}", std::any::type_name::<T>()));
    let mut json = String::with_capacity(fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>() + 2);
    json.push('{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(StoreError::Corrupt(format!("hash field name {name:?}")));
        }
        json.push('"');
        json.push_str(name);
        json.push_str("\":");
        // Each value must be one JSON text on its own: `1,"x":2` must not smuggle a field in.
        let value: &RawValue = serde_json::from_str(value).map_err(corrupt)?;
        json.push_str(value.get());
    }
    json.push('}');
    serde_json::from_str(&json).map_err(corrupt)
}

/// The Redis lifetime of something that lives from `from_ms` until `until_ms`: at least 1 ms.
fn ttl_ms(from_ms: i64, until_ms: i64) -> i64 {
    until_ms.saturating_sub(from_ms).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_with_a_value_that_is_not_json_is_corrupt() {
        let fields = vec![("state".to_string(), "reserved".to_string())];
        assert!(matches!(record(fields), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_record_survives_the_trip_through_hash_fields() {
        let request = ReserveRequest {
            reservation_id: "r1".into(),
            tenant: "acme".into(),
            user: "ann".into(),
            request_id: "q1".into(),
            periods: PeriodKeys {
                month: "2026-11".into(),
                week: "2026-W48".into(),
                day: "2026-11-25".into(),
            },
            model: "m".into(),
            quality: "720p".into(),
            audio: true,
            currency: "USD".into(),
            price_per_second: 50_000,
            reference_durations_ms: Vec::new(),
            billed_input_ms: 0,
            requested_output_ms: 5000,
            amount: 250_000,
            callback_url: Some("https://example.com/hook?a=\"b\"".into()),
            now_ms: 1_795_000_000_000,
            idempotency: None,
            rate: Vec::new(),
        };
        let mut held = ReservationRecord::hold(&request, "2026-11");
        Finish::settle(&Settlement {
            billed_output_ms: 4800,
            amount: 240_000,
            anomaly: false,
            now_ms: 1,
        })
        .apply(&mut held);
        let fields = json_fields(&held).expect("a record is a JSON object");
        let mut args = Vec::new();
        fields.write_redis_args(&mut args);
        assert_eq!(args.len(), 2 * fields.fields.len());
        let pairs = args
            .chunks(2)
            .map(|pair| {
                (
                    String::from_utf8(pair[0].clone()).unwrap(),
                    String::from_utf8(pair[1].clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(record(pairs).expect("fields parse back"), held);
    }

    #[test]
    fn a_value_holding_more_than_one_json_text_is_corrupt() {
        let fields = vec![("state".to_string(), r#""reserved","tenant":"other""#.to_string())];
        assert!(matches!(record(fields), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn redis_older_than_seven_is_refused() {
        assert!(version_at_least("7.0.0", MIN_VERSION));
        assert!(version_at_least("7.2.4", MIN_VERSION));
        assert!(version_at_least("8.0.1", MIN_VERSION));
        assert!(!version_at_least("6.2.14", MIN_VERSION));
        assert!(!version_at_least("garbage", MIN_VERSION));
    }
}
