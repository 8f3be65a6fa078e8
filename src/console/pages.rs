//! The console's pages. Each reads through `reports` and the store's paging functions, the
//! same ones `/v1/admin/*`, `/v1/usage` and `/v1/tasks` use, and formats money with the same
//! `format_money`: a figure here is the API's figure, string for string.

use std::fmt::Write as _;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use super::html::{self, Level, esc, q};
use super::{PageError, Viewer, html_response};
use crate::alerts::threshold_ppm;
use crate::billing::{format_money, parse_money};
use crate::config::{PeriodKind, valid_tenant_id};
use crate::reports::{self, GroupBy, LedgerLine};
use crate::state::AppState;
use crate::store::{
    LedgerCursor, LedgerKind, LedgerQuery, Period, ReservationState, TaskCursor, TaskListQuery, TenantRecord,
    ledger_page, task_page,
};

/// Ledger rows on one console page.
const LEDGER_PAGE_ROWS: usize = 50;
/// Tasks on one team page.
const TASK_PAGE_ROWS: usize = 20;

type PageResult = Result<(String, String), PageError>;

/// Runs a page body and wraps it in the frame; any error becomes an HTML error page.
async fn render(state: &AppState, req: &HttpRequest, body: impl AsyncFnOnce(&Viewer) -> PageResult) -> HttpResponse {
    let viewer = match Viewer::of(req, state) {
        Ok(viewer) => viewer,
        Err(PageError::NoSession) => return super::signin::sign_in_page(req),
        Err(error) => return error.into_response(None),
    };
    match body(&viewer).await {
        Ok((title, content)) => html_response(StatusCode::OK, html::page(&title, Some(&viewer.nav()), &content)),
        Err(error) => error.into_response(Some(&viewer)),
    }
}

