//! The ledger: append-only entries for every money movement and budget change, read in time order.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{ReservationRecord, Store, StoreError};
use crate::billing::Micros;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    Reserve,
    Settle,
    Refund,
    Expire,
    LateSettle,
    BudgetChange,
    /// Repeats a settlement that needs a human look (e.g. the result could not be measured).
    Anomaly,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Settle => "settle",
            Self::Refund => "refund",
            Self::Expire => "expire",
            Self::LateSettle => "late_settle",
            Self::BudgetChange => "budget_change",
            Self::Anomaly => "anomaly",
        }
    }

    /// The kind named by its `as_str` name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Reserve,
            Self::Settle,
            Self::Refund,
            Self::Expire,
            Self::LateSettle,
            Self::BudgetChange,
            Self::Anomaly,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// One ledger line, with the CSV columns of the product contract. `amount` is the money the
/// step moved: the hold for `reserve`, the charge for `settle`/`late_settle` (and the
/// `anomaly` that repeats it), the released hold for `refund`/`expire`, 0 for `budget_change`.
/// Fields missing in a stored entry (e.g. `audio` of a budget change) read as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LedgerEntry {
    /// Unix ms, from the gateway clock of the step.
    pub time_ms: i64,
    pub kind: LedgerKind,
    pub tenant: String,
    pub user: String,
    pub reservation_id: String,
    pub task_id: String,
    pub model: String,
    pub quality: String,
    pub audio: Option<bool>,
    pub billed_input_ms: u64,
    pub billed_output_ms: u64,
    pub amount: Micros,
    pub currency: String,
    /// The create's request id on every entry of a reservation (one search finds a task's
    /// whole story in the logs); the admin request's on a budget change.
    pub request_id: String,
    /// Who made a budget change: the admin's `sub`, or `config`.
    pub actor: String,
    pub note: String,
}

/// An empty budget change: the base that `..LedgerEntry::default()` completes, and what the
/// fields a stored entry lacks read as.
impl Default for LedgerEntry {
    fn default() -> Self {
        Self {
            time_ms: 0,
            kind: LedgerKind::BudgetChange,
            tenant: String::new(),
            user: String::new(),
            reservation_id: String::new(),
            task_id: String::new(),
            model: String::new(),
            quality: String::new(),
            audio: None,
            billed_input_ms: 0,
            billed_output_ms: 0,
            amount: 0,
            currency: String::new(),
            request_id: String::new(),
            actor: String::new(),
            note: String::new(),
        }
    }
}

/// Why a settlement is flagged `anomaly`.
pub const UNMEASURED_NOTE: &str = "result length not measured; the requested length was billed";
/// Why every `late_settle` is flagged: money moved after the reconciler gave up on the task.
pub const LATE_NOTE: &str = "completed after its hold expired; charged late to the original period";
/// A late settlement whose result could not be measured either.
pub const LATE_UNMEASURED_NOTE: &str = "completed after its hold expired; charged late to the original period; result length not measured, the requested length was billed";
/// A task the upstream created although it refused the create (a 502 or 503 after its write).
pub const REFUSED_LATE_NOTE: &str =
    "created upstream although the create was refused; charged late to the original period";
/// The same, with a result that could not be measured.
pub const REFUSED_LATE_UNMEASURED_NOTE: &str = "created upstream although the create was refused; charged late to the original period; result length not measured, the requested length was billed";

impl LedgerEntry {
    /// A money step of one reservation. lua/keys.lua (`reservation_entry`) builds the same
    /// entry for the Redis finish script; the conformance suite holds both to it.
    pub fn for_reservation(
        kind: LedgerKind,
        record: &ReservationRecord,
        billed_ms: (u64, u64),
        amount: Micros,
        time_ms: i64,
    ) -> Self {
        Self {
            time_ms,
            kind,
            tenant: record.tenant.clone(),
            user: record.user.clone(),
            reservation_id: record.reservation_id.clone(),
            task_id: record.task_id.clone().unwrap_or_default(),
            model: record.model.clone(),
            quality: record.quality.clone(),
            audio: Some(record.audio),
            billed_input_ms: billed_ms.0,
            billed_output_ms: billed_ms.1,
            amount,
            currency: record.currency.clone(),
            request_id: record.request_id.clone(),
            actor: String::new(),
            note: String::new(),
        }
    }
}

/// Where an entry sits in its tenant's ledger: (ms, sequence within the ms). The ms is the
/// entry time, except that a tenant's positions never go back (Redis stream ids must grow):
/// an entry written with a clock behind the previous one's takes the previous ms. So a
/// tenant's ledger is in write order, and `from`/`to` filter on positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LedgerPosition {
    pub ms: u64,
    pub seq: u64,
}

