//! Budget alerts: each `[alerts]` threshold of a tenant's budget fires once per tenant and
//! period across all replicas (claimed in the store), posted to the Slack-compatible
//! `alerts.webhook_url` and to the tenant's own `alert_webhook_url` in the background with
//! retries, through the callback egress client (every resolved address checked), and
//! always logged. Logs name which webhook, never its URL (Slack-style URLs carry a token).

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::json;

use crate::billing::{Micros, format_money};
use crate::config::Config;
use crate::probe::fetch::FetchError;
use crate::state::AppState;
use crate::store::{BudgetUse, ReservationRecord, StoreError};

/// Thresholds are compared in millionths of the budget, in integers.
const PPM: i128 = 1_000_000;

/// After a step moved `record`'s money: checks its tenant's period in the background.
pub fn check(state: &AppState, record: &ReservationRecord) {
    let (state, tenant, period) = (state.clone(), record.tenant.clone(), record.period.clone());
    tokio::spawn(async move {
        if let Err(error) = fire_crossed(&state, &tenant, &period).await {
            tracing::error!(tenant = %tenant, period = %period, "budget alert check failed: {error}");
        }
    });
}

/// After a new hold, from what its reserve step returned: a store call only to claim.
pub fn check_hold(state: &AppState, record: &ReservationRecord, used: BudgetUse) {
    let Some(budget) = used.budget.filter(|b| *b > 0) else {
        return;
    };
    let standing = Standing {
        budget,
        spent: used.spent,
        reserved: used.reserved,
    };
    let reached = reached(&state.config, &standing);
    if reached.is_empty() {
        return;
    }
    let (state, tenant, period) = (state.clone(), record.tenant.clone(), record.period.clone());
    tokio::spawn(async move {
        if let Err(error) = fire(&state, &tenant, &period, &standing, reached).await {
            tracing::error!(tenant = %tenant, period = %period, "budget alert claim failed: {error}");
        }
    });
}

/// A threshold as millionths of the budget (0.8 → 800 000).
pub fn threshold_ppm(threshold: f64) -> u32 {
    // Validated to (0, 1] at startup, so the product fits.
    (threshold * 1e6).round() as u32
}

/// A tenant's budget and its period's money.
struct Standing {
    budget: Micros,
    spent: Micros,
    reserved: Micros,
}

/// Fires every threshold that spent + reserved has reached and no replica has claimed yet.
/// Reserved money counts: it is committed, and the 100 % alert then matches the first 402.
async fn fire_crossed(state: &AppState, tenant: &str, period: &str) -> Result<(), StoreError> {
    let Some(record) = state.tenants.get(state.store.as_ref(), tenant).await? else {
        return Ok(());
    };
    let Some(budget) = record.settings.budget.filter(|b| *b > 0) else {
        return Ok(());
    };
    let usage = state.store.period_usage(tenant, period).await?;
    let standing = Standing {
        budget,
        spent: usage.spent,
        reserved: usage.reserved,
    };
    let reached = reached(&state.config, &standing);
    fire(state, tenant, period, &standing, reached).await
}

/// The configured thresholds (millionths, ascending) that spent + reserved has reached.
fn reached(config: &Config, standing: &Standing) -> Vec<u32> {
    let used = i128::from(standing.spent.saturating_add(standing.reserved));
    let mut thresholds: Vec<u32> = config
        .alerts
        .thresholds
        .iter()
        .map(|t| threshold_ppm(*t))
        .filter(|ppm| used * PPM >= i128::from(standing.budget) * i128::from(*ppm))
        .collect();
    thresholds.sort_unstable();
    thresholds.dedup();
    thresholds
}

/// Claims each reached threshold; the replica that wins one logs and delivers it.
async fn fire(
    state: &AppState,
    tenant: &str,
    period: &str,
    standing: &Standing,
    reached: Vec<u32>,
) -> Result<(), StoreError> {
    for ppm in reached {
        if state.store.claim_alert(tenant, period, ppm).await? {
            let text = message(
                tenant,
                period,
                ppm,
                standing.budget,
                standing.spent,
                standing.reserved,
                &state.config,
            );
            tracing::warn!(tenant = %tenant, period = %period, threshold_ppm = ppm, "budget alert: {text}");
            deliver(state, tenant, &text).await;
        }
    }
    Ok(())
}

