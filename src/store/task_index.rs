//! The task list: every reservation of a tenant indexed by creation time (written by the
//! reserve step itself), read newest first a page at a time, filtered on the stored records
//! alone (no upstream call per row).

use std::fmt;
use std::str::FromStr;

use super::{ReservationRecord, ReservationState, Store, StoreError};

/// One entry of a tenant's task index. Ordered by creation time, then reservation id, so
/// entries created in the same ms still have one order a cursor can resume in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskIndexEntry {
    pub created_ms: i64,
    pub reservation_id: String,
}

impl TaskIndexEntry {
    /// The entry as a Redis sorted-set member: members sort as text, so the ms is
    /// zero-padded (lua/reserve.lua writes the same form).
    pub fn member(&self) -> String {
        format!("{}:{}", padded_ms(self.created_ms), self.reservation_id)
    }

    pub fn from_member(member: &str) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("task index member {member:?}"));
        let (ms, reservation_id) = member.split_once(':').ok_or_else(corrupt)?;
        Ok(Self {
            created_ms: ms.parse().map_err(|_| corrupt())?,
            reservation_id: reservation_id.to_string(),
        })
    }
}

/// A creation time as the index sorts it: 15 digits (unix ms has 13 until the year 2286).
pub fn padded_ms(ms: i64) -> String {
    format!("{:015}", ms.max(0))
}

/// Which part of a tenant's index to read: creation time in [`from_ms`, `to_ms`), and
/// strictly older than `before` (the last entry of the previous page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIndexRange {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub before: Option<TaskIndexEntry>,
}

impl TaskIndexRange {
    /// Whether a reservation created at `created_ms` lies within `from_ms`..`to_ms`.
    pub fn contains(&self, created_ms: i64) -> bool {
        self.from_ms.is_none_or(|from| created_ms >= from) && self.to_ms.is_none_or(|to| created_ms < to)
    }
}

/// The opaque `cursor` of the task list: the last entry a page looked at, `ms.reservation_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCursor(pub TaskIndexEntry);

impl fmt::Display for TaskCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0.created_ms, self.0.reservation_id)
    }
}

impl FromStr for TaskCursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || "cursor must be the next_cursor of a previous page".to_string();
        let (ms, reservation_id) = text.split_once('.').ok_or_else(invalid)?;
        let created_ms = ms.parse::<i64>().ok().filter(|ms| *ms >= 0).ok_or_else(invalid)?;
        let id_ok = !reservation_id.is_empty()
            && reservation_id.len() <= 64
            && reservation_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !id_ok {
            return Err(invalid());
        }
        Ok(Self(TaskIndexEntry {
            created_ms,
            reservation_id: reservation_id.to_string(),
        }))
    }
}

/// One page of `GET /v1/tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskListQuery {
    pub range: TaskIndexRange,
    pub state: Option<ReservationState>,
    pub user: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct TaskPage {
    pub records: Vec<ReservationRecord>,
    /// Set when more entries may follow.
    pub next: Option<TaskCursor>,
}

/// Index entries read per store call while filling a page.
const CHUNK: usize = 100;
/// Index entries one page looks at, at most: a filter that matches rarely answers a short
/// page with a cursor instead of scanning the whole index in one request.
pub const MAX_SCANNED: usize = 1000;

/// Reads one page newest first: index entries in range, their records, the filters. A page
/// holds `limit` rows, or fewer when the index ends (no cursor) or `MAX_SCANNED` entries were
/// looked at (a cursor to go on from).
pub async fn task_page(store: &dyn Store, tenant: &str, query: &TaskListQuery) -> Result<TaskPage, StoreError> {
    let mut range = query.range.clone();
    let mut records = Vec::new();
    let mut scanned = 0;
    loop {
        let want = CHUNK.min(MAX_SCANNED - scanned);
        let entries = store.task_index(tenant, &range, want).await?;
        let ids: Vec<String> = entries.iter().map(|e| e.reservation_id.clone()).collect();
        let found = store.reservations(&ids).await?;
        let exhausted = entries.len() < want;
        for entry in entries {
            scanned += 1;
            let record = found.iter().find(|r| r.reservation_id == entry.reservation_id);
            if let Some(record) = record.filter(|r| r.tenant == tenant && query.matches(r)) {
                records.push(record.clone());
            }
            range.before = Some(entry);
            if records.len() == query.limit {
                return Ok(TaskPage {
                    records,
                    next: range.before.map(TaskCursor),
                });
            }
        }
        if exhausted {
            return Ok(TaskPage { records, next: None });
        }
        if scanned >= MAX_SCANNED {
            return Ok(TaskPage {
                records,
                next: range.before.map(TaskCursor),
            });
        }
    }
}

impl TaskListQuery {
    /// Whether `record` passes the state and user filters.
    pub fn matches(&self, record: &ReservationRecord) -> bool {
        self.state.is_none_or(|state| record.state == state)
            && self.user.as_ref().is_none_or(|user| &record.user == user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_through_text() {
        let cursor = TaskCursor(TaskIndexEntry {
            created_ms: 1_795_600_000_000,
            reservation_id: "rsv_01JDQ8Z3V4".into(),
        });
        assert_eq!(cursor.to_string(), "1795600000000.rsv_01JDQ8Z3V4");
        assert_eq!("1795600000000.rsv_01JDQ8Z3V4".parse::<TaskCursor>(), Ok(cursor));
        for bad in ["", "garbage", "-1.rsv_a", "12.", "12.rsv a", "x.rsv_a"] {
            assert!(bad.parse::<TaskCursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn members_sort_as_their_entries_do() {
        let a = TaskIndexEntry {
            created_ms: 999,
            reservation_id: "rsv_b".into(),
        };
        let b = TaskIndexEntry {
            created_ms: 1000,
            reservation_id: "rsv_a".into(),
        };
        assert!(a < b && a.member() < b.member());
        assert_eq!(TaskIndexEntry::from_member(&b.member()).expect("parses"), b);
    }
}
