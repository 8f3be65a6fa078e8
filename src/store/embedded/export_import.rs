//! `store export|import` on the embedded store: every table read in one transaction, and
//! dumped items written back as the store's own steps would have left them.

use base64::Engine;

use super::*;

/// An imported idempotency claim's key: the tenant and the key's hash, after two separators
/// (a caller's key is printable, so it never starts with one).
pub(super) fn hashed_claim_key(tenant: &str, sha256: &str) -> String {
    format!("{tenant}{SEP}{SEP}{sha256}")
}

fn split_key(key: &str, parts: usize) -> Result<Vec<&str>, StoreError> {
    let split: Vec<&str> = key.splitn(parts, SEP).collect();
    match split.len() == parts {
        true => Ok(split),
        false => Err(StoreError::Corrupt(format!("key {key:?}"))),
    }
}

/// Every item of the store, read in one transaction.
pub(super) fn export_in(
    tx: &ReadTransaction,
    send: &dyn Fn(DumpItem) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for item in tx.open_table(TENANTS).map_err(db_error)?.iter().map_err(db_error)? {
        let (id, json) = item.map_err(db_error)?;
        send(DumpItem::Tenant(parse_json(id.value(), json.value())?))?;
    }
    for item in tx
        .open_table(RESERVATIONS)
        .map_err(db_error)?
        .iter()
        .map_err(db_error)?
    {
        let (id, json) = item.map_err(db_error)?;
        send(DumpItem::Reservation(parse_json(id.value(), json.value())?))?;
    }
    for item in tx.open_table(COUNTERS).map_err(db_error)?.iter().map_err(db_error)? {
        let (name, value) = item.map_err(db_error)?;
        let (name, value) = (name.value().to_string(), value.value());
        send(DumpItem::Counter { name, value })?;
    }
    for item in tx.open_table(LEDGER).map_err(db_error)?.iter().map_err(db_error)? {
        let (key, json) = item.map_err(db_error)?;
        let (tenant, ms, seq) = key.value();
        let entry = parse_json(&format!("ledger {tenant} {ms}-{seq}"), json.value())?;
        send(DumpItem::Ledger {
            tenant: tenant.to_string(),
            ms,
            seq,
            entry,
        })?;
    }
    for item in tx.open_table(AGGREGATES).map_err(db_error)?.iter().map_err(db_error)? {
        let (key, value) = item.map_err(db_error)?;
        let parts = split_key(key.value(), 4)?;
        if dump::canonical_bucket(parts[0]) {
            send(DumpItem::Aggregate {
                bucket: parts[0].to_string(),
                tenant: parts[1].to_string(),
                user: parts[2] == "u",
                field: parts[3].to_string(),
                value: value.value(),
            })?;
        }
    }
    for item in tx.open_table(DAYS).map_err(db_error)?.iter().map_err(db_error)? {
        let (key, _) = item.map_err(db_error)?;
        let parts = split_key(key.value(), 2)?;
        let (tenant, day) = (parts[0].to_string(), parts[1].to_string());
        send(DumpItem::UsageDay { tenant, day })?;
    }
    for item in tx.open_table(ALERTS).map_err(db_error)?.iter().map_err(db_error)? {
        let (key, _) = item.map_err(db_error)?;
        let parts = split_key(key.value(), 3)?;
        send(DumpItem::Alert {
            tenant: parts[0].to_string(),
            period: parts[1].to_string(),
            threshold_ppm: parts[2]
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("alert {parts:?}")))?,
        })?;
    }
    for item in tx.open_table(IDEMPOTENCY).map_err(db_error)?.iter().map_err(db_error)? {
        let (key, json) = item.map_err(db_error)?;
        let parts = split_key(key.value(), 2)?;
        let key_sha256 = match parts[1].strip_prefix(SEP) {
            Some(hashed) => hashed.to_string(),
            None => dump::key_sha256(parts[1]),
        };
        let claim: Claim = parse_json("idempotency claim", json.value())?;
        send(DumpItem::Idempotency {
            tenant: parts[0].to_string(),
            key_sha256,
            reservation_id: claim.rid,
            body_hash: claim.hash,
            expires_ms: claim.expires_ms,
        })?;
    }
    for queue in Queue::ALL {
        for item in tx
            .open_table(queue_tables(queue).1)
            .map_err(db_error)?
            .iter()
            .map_err(db_error)?
        {
            let (id, due) = item.map_err(db_error)?;
            send(DumpItem::Queued {
                queue: queue.as_str().to_string(),
                id: id.value().to_string(),
                due_ms: i64::try_from(due.value()).unwrap_or(i64::MAX),
            })?;
        }
    }
    for item in tx.open_table(EVENTS).map_err(db_error)?.iter().map_err(db_error)? {
        let (id, json) = item.map_err(db_error)?;
        send(DumpItem::OutboxEvent {
            event: parse_json(id.value(), json.value())?,
        })?;
    }
    for item in tx.open_table(SECRETS).map_err(db_error)?.iter().map_err(db_error)? {
        let (name, value) = item.map_err(db_error)?;
        send(DumpItem::Secret {
            name: name.value().to_string(),
            value_base64: base64::engine::general_purpose::STANDARD.encode(value.value()),
        })?;
    }
    for item in tx
        .open_table(WEBHOOK_KEYS)
        .map_err(db_error)?
        .iter()
        .map_err(db_error)?
    {
        let (tenant, json) = item.map_err(db_error)?;
        send(DumpItem::WebhookKeys {
            tenant: tenant.value().to_string(),
            keys: parse_json(tenant.value(), json.value())?,
        })?;
    }
    for item in tx.open_table(API_KEYS).map_err(db_error)?.iter().map_err(db_error)? {
        let (hash, json) = item.map_err(db_error)?;
        send(DumpItem::ApiKey {
            key: parse_json(hash.value(), json.value())?,
        })?;
    }
    for item in tx
        .open_table(CONSOLE_SESSIONS)
        .map_err(db_error)?
        .iter()
        .map_err(db_error)?
    {
        let (key, json) = item.map_err(db_error)?;
        send(DumpItem::ConsoleSession {
            key: key.value().to_string(),
            session: parse_json("console session", json.value())?,
        })?;
    }
    for item in tx
        .open_table(CONSOLE_TICKETS)
        .map_err(db_error)?
        .iter()
        .map_err(db_error)?
    {
        let (jti, expires) = item.map_err(db_error)?;
        send(DumpItem::ConsoleTicket {
            jti: jti.value().to_string(),
            expires_ms: i64::try_from(expires.value()).unwrap_or(i64::MAX),
        })?;
    }
    Ok(())
}