impl LedgerPosition {
    pub fn next(self) -> Self {
        Self {
            ms: self.ms,
            seq: self.seq.saturating_add(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub position: LedgerPosition,
    pub entry: LedgerEntry,
}

/// The last row a page returned; the next page starts after it. Text form `ms-seq-tenant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCursor {
    pub position: LedgerPosition,
    pub tenant: String,
}

impl fmt::Display for LedgerCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.position.ms, self.position.seq, self.tenant)
    }
}

impl FromStr for LedgerCursor {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let mut parts = text.splitn(3, '-');
        let ms = parts.next().and_then(|p| p.parse().ok()).ok_or(())?;
        let seq = parts.next().and_then(|p| p.parse().ok()).ok_or(())?;
        let tenant = parts.next().filter(|t| crate::config::valid_tenant_id(t)).ok_or(())?;
        Ok(Self {
            position: LedgerPosition { ms, seq },
            tenant: tenant.to_string(),
        })
    }
}

/// A page of the ledger across one tenant or all of them, in (position, tenant) order.
#[derive(Debug, Clone)]
pub struct LedgerQuery {
    /// `None`: every tenant.
    pub tenant: Option<String>,
    /// `None`: every kind.
    pub kind: Option<LedgerKind>,
    /// Inclusive, unix ms.
    pub from_ms: u64,
    /// Exclusive, unix ms.
    pub to_ms: u64,
    pub cursor: Option<LedgerCursor>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct LedgerPage {
    pub rows: Vec<LedgerRow>,
    /// Set when more rows may follow.
    pub next: Option<LedgerCursor>,
}

/// Rows fetched from one tenant at a time while merging.
const MERGE_CHUNK: usize = 256;

/// One tenant's ledger during a merge: buffered rows and where to read next.
struct Source {
    tenant: String,
    buffer: VecDeque<LedgerRow>,
    /// `None` once the tenant has nothing more in range.
    next_start: Option<LedgerPosition>,
}

impl Source {
    async fn fill(&mut self, store: &dyn Store, to_ms: u64) -> Result<(), StoreError> {
        let Some(start) = self.next_start.filter(|_| self.buffer.is_empty()) else {
            return Ok(());
        };
        let rows = store.ledger_range(&self.tenant, start, to_ms, MERGE_CHUNK).await?;
        self.next_start = match rows.last() {
            Some(last) if rows.len() == MERGE_CHUNK => Some(last.position.next()),
            _ => None,
        };
        self.buffer.extend(rows);
        Ok(())
    }

    fn head(&self) -> Option<(LedgerPosition, &str)> {
        self.buffer.front().map(|row| (row.position, self.tenant.as_str()))
    }
}

/// Reads one page: every tenant's ledger merged by (position, tenant), a total order, so a
/// cursor resumes exactly after the last row returned.
pub async fn ledger_page(store: &dyn Store, query: &LedgerQuery) -> Result<LedgerPage, StoreError> {
    let tenants = match &query.tenant {
        Some(tenant) => vec![tenant.clone()],
        None => store.tenants().await?.into_iter().map(|t| t.id).collect(),
    };
    let from = LedgerPosition {
        ms: query.from_ms,
        seq: 0,
    };
    let mut sources: Vec<Source> = tenants
        .into_iter()
        .map(|tenant| {
            let start = match &query.cursor {
                // Rows at the cursor's position belong to later tenants only.
                Some(c) if tenant.as_str() > c.tenant.as_str() => c.position,
                Some(c) => c.position.next(),
                None => from,
            };
            Source {
                tenant,
                buffer: VecDeque::new(),
                next_start: Some(start.max(from)),
            }
        })
        .collect();
    let mut rows = Vec::new();
    while rows.len() <= query.limit {
        for source in &mut sources {
            source.fill(store, query.to_ms).await?;
        }
        let Some(index) = (0..sources.len())
            .filter(|i| sources[*i].head().is_some())
            .min_by(|a, b| sources[*a].head().cmp(&sources[*b].head()))
        else {
            break;
        };
        // Rows of other kinds are passed over, so a filtered page is still full.
        if let Some(row) = sources[index].buffer.pop_front()
            && query.kind.is_none_or(|kind| row.entry.kind == kind)
        {
            rows.push(row);
        }
    }
    let next = if rows.len() > query.limit {
        rows.truncate(query.limit);
        rows.last().map(|row| LedgerCursor {
            position: row.position,
            tenant: row.entry.tenant.clone(),
        })
    } else {
        None
    };
    Ok(LedgerPage { rows, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_through_text_even_with_dashes_in_the_tenant() {
        let cursor = LedgerCursor {
            position: LedgerPosition { ms: 17, seq: 3 },
            tenant: "team-a".into(),
        };
        assert_eq!(cursor.to_string(), "17-3-team-a");
        assert_eq!("17-3-team-a".parse::<LedgerCursor>(), Ok(cursor));
        assert!("17-x-team".parse::<LedgerCursor>().is_err());
        assert!("17-3-".parse::<LedgerCursor>().is_err());
        assert!("garbage".parse::<LedgerCursor>().is_err());
    }
}
