//! Usage and ledger reports for teams and finance, read from the store's aggregates (never a
//! ledger scan), with the shapes of the product contract, as JSON or CSV.

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;

use crate::billing::{Micros, format_money};
use crate::store::{LedgerEntry, Period, Store, StoreError, TaskCounts, TenantRecord, Totals, UsageBucket};

/// Store reads a report keeps in flight at once.
const READ_CONCURRENCY: usize = 32;

/// `GET /v1/usage`: one tenant's period.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantUsage {
    pub tenant: String,
    pub period: String,
    pub currency: String,
    /// `None` without a cap, or when the period is not of the tenant's budget kind.
    pub budget: Option<String>,
    pub spent: String,
    pub reserved: String,
    pub remaining: Option<String>,
    pub breakdown: Vec<Breakdown>,
    pub tasks: TaskCounts,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Breakdown {
    pub quality: String,
    pub audio: bool,
    pub spent: String,
    pub billed_input_ms: i64,
    pub billed_output_ms: i64,
    /// Settled tasks.
    pub tasks: i64,
}

pub async fn tenant_usage(
    store: &dyn Store,
    tenant: &TenantRecord,
    period: &Period,
    currency: &str,
) -> Result<TenantUsage, StoreError> {
    let bucket = store.usage(&tenant.id, &period.token(), false).await?;
    let total = bucket.total();
    let budget = budget_of(tenant, period);
    Ok(TenantUsage {
        tenant: tenant.id.clone(),
        period: period.token(),
        currency: currency.to_string(),
        budget: budget.map(format_money),
        spent: format_money(total.spent),
        reserved: format_money(total.reserved),
        remaining: budget.map(|b| format_money(remaining(b, &total))),
        breakdown: bucket
            .by_kind
            .iter()
            .map(|((quality, audio), t)| Breakdown {
                quality: quality.clone(),
                audio: *audio,
                spent: format_money(t.spent),
                billed_input_ms: t.billed_input_ms,
                billed_output_ms: t.billed_output_ms,
                tasks: t.tasks.settled,
            })
            .collect(),
        tasks: total.tasks,
    })
}

/// The tenant's budget, when `period` is the kind its budget is set for.
fn budget_of(tenant: &TenantRecord, period: &Period) -> Option<Micros> {
    tenant
        .settings
        .budget
        .filter(|_| tenant.settings.period == period.kind())
}

/// What is left; never below zero (a settlement may exceed its hold).
fn remaining(budget: Micros, total: &Totals) -> Micros {
    budget.saturating_sub(total.spent).saturating_sub(total.reserved).max(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Tenant,
    User,
    Day,
    /// One row per tenant, quality and audio (as `TenantUsage.breakdown`).
    Quality,
}

/// `GET /v1/admin/usage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdminUsage {
    pub period: String,
    pub currency: String,
    pub group_by: GroupBy,
    pub rows: Vec<UsageRow>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// Rows by quality only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<bool>,
    /// Rows by tenant only, as in `TenantUsage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<String>,
    pub spent: String,
    pub reserved: String,
    pub billed_input_ms: i64,
    pub billed_output_ms: i64,
    pub tasks: TaskCounts,
}

impl UsageRow {
    fn new(tenant: &str, totals: &Totals) -> Self {
        Self {
            tenant: tenant.to_string(),
            user: None,
            day: None,
            quality: None,
            audio: None,
            budget: None,
            remaining: None,
            spent: format_money(totals.spent),
            reserved: format_money(totals.reserved),
            billed_input_ms: totals.billed_input_ms,
            billed_output_ms: totals.billed_output_ms,
            tasks: totals.tasks,
        }
    }
}