/// `/console/`: finance and admins get the overview; a team member their team's page.
pub async fn home(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Some(caller) = caller_of(&req)
        && !caller.can_read_all_usage()
        && caller.tenant.is_some()
    {
        return HttpResponse::SeeOther()
            .insert_header(("location", "/console/team"))
            .finish();
    }
    render(&state, &req, async |viewer: &Viewer| {
        viewer.require_finance()?;
        let period = period_param(&state, &req)?;
        let tenants = state.store.tenants().await?;
        let currency = &state.config.pricing.currency;
        let report = reports::admin_usage(state.store.as_ref(), &tenants, &period, GroupBy::Tenant, currency).await?;
        let first = first_threshold_ppm(&state);
        let admin = viewer.caller.is_admin();
        let rows: Vec<Vec<String>> = report
            .rows
            .iter()
            .map(|row| {
                let budget = row.budget.clone();
                let settings = if admin {
                    format!(
                        r#" <a class="settings" href="/console/admin/tenants/{}" aria-label="Settings of {}">settings</a>"#,
                        q(&row.tenant),
                        esc(&row.tenant)
                    )
                } else {
                    String::new()
                };
                vec![
                    format!(
                        r#"<a href="/console/tenants/{}?period={}">{}</a>{settings}"#,
                        q(&row.tenant),
                        q(&report.period),
                        esc(&row.tenant)
                    ),
                    esc(&row.spent),
                    esc(&row.reserved),
                    esc(budget.as_deref().unwrap_or("no cap")),
                    esc(row.remaining.as_deref().unwrap_or("–")),
                    budget
                        .as_deref()
                        .map(|b| budget_bar(b, &row.spent, &row.reserved, first))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        let mut body = period_form("/console/", &state, &report.period);
        let _ = write!(
            body,
            r#"<p>Period <strong data-period>{}</strong>, money in {}. A budget counts only in the period kind it is set for. Bars turn amber at the first alert threshold and red at 100 %.</p>"#,
            esc(&report.period),
            esc(currency)
        );
        body.push_str(&html::table(
            "Spend by tenant",
            &["Tenant", "Spent", "Reserved", "Budget", "Remaining", "Budget used"],
            &[1, 2, 3, 4],
            &rows,
        ));
        let _ = write!(
            body,
            r#"<p><a href="/v1/admin/usage?period={p}&amp;format=csv" download>Download as CSV</a> · <a href="/v1/admin/usage?period={p}&amp;group_by=user&amp;format=csv" download>by user (CSV)</a></p>"#,
            p = q(&report.period)
        );
        Ok(("Spend overview".into(), body))
    })
    .await
}

/// `/console/tenants/{id}`: one tenant's spend by user, by quality and audio, and by day.
pub async fn tenant(state: web::Data<AppState>, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    render(&state, &req, async |viewer: &Viewer| {
        viewer.require_finance()?;
        let record = known_tenant(&state, &id).await?;
        let period = period_param(&state, &req)?;
        let currency = &state.config.pricing.currency;
        let store = state.store.as_ref();
        let one = std::slice::from_ref(&record);
        let usage = reports::tenant_usage(store, &record, &period, currency).await?;
        let by_user = reports::admin_usage(store, one, &period, GroupBy::User, currency).await?;
        let by_quality = reports::admin_usage(store, one, &period, GroupBy::Quality, currency).await?;
        let by_day = reports::admin_usage(store, one, &period, GroupBy::Day, currency).await?;
        let path = format!("/console/tenants/{}", q(&record.id));
        let mut body = period_form(&path, &state, &usage.period);
        let budget = usage.budget.as_deref().unwrap_or("no cap");
        let _ = write!(
            body,
            r#"<dl class="summary"><div><dt>Period</dt><dd data-period>{}</dd></div><div><dt>Spent</dt><dd data-spent>{}</dd></div><div><dt>Reserved</dt><dd data-reserved>{}</dd></div><div><dt>Budget</dt><dd>{}</dd></div><div><dt>Remaining</dt><dd>{}</dd></div></dl>"#,
            esc(&usage.period),
            esc(&usage.spent),
            esc(&usage.reserved),
            esc(budget),
            esc(usage.remaining.as_deref().unwrap_or("–"))
        );
        let spent_on: std::collections::BTreeMap<String, String> = by_day
            .rows
            .iter()
            .filter_map(|row| Some((row.day.clone()?, row.spent.clone())))
            .collect();
        // Every day of a month or week gets its slot (zero when nothing was spent); the
        // total has only the days with usage.
        let slots = period.days().unwrap_or_else(|| spent_on.keys().cloned().collect());
        let days: Vec<(String, i64, String)> = slots
            .into_iter()
            .map(|day| {
                let spent = spent_on.get(&day).cloned().unwrap_or_else(|| format_money(0));
                (day, parse_money(&spent).unwrap_or(0), spent)
            })
            .collect();
        body.push_str("<h2>By day</h2>");
        body.push_str(&html::day_chart(&days));
        let day_rows: Vec<Vec<String>> = by_day
            .rows
            .iter()
            .map(|row| vec![esc(row.day.as_deref().unwrap_or("")), esc(&row.spent), esc(&row.reserved)])
            .collect();
        body.push_str(&html::table("Spend by day", &["Day", "Spent", "Reserved"], &[1, 2], &day_rows));
        body.push_str("<h2>By user</h2>");
        let user_rows: Vec<Vec<String>> = by_user
            .rows
            .iter()
            .map(|row| {
                vec![
                    esc(row.user.as_deref().unwrap_or("")),
                    esc(&row.spent),
                    esc(&row.reserved),
                    row.tasks.settled.to_string(),
                ]
            })
            .collect();
        body.push_str(&html::table(
            "Spend by user",
            &["User", "Spent", "Reserved", "Settled tasks"],
            &[1, 2, 3],
            &user_rows,
        ));
        body.push_str("<h2>By quality and audio</h2>");
        let quality_rows: Vec<Vec<String>> = by_quality
            .rows
            .iter()
            .map(|row| {
                vec![
                    esc(row.quality.as_deref().unwrap_or("")),
                    if row.audio == Some(true) { "with audio" } else { "silent" }.into(),
                    esc(&row.spent),
                    esc(&row.reserved),
                    row.billed_input_ms.to_string(),
                    row.billed_output_ms.to_string(),
                    row.tasks.settled.to_string(),
                ]
            })
            .collect();
        body.push_str(&html::table(
            "Spend by quality and audio",
            &["Quality", "Audio", "Spent", "Reserved", "Billed input ms", "Billed output ms", "Settled tasks"],
            &[2, 3, 4, 5, 6],
            &quality_rows,
        ));
        let _ = write!(
            body,
            r#"<p><a href="/console/ledger?tenant={t}">This tenant's ledger</a>{}</p>"#,
            if viewer.caller.is_admin() {
                format!(r#" · <a href="/console/admin/tenants/{}">Change its budget and limits</a>"#, q(&record.id))
            } else {
                String::new()
            },
            t = q(&record.id)
        );
        Ok((format!("Tenant {}", record.id), body))
    })
    .await
}

/// `/console/ledger`: the ledger with filters (tenant, kind, time range), paged, with the
/// same view as CSV from `/v1/admin/ledger`.
pub async fn ledger(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    render(&state, &req, async |viewer: &Viewer| {
        viewer.require_finance()?;
        let filters = LedgerFilters::parse(&req)?;
        if let Some(tenant) = &filters.tenant {
            known_tenant(&state, tenant).await?;
        }
        let tenants = state.store.tenants().await?;
        let page = ledger_page(state.store.as_ref(), &filters.query()?).await?;
        let lines: Vec<LedgerLine<'_>> = page.rows.iter().map(|row| LedgerLine::from(&row.entry)).collect();
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|line| {
                vec![
                    esc(&line.time),
                    esc(line.kind),
                    esc(line.tenant),
                    esc(line.user),
                    esc(line.task_id),
                    esc(line.quality),
                    line.audio.map(|a| if a { "yes" } else { "no" }).unwrap_or("").into(),
                    esc(&line.amount),
                    esc(line.actor),
                    esc(line.note),
                ]
            })
            .collect();
        let mut body = filters.form(&tenants);
        body.push_str(&html::table(
            "Ledger entries, oldest first",
            &[
                "Time (UTC)",
                "Kind",
                "Tenant",
                "User",
                "Task",
                "Quality",
                "Audio",
                "Amount",
                "Actor",
                "Note",
            ],
            &[7],
            &rows,
        ));
        let api_query = filters.api_query(filters.cursor.as_deref());
        let _ = write!(
            body,
            r#"<p class="pager"><a href="/v1/admin/ledger?{}&amp;format=csv" download>Download this view as CSV</a>"#,
            esc(&api_query)
        );
        if let Some(next) = &page.next {
            let _ = write!(
                body,
                r#" · <a rel="next" href="/console/ledger?{}">Next page</a>"#,
                esc(&filters.page_query(&next.to_string()))
            );
        }
        body.push_str("</p>");
        Ok(("Ledger".into(), body))
    })
    .await
}

/// `/console/admin/tenants/{id}` (role admin): a form that sends `PUT /v1/admin/tenants/{id}`.
pub async fn edit_tenant(state: web::Data<AppState>, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    render(&state, &req, async |viewer: &Viewer| {
        viewer.require_admin()?;
        let record = known_tenant(&state, &id).await?;
        let view = record.settings.view();
        let text = |field: &str| view.get(field).map(value_text).unwrap_or_default();
        let mut body = format!(
            r#"<p>Changes are saved through <code>PUT /v1/admin/tenants/{id}</code> and written to the ledger as <code>budget_change</code> by you. Money in {currency}; an empty budget means no cap.</p>
<form class="edit" data-js-tenant="{id_attr}" novalidate>"#,
            id = esc(&record.id),
            id_attr = esc(&record.id),
            currency = esc(&state.config.pricing.currency)
        );
        for (field, label, kind) in [
            ("budget", "Budget per period", "money"),
            ("user_budget", "Budget per user per period", "money"),
            ("creates_per_minute", "Creates per minute", "count"),
            ("creates_burst", "Create burst", "count"),
            ("reads_per_minute", "Reads per minute", "count"),
            ("reads_burst", "Read burst", "count"),
            ("max_concurrent_tasks", "Tasks at once", "count"),
            ("user_creates_per_minute", "Creates per minute per user (0: none)", "count"),
        ] {
            let input = if kind == "money" {
                r#"inputmode="decimal" pattern="[0-9]*(\.[0-9]{1,6})?""#
            } else {
                r#"type="number" min="0" step="1""#
            };
            let _ = write!(
                body,
                r#"<p><label for="f-{field}">{label}</label><input id="f-{field}" name="{field}" data-kind="{kind}" {input} value="{}"></p>"#,
                esc(&text(field))
            );
        }
        let period = text("period");
        body.push_str(r#"<p><label for="f-period">Budget period</label><select id="f-period" name="period">"#);
        for kind in ["month", "week", "day", "total"] {
            let selected = if period == kind { " selected" } else { "" };
            let _ = write!(body, r#"<option value="{kind}"{selected}>{kind}</option>"#);
        }
        body.push_str("</select></p><fieldset><legend>Allowed qualities</legend>");
        for quality in ["720p", "1080p"] {
            let checked = if record.settings.allowed_qualities.iter().any(|q| q == quality) {
                " checked"
            } else {
                ""
            };
            let _ = write!(
                body,
                r#"<label><input type="checkbox" name="allowed_qualities" value="{quality}"{checked}> {quality}</label> "#
            );
        }
        let _ = write!(
            body,
            r#"</fieldset><p><button type="submit">Save changes</button></p><p class="status" role="status" aria-live="polite"></p></form>
<p><a href="/console/ledger?tenant={t}&amp;kind=budget_change">This tenant's budget changes</a> · <a href="/console/tenants/{t}">Its spend</a></p>
<noscript><p class="notice">Saving needs JavaScript (the change is sent with the session's CSRF token).</p></noscript>"#,
            t = q(&record.id)
        );
        body.push_str(&alert_webhook_form(&record.id, &text("alert_webhook_url")));
        body.push_str(&api_keys_section(&state, &record.id).await?);
        Ok((format!("Settings of {}", record.id), body))
    })
    .await
}

/// The tenant's own alert webhook: shown masked (as the API shows it), replaced or removed.
fn alert_webhook_form(tenant: &str, current: &str) -> String {
    let shown = if current.is_empty() { "none" } else { current };
    format!(
        r#"<h2>Alert webhook</h2><p>This tenant's budget alerts also go to: <code data-alert-webhook>{shown}</code></p>
<form class="edit" data-js-webhook="{tenant}" novalidate><p><label for="f-alert">New alert webhook URL (https; empty removes it)</label><input id="f-alert" name="alert_webhook_url" type="url" value=""></p>
<p><button type="submit">Save webhook</button></p><p class="status" role="status" aria-live="polite"></p></form>"#,
        shown = esc(shown),
        tenant = esc(tenant)
    )
}

/// The tenant's API keys (machine credentials): listed without the key, issued (the key
/// shown once), revoked.
async fn api_keys_section(state: &AppState, tenant: &str) -> Result<String, PageError> {
    let keys = state.store.api_keys(tenant).await?;
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                esc(&key.name),
                format!("<code>{}</code>", esc(&key.id)),
                esc(&time_text(key.created_ms)),
                key.expires_ms
                    .map(|ms| esc(&time_text(ms)))
                    .unwrap_or_else(|| "never".into()),
                format!(
                    r#"<button type="button" data-js-revoke="{}/{}" aria-label="Revoke {}">Revoke</button>"#,
                    esc(tenant),
                    esc(&key.id),
                    esc(&key.name)
                ),
            ]
        })
        .collect();
    let mut out = String::from("<h2>API keys</h2>");
    out.push_str(&html::table(
        &format!("API keys of {tenant} (callers as key:NAME)"),
        &["Name", "Id", "Created (UTC)", "Expires (UTC)", ""],
        &[],
        &rows,
    ));
    let _ = write!(
        out,
        r#"<form class="edit" data-js-issue="{t}" novalidate><p><label for="f-key-name">New key's name (a-z, 0-9, -)</label><input id="f-key-name" name="name" pattern="[a-z0-9-]{{1,64}}"></p>
<p><label for="f-key-expires">Expires (optional)</label><input id="f-key-expires" name="expires" type="date"></p>
<p><button type="submit">Issue key</button></p><p class="status" role="status" aria-live="polite"></p>
<p class="notice" hidden data-new-key-box>The new key, shown once; store it now: <code data-new-key></code></p></form>"#,
        t = esc(tenant)
    );
    Ok(out)
}

/// The tenant's webhook signing key, as a receiving team configures it; `tenant_admin`
/// (and `admin`) may rotate it.
async fn webhook_key_section(state: &AppState, viewer: &Viewer, tenant: &str) -> Result<String, PageError> {
    let keys = crate::callbacks::webhook_keys::keys(state, tenant).await?;
    let mut out = format!(
        r#"<h2>Webhook signing key</h2><p>Callbacks relayed to your <code>callback_url</code> are signed with this key (Standard Webhooks); verify them with it.</p>
<p><code data-webhook-secret>{}</code> (made {})</p>"#,
        esc(&keys.current.secret),
        esc(&time_text(keys.current.created_ms))
    );
    if viewer.caller.has_role(crate::auth::ROLE_TENANT_ADMIN) || viewer.caller.is_admin() {
        let _ = write!(
            out,
            r#"<form class="edit" data-js-rotate="{}"><p><button type="submit">Rotate the key</button> For 24 h every delivery carries both signatures.</p><p class="status" role="status" aria-live="polite"></p></form>"#,
            esc(tenant)
        );
    }
    Ok(out)
}

/// `/console/team`: the viewer's own tenant: its usage this period and its tasks.
pub async fn team(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    render(&state, &req, async |viewer: &Viewer| {
        let Some(tenant) = viewer.caller.tenant.clone() else {
            return Err(PageError::NotFound(
                "Your sign-in carries no tenant; the team page shows one tenant's own usage. Use the overview.".into(),
            ));
        };
        let record = known_tenant(&state, &tenant).await?;
        let period = match url_param(&req, "period") {
            Some(text) => text.parse::<Period>().map_err(|e| PageError::BadInput(format!("period: {e}")))?,
            None => Period::current(record.settings.period, state.clock.now()),
        };
        let currency = &state.config.pricing.currency;
        let usage = reports::tenant_usage(state.store.as_ref(), &record, &period, currency).await?;
        let cursor = url_param(&req, "cursor")
            .map(|c| c.parse::<TaskCursor>().map_err(|_| PageError::BadInput("cursor: not from this page".into())))
            .transpose()?;
        let query = TaskListQuery {
            range: crate::store::TaskIndexRange {
                before: cursor.map(|c| c.0),
                ..Default::default()
            },
            state: None,
            user: None,
            limit: TASK_PAGE_ROWS,
        };
        let page = task_page(state.store.as_ref(), &tenant, &query).await?;
        let mut body = period_form("/console/team", &state, &usage.period);
        let _ = write!(
            body,
            r#"<dl class="summary"><div><dt>Period</dt><dd data-period>{}</dd></div><div><dt>Spent</dt><dd data-spent>{}</dd></div><div><dt>Reserved</dt><dd data-reserved>{}</dd></div><div><dt>Budget</dt><dd>{}</dd></div><div><dt>Remaining</dt><dd>{}</dd></div></dl>"#,
            esc(&usage.period),
            esc(&usage.spent),
            esc(&usage.reserved),
            esc(usage.budget.as_deref().unwrap_or("no cap")),
            esc(usage.remaining.as_deref().unwrap_or("–")),
        );
        let rows: Vec<Vec<String>> = page
            .records
            .iter()
            .map(|r| {
                vec![
                    esc(&time_text(r.created_ms)),
                    esc(r.task_id.as_deref().unwrap_or("(outcome unknown)")),
                    esc(&r.user),
                    format!("{}{}", esc(&r.quality), if r.audio { " · audio" } else { "" }),
                    task_status(r.state).into(),
                    esc(&format_money(r.reserved)),
                    r.charged.map(|c| esc(&format_money(c))).unwrap_or_else(|| "–".into()),
                    video_cell(r),
                ]
            })
            .collect();
        body.push_str(&html::table(
            &format!("Tasks of {tenant}, newest first"),
            &["Created (UTC)", "Task", "User", "Quality", "Status", "Held", "Charged", "Video"],
            &[5, 6],
            &rows,
        ));
        if let Some(next) = &page.next {
            let _ = write!(
                body,
                r#"<p class="pager"><a rel="next" href="/console/team?period={}&amp;cursor={}">Older tasks</a></p>"#,
                q(&usage.period),
                q(&next.to_string())
            );
        }
        body.push_str(&webhook_key_section(&state, viewer, &tenant).await?);
        Ok((format!("Team {tenant}"), body))
    })
    .await
}

/// A completed task's video, played from its `content_url` (the archive, or the upstream's
/// link until it is copied); nothing is fetched until the viewer presses play.
fn video_cell(record: &crate::store::ReservationRecord) -> String {
    match (record.state, &record.task_id) {
        (ReservationState::Settled, Some(task_id)) => format!(
            r#"<video controls preload="none" width="240" src="{}"></video><br><small>{}</small>"#,
            esc(&crate::archive::content_path(task_id)),
            if record.archived {
                "archived"
            } else {
                "from the upstream's link (copy pending)"
            }
        ),
        _ => "–".into(),
    }
}

fn task_status(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Reserved => "running (held)",
        ReservationState::Settled => "completed (settled)",
        ReservationState::Refunded => "failed or cancelled (refunded)",
        ReservationState::Expired => "expired (released)",
    }
}

/// The caller the auth middleware left in the request, if any.
fn caller_of(req: &HttpRequest) -> Option<crate::auth::Caller> {
    actix_web::HttpMessage::extensions(req)
        .get::<crate::auth::Caller>()
        .cloned()
}

async fn known_tenant(state: &AppState, id: &str) -> Result<TenantRecord, PageError> {
    if !valid_tenant_id(id) {
        return Err(PageError::NotFound(format!("{id:?} is not a tenant id.")));
    }
    state
        .store
        .tenant(id)
        .await?
        .ok_or_else(|| PageError::NotFound(format!("There is no tenant {id:?}.")))
}

fn url_param(req: &HttpRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// `?period=`, default the current month (as `/v1/admin/usage`).
fn period_param(state: &AppState, req: &HttpRequest) -> Result<Period, PageError> {
    match url_param(req, "period") {
        Some(text) => text
            .parse::<Period>()
            .map_err(|e| PageError::BadInput(format!("period {text:?}: {e}"))),
        None => Ok(Period::current(PeriodKind::Month, state.clock.now())),
    }
}

/// The period picker: a text field and the current month, ISO week, day and total.
fn period_form(action: &str, state: &AppState, current: &str) -> String {
    let now = state.clock.now();
    let mut presets = String::new();
    for (kind, label) in [
        (PeriodKind::Month, "This month"),
        (PeriodKind::Week, "This ISO week"),
        (PeriodKind::Day, "Today"),
        (PeriodKind::Total, "Total"),
    ] {
        let token = Period::current(kind, now).token();
        let here = if token == current {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(presets, r#" <a href="{action}?period={}"{here}>{label}</a>"#, q(&token));
    }
    format!(
        r#"<form class="filters" method="get" action="{action}"><label for="period">Period (UTC): month <code>2026-11</code>, ISO week <code>2026-W48</code>, day <code>2026-11-25</code> or <code>total</code></label> <input id="period" name="period" value="{}" size="10"> <button type="submit">Show</button></form><p class="presets">{presets}</p>"#,
        esc(current)
    )
}

fn first_threshold_ppm(state: &AppState) -> u64 {
    state
        .config
        .alerts
        .thresholds
        .iter()
        .map(|t| u64::from(threshold_ppm(*t)))
        .min()
        .unwrap_or(1_000_000)
}

/// The bar of (spent + reserved) against the budget: what the alerts compare.
fn budget_bar(budget: &str, spent: &str, reserved: &str, first_threshold: u64) -> String {
    let micros = |text: &str| parse_money(text).unwrap_or(0);
    let budget = micros(budget);
    let used = micros(spent).saturating_add(micros(reserved));
    let used_ppm = if budget <= 0 {
        if used > 0 { 1_000_000 } else { 0 }
    } else {
        u64::try_from(i128::from(used) * 1_000_000 / i128::from(budget)).unwrap_or(0)
    };
    html::bar(used_ppm, Level::of(used_ppm, first_threshold))
}

fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn time_text(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The ledger page's filters, in the console's terms (dates) and the API's (RFC 3339).
struct LedgerFilters {
    tenant: Option<String>,
    kind: Option<LedgerKind>,
    /// Days, UTC: `from` inclusive, `to` inclusive (the whole day).
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    cursor: Option<String>,
}

impl LedgerFilters {
    fn parse(req: &HttpRequest) -> Result<Self, PageError> {
        let date = |name: &str| {
            url_param(req, name)
                .map(|text| {
                    NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                        .map_err(|_| PageError::BadInput(format!("{name}: a date like 2026-11-25")))
                })
                .transpose()
        };
        let kind = url_param(req, "kind")
            .map(|k| {
                LedgerKind::parse(&k).ok_or_else(|| PageError::BadInput(format!("kind {k:?} is not a ledger kind")))
            })
            .transpose()?;
        let filters = Self {
            tenant: url_param(req, "tenant"),
            kind,
            from: date("from")?,
            to: date("to")?,
            cursor: url_param(req, "cursor"),
        };
        if let (Some(from), Some(to)) = (filters.from, filters.to)
            && from > to
        {
            return Err(PageError::BadInput("the first day must not be after the last".into()));
        }
        Ok(filters)
    }

    fn start_text(&self) -> Option<String> {
        self.from.map(|d| format!("{d}T00:00:00Z"))
    }

    /// The day after `to`, at midnight: the API's exclusive end.
    fn end_text(&self) -> Option<String> {
        self.to.and_then(|d| d.succ_opt()).map(|d| format!("{d}T00:00:00Z"))
    }

    fn query(&self) -> Result<LedgerQuery, PageError> {
        let ms = |text: Option<String>| {
            text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| u64::try_from(t.timestamp_millis()).unwrap_or(0))
        };
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<LedgerCursor>()
                    .map_err(|()| PageError::BadInput("cursor: not from this page".into()))
            })
            .transpose()?;
        Ok(LedgerQuery {
            tenant: self.tenant.clone(),
            kind: self.kind,
            from_ms: ms(self.start_text()).unwrap_or(0),
            to_ms: ms(self.end_text()).unwrap_or(u64::MAX),
            cursor,
            limit: LEDGER_PAGE_ROWS,
        })
    }

    /// The same view as `/v1/admin/ledger` query parameters (without `format`).
    fn api_query(&self, cursor: Option<&str>) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        if let Some(tenant) = &self.tenant {
            pairs.append_pair("tenant", tenant);
        }
        if let Some(kind) = self.kind {
            pairs.append_pair("kind", kind.as_str());
        }
        if let Some(from) = self.start_text() {
            pairs.append_pair("from", &from);
        }
        if let Some(to) = self.end_text() {
            pairs.append_pair("to", &to);
        }
        pairs.append_pair("limit", &LEDGER_PAGE_ROWS.to_string());
        if let Some(cursor) = cursor {
            pairs.append_pair("cursor", cursor);
        }
        pairs.finish()
    }

    /// This page's own filters with another cursor.
    fn page_query(&self, cursor: &str) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        if let Some(tenant) = &self.tenant {
            pairs.append_pair("tenant", tenant);
        }
        if let Some(kind) = self.kind {
            pairs.append_pair("kind", kind.as_str());
        }
        if let Some(from) = self.from {
            pairs.append_pair("from", &from.to_string());
        }
        if let Some(to) = self.to {
            pairs.append_pair("to", &to.to_string());
        }
        pairs.append_pair("cursor", cursor);
        pairs.finish()
    }

    fn form(&self, tenants: &[TenantRecord]) -> String {
        let mut out = String::from(
            r#"<form class="filters" method="get" action="/console/ledger"><label for="l-tenant">Tenant</label> <select id="l-tenant" name="tenant"><option value="">every tenant</option>"#,
        );
        for tenant in tenants {
            let selected = if self.tenant.as_deref() == Some(tenant.id.as_str()) {
                " selected"
            } else {
                ""
            };
            let _ = write!(out, r#"<option value="{0}"{selected}>{0}</option>"#, esc(&tenant.id));
        }
        out.push_str(r#"</select> <label for="l-kind">Kind</label> <select id="l-kind" name="kind"><option value="">every kind</option>"#);
        for kind in [
            LedgerKind::Reserve,
            LedgerKind::Settle,
            LedgerKind::Refund,
            LedgerKind::Expire,
            LedgerKind::LateSettle,
            LedgerKind::BudgetChange,
            LedgerKind::Anomaly,
        ] {
            let selected = if self.kind == Some(kind) { " selected" } else { "" };
            let _ = write!(out, r#"<option value="{0}"{selected}>{0}</option>"#, kind.as_str());
        }
        let day = |d: Option<NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
        let _ = write!(
            out,
            r#"</select> <label for="l-from">From day (UTC)</label> <input type="date" id="l-from" name="from" value="{}"> <label for="l-to">To day (UTC, included)</label> <input type="date" id="l-to" name="to" value="{}"> <button type="submit">Filter</button></form>"#,
            day(self.from),
            day(self.to)
        );
        out
    }
}