pub(super) fn parse_json<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// One dumped item written as the store's own steps would have left it.
pub(super) fn import_in(tx: &WriteTransaction, item: &DumpItem) -> Result<(), StoreError> {
    match item {
        DumpItem::Tenant(record) => put_json(&mut tx.open_table(TENANTS).map_err(db_error)?, &record.id, record)?,
        DumpItem::Reservation(record) => {
            put_json(
                &mut tx.open_table(RESERVATIONS).map_err(db_error)?,
                &record.reservation_id,
                record,
            )?;
            if let Some(task_id) = &record.task_id {
                tx.open_table(TASKS)
                    .map_err(db_error)?
                    .insert(task_id.as_str(), record.reservation_id.as_str())
                    .map_err(db_error)?;
            }
            index_task(tx, record)?;
        }
        DumpItem::Counter { name, value } => {
            tx.open_table(COUNTERS)
                .map_err(db_error)?
                .insert(name.as_str(), *value)
                .map_err(db_error)?;
        }
        DumpItem::Ledger { tenant, ms, seq, entry } => {
            let json = serde_json::to_string(entry).map_err(|e| StoreError::Corrupt(format!("ledger entry: {e}")))?;
            tx.open_table(LEDGER)
                .map_err(db_error)?
                .insert((tenant.as_str(), *ms, *seq), json.as_str())
                .map_err(db_error)?;
        }
        DumpItem::Aggregate {
            bucket,
            tenant,
            user,
            field,
            value,
        } => {
            let mut aggregates = tx.open_table(AGGREGATES).map_err(db_error)?;
            let group = if *user { 'u' } else { 't' };
            for bucket in std::iter::once(bucket.clone()).chain(dump::derived_buckets(bucket)) {
                add(&mut aggregates, &aggregate_key(&bucket, tenant, group, field), *value)?;
            }
        }
        DumpItem::UsageDay { tenant, day } => {
            let key = format!("{tenant}{SEP}{day}");
            tx.open_table(DAYS)
                .map_err(db_error)?
                .insert(key.as_str(), ())
                .map_err(db_error)?;
        }
        DumpItem::Alert {
            tenant,
            period,
            threshold_ppm,
        } => {
            let key = format!("{tenant}{SEP}{period}{SEP}{threshold_ppm}");
            tx.open_table(ALERTS)
                .map_err(db_error)?
                .insert(key.as_str(), ())
                .map_err(db_error)?;
        }
        DumpItem::Idempotency {
            tenant,
            key_sha256,
            reservation_id,
            body_hash,
            expires_ms,
        } => {
            let claim = Claim {
                rid: reservation_id.clone(),
                hash: body_hash.clone(),
                expires_ms: *expires_ms,
            };
            let key = hashed_claim_key(tenant, key_sha256);
            put_json(&mut tx.open_table(IDEMPOTENCY).map_err(db_error)?, &key, &claim)?;
        }
        DumpItem::Queued { queue, id, due_ms } => schedule(tx, queue_named(queue)?, id, *due_ms)?,
        DumpItem::OutboxEvent { event } => put_json(&mut tx.open_table(EVENTS).map_err(db_error)?, &event.id, event)?,
        DumpItem::Secret { name, value_base64 } => {
            let value = base64::engine::general_purpose::STANDARD
                .decode(value_base64)
                .map_err(|e| StoreError::Corrupt(format!("secret {name}: {e}")))?;
            tx.open_table(SECRETS)
                .map_err(db_error)?
                .insert(name.as_str(), value.as_slice())
                .map_err(db_error)?;
        }
        DumpItem::WebhookKeys { tenant, keys } => {
            put_json(&mut tx.open_table(WEBHOOK_KEYS).map_err(db_error)?, tenant, keys)?
        }
        DumpItem::ApiKey { key } => {
            put_json(&mut tx.open_table(API_KEYS).map_err(db_error)?, &key.hash, key)?;
            let name = format!("{}{SEP}{}", key.tenant, key.name);
            tx.open_table(API_KEY_NAMES)
                .map_err(db_error)?
                .insert(name.as_str(), key.hash.as_str())
                .map_err(db_error)?;
        }
        DumpItem::ConsoleSession { key, session } => {
            put_json(&mut tx.open_table(CONSOLE_SESSIONS).map_err(db_error)?, key, session)?
        }
        DumpItem::ConsoleTicket { jti, expires_ms } => {
            tx.open_table(CONSOLE_TICKETS)
                .map_err(db_error)?
                .insert(jti.as_str(), ms(*expires_ms))
                .map_err(db_error)?;
        }
    }
    Ok(())
}

fn queue_named(name: &str) -> Result<Queue, StoreError> {
    Queue::named(name).ok_or_else(|| StoreError::Corrupt(format!("unknown queue {name:?}")))
}