/// Rows for `tenants` (every tenant when the caller named none), in tenant order, then by
/// user or day. Tenants with no usage still get their row by tenant; users and days appear
/// once they have usage.
pub async fn admin_usage(
    store: &dyn Store,
    tenants: &[TenantRecord],
    period: &Period,
    group_by: GroupBy,
    currency: &str,
) -> Result<AdminUsage, StoreError> {
    let token = period.token();
    let rows: Vec<Vec<UsageRow>> = match group_by {
        GroupBy::Tenant | GroupBy::User | GroupBy::Quality => {
            stream::iter(tenants)
                .map(|tenant| async {
                    let bucket = store.usage(&tenant.id, &token, group_by == GroupBy::User).await?;
                    Ok::<_, StoreError>(rows_of(tenant, period, &bucket, group_by))
                })
                .buffered(READ_CONCURRENCY)
                .try_collect()
                .await?
        }
        GroupBy::Day => {
            let days: Vec<(&TenantRecord, String)> = days_with_usage(store, tenants, period).await?;
            let rows: Vec<UsageRow> = stream::iter(days)
                .map(|(tenant, day)| async move {
                    let bucket = store.usage(&tenant.id, &day, false).await?;
                    let mut row = UsageRow::new(&tenant.id, &bucket.total());
                    row.day = Some(day);
                    Ok::<_, StoreError>(row)
                })
                .buffered(READ_CONCURRENCY)
                .try_collect()
                .await?;
            vec![rows]
        }
    };
    Ok(AdminUsage {
        period: token,
        currency: currency.to_string(),
        group_by,
        rows: rows.into_iter().flatten().collect(),
    })
}

fn rows_of(tenant: &TenantRecord, period: &Period, bucket: &UsageBucket, group_by: GroupBy) -> Vec<UsageRow> {
    if group_by == GroupBy::Quality {
        return bucket
            .by_kind
            .iter()
            .map(|((quality, audio), totals)| UsageRow {
                quality: Some(quality.clone()),
                audio: Some(*audio),
                ..UsageRow::new(&tenant.id, totals)
            })
            .collect();
    }
    if group_by == GroupBy::User {
        return bucket
            .by_user
            .iter()
            .map(|(user, totals)| UsageRow {
                user: Some(user.clone()),
                ..UsageRow::new(&tenant.id, totals)
            })
            .collect();
    }
    let total = bucket.total();
    let budget = budget_of(tenant, period);
    vec![UsageRow {
        budget: budget.map(format_money),
        remaining: budget.map(|b| format_money(remaining(b, &total))),
        ..UsageRow::new(&tenant.id, &total)
    }]
}

/// (tenant, day) for every day of `period` on which the tenant has usage, in order.
async fn days_with_usage<'a>(
    store: &dyn Store,
    tenants: &'a [TenantRecord],
    period: &Period,
) -> Result<Vec<(&'a TenantRecord, String)>, StoreError> {
    let in_period = period.days();
    let in_period = &in_period;
    let per_tenant: Vec<Vec<(&TenantRecord, String)>> = stream::iter(tenants)
        .map(|tenant| async move {
            let days = store.usage_days(&tenant.id).await?;
            Ok::<_, StoreError>(
                days.into_iter()
                    .filter(|day| in_period.as_ref().is_none_or(|days| days.contains(day)))
                    .map(|day| (tenant, day))
                    .collect(),
            )
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(per_tenant.into_iter().flatten().collect())
}

/// A ledger entry as the API shows it: money as a decimal string, time as RFC 3339 UTC.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LedgerLine<'a> {
    pub time: String,
    pub kind: &'static str,
    pub tenant: &'a str,
    pub user: &'a str,
    pub reservation_id: &'a str,
    pub task_id: &'a str,
    pub model: &'a str,
    pub quality: &'a str,
    pub audio: Option<bool>,
    pub billed_input_ms: u64,
    pub billed_output_ms: u64,
    pub amount: String,
    pub currency: &'a str,
    pub request_id: &'a str,
    pub actor: &'a str,
    pub note: &'a str,
}

impl<'a> From<&'a LedgerEntry> for LedgerLine<'a> {
    fn from(entry: &'a LedgerEntry) -> Self {
        Self {
            time: time_text(entry.time_ms),
            kind: entry.kind.as_str(),
            tenant: &entry.tenant,
            user: &entry.user,
            reservation_id: &entry.reservation_id,
            task_id: &entry.task_id,
            model: &entry.model,
            quality: &entry.quality,
            audio: entry.audio,
            billed_input_ms: entry.billed_input_ms,
            billed_output_ms: entry.billed_output_ms,
            amount: format_money(entry.amount),
            currency: &entry.currency,
            request_id: &entry.request_id,
            actor: &entry.actor,
            note: &entry.note,
        }
    }
}

