//! Usage aggregates: per tenant and bucket (a day, ISO week, month or `total`), counters by
//! quality/audio and by user, kept by the money steps themselves so reports never scan the
//! ledger. A task counts in the buckets of the day it was reserved.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ReservationRecord, ReservationState};
use crate::billing::Micros;

/// Counter names inside a bucket (the same in lua/keys.lua).
pub const SPENT: &str = "spent";
pub const RESERVED: &str = "reserved";
pub const INPUT_MS: &str = "input_ms";
pub const OUTPUT_MS: &str = "output_ms";
pub const TASKS_RESERVED: &str = "n_reserved";
pub const TASKS_SETTLED: &str = "n_settled";
pub const TASKS_REFUNDED: &str = "n_refunded";
pub const TASKS_EXPIRED: &str = "n_expired";

/// Tasks of a bucket by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TaskCounts {
    pub reserved: i64,
    pub settled: i64,
    pub refunded: i64,
    pub expired: i64,
}

/// Money, billed time and task counts of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub spent: Micros,
    pub reserved: Micros,
    pub billed_input_ms: i64,
    pub billed_output_ms: i64,
    pub tasks: TaskCounts,
}

impl Totals {
    fn add_metric(&mut self, metric: &str, value: i64) {
        let slot = match metric {
            SPENT => &mut self.spent,
            RESERVED => &mut self.reserved,
            INPUT_MS => &mut self.billed_input_ms,
            OUTPUT_MS => &mut self.billed_output_ms,
            TASKS_RESERVED => &mut self.tasks.reserved,
            TASKS_SETTLED => &mut self.tasks.settled,
            TASKS_REFUNDED => &mut self.tasks.refunded,
            TASKS_EXPIRED => &mut self.tasks.expired,
            _ => return,
        };
        *slot = slot.saturating_add(value);
    }

    pub fn add(&mut self, other: &Totals) {
        self.spent += other.spent;
        self.reserved += other.reserved;
        self.billed_input_ms += other.billed_input_ms;
        self.billed_output_ms += other.billed_output_ms;
        self.tasks.reserved += other.tasks.reserved;
        self.tasks.settled += other.tasks.settled;
        self.tasks.refunded += other.tasks.refunded;
        self.tasks.expired += other.tasks.expired;
    }
}

/// One tenant's bucket: totals by (quality, audio), and by user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageBucket {
    pub by_kind: BTreeMap<(String, bool), Totals>,
    pub by_user: BTreeMap<String, Totals>,
}

impl UsageBucket {
    pub fn total(&self) -> Totals {
        let mut total = Totals::default();
        self.by_kind.values().for_each(|t| total.add(t));
        total
    }

    /// Folds stored counters: tenant fields `metric|quality|audio`, user fields
    /// `metric|quality|audio|user` (the user last: a `sub` may contain anything).
    pub fn from_fields(
        tenant_fields: impl IntoIterator<Item = (String, i64)>,
        user_fields: impl IntoIterator<Item = (String, i64)>,
    ) -> Self {
        let mut bucket = Self::default();
        for (field, value) in tenant_fields {
            let mut parts = field.splitn(3, '|');
            if let (Some(metric), Some(quality), Some(audio)) = (parts.next(), parts.next(), parts.next()) {
                let key = (quality.to_string(), audio == "1");
                bucket.by_kind.entry(key).or_default().add_metric(metric, value);
            }
        }
        for (field, value) in user_fields {
            let mut parts = field.splitn(4, '|');
            if let (Some(metric), Some(_), Some(_), Some(user)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                bucket
                    .by_user
                    .entry(user.to_string())
                    .or_default()
                    .add_metric(metric, value);
            }
        }
        bucket
    }
}

/// What one money step adds to each of its buckets.
pub fn reserve_deltas(record: &ReservationRecord) -> Vec<(&'static str, i64)> {
    vec![(RESERVED, record.reserved), (TASKS_RESERVED, 1)]
}

/// Settle (charged) or refund (nothing charged): the hold and the slot go, the state count moves.
pub fn finish_deltas(record: &ReservationRecord, charged: Option<Micros>) -> Vec<(&'static str, i64)> {
    let mut deltas = vec![(RESERVED, -record.reserved), (TASKS_RESERVED, -1)];
    match charged {
        Some(amount) => deltas.extend([
            (SPENT, amount),
            (INPUT_MS, to_i64(record.billed_input_ms)),
            (OUTPUT_MS, to_i64(record.billed_output_ms.unwrap_or(0))),
            (TASKS_SETTLED, 1),
        ]),
        None => deltas.push((TASKS_REFUNDED, 1)),
    }
    deltas
}

/// Expire: the hold and the slot go, nothing is charged, the task counts as expired.
pub fn expire_deltas(record: &ReservationRecord) -> Vec<(&'static str, i64)> {
    vec![(RESERVED, -record.reserved), (TASKS_RESERVED, -1), (TASKS_EXPIRED, 1)]
}

/// Late settle: the hold went at expiry (or at the refund of a refused create); the charge
/// comes now, and the task moves from expired (refunded) to settled.
pub fn late_settle_deltas(
    record: &ReservationRecord,
    charged: Micros,
    from: ReservationState,
) -> Vec<(&'static str, i64)> {
    let was = match from {
        ReservationState::Refunded => TASKS_REFUNDED,
        _ => TASKS_EXPIRED,
    };
    vec![
        (SPENT, charged),
        (INPUT_MS, to_i64(record.billed_input_ms)),
        (OUTPUT_MS, to_i64(record.billed_output_ms.unwrap_or(0))),
        (TASKS_SETTLED, 1),
        (was, -1),
    ]
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The buckets a task counts in, and its tenant and user field names for `metric`.
pub fn buckets(record: &ReservationRecord) -> [&str; 4] {
    let periods = &record.periods;
    [&periods.day, &periods.week, &periods.month, "total"]
}

pub fn tenant_field(metric: &str, record: &ReservationRecord) -> String {
    format!("{metric}|{}|{}", record.quality, audio_flag(record.audio))
}

pub fn user_field(metric: &str, record: &ReservationRecord) -> String {
    format!("{}|{}", tenant_field(metric, record), record.user)
}

fn audio_flag(audio: bool) -> &'static str {
    if audio { "1" } else { "0" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_fold_into_kinds_and_users() {
        let bucket = UsageBucket::from_fields(
            [
                ("spent|720p|1".to_string(), 5),
                ("n_settled|720p|1".into(), 1),
                ("spent|1080p|0".into(), 7),
            ],
            [
                ("spent|720p|1|a|b".to_string(), 5),
                ("spent|1080p|0|a|b".into(), 7),
                ("bogus".into(), 1),
            ],
        );
        assert_eq!(bucket.total().spent, 12);
        assert_eq!(bucket.total().tasks.settled, 1);
        assert_eq!(bucket.by_kind[&("1080p".to_string(), false)].spent, 7);
        assert_eq!(bucket.by_user["a|b"].spent, 12);
    }
}
