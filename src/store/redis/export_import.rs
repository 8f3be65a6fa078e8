//! `store export|import` on the Redis store: keys found by SCAN under the prefix, and dumped
//! items written back (in pipelines) as the scripts would have left them.

use base64::Engine;

use super::*;

/// Where `export` sends its items.
pub(super) struct Sink(pub(super) tokio::sync::mpsc::Sender<DumpItem>);

impl Sink {
    pub(super) async fn send(&self, item: DumpItem) -> Result<(), StoreError> {
        self.0
            .send(item)
            .await
            .map_err(|_| StoreError::Unavailable("export stopped: nobody reads the dump".into()))
    }
}

/// The counters' key kinds (`counter_keys` in lua/keys.lua).
const COUNTER_KINDS: [&str; 5] = ["spent:", "reserved:", "uspent:", "ureserved:", "inflight:"];
/// Keys read per round trip while exporting.
pub(super) const EXPORT_CHUNK: usize = 500;

impl RedisStore {
    /// Every key matching `pattern` after the prefix, sorted.
    pub(super) async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(format!("{}{pattern}", glob_escape(&self.prefix)))
                .arg("COUNT")
                .arg(1000);
            let (next, batch): (u64, Vec<String>) = self.query(&scan).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// `key` without the prefix and `kind`.
    pub(super) fn unprefixed<'k>(&self, key: &'k str, kind: &str) -> Result<&'k str, StoreError> {
        key.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix(kind))
            .ok_or_else(|| StoreError::Corrupt(format!("key {key:?} outside {kind}")))
    }

    pub(super) async fn export_counters(&self, out: &Sink) -> Result<(), StoreError> {
        for kind in COUNTER_KINDS {
            let keys = self.scan(&format!("{kind}*")).await?;
            for chunk in keys.chunks(EXPORT_CHUNK) {
                let values: Vec<Option<i64>> = self.query(cmd("MGET").arg(chunk)).await?;
                for (key, value) in chunk.iter().zip(values) {
                    if let Some(value) = value {
                        let name = format!("{kind}{}", self.unprefixed(key, kind)?);
                        out.send(DumpItem::Counter { name, value }).await?;
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) async fn export_ledgers(&self, out: &Sink) -> Result<(), StoreError> {
        for key in self.scan("ledger:*").await? {
            let tenant = self.unprefixed(&key, "ledger:")?.to_string();
            let mut start = "-".to_string();
            loop {
                let mut xrange = cmd("XRANGE");
                xrange.arg(&key).arg(&start).arg("+").arg("COUNT").arg(EXPORT_CHUNK);
                let entries: Vec<(String, Vec<(String, String)>)> = self.query(&xrange).await?;
                let done = entries.len() < EXPORT_CHUNK;
                for (id, fields) in entries {
                    let row = ledger_row(&id, fields)?;
                    start = format!("({id}");
                    out.send(DumpItem::Ledger {
                        tenant: tenant.clone(),
                        ms: row.position.ms,
                        seq: row.position.seq,
                        entry: row.entry,
                    })
                    .await?;
                }
                if done {
                    break;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn export_usage(&self, out: &Sink) -> Result<(), StoreError> {
        for (kind, user) in [("agg:", false), ("aggu:", true)] {
            for key in self.scan(&format!("{kind}*")).await? {
                let (bucket, tenant) = self
                    .unprefixed(&key, kind)?
                    .split_once(':')
                    .ok_or_else(|| StoreError::Corrupt(format!("aggregate key {key:?}")))?;
                let fields: Fields64 = self.query(cmd("HGETALL").arg(&key)).await?;
                for (field, value) in fields {
                    let (bucket, tenant) = (bucket.to_string(), tenant.to_string());
                    out.send(DumpItem::Aggregate {
                        bucket,
                        tenant,
                        user,
                        field,
                        value,
                    })
                    .await?;
                }
            }
        }
        for key in self.scan("days:*").await? {
            let tenant = self.unprefixed(&key, "days:")?;
            let days: Vec<String> = self.query(cmd("SMEMBERS").arg(&key)).await?;
            for day in days {
                let tenant = tenant.to_string();
                out.send(DumpItem::UsageDay { tenant, day }).await?;
            }
        }
        for key in self.scan("alert:*").await? {
            let rest = self.unprefixed(&key, "alert:")?;
            let corrupt = || StoreError::Corrupt(format!("alert key {key:?}"));
            let (tenant_period, ppm) = rest.rsplit_once(':').ok_or_else(corrupt)?;
            let (tenant, period) = tenant_period.split_once(':').ok_or_else(corrupt)?;
            out.send(DumpItem::Alert {
                tenant: tenant.to_string(),
                period: period.to_string(),
                threshold_ppm: ppm.parse().map_err(|_| corrupt())?,
            })
            .await?;
        }
        Ok(())
    }

    pub(super) async fn export_claims(&self, out: &Sink) -> Result<(), StoreError> {
        #[derive(serde::Deserialize)]
        struct Claim {
            rid: String,
            hash: String,
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        for key in self.scan("idem:*").await? {
            let corrupt = |what: &str| StoreError::Corrupt(format!("idempotency claim {key:?}: {what}"));
            let (tenant, sha) = self
                .unprefixed(&key, "idem:")?
                .rsplit_once(':')
                .ok_or_else(|| corrupt("key"))?;
            let json: Option<String> = self.query(cmd("GET").arg(&key)).await?;
            let Some(json) = json else { continue };
            let ttl: i64 = self.query(cmd("PTTL").arg(&key)).await?;
            let claim: Claim = serde_json::from_str(&json).map_err(|e| corrupt(&e.to_string()))?;
            out.send(DumpItem::Idempotency {
                tenant: tenant.to_string(),
                key_sha256: sha.to_string(),
                reservation_id: claim.rid,
                body_hash: claim.hash,
                // No expiry (-1) does not occur: reserve.lua sets one.
                expires_ms: now_ms.saturating_add(ttl.max(0)),
            })
            .await?;
        }
        Ok(())
    }

    pub(super) async fn export_queues(&self, out: &Sink) -> Result<(), StoreError> {
        for queue in Queue::ALL {
            let mut range = cmd("ZRANGE");
            range.arg(self.queue_key(queue)).arg(0).arg(-1).arg("WITHSCORES");
            let entries: Vec<(String, f64)> = self.query(&range).await?;
            for (id, due) in entries {
                out.send(DumpItem::Queued {
                    queue: queue.as_str().to_string(),
                    id,
                    due_ms: due as i64,
                })
                .await?;
            }
        }
        for key in self.scan("evt:*").await? {
            let fields: Fields = self.query(cmd("HGETALL").arg(&key)).await?;
            if !fields.is_empty() {
                out.send(DumpItem::OutboxEvent {
                    event: from_fields(fields)?,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// The commands that write one dumped item as the scripts would have left it.
    pub(super) fn import_one(
        &self,
        pipe: &mut ::redis::Pipeline,
        item: &DumpItem,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("{}: {e}", item.kind()));
        match item {
            DumpItem::Tenant(record) => {
                pipe.cmd("SET")
                    .arg(self.key("tenant", &record.id))
                    .arg(serde_json::to_string(record).map_err(corrupt)?)
                    .ignore();
                pipe.cmd("SADD")
                    .arg(format!("{}tenants", self.prefix))
                    .arg(&record.id)
                    .ignore();
            }
            DumpItem::Reservation(record) => {
                pipe.cmd("HSET")
                    .arg(self.key("res", &record.reservation_id))
                    .arg(json_fields(record)?)
                    .ignore();
                if let Some(task_id) = &record.task_id {
                    pipe.cmd("SET")
                        .arg(self.key("task", task_id))
                        .arg(&record.reservation_id)
                        .ignore();
                }
                let entry = TaskIndexEntry {
                    created_ms: record.created_ms,
                    reservation_id: record.reservation_id.clone(),
                };
                pipe.cmd("ZADD")
                    .arg(self.key("tasklist", &record.tenant))
                    .arg(0)
                    .arg(entry.member())
                    .ignore();
            }
            DumpItem::Counter { name, value } => {
                pipe.cmd("SET")
                    .arg(format!("{}{name}", self.prefix))
                    .arg(*value)
                    .ignore();
            }
            DumpItem::Ledger { tenant, ms, seq, entry } => {
                pipe.cmd("XADD")
                    .arg(self.key("ledger", tenant))
                    .arg(format!("{ms}-{seq}"))
                    .arg("e")
                    .arg(serde_json::to_string(entry).map_err(corrupt)?)
                    .ignore();
            }
            DumpItem::Aggregate {
                bucket,
                tenant,
                user,
                field,
                value,
            } => {
                let kind = if *user { "aggu" } else { "agg" };
                pipe.cmd("HINCRBY")
                    .arg(format!("{}{kind}:{bucket}:{tenant}", self.prefix))
                    .arg(field)
                    .arg(*value)
                    .ignore();
            }
            DumpItem::UsageDay { tenant, day } => {
                pipe.cmd("SADD").arg(self.key("days", tenant)).arg(day).ignore();
            }
            DumpItem::Alert {
                tenant,
                period,
                threshold_ppm,
            } => {
                pipe.cmd("SET")
                    .arg(format!("{}alert:{tenant}:{period}:{threshold_ppm}", self.prefix))
                    .arg(1)
                    .ignore();
            }
            DumpItem::Idempotency {
                tenant,
                key_sha256,
                reservation_id,
                body_hash,
                expires_ms,
            } => {
                let left = expires_ms.saturating_sub(now_ms);
                if left > 0 {
                    let claim = serde_json::json!({"rid": reservation_id, "hash": body_hash});
                    pipe.cmd("SET")
                        .arg(self.key("idem", &format!("{tenant}:{key_sha256}")))
                        .arg(claim.to_string())
                        .arg("PX")
                        .arg(left)
                        .ignore();
                }
            }
            DumpItem::Queued { queue, id, due_ms } => {
                let queue = match Queue::named(queue) {
                    Some(queue) => queue,
                    None => return Err(StoreError::Corrupt(format!("unknown queue {queue:?}"))),
                };
                pipe.cmd("ZADD")
                    .arg(self.queue_key(queue))
                    .arg(*due_ms)
                    .arg(id)
                    .ignore();
            }
            DumpItem::OutboxEvent { event } => {
                pipe.cmd("HSET")
                    .arg(self.key("evt", &event.id))
                    .arg(json_fields(event)?)
                    .ignore();
            }
            DumpItem::Secret { name, value_base64 } => {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(value_base64)
                    .map_err(|e| StoreError::Corrupt(format!("secret {name}: {e}")))?;
                pipe.cmd("SET").arg(self.key("secret", name)).arg(value).ignore();
            }
            DumpItem::WebhookKeys { tenant, keys } => {
                pipe.cmd("SET")
                    .arg(self.key("whkey", tenant))
                    .arg(serde_json::to_string(keys).map_err(corrupt)?)
                    .ignore();
            }
            DumpItem::ApiKey { key } => {
                pipe.cmd("SET")
                    .arg(self.key("apikey", &key.hash))
                    .arg(serde_json::to_string(key).map_err(corrupt)?)
                    .ignore();
                pipe.cmd("HSET")
                    .arg(self.key("apikeys", &key.tenant))
                    .arg(&key.name)
                    .arg(&key.hash)
                    .ignore();
            }
            DumpItem::ConsoleSession { key, session } => {
                let left = session.expires_ms.saturating_sub(now_ms);
                if left > 0 {
                    let json = serde_json::to_string(session).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let key = self.key("console_session", key);
                    pipe.cmd("SET").arg(key).arg(json).arg("PX").arg(left).ignore();
                }
            }
            DumpItem::ConsoleTicket { jti, expires_ms } => {
                let left = expires_ms.saturating_sub(now_ms);
                if left > 0 {
                    let key = self.key("console_ticket", jti);
                    pipe.cmd("SET").arg(key).arg(expires_ms).arg("PX").arg(left).ignore();
                }
            }
        }
        Ok(())
    }

    pub(super) async fn export_console(&self, out: &Sink) -> Result<(), StoreError> {
        for key in self.scan("console_session:*").await? {
            let json: Option<String> = self.query(cmd("GET").arg(&key)).await?;
            let Some(json) = json else { continue };
            let session = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("console session {key:?}: {e}")))?;
            let key = self.unprefixed(&key, "console_session:")?.to_string();
            out.send(DumpItem::ConsoleSession { key, session }).await?;
        }
        for key in self.scan("console_ticket:*").await? {
            let expires: Option<i64> = self.query(cmd("GET").arg(&key)).await?;
            let Some(expires_ms) = expires else { continue };
            let jti = self.unprefixed(&key, "console_ticket:")?.to_string();
            out.send(DumpItem::ConsoleTicket { jti, expires_ms }).await?;
        }
        Ok(())
    }

    /// Each tenant's webhook keys and every API key (as stored: by hash).
    pub(super) async fn export_credentials(&self, out: &Sink) -> Result<(), StoreError> {
        for (kind, webhook) in [("whkey:", true), ("apikey:", false)] {
            for key in self.scan(&format!("{kind}*")).await? {
                let Some(json) = self.query::<Option<String>>(cmd("GET").arg(&key)).await? else {
                    continue;
                };
                let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("{key}: {e}"));
                let item = match webhook {
                    true => DumpItem::WebhookKeys {
                        tenant: self.unprefixed(&key, kind)?.to_string(),
                        keys: serde_json::from_str(&json).map_err(corrupt)?,
                    },
                    false => DumpItem::ApiKey {
                        key: serde_json::from_str(&json).map_err(corrupt)?,
                    },
                };
                out.send(item).await?;
            }
        }
        Ok(())
    }
}

/// `text` as a literal in a SCAN pattern.
pub(super) fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