/// `2026-11-25T10:00:00.123Z`.
pub fn time_text(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// CSV in RFC 4180 form (CRLF line ends, quoted fields where needed) that spreadsheets open
/// cleanly: text that a spreadsheet would run as a formula is prefixed with `'`.
pub mod csv {
    use super::*;

    pub const LEDGER_HEADER: &[&str] = &[
        "time",
        "kind",
        "tenant",
        "user",
        "reservation_id",
        "task_id",
        "model",
        "quality",
        "audio",
        "billed_input_ms",
        "billed_output_ms",
        "amount",
        "currency",
        "request_id",
        "actor",
        "note",
    ];

    pub const USAGE_HEADER: &[&str] = &[
        "period",
        "tenant",
        "user",
        "day",
        "currency",
        "budget",
        "remaining",
        "spent",
        "reserved",
        "billed_input_ms",
        "billed_output_ms",
        "tasks_reserved",
        "tasks_settled",
        "tasks_refunded",
        "tasks_expired",
        "quality",
        "audio",
    ];

    /// One record: fields joined by commas, ended by CRLF.
    pub fn line<S: AsRef<str>>(fields: &[S]) -> String {
        let mut out = fields.iter().map(|f| field(f.as_ref())).collect::<Vec<_>>().join(",");
        out.push_str("\r\n");
        out
    }

    fn field(value: &str) -> String {
        if value.contains([',', '"', '\r', '\n']) {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value.to_string()
        }
    }

    /// Caller-supplied text (user ids, notes): never a formula in a spreadsheet.
    pub fn text(value: &str) -> String {
        if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{value}")
        } else {
            value.to_string()
        }
    }

    pub fn ledger_line(line: &LedgerLine<'_>) -> String {
        let audio = line.audio.map(|a| a.to_string()).unwrap_or_default();
        self::line(&[
            line.time.clone(),
            line.kind.to_string(),
            line.tenant.to_string(),
            text(line.user),
            line.reservation_id.to_string(),
            text(line.task_id),
            line.model.to_string(),
            line.quality.to_string(),
            audio,
            line.billed_input_ms.to_string(),
            line.billed_output_ms.to_string(),
            line.amount.clone(),
            line.currency.to_string(),
            text(line.request_id),
            text(line.actor),
            text(line.note),
        ])
    }

    pub fn usage_line(report: &AdminUsage, row: &UsageRow) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        line(&[
            report.period.clone(),
            row.tenant.clone(),
            text(&opt(&row.user)),
            opt(&row.day),
            report.currency.clone(),
            opt(&row.budget),
            opt(&row.remaining),
            row.spent.clone(),
            row.reserved.clone(),
            row.billed_input_ms.to_string(),
            row.billed_output_ms.to_string(),
            row.tasks.reserved.to_string(),
            row.tasks.settled.to_string(),
            row.tasks.refunded.to_string(),
            row.tasks.expired.to_string(),
            opt(&row.quality),
            row.audio.map(|a| a.to_string()).unwrap_or_default(),
        ])
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fields_are_quoted_as_rfc_4180_says_and_formulas_are_defused() {
            assert_eq!(
                line(&["a", "b,c", "say \"hi\"", "x\ny", ""]),
                "a,\"b,c\",\"say \"\"hi\"\"\",\"x\ny\",\r\n"
            );
            assert_eq!(text("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
            assert_eq!(text("alice"), "alice");
            assert_eq!(line(&[text("@x,y")]), "\"'@x,y\"\r\n");
        }
    }
}
