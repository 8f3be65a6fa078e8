//! `vidgate store export|import`: everything a store holds as JSON lines, one object per line
//! with a `kind`, the same whichever backend wrote it, so a dump of one backend loads into the
//! other (embedded → Redis migration, backups). New state adds a kind; an importer refuses a
//! kind it does not know rather than drop it.
//!
//! Not dumped: rate-limit state and reconciler/relay leases (transient: gateways are stopped
//! during a move), and what the backends derive from the dumped items (the task id index and
//! the task list, from the reservations; usage of weeks and of the total, from days and months).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    ApiKeyRecord, ConsoleSession, LedgerEntry, OutboxEvent, Period, PeriodKeys, ReservationRecord, TenantRecord,
    WebhookKeys,
};

/// One line of a dump.
// Lines are streamed one at a time, never held in bulk: boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DumpItem {
    /// A tenant with its settings and the hash of the config entry last applied.
    Tenant(TenantRecord),
    /// A reservation: a task's money and ownership, in any state.
    Reservation(ReservationRecord),
    /// A money or in-flight counter by its store name (`spent:{tenant}:{period}`, ...).
    Counter { name: String, value: i64 },
    /// A ledger entry at its position in its tenant's ledger (cursors stay valid).
    Ledger {
        tenant: String,
        ms: u64,
        seq: u64,
        entry: LedgerEntry,
    },
    /// A usage aggregate of a day or a month bucket; `user` false: the field is
    /// `metric|quality|audio`, true: `metric|quality|audio|user`.
    Aggregate {
        bucket: String,
        tenant: String,
        user: bool,
        field: String,
        value: i64,
    },
    /// A day on which the tenant reserved anything.
    UsageDay { tenant: String, day: String },
    /// A budget alert already claimed.
    Alert {
        tenant: String,
        period: String,
        threshold_ppm: u32,
    },
    /// An `Idempotency-Key` claim, the key as its SHA-256 (Redis keeps no more).
    Idempotency {
        tenant: String,
        key_sha256: String,
        reservation_id: String,
        body_hash: String,
        expires_ms: i64,
    },
    /// An entry of a work queue (`tasks`: the reconciler's, `outbox`: the relay's, `archive`:
    /// the archive's copies still to make) and when it is due.
    Queued { queue: String, id: String, due_ms: i64 },
    /// A callback event waiting in the outbox.
    OutboxEvent { event: OutboxEvent },
    /// A secret shared by every replica (the callback token key), base64.
    Secret { name: String, value_base64: String },
    /// A tenant's webhook signing keys (the current one, and a rotated one still signing).
    WebhookKeys { tenant: String, keys: WebhookKeys },
    /// A tenant API key, as its hash (the key itself is never kept).
    ApiKey { key: ApiKeyRecord },
    /// A console session under the hash of its id (the cookie itself is never stored).
    ConsoleSession { key: String, session: ConsoleSession },
    /// A `console-link` ticket already used, kept until the ticket expires.
    ConsoleTicket { jti: String, expires_ms: i64 },
}

/// Whether a usage bucket is one both backends store (a day or a month); weeks and the total
/// are sums of those.
pub fn canonical_bucket(bucket: &str) -> bool {
    matches!(bucket.parse::<Period>(), Ok(Period::Day(_) | Period::Month(_)))
}

/// The buckets an embedded store keeps for a canonical one: a day also counts in its ISO
/// week, a month in the total.
pub fn derived_buckets(bucket: &str) -> Vec<String> {
    match bucket.parse::<Period>() {
        Ok(Period::Day(day)) => {
            let noon = day.and_hms_opt(12, 0, 0).map(|t| t.and_utc());
            noon.map(|t| vec![PeriodKeys::at(t).week]).unwrap_or_default()
        }
        Ok(Period::Month(_)) => vec!["total".to_string()],
        _ => Vec::new(),
    }
}

/// The SHA-256 of an idempotency key, hex (as the Redis store names its claims).
pub fn key_sha256(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A count of a dump's items by kind, for the command's summary line.
#[derive(Debug, Default)]
pub struct DumpCounts(HashMap<&'static str, u64>);

impl DumpCounts {
    pub fn add(&mut self, item: &DumpItem) {
        *self.0.entry(item.kind()).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl std::fmt::Display for DumpCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<_> = self.0.iter().collect();
        kinds.sort();
        let parts: Vec<String> = kinds.iter().map(|(kind, n)| format!("{kind}: {n}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

impl DumpItem {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tenant(_) => "tenant",
            Self::Reservation(_) => "reservation",
            Self::Counter { .. } => "counter",
            Self::Ledger { .. } => "ledger",
            Self::Aggregate { .. } => "aggregate",
            Self::UsageDay { .. } => "usage_day",
            Self::Alert { .. } => "alert",
            Self::Idempotency { .. } => "idempotency",
            Self::Queued { .. } => "queued",
            Self::OutboxEvent { .. } => "outbox_event",
            Self::Secret { .. } => "secret",
            Self::WebhookKeys { .. } => "webhook_keys",
            Self::ApiKey { .. } => "api_key",
            Self::ConsoleSession { .. } => "console_session",
            Self::ConsoleTicket { .. } => "console_ticket",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_names_its_kind_and_unknown_kinds_are_refused() {
        let item = DumpItem::Counter {
            name: "spent:acme:2026-11".into(),
            value: 415_000,
        };
        let line = serde_json::to_string(&item).unwrap();
        assert_eq!(line, r#"{"kind":"counter","name":"spent:acme:2026-11","value":415000}"#);
        assert_eq!(serde_json::from_str::<DumpItem>(&line).unwrap(), item);
        assert!(serde_json::from_str::<DumpItem>(r#"{"kind":"api_key","id":"x"}"#).is_err());
        assert!(serde_json::from_str::<DumpItem>(r#"{"kind":"counter","name":"a","value":1,"x":2}"#).is_err());
    }

    #[test]
    fn days_count_in_their_iso_week_and_months_in_the_total() {
        assert!(canonical_bucket("2026-11-30") && canonical_bucket("2026-11"));
        assert!(!canonical_bucket("2026-W49") && !canonical_bucket("total"));
        assert_eq!(derived_buckets("2026-11-30"), vec!["2026-W49"]);
        assert_eq!(derived_buckets("2027-01-01"), vec!["2026-W53"]);
        assert_eq!(derived_buckets("2026-11"), vec!["total"]);
        assert!(derived_buckets("total").is_empty());
    }
}