fn message(
    tenant: &str,
    period: &str,
    ppm: u32,
    budget: Micros,
    spent: Micros,
    reserved: Micros,
    config: &Config,
) -> String {
    let currency = &config.pricing.currency;
    let percent = f64::from(ppm) / 10_000.0;
    format!(
        "vidgate: tenant {tenant} reached {percent}% of its budget for {period}: {} of {} {currency} used ({} spent, {} held for running tasks)",
        format_money(spent.saturating_add(reserved)),
        format_money(budget),
        format_money(spent),
        format_money(reserved),
    )
}

/// Posts `{"text": ...}` to `alerts.webhook_url` and to the tenant's `alert_webhook_url`,
/// at once; every outcome is logged. Nothing to post to: the log line above is the alert.
async fn deliver(state: &AppState, tenant: &str, text: &str) {
    let global = Some(state.config.alerts.webhook_url.clone()).filter(|url| !url.is_empty());
    let own = match state.tenants.get(state.store.as_ref(), tenant).await {
        Ok(record) => record.and_then(|record| record.settings.alert_webhook_url.clone()),
        Err(error) => {
            tracing::error!(tenant = %tenant, "budget alert: cannot read the tenant's alert_webhook_url: {error}");
            None
        }
    };
    let body = Bytes::from(json!({ "text": text }).to_string());
    let posts = [("alerts.webhook_url", global), ("tenant alert_webhook_url", own)]
        .into_iter()
        .filter_map(|(target, url)| url.map(|url| post(state, target, url, body.clone(), text)));
    futures_util::future::join_all(posts).await;
}

/// Posts one alert with the callback retry delays; a URL the egress rules refuse is not
/// retried.
async fn post(state: &AppState, target: &'static str, url: String, body: Bytes, text: &str) {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let timeout = Duration::from_millis(state.config.callbacks.timeout_ms);
    let delays = std::iter::once(0).chain(state.config.callbacks.retry_delays_ms.iter().copied());
    let mut attempts = 0;
    for delay in delays {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        attempts += 1;
        let sending = state
            .completion
            .egress()
            .send_once(Method::POST, &url, &headers, Some(body.clone()));
        match tokio::time::timeout(timeout, sending).await {
            Ok(Ok(response)) if response.status().is_success() => {
                tracing::info!(target, attempts, "budget alert delivered");
                return;
            }
            Ok(Ok(response)) => {
                tracing::warn!(target, attempt = attempts, status = %response.status(), "budget alert webhook refused")
            }
            Ok(Err(FetchError::Refused(reason) | FetchError::InvalidUrl(reason))) => {
                tracing::error!(
                    target,
                    "budget alert not sent: the egress rules refuse the webhook: {reason}"
                );
                return;
            }
            Ok(Err(FetchError::Unreachable(reason))) => {
                tracing::warn!(target, attempt = attempts, "budget alert webhook unreachable: {reason}")
            }
            Err(_) => tracing::warn!(target, attempt = attempts, "budget alert webhook: no answer in time"),
        }
    }
    tracing::error!(target, attempts, "budget alert NOT delivered: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_become_exact_millionths() {
        assert_eq!(threshold_ppm(0.8), 800_000);
        assert_eq!(threshold_ppm(0.95), 950_000);
        assert_eq!(threshold_ppm(1.0), 1_000_000);
        assert_eq!(threshold_ppm(0.333_333_7), 333_334);
    }

    #[test]
    fn a_threshold_is_reached_at_exactly_its_share_of_the_budget() {
        let config = Config::default();
        let at = |spent, reserved| {
            reached(
                &config,
                &Standing {
                    budget: 500_000_000,
                    spent,
                    reserved,
                },
            )
        };
        assert_eq!(at(0, 0), Vec::<u32>::new());
        assert_eq!(at(300_000_000, 99_999_999), Vec::<u32>::new());
        assert_eq!(at(300_000_000, 100_000_000), vec![800_000]);
        assert_eq!(at(470_000_000, 5_000_000), vec![800_000, 950_000]);
        assert_eq!(at(499_000_000, 2_000_000), vec![800_000, 950_000, 1_000_000]);
    }

    #[test]
    fn the_message_says_who_how_much_and_of_what() {
        let text = message(
            "mkt",
            "2026-11",
            950_000,
            500_000_000,
            470_000_000,
            5_000_000,
            &Config::default(),
        );
        assert_eq!(
            text,
            "vidgate: tenant mkt reached 95% of its budget for 2026-11: 475.000000 of 500.000000 USD used (470.000000 spent, 5.000000 held for running tasks)"
        );
    }
}
