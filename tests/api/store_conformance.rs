//! The `Store` contract, written once and run against both backends (embedded and Redis).

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use vidgate::config::PeriodKind;
use vidgate::store::embedded::EmbeddedStore;
use vidgate::store::redis::RedisStore;
use vidgate::store::{
    BindOutcome, BudgetUse, FinalizeOutcome, IdempotencyClaim, LATE_NOTE, LedgerEntry, LedgerKind, LedgerQuery,
    OutboxEvent, PeriodKeys, Queue, REFUSED_LATE_NOTE, RecoverOutcome, Recovery, ReservationRecord, ReservationState,
    ReserveOutcome, ReserveRefusal, ReserveRequest, Settlement, Store, StoreError, TenantChange, TenantPatch,
    TenantSettings, UNMEASURED_NOTE, event_id, ledger_page,
};

use crate::support;
use crate::support::backends::{Backend, embedded, for_both_backends, redis};
use crate::support::redis::RedisServer;

for_both_backends!(
    a_second_reserve_with_the_same_id_returns_the_first_hold,
    a_reserve_for_an_unknown_tenant_is_refused,
    a_quality_the_tenant_does_not_allow_is_refused,
    a_hold_exactly_at_the_budget_is_allowed,
    a_hold_one_micro_over_the_budget_is_refused,
    a_user_budget_caps_one_user_inside_the_tenant_budget,
    the_concurrency_cap_refuses_once_reached_and_a_settle_frees_a_slot,
    a_concurrency_cap_of_zero_allows_no_task,
    a_settle_charges_the_amount_and_releases_the_hold,
    a_refund_releases_the_hold_and_charges_nothing,
    a_second_settle_moves_no_money,
    a_refund_after_a_settle_moves_no_money,
    a_settle_after_a_refund_moves_no_money,
    settling_or_refunding_an_unknown_reservation_finds_nothing,
    a_settle_is_booked_to_the_period_of_its_reservation,
    a_settlement_above_its_hold_is_charged_in_full,
    a_bound_task_finds_its_reservation,
    a_bind_after_a_settle_answers_the_stored_record,
    config_is_reapplied_only_when_its_hash_changes,
    concurrent_reservers_never_exceed_the_budget,
    concurrent_reservers_never_exceed_the_concurrency_cap,
    every_money_step_appends_its_ledger_entries,
    repeated_and_refused_steps_write_no_ledger_entry,
    aggregates_follow_each_step_by_bucket_quality_and_user,
    admin_changes_create_and_change_tenants_with_an_audit_entry,
    config_writes_are_audited_and_admin_changes_survive_an_unchanged_config,
    the_ledger_pages_across_tenants_in_time_order,
    a_step_from_a_clock_behind_the_ledger_is_appended_after_it,
    usage_is_summed_by_day_week_month_and_total,
    an_alert_is_claimed_once_even_by_concurrent_claimers,
    an_expire_releases_the_hold_once_and_counts_the_task_expired,
    a_late_settle_charges_an_expired_task_once_in_its_own_period,
    only_an_expired_task_is_settled_late,
    the_task_queue_holds_exactly_the_reservations_not_yet_final,
    a_claim_is_exclusive_until_released_or_its_lease_runs_out,
    a_callback_mark_survives_the_release_of_a_claim_taken_before_it,
    a_callback_mark_brings_back_an_expired_task_and_ignores_ended_ones,
    a_final_step_of_a_bound_task_with_a_callback_url_enqueues_one_event,
    an_outbox_event_keeps_its_attempts_and_body_until_it_leaves,
    the_first_shared_secret_stored_wins,
    a_new_hold_returns_the_budget_use_the_alerts_need,
    a_recovered_task_is_bound_once_and_due_for_the_reconciler,
    a_refused_recovery_binds_nothing_and_writes_one_anomaly,
    a_task_created_after_its_create_was_refused_is_charged_late_once,
    a_released_reserve_is_refunded_and_a_reserve_after_its_release_holds_nothing,
    an_idempotency_key_stays_in_progress_while_its_first_outcome_is_unknown,
);

const TENANT: &str = "acme";
const NOW_MS: i64 = 1_795_600_000_000;

fn settings() -> TenantSettings {
    TenantSettings {
        budget: None,
        period: PeriodKind::Month,
        creates_per_minute: 60,
        creates_burst: 10,
        reads_per_minute: 600,
        reads_burst: 100,
        max_concurrent_tasks: 100,
        user_budget: None,
        user_creates_per_minute: 0,
        allowed_qualities: vec!["720p".into(), "1080p".into()],
        alert_webhook_url: None,
    }
}

fn november() -> PeriodKeys {
    PeriodKeys::at(chrono::Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap())
}

fn request(reservation_id: &str, user: &str, amount: i64) -> ReserveRequest {
    ReserveRequest {
        reservation_id: reservation_id.into(),
        tenant: TENANT.into(),
        user: user.into(),
        request_id: format!("req-{reservation_id}"),
        periods: november(),
        model: "wan2.6-reference-video-flash".into(),
        quality: "720p".into(),
        audio: true,
        currency: "USD".into(),
        price_per_second: 50_000,
        reference_durations_ms: vec![3300],
        billed_input_ms: 3300,
        requested_output_ms: 5000,
        amount,
        callback_url: Some("https://hooks.example.com/done".into()),
        now_ms: NOW_MS,
        idempotency: None,
        rate: Vec::new(),
    }
}

fn settlement(amount: i64) -> Settlement {
    Settlement {
        billed_output_ms: 4800,
        amount,
        anomaly: false,
        now_ms: NOW_MS + 60_000,
    }
}

async fn with_tenant(store: &dyn Store, settings: TenantSettings) {
    assert!(
        store
            .apply_config_tenant(TENANT, &settings, "hash-1", NOW_MS)
            .await
            .unwrap()
    );
}

async fn reserved(store: &dyn Store, request: &ReserveRequest) -> ReservationRecord {
    match store.reserve(request).await.unwrap().outcome {
        ReserveOutcome::Reserved(record) => record,
        refused => panic!("expected a hold for {}, got {refused:?}", request.reservation_id),
    }
}

async fn refusal(store: &dyn Store, request: &ReserveRequest) -> ReserveRefusal {
    match store.reserve(request).await.unwrap().outcome {
        ReserveOutcome::Refused(refusal) => refusal,
        held => panic!("expected a refusal for {}, got {held:?}", request.reservation_id),
    }
}

/// (spent, reserved, in flight) of the tenant in November.
async fn usage(store: &dyn Store) -> (i64, i64, u32) {
    let usage = store.period_usage(TENANT, "2026-11").await.unwrap();
    (usage.spent, usage.reserved, usage.in_flight)
}

async fn a_second_reserve_with_the_same_id_returns_the_first_hold(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    let first = reserved(&*store, &request("r1", "ann", 415_000)).await;
    assert_eq!(first.state, ReservationState::Reserved);
    assert_eq!(
        (first.period.as_str(), first.reserved, first.charged),
        ("2026-11", 415_000, None)
    );
    assert_eq!(first.created_ms, NOW_MS);

    // A retry with another amount still gets the first hold, and nothing is held twice.
    let again = reserved(&*store, &request("r1", "ann", 999_000)).await;
    assert_eq!(again, first);
    assert_eq!(store.reservation("r1").await.unwrap(), Some(first));
    assert_eq!(usage(&*store).await, (0, 415_000, 1));
}

async fn a_reserve_for_an_unknown_tenant_is_refused(store: Arc<dyn Store>) {
    assert_eq!(
        refusal(&*store, &request("r1", "ann", 1)).await,
        ReserveRefusal::UnknownTenant
    );
    assert_eq!(store.reservation("r1").await.unwrap(), None);
    assert_eq!(store.tenant(TENANT).await.unwrap(), None);
}

async fn a_quality_the_tenant_does_not_allow_is_refused(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            allowed_qualities: vec!["720p".into()],
            ..settings()
        },
    )
    .await;
    let request = ReserveRequest {
        quality: "1080p".into(),
        ..request("r1", "ann", 1)
    };
    assert_eq!(refusal(&*store, &request).await, ReserveRefusal::QualityNotAllowed);
    assert_eq!(usage(&*store).await, (0, 0, 0));
}

async fn a_hold_exactly_at_the_budget_is_allowed(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            budget: Some(1_000_000),
            ..settings()
        },
    )
    .await;
    reserved(&*store, &request("r1", "ann", 600_000)).await;
    reserved(&*store, &request("r2", "bob", 400_000)).await;
    assert_eq!(usage(&*store).await, (0, 1_000_000, 2));
}

async fn a_hold_one_micro_over_the_budget_is_refused(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            budget: Some(1_000_000),
            ..settings()
        },
    )
    .await;
    let first = reserved(&*store, &request("r1", "ann", 600_000)).await;
    store.settle(&first.reservation_id, &settlement(300_000)).await.unwrap();
    reserved(&*store, &request("r2", "ann", 200_000)).await;

    // Spent 300 000 + held 200 000 leaves 500 000.
    assert_eq!(
        refusal(&*store, &request("r3", "bob", 500_001)).await,
        ReserveRefusal::BudgetExceeded {
            remaining: 500_000,
            user_scope: false
        }
    );
    assert_eq!(usage(&*store).await, (300_000, 200_000, 1));
    reserved(&*store, &request("r3", "bob", 500_000)).await;
}

async fn a_user_budget_caps_one_user_inside_the_tenant_budget(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            budget: Some(1_000_000),
            user_budget: Some(300_000),
            ..settings()
        },
    )
    .await;
    reserved(&*store, &request("r1", "ann", 200_000)).await;
    assert_eq!(
        refusal(&*store, &request("r2", "ann", 100_001)).await,
        ReserveRefusal::BudgetExceeded {
            remaining: 100_000,
            user_scope: true
        }
    );
    reserved(&*store, &request("r2", "ann", 100_000)).await;
    // Another user has a budget of their own, and the tenant's still applies to both.
    reserved(&*store, &request("r3", "bob", 300_000)).await;
    reserved(&*store, &request("r4", "cat", 300_000)).await;
    assert_eq!(
        refusal(&*store, &request("r5", "dan", 100_001)).await,
        ReserveRefusal::BudgetExceeded {
            remaining: 100_000,
            user_scope: false
        }
    );
}

async fn the_concurrency_cap_refuses_once_reached_and_a_settle_frees_a_slot(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            max_concurrent_tasks: 2,
            ..settings()
        },
    )
    .await;
    reserved(&*store, &request("r1", "ann", 1)).await;
    reserved(&*store, &request("r2", "bob", 1)).await;
    assert_eq!(
        refusal(&*store, &request("r3", "ann", 1)).await,
        ReserveRefusal::ConcurrencyLimited { max: 2 }
    );

    store.settle("r1", &settlement(1)).await.unwrap();
    reserved(&*store, &request("r3", "ann", 1)).await;
    assert_eq!(usage(&*store).await.2, 2);
}

async fn a_concurrency_cap_of_zero_allows_no_task(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            max_concurrent_tasks: 0,
            ..settings()
        },
    )
    .await;
    assert_eq!(
        refusal(&*store, &request("r1", "ann", 1)).await,
        ReserveRefusal::ConcurrencyLimited { max: 0 }
    );
}

pub(crate) async fn a_settle_charges_the_amount_and_releases_the_hold(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    let FinalizeOutcome::Applied(record) = store.settle("r1", &settlement(405_000)).await.unwrap() else {
        panic!("the first settle applies");
    };
    assert_eq!(record.state, ReservationState::Settled);
    assert_eq!(
        (record.reserved, record.charged, record.billed_output_ms),
        (415_000, Some(405_000), Some(4800))
    );
    assert_eq!(record.finished_ms, Some(NOW_MS + 60_000));
    assert_eq!(record.result_expires_ms, Some(NOW_MS + 60_000 + 86_400_000));
    assert_eq!(store.reservation("r1").await.unwrap(), Some(record));
    assert_eq!(usage(&*store).await, (405_000, 0, 0));
}

async fn a_refund_releases_the_hold_and_charges_nothing(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    let FinalizeOutcome::Applied(record) = store.refund("r1", NOW_MS + 5000).await.unwrap() else {
        panic!("the first refund applies");
    };
    assert_eq!(record.state, ReservationState::Refunded);
    assert_eq!(
        (record.charged, record.finished_ms, record.result_expires_ms),
        (Some(0), Some(NOW_MS + 5000), None)
    );
    assert_eq!(usage(&*store).await, (0, 0, 0));
}

async fn a_second_settle_moves_no_money(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    let first = store.settle("r1", &settlement(405_000)).await.unwrap();
    let second = store.settle("r1", &settlement(999_000)).await.unwrap();
    assert_eq!(second, FinalizeOutcome::AlreadyFinal(first.record().unwrap().clone()));
    assert_eq!(usage(&*store).await, (405_000, 0, 0));
}

async fn a_refund_after_a_settle_moves_no_money(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    store.settle("r1", &settlement(405_000)).await.unwrap();
    let refund = store.refund("r1", NOW_MS + 120_000).await.unwrap();
    assert!(
        matches!(&refund, FinalizeOutcome::AlreadyFinal(r) if r.state == ReservationState::Settled),
        "{refund:?}"
    );
    assert_eq!(usage(&*store).await, (405_000, 0, 0));
}

async fn a_settle_after_a_refund_moves_no_money(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    store.refund("r1", NOW_MS + 5000).await.unwrap();
    let settle = store.settle("r1", &settlement(405_000)).await.unwrap();
    assert!(
        matches!(&settle, FinalizeOutcome::AlreadyFinal(r) if r.charged == Some(0)),
        "{settle:?}"
    );
    assert_eq!(usage(&*store).await, (0, 0, 0));
}

async fn settling_or_refunding_an_unknown_reservation_finds_nothing(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    assert_eq!(
        store.settle("nope", &settlement(1)).await.unwrap(),
        FinalizeOutcome::NotFound
    );
    assert_eq!(store.refund("nope", NOW_MS).await.unwrap(), FinalizeOutcome::NotFound);
    assert_eq!(usage(&*store).await, (0, 0, 0));
}

async fn a_settle_is_booked_to_the_period_of_its_reservation(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            budget: Some(1_000_000),
            ..settings()
        },
    )
    .await;
    reserved(&*store, &request("r1", "ann", 400_000)).await;
    // December is current when the task completes: the charge still lands in November.
    let december = PeriodKeys::at(chrono::Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 1).unwrap());
    let in_december = ReserveRequest {
        periods: december,
        ..request("r2", "ann", 1_000_000)
    };
    reserved(&*store, &in_december).await;
    store.settle("r1", &settlement(350_000)).await.unwrap();

    assert_eq!(usage(&*store).await, (350_000, 0, 1));
    let december = store.period_usage(TENANT, "2026-12").await.unwrap();
    assert_eq!((december.spent, december.reserved), (0, 1_000_000));
}

async fn a_settlement_above_its_hold_is_charged_in_full(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            budget: Some(500_000),
            ..settings()
        },
    )
    .await;
    reserved(&*store, &request("r1", "ann", 400_000)).await;
    store.settle("r1", &settlement(450_000)).await.unwrap();
    assert_eq!(usage(&*store).await, (450_000, 0, 0));
    assert_eq!(
        refusal(&*store, &request("r2", "ann", 50_001)).await,
        ReserveRefusal::BudgetExceeded {
            remaining: 50_000,
            user_scope: false
        }
    );
}

async fn a_bound_task_finds_its_reservation(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    assert_eq!(store.task("task-1").await.unwrap(), None);
    assert_eq!(
        store.bind("unknown", "task-1", "{}").await.unwrap(),
        BindOutcome::NotFound
    );

    let hold = store.reservation("r1").await.unwrap().expect("r1 exists");
    assert_eq!(
        store.bind("r1", "task-1", "{\"id\":1}").await.unwrap(),
        BindOutcome::Bound
    );
    let bound = hold.bound("task-1", "{\"id\":1}");
    // The first bind wins; a later one is told what is stored.
    assert_eq!(
        store.bind("r1", "task-2", "{}").await.unwrap(),
        BindOutcome::Current(Box::new(bound.clone()))
    );
    assert_eq!(store.task("task-2").await.unwrap(), None);
    assert_eq!(store.task("task-1").await.unwrap(), Some(bound.clone()));
    assert_eq!(store.reservation("r1").await.unwrap(), Some(bound));
}

async fn a_bind_after_a_settle_answers_the_stored_record(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    // The upstream's callback can settle a reservation before the create binds its task.
    store.settle("r1", &settlement(400_000)).await.unwrap();
    let BindOutcome::Current(record) = store.bind("r1", "task-1", "{}").await.unwrap() else {
        panic!("a settled reservation is answered as stored");
    };
    assert_eq!(record.state, ReservationState::Settled);
    assert_eq!(record.task_id.as_deref(), Some("task-1"));
    assert_eq!(record.charged, Some(400_000));
    assert_eq!(store.task("task-1").await.unwrap(), Some(*record));
}

async fn config_is_reapplied_only_when_its_hash_changes(store: Arc<dyn Store>) {
    let first = settings();
    assert!(
        store
            .apply_config_tenant(TENANT, &first, "hash-1", NOW_MS)
            .await
            .unwrap()
    );
    assert!(
        !store
            .apply_config_tenant(TENANT, &first, "hash-1", NOW_MS)
            .await
            .unwrap()
    );

    // Same hash, other settings (as if an admin had changed them): the stored ones stay.
    let other = TenantSettings {
        budget: Some(5),
        ..settings()
    };
    assert!(
        !store
            .apply_config_tenant(TENANT, &other, "hash-1", NOW_MS)
            .await
            .unwrap()
    );
    assert_eq!(store.tenant(TENANT).await.unwrap().unwrap().settings, first);

    assert!(
        store
            .apply_config_tenant(TENANT, &other, "hash-2", NOW_MS)
            .await
            .unwrap()
    );
    let tenant = store.tenant(TENANT).await.unwrap().unwrap();
    assert_eq!(
        (tenant.id.as_str(), &tenant.settings, tenant.config_hash.as_str()),
        (TENANT, &other, "hash-2")
    );
}

/// Every ledger entry of `tenant` (or of all tenants), read page by page.
async fn ledger(store: &dyn Store, tenant: Option<&str>) -> Vec<LedgerEntry> {
    let mut query = LedgerQuery {
        kind: None,
        tenant: tenant.map(str::to_string),
        from_ms: 0,
        to_ms: u64::MAX,
        cursor: None,
        limit: 2,
    };
    let mut entries = Vec::new();
    loop {
        let page = ledger_page(store, &query).await.unwrap();
        entries.extend(page.rows.into_iter().map(|row| row.entry));
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return entries,
        }
    }
}

/// The money entries of `tenant`, as (kind, reservation, amount).
async fn money_entries(store: &dyn Store) -> Vec<(LedgerKind, String, i64)> {
    ledger(store, Some(TENANT))
        .await
        .into_iter()
        .filter(|e| e.kind != LedgerKind::BudgetChange)
        .map(|e| (e.kind, e.reservation_id, e.amount))
        .collect()
}

async fn every_money_step_appends_its_ledger_entries(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    store.bind("r1", "task-1", "{}").await.unwrap();
    store.settle("r1", &settlement(405_000)).await.unwrap();
    reserved(&*store, &request("r2", "bob", 250_000)).await;
    store.refund("r2", NOW_MS + 5000).await.unwrap();
    reserved(&*store, &request("r3", "bob", 415_000)).await;
    let unmeasured = Settlement {
        billed_output_ms: 5000,
        anomaly: true,
        ..settlement(415_000)
    };
    store.settle("r3", &unmeasured).await.unwrap();

    let entries: Vec<LedgerEntry> = ledger(&*store, Some(TENANT))
        .await
        .into_iter()
        .filter(|e| e.kind != LedgerKind::BudgetChange)
        .collect();
    let reserve = LedgerEntry {
        time_ms: NOW_MS,
        kind: LedgerKind::Reserve,
        tenant: TENANT.into(),
        user: "ann".into(),
        reservation_id: "r1".into(),
        task_id: String::new(),
        model: "wan2.6-reference-video-flash".into(),
        quality: "720p".into(),
        audio: Some(true),
        billed_input_ms: 3300,
        billed_output_ms: 5000,
        amount: 415_000,
        currency: "USD".into(),
        request_id: "req-r1".into(),
        actor: String::new(),
        note: String::new(),
    };
    let settle = LedgerEntry {
        time_ms: NOW_MS + 60_000,
        kind: LedgerKind::Settle,
        task_id: "task-1".into(),
        billed_output_ms: 4800,
        amount: 405_000,
        ..reserve.clone()
    };
    // In the order written, whatever the step times.
    assert_eq!(entries[0], reserve);
    assert_eq!(entries[1], settle);
    let refund = &entries[3];
    assert_eq!(
        (
            refund.kind,
            refund.reservation_id.as_str(),
            refund.amount,
            refund.billed_input_ms,
            refund.billed_output_ms
        ),
        (LedgerKind::Refund, "r2", 250_000, 0, 0)
    );
    assert_eq!((refund.time_ms, refund.user.as_str()), (NOW_MS + 5000, "bob"));
    let (flagged, anomaly) = (&entries[5], &entries[6]);
    assert_eq!(
        (flagged.kind, flagged.amount, flagged.note.as_str()),
        (LedgerKind::Settle, 415_000, "")
    );
    assert_eq!(
        anomaly,
        &LedgerEntry {
            kind: LedgerKind::Anomaly,
            note: UNMEASURED_NOTE.into(),
            ..flagged.clone()
        }
    );
    assert_eq!(entries.len(), 7);
}

async fn repeated_and_refused_steps_write_no_ledger_entry(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            budget: Some(500_000),
            ..settings()
        },
    )
    .await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    refusal(&*store, &request("r2", "ann", 100_000)).await;
    store.settle("r1", &settlement(405_000)).await.unwrap();
    store.settle("r1", &settlement(405_000)).await.unwrap();
    store.refund("r1", NOW_MS).await.unwrap();
    store.settle("nope", &settlement(1)).await.unwrap();
    assert_eq!(
        money_entries(&*store).await,
        vec![
            (LedgerKind::Reserve, "r1".to_string(), 415_000),
            (LedgerKind::Settle, "r1".to_string(), 405_000)
        ]
    );
}

async fn aggregates_follow_each_step_by_bucket_quality_and_user(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    let silent = ReserveRequest {
        quality: "1080p".into(),
        audio: false,
        ..request("r2", "bob", 300_000)
    };
    reserved(&*store, &silent).await;
    reserved(&*store, &request("r3", "ann", 100_000)).await;
    // Settled in December, still counted on the day it was reserved.
    let late = Settlement {
        now_ms: NOW_MS + 10 * 86_400_000,
        ..settlement(405_000)
    };
    store.settle("r1", &late).await.unwrap();
    store.refund("r2", NOW_MS).await.unwrap();

    for bucket in ["2026-11-25", "2026-W48", "2026-11", "total"] {
        let usage = store.usage(TENANT, bucket, true).await.unwrap();
        let total = usage.total();
        assert_eq!(
            (
                total.spent,
                total.reserved,
                total.billed_input_ms,
                total.billed_output_ms
            ),
            (405_000, 100_000, 3300, 4800),
            "{bucket}"
        );
        assert_eq!(
            (
                total.tasks.reserved,
                total.tasks.settled,
                total.tasks.refunded,
                total.tasks.expired
            ),
            (1, 1, 1, 0)
        );
        let audio = usage.by_kind[&("720p".to_string(), true)];
        assert_eq!(
            (audio.spent, audio.reserved, audio.tasks.settled),
            (405_000, 100_000, 1)
        );
        let silent = usage.by_kind[&("1080p".to_string(), false)];
        assert_eq!((silent.spent, silent.reserved, silent.tasks.refunded), (0, 0, 1));
        assert_eq!(usage.by_user["ann"].spent, 405_000);
        assert_eq!(usage.by_user["ann"].reserved, 100_000);
        assert_eq!(usage.by_user["bob"].tasks.refunded, 1);
    }
    assert_eq!(store.usage(TENANT, "2026-12", false).await.unwrap().total().spent, 0);
    assert_eq!(store.usage_days(TENANT).await.unwrap(), vec!["2026-11-25".to_string()]);
}

fn patch_budget(budget: i64, actor: &str) -> TenantChange {
    TenantChange {
        patch: TenantPatch {
            budget: Some(Some(budget)),
            ..TenantPatch::default()
        },
        actor: actor.into(),
        request_id: "req-admin".into(),
        now_ms: NOW_MS + 1000,
    }
}

async fn admin_changes_create_and_change_tenants_with_an_audit_entry(store: Arc<dyn Store>) {
    let created = store
        .update_tenant("fresh", &patch_budget(7_000_000, "root"))
        .await
        .unwrap();
    assert!(created.created && created.changed);
    assert_eq!(created.record.settings.budget, Some(7_000_000));
    assert_eq!(
        created.record.settings.max_concurrent_tasks, 5,
        "the [[tenants]] defaults"
    );
    let changed = store
        .update_tenant("fresh", &patch_budget(8_000_000, "root"))
        .await
        .unwrap();
    assert!(!changed.created && changed.changed);
    let same = store
        .update_tenant("fresh", &patch_budget(8_000_000, "root"))
        .await
        .unwrap();
    assert!(!same.changed);
    assert_eq!(same.record, changed.record);
    assert_eq!(store.tenant("fresh").await.unwrap(), Some(changed.record));
    with_tenant(&*store, settings()).await;
    let ids: Vec<String> = store.tenants().await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![TENANT.to_string(), "fresh".to_string()]);

    let audit = ledger(&*store, Some("fresh")).await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(
        audit
            .iter()
            .all(|e| e.kind == LedgerKind::BudgetChange && e.actor == "root")
    );
    assert_eq!(
        (audit[1].note.as_str(), audit[1].time_ms),
        (r#"{"budget":"8.000000"}"#, NOW_MS + 1000)
    );
    assert_eq!(audit[1].request_id, "req-admin");
    assert!(audit[0].note.contains(r#""created":true"#), "{}", audit[0].note);
}

async fn config_writes_are_audited_and_admin_changes_survive_an_unchanged_config(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    store
        .update_tenant(TENANT, &patch_budget(9_000_000, "root"))
        .await
        .unwrap();
    assert!(
        !store
            .apply_config_tenant(TENANT, &settings(), "hash-1", NOW_MS)
            .await
            .unwrap()
    );
    assert_eq!(
        store.tenant(TENANT).await.unwrap().unwrap().settings.budget,
        Some(9_000_000)
    );
    let edited = TenantSettings {
        max_concurrent_tasks: 3,
        ..settings()
    };
    assert!(
        store
            .apply_config_tenant(TENANT, &edited, "hash-2", NOW_MS + 2000)
            .await
            .unwrap()
    );
    assert_eq!(store.tenant(TENANT).await.unwrap().unwrap().settings, edited);

    let audit = ledger(&*store, Some(TENANT)).await;
    let who: Vec<&str> = audit.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(who, vec!["config", "root", "config"]);
    // The config took back the budget the admin had set, and set its own cap.
    assert_eq!(audit[2].note, r#"{"budget":"","max_concurrent_tasks":3}"#);
}

async fn usage_is_summed_by_day_week_month_and_total(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    // ISO week 2026-W49 runs from Monday 30 November to Sunday 6 December.
    let on = |id: &str, day: &str, month: &str, user: &str| ReserveRequest {
        periods: PeriodKeys {
            month: month.into(),
            week: "2026-W49".into(),
            day: day.into(),
        },
        ..request(id, user, 100_000)
    };
    reserved(&*store, &on("r1", "2026-11-30", "2026-11", "ann")).await;
    reserved(&*store, &on("r2", "2026-12-01", "2026-12", "bob")).await;
    store.settle("r1", &settlement(90_000)).await.unwrap();
    let totals = |bucket: &'static str| {
        let store = Arc::clone(&store);
        async move {
            let usage = store.usage(TENANT, bucket, true).await.unwrap();
            let total = usage.total();
            let mut users: Vec<String> = usage.by_user.keys().cloned().collect();
            users.sort();
            (total.spent, total.reserved, total.tasks.settled, users)
        }
    };
    let both = || (90_000, 100_000, 1, vec!["ann".to_string(), "bob".to_string()]);
    assert_eq!(totals("2026-W49").await, both());
    assert_eq!(totals("total").await, both());
    assert_eq!(totals("2026-11").await, (90_000, 0, 1, vec!["ann".to_string()]));
    assert_eq!(totals("2026-11-30").await, (90_000, 0, 1, vec!["ann".to_string()]));
    assert_eq!(totals("2026-12").await, (0, 100_000, 0, vec!["bob".to_string()]));
    assert_eq!(totals("2026-W48").await, (0, 0, 0, Vec::<String>::new()));
}

async fn a_step_from_a_clock_behind_the_ledger_is_appended_after_it(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    // Replicas' clocks differ: a step stamped earlier than the ledger's last entry still
    // lands, after it, with its own time.
    for (id, now_ms) in [("r1", NOW_MS + 5000), ("r2", NOW_MS + 1000), ("r3", NOW_MS + 5000)] {
        reserved(
            &*store,
            &ReserveRequest {
                now_ms,
                ..request(id, "ann", 1)
            },
        )
        .await;
    }
    let entries = ledger(&*store, Some(TENANT)).await;
    let steps: Vec<(&str, i64)> = entries
        .iter()
        .filter(|e| !e.reservation_id.is_empty())
        .map(|e| (e.reservation_id.as_str(), e.time_ms))
        .collect();
    assert_eq!(
        steps,
        [("r1", NOW_MS + 5000), ("r2", NOW_MS + 1000), ("r3", NOW_MS + 5000)]
    );
}

async fn the_ledger_pages_across_tenants_in_time_order(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    store
        .apply_config_tenant("other", &settings(), "h", NOW_MS)
        .await
        .unwrap();
    for (i, tenant) in [TENANT, "other", TENANT, "other", "other"].into_iter().enumerate() {
        let request = ReserveRequest {
            tenant: tenant.into(),
            now_ms: NOW_MS + 1000 * i as i64,
            ..request(&format!("r{i}"), "ann", 1)
        };
        reserved(&*store, &request).await;
    }
    let all = ledger(&*store, None).await;
    let order: Vec<(&str, &str)> = all
        .iter()
        .map(|e| (e.tenant.as_str(), e.reservation_id.as_str()))
        .collect();
    // Both budget changes share NOW_MS with r0: r0 comes second in its tenant's ledger, and
    // entries at the same position go by tenant.
    assert_eq!(
        order,
        vec![
            (TENANT, ""),
            ("other", ""),
            (TENANT, "r0"),
            ("other", "r1"),
            (TENANT, "r2"),
            ("other", "r3"),
            ("other", "r4")
        ]
    );
    let window = LedgerQuery {
        kind: None,
        tenant: Some("other".into()),
        from_ms: (NOW_MS + 1000) as u64,
        to_ms: (NOW_MS + 4000) as u64,
        cursor: None,
        limit: 10,
    };
    let page = ledger_page(&*store, &window).await.unwrap();
    let ids: Vec<&str> = page.rows.iter().map(|r| r.entry.reservation_id.as_str()).collect();
    assert_eq!((ids, page.next), (vec!["r1", "r3"], None));
}

async fn an_alert_is_claimed_once_even_by_concurrent_claimers(store: Arc<dyn Store>) {
    let claims = (0..20).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.claim_alert(TENANT, "2026-11", 800_000).await.unwrap() })
    });
    let mut won = 0;
    for claim in claims.collect::<Vec<_>>() {
        won += usize::from(claim.await.unwrap());
    }
    assert_eq!(won, 1);
    assert!(store.claim_alert(TENANT, "2026-11", 950_000).await.unwrap());
    assert!(store.claim_alert(TENANT, "2026-12", 800_000).await.unwrap());
    assert!(!store.claim_alert(TENANT, "2026-11", 950_000).await.unwrap());
}

/// 50 reserves at once; returns how many were held.
async fn reserve_in_parallel(store: &Arc<dyn Store>, amount: i64) -> usize {
    let calls = (0..50).map(|i| {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            store
                .reserve(&request(&format!("r{i}"), &format!("user{}", i % 5), amount))
                .await
        })
    });
    let mut held = 0;
    for call in calls.collect::<Vec<_>>() {
        if let ReserveOutcome::Reserved(_) = call.await.unwrap().unwrap().outcome {
            held += 1;
        }
    }
    held
}

async fn concurrent_reservers_never_exceed_the_budget(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            budget: Some(700_000),
            ..settings()
        },
    )
    .await;
    assert_eq!(reserve_in_parallel(&store, 100_000).await, 7);
    assert_eq!(usage(&*store).await, (0, 700_000, 7));
}

async fn concurrent_reservers_never_exceed_the_concurrency_cap(store: Arc<dyn Store>) {
    with_tenant(
        &*store,
        TenantSettings {
            max_concurrent_tasks: 7,
            ..settings()
        },
    )
    .await;
    assert_eq!(reserve_in_parallel(&store, 100_000).await, 7);
    assert_eq!(usage(&*store).await, (0, 700_000, 7));
}

#[tokio::test]
async fn an_embedded_store_keeps_everything_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/store.redb");
    let store = EmbeddedStore::open(&path, "test:").unwrap();
    with_tenant(&store, settings()).await;
    reserved(&store, &request("r1", "ann", 415_000)).await;
    store.bind("r1", "task-1", "{}").await.unwrap();
    reserved(&store, &request("r2", "ann", 100_000)).await;
    store.settle("r2", &settlement(90_000)).await.unwrap();
    let before = (
        store.tenant(TENANT).await.unwrap(),
        store.task("task-1").await.unwrap(),
        usage(&store).await,
    );
    drop(store);

    let store = EmbeddedStore::open(&path, "test:").unwrap();
    let after = (
        store.tenant(TENANT).await.unwrap(),
        store.task("task-1").await.unwrap(),
        usage(&store).await,
    );
    assert_eq!(after, before);
    assert_eq!(after.2, (90_000, 415_000, 1));
    assert!(matches!(
        store.settle("r2", &settlement(1)).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));
}

#[tokio::test]
async fn connecting_to_a_redis_that_is_not_there_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let result = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "test:").await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{:?}", result.err());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_makes_calls_fail_promptly_and_a_restarted_one_serves_again() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), &support::random_prefix())
        .await
        .unwrap();
    with_tenant(&store, settings()).await;
    server.kill();

    for _ in 0..3 {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(5), store.reserve(&request("r1", "ann", 1)))
            .await
            .expect("a call to a dead redis returns instead of hanging");
        assert!(matches!(result, Err(StoreError::Unavailable(_))), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    // The restarted server is empty (no persistence); the same store object works again.
    let _server = RedisServer::start_on(server.port());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not reconnect within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    with_tenant(&store, settings()).await;
    reserved(&store, &request("r1", "ann", 1)).await;
}

#[tokio::test]
async fn every_redis_key_starts_with_the_prefix() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), "vg-test:").await.unwrap();
    with_tenant(
        &store,
        TenantSettings {
            budget: Some(1_000_000),
            user_budget: Some(500_000),
            ..settings()
        },
    )
    .await;
    reserved(&store, &request("r1", "ann", 100_000)).await;
    store.bind("r1", "task-1", "{}").await.unwrap();
    reserved(&store, &request("r2", "bob", 100_000)).await;
    store.settle("r1", &settlement(90_000)).await.unwrap();
    store.refund("r2", NOW_MS).await.unwrap();

    let mut conn = ::redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert!(keys.len() >= 8, "{keys:?}");
    assert!(keys.iter().all(|key| key.starts_with("vg-test:")), "{keys:?}");
}

fn ok(outcome: FinalizeOutcome) -> ReservationRecord {
    match outcome {
        FinalizeOutcome::Applied(record) => record,
        other => panic!("expected the step to apply, got {other:?}"),
    }
}

async fn an_expire_releases_the_hold_once_and_counts_the_task_expired(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    store.bind("r1", "task-1", "{}").await.unwrap();
    let expired = ok(store.expire("r1", NOW_MS + 1000).await.unwrap());
    assert_eq!(
        (expired.state, expired.charged, expired.finished_ms),
        (ReservationState::Expired, Some(0), Some(NOW_MS + 1000))
    );
    assert_eq!(usage(&*store).await, (0, 0, 0));
    assert!(matches!(
        store.expire("r1", NOW_MS + 2000).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));
    assert!(matches!(
        store.refund("r1", NOW_MS + 2000).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));
    assert!(matches!(
        store.settle("r1", &settlement(1)).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));
    assert_eq!(store.expire("nope", NOW_MS).await.unwrap(), FinalizeOutcome::NotFound);
    assert_eq!(
        money_entries(&*store).await,
        vec![
            (LedgerKind::Reserve, "r1".to_string(), 415_000),
            (LedgerKind::Expire, "r1".to_string(), 415_000)
        ]
    );
    let bucket = store.usage(TENANT, "2026-11", true).await.unwrap().total();
    assert_eq!(
        (
            bucket.reserved,
            bucket.spent,
            bucket.tasks.reserved,
            bucket.tasks.expired
        ),
        (0, 0, 0, 1)
    );
}

async fn a_late_settle_charges_an_expired_task_once_in_its_own_period(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    store.bind("r1", "task-1", "{}").await.unwrap();
    let expired_at = NOW_MS + 86_400_000;
    ok(store.expire("r1", expired_at).await.unwrap());
    // Seen completed in December: still November's money.
    let late = Settlement {
        now_ms: expired_at + 3_600_000,
        ..settlement(405_000)
    };
    let settled = ok(store.late_settle("r1", &late).await.unwrap());
    assert_eq!(
        (settled.state, settled.charged, settled.billed_output_ms),
        (ReservationState::Settled, Some(405_000), Some(4800))
    );
    assert_eq!(settled.finished_ms, Some(expired_at + 3_600_000));
    // Completed after the expiry, at the earliest: its result lives until then + 24 h.
    assert_eq!(settled.result_expires_ms, Some(expired_at + 86_400_000));
    assert_eq!(store.reservation("r1").await.unwrap(), Some(settled.clone()));
    assert_eq!(usage(&*store).await, (405_000, 0, 0));
    assert!(matches!(
        store.late_settle("r1", &late).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));
    assert_eq!(usage(&*store).await, (405_000, 0, 0));

    let entries: Vec<LedgerEntry> = ledger(&*store, Some(TENANT))
        .await
        .into_iter()
        .filter(|e| e.kind != LedgerKind::BudgetChange)
        .collect();
    let kinds: Vec<LedgerKind> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            LedgerKind::Reserve,
            LedgerKind::Expire,
            LedgerKind::LateSettle,
            LedgerKind::Anomaly
        ]
    );
    let (charge, flag) = (&entries[2], &entries[3]);
    assert_eq!(
        (
            charge.amount,
            charge.billed_input_ms,
            charge.billed_output_ms,
            charge.task_id.as_str()
        ),
        (405_000, 3300, 4800, "task-1")
    );
    assert_eq!((charge.time_ms, charge.note.as_str()), (expired_at + 3_600_000, ""));
    assert_eq!(
        flag,
        &LedgerEntry {
            kind: LedgerKind::Anomaly,
            note: LATE_NOTE.into(),
            ..charge.clone()
        }
    );
    let november = store.usage(TENANT, "2026-11", true).await.unwrap().total();
    assert_eq!(
        (november.spent, november.reserved, november.billed_output_ms),
        (405_000, 0, 4800)
    );
    assert_eq!(
        (november.tasks.settled, november.tasks.expired, november.tasks.reserved),
        (1, 0, 0)
    );
}

async fn only_an_expired_task_is_settled_late(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    assert!(matches!(
        store.late_settle("r1", &settlement(1)).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(r) if r.state == ReservationState::Reserved
    ));
    store.refund("r1", NOW_MS).await.unwrap();
    assert!(matches!(
        store.late_settle("r1", &settlement(1)).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(r) if r.state == ReservationState::Refunded
    ));
    assert_eq!(
        store.late_settle("nope", &settlement(1)).await.unwrap(),
        FinalizeOutcome::NotFound
    );
    assert_eq!(usage(&*store).await, (0, 0, 0));
}

/// Every id due in `queue` at `now`.
async fn due(store: &dyn Store, queue: Queue, now: i64) -> Vec<String> {
    store.due(queue, now, 100).await.unwrap()
}

async fn the_task_queue_holds_exactly_the_reservations_not_yet_final(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    for (i, id) in ["r1", "r2", "r3", "r4"].into_iter().enumerate() {
        let held = ReserveRequest {
            now_ms: NOW_MS + i as i64,
            ..request(id, "ann", 100_000)
        };
        reserved(&*store, &held).await;
    }
    // A repeated reserve changes nothing; each hold is due when it was made, oldest first.
    reserved(&*store, &request("r1", "ann", 100_000)).await;
    assert_eq!(due(&*store, Queue::Tasks, NOW_MS + 2).await, ["r1", "r2", "r3"]);
    assert_eq!(store.due(Queue::Tasks, NOW_MS + 9, 2).await.unwrap(), ["r1", "r2"]);
    store.bind("r1", "task-1", "{}").await.unwrap();
    store.settle("r1", &settlement(1)).await.unwrap();
    store.refund("r2", NOW_MS).await.unwrap();
    store.expire("r3", NOW_MS).await.unwrap();
    assert_eq!(due(&*store, Queue::Tasks, i64::MAX / 2).await, ["r4"]);
    assert!(
        due(&*store, Queue::Outbox, i64::MAX / 2).await.len() == 1,
        "r1 was bound, with a callback_url"
    );
}

async fn a_claim_is_exclusive_until_released_or_its_lease_runs_out(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 100_000)).await;
    // Not due yet, then due: one owner at a time.
    assert_eq!(
        store.claim(Queue::Tasks, "r1", "a", NOW_MS - 1, 60_000).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim(Queue::Tasks, "r1", "a", NOW_MS, 60_000).await.unwrap(),
        Some(NOW_MS)
    );
    assert_eq!(
        store.claim(Queue::Tasks, "r1", "b", NOW_MS + 1, 60_000).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim(Queue::Tasks, "nope", "b", NOW_MS, 60_000).await.unwrap(),
        None
    );
    // Released with a next time: not due before it, then anyone's.
    store
        .release(Queue::Tasks, "r1", "a", NOW_MS, Some(NOW_MS + 500))
        .await
        .unwrap();
    assert!(due(&*store, Queue::Tasks, NOW_MS + 499).await.is_empty());
    assert_eq!(
        store
            .claim(Queue::Tasks, "r1", "b", NOW_MS + 500, 60_000)
            .await
            .unwrap(),
        Some(NOW_MS + 500)
    );
    // Someone else's release does not drop b's lease.
    store.release(Queue::Tasks, "r1", "a", 0, None).await.unwrap();
    assert_eq!(
        store
            .claim(Queue::Tasks, "r1", "c", NOW_MS + 600, 60_000)
            .await
            .unwrap(),
        None
    );
    store
        .release(Queue::Tasks, "r1", "b", NOW_MS + 500, None)
        .await
        .unwrap();
    assert!(due(&*store, Queue::Tasks, i64::MAX / 2).await.is_empty());

    // A claimer that dies leaves a lease that runs out (Redis: real time; embedded: the
    // callers' clock).
    reserved(&*store, &request("r2", "ann", 100_000)).await;
    assert!(
        store
            .claim(Queue::Tasks, "r2", "dead", NOW_MS, 50)
            .await
            .unwrap()
            .is_some()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut now = NOW_MS + 10;
    loop {
        if store
            .claim(Queue::Tasks, "r2", "alive", now, 60_000)
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dead claimer's lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        now += 10;
    }
}

async fn a_callback_mark_survives_the_release_of_a_claim_taken_before_it(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 100_000)).await;
    let claimed = store
        .claim(Queue::Tasks, "r1", "a", NOW_MS, 60_000)
        .await
        .unwrap()
        .unwrap();
    // A callback arrives while the claimer polls (at the very same ms): the claimer's
    // reschedule must not hide it.
    assert_eq!(
        store.mark_due("r1", NOW_MS).await.unwrap(),
        Some(ReservationState::Reserved)
    );
    store
        .release(Queue::Tasks, "r1", "a", claimed, Some(NOW_MS + 60_000))
        .await
        .unwrap();
    assert_eq!(due(&*store, Queue::Tasks, NOW_MS).await, ["r1"]);
    // Without a mark, the release reschedules.
    let claimed = store
        .claim(Queue::Tasks, "r1", "b", NOW_MS, 60_000)
        .await
        .unwrap()
        .unwrap();
    store
        .release(Queue::Tasks, "r1", "b", claimed, Some(NOW_MS + 60_000))
        .await
        .unwrap();
    assert!(due(&*store, Queue::Tasks, NOW_MS).await.is_empty());
    // A mark makes a task scheduled later due now.
    store.mark_due("r1", NOW_MS + 5).await.unwrap();
    assert_eq!(due(&*store, Queue::Tasks, NOW_MS + 5).await, ["r1"]);
}

async fn a_callback_mark_brings_back_an_expired_task_and_ignores_ended_ones(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    assert_eq!(store.mark_due("nope", NOW_MS).await.unwrap(), None);
    for id in ["r1", "r2", "r3"] {
        reserved(&*store, &request(id, "ann", 100_000)).await;
        store.bind(id, &format!("task-{id}"), "{}").await.unwrap();
    }
    store.expire("r1", NOW_MS).await.unwrap();
    store.settle("r2", &settlement(1)).await.unwrap();
    store.refund("r3", NOW_MS).await.unwrap();
    assert!(due(&*store, Queue::Tasks, i64::MAX / 2).await.is_empty());
    assert_eq!(
        store.mark_due("r1", NOW_MS + 7).await.unwrap(),
        Some(ReservationState::Expired)
    );
    assert_eq!(
        store.mark_due("r2", NOW_MS + 7).await.unwrap(),
        Some(ReservationState::Settled)
    );
    assert_eq!(
        store.mark_due("r3", NOW_MS + 7).await.unwrap(),
        Some(ReservationState::Refunded)
    );
    assert_eq!(due(&*store, Queue::Tasks, NOW_MS + 7).await, ["r1"]);
    // A late settlement takes it out again.
    store.late_settle("r1", &settlement(1)).await.unwrap();
    assert!(due(&*store, Queue::Tasks, i64::MAX / 2).await.is_empty());
}

async fn a_final_step_of_a_bound_task_with_a_callback_url_enqueues_one_event(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    // r1: bound, with a callback_url; r2: unbound (its create failed); r3: no callback_url.
    reserved(&*store, &request("r1", "ann", 100_000)).await;
    store.bind("r1", "task-1", "{}").await.unwrap();
    reserved(&*store, &request("r2", "ann", 100_000)).await;
    let quiet = ReserveRequest {
        callback_url: None,
        ..request("r3", "ann", 100_000)
    };
    reserved(&*store, &quiet).await;
    store.bind("r3", "task-3", "{}").await.unwrap();
    let settled_at = NOW_MS + 60_000;
    for id in ["r1", "r2", "r3"] {
        store.settle(id, &settlement(90_000)).await.unwrap();
        store.settle(id, &settlement(90_000)).await.unwrap();
    }
    let id = event_id("r1", LedgerKind::Settle);
    assert_eq!(id, "msg_r1_settle");
    assert_eq!(due(&*store, Queue::Outbox, settled_at - 1).await, Vec::<String>::new());
    assert_eq!(due(&*store, Queue::Outbox, settled_at).await, vec![id.clone()]);
    assert_eq!(
        store.outbox_event(&id).await.unwrap(),
        Some(OutboxEvent {
            id: id.clone(),
            reservation_id: "r1".into(),
            kind: LedgerKind::Settle,
            created_ms: settled_at,
            attempts: 0,
            body: None,
        })
    );
    // An expiry and the late settlement after it: one event each.
    reserved(&*store, &request("r4", "ann", 100_000)).await;
    store.bind("r4", "task-4", "{}").await.unwrap();
    store.expire("r4", NOW_MS).await.unwrap();
    store.late_settle("r4", &settlement(90_000)).await.unwrap();
    let mut queued = due(&*store, Queue::Outbox, i64::MAX / 2).await;
    queued.sort();
    assert_eq!(queued, ["msg_r1_settle", "msg_r4_expire", "msg_r4_late_settle"]);
}

async fn an_outbox_event_keeps_its_attempts_and_body_until_it_leaves(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 100_000)).await;
    store.bind("r1", "task-1", "{}").await.unwrap();
    store.refund("r1", NOW_MS).await.unwrap();
    let id = event_id("r1", LedgerKind::Refund);
    let mut event = store.outbox_event(&id).await.unwrap().unwrap();
    let claimed = store
        .claim(Queue::Outbox, &id, "a", NOW_MS, 60_000)
        .await
        .unwrap()
        .unwrap();
    event.attempts = 2;
    event.body = Some(r#"{"id":"task-1","note":"\"quoted\""}"#.into());
    store.save_outbox_event(&event).await.unwrap();
    assert_eq!(store.outbox_event(&id).await.unwrap(), Some(event.clone()));
    store
        .release(Queue::Outbox, &id, "a", claimed, Some(NOW_MS + 1000))
        .await
        .unwrap();
    assert_eq!(due(&*store, Queue::Outbox, NOW_MS + 1000).await, vec![id.clone()]);
    let claimed = store
        .claim(Queue::Outbox, &id, "b", NOW_MS + 1000, 60_000)
        .await
        .unwrap()
        .unwrap();
    store.release(Queue::Outbox, &id, "b", claimed, None).await.unwrap();
    assert!(due(&*store, Queue::Outbox, i64::MAX / 2).await.is_empty());
    assert_eq!(store.outbox_event(&id).await.unwrap(), None);
    // Saving an event that left the outbox does not bring it back.
    store.save_outbox_event(&event).await.unwrap();
    assert_eq!(store.outbox_event(&id).await.unwrap(), None);
}

async fn the_first_shared_secret_stored_wins(store: Arc<dyn Store>) {
    let first = store.shared_secret("k", &[1, 2, 0, 255]).await.unwrap();
    assert_eq!(first, [1, 2, 0, 255]);
    let results = futures_util::future::join_all((0..8u8).map(|i| {
        let store = Arc::clone(&store);
        async move { store.shared_secret("k2", &[i; 32]).await.unwrap() }
    }))
    .await;
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    assert_eq!(store.shared_secret("k", &[9]).await.unwrap(), [1, 2, 0, 255]);
}

async fn a_new_hold_returns_the_budget_use_the_alerts_need(store: Arc<dyn Store>) {
    let capped = TenantSettings {
        budget: Some(10_000_000),
        ..settings()
    };
    with_tenant(&*store, capped).await;
    let first = store.reserve(&request("r1", "ann", 415_000)).await.unwrap();
    let used = |spent, reserved| {
        Some(BudgetUse {
            budget: Some(10_000_000),
            spent,
            reserved,
        })
    };
    assert_eq!(first.budget_use, used(0, 415_000));
    store.settle("r1", &settlement(405_000)).await.unwrap();
    let second = store.reserve(&request("r2", "bob", 250_000)).await.unwrap();
    assert_eq!(
        second.budget_use,
        used(405_000, 250_000),
        "the period's money after the hold"
    );
    let (spent, reserved, _) = usage(&*store).await;
    assert_eq!(second.budget_use, used(spent, reserved), "as period_usage reads it");

    // A retry of the same hold, and a refusal, moved nothing: no budget use.
    assert_eq!(
        store.reserve(&request("r2", "bob", 250_000)).await.unwrap().budget_use,
        None
    );
    assert_eq!(
        store
            .reserve(&request("r3", "bob", 99_000_000))
            .await
            .unwrap()
            .budget_use,
        None
    );

    // Without a budget the use still comes back (the alerts then have nothing to check).
    store
        .update_tenant(
            TENANT,
            &TenantChange {
                patch: TenantPatch {
                    budget: Some(None),
                    ..TenantPatch::default()
                },
                actor: "root".into(),
                request_id: "req-uncap".into(),
                now_ms: NOW_MS,
            },
        )
        .await
        .unwrap();
    let uncapped = store.reserve(&request("r4", "ann", 100_000)).await.unwrap();
    assert_eq!(
        uncapped.budget_use,
        Some(BudgetUse {
            budget: None,
            spent: 405_000,
            reserved: 350_000,
        })
    );
}

fn recovery(reservation_id: &str, task_id: &str, refusal: Option<&str>) -> Recovery {
    Recovery {
        reservation_id: reservation_id.into(),
        task_id: task_id.into(),
        created_task: format!(r#"{{"id":"{task_id}"}}"#),
        now_ms: NOW_MS + 5_000,
        refusal: refusal.map(str::to_owned),
    }
}

fn anomalies(entries: &[LedgerEntry]) -> Vec<(String, String)> {
    entries
        .iter()
        .filter(|e| e.kind == LedgerKind::Anomaly)
        .map(|e| (e.reservation_id.clone(), e.task_id.clone()))
        .collect()
}

async fn a_recovered_task_is_bound_once_and_due_for_the_reconciler(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    reserved(&*store, &request("r2", "ann", 415_000)).await;
    let RecoverOutcome::Bound(bound) = store.recover(&recovery("r1", "task-1", None)).await.unwrap() else {
        panic!("an unbound hold takes the task");
    };
    assert_eq!(
        (bound.state, bound.task_id.as_deref(), bound.recovered),
        (ReservationState::Reserved, Some("task-1"), true)
    );
    assert_eq!(bound.created_task.as_deref(), Some(r#"{"id":"task-1"}"#));
    assert_eq!(
        store.task("task-1").await.unwrap().map(|r| r.reservation_id),
        Some("r1".into())
    );
    assert!(
        due(&*store, Queue::Tasks, NOW_MS + 5_000)
            .await
            .contains(&"r1".to_string())
    );
    assert!(matches!(
        store.recover(&recovery("r1", "task-9", None)).await.unwrap(),
        RecoverOutcome::AlreadyBound(r) if r.task_id.as_deref() == Some("task-1")
    ));
    // Another reservation claiming the same task: refused, noted once, nothing bound.
    for _ in 0..2 {
        assert!(matches!(
            store.recover(&recovery("r2", "task-1", None)).await.unwrap(),
            RecoverOutcome::Refused(note) if note.contains("r1")
        ));
    }
    assert_eq!(store.reservation("r2").await.unwrap().unwrap().task_id, None);
    assert_eq!(
        store.task("task-1").await.unwrap().map(|r| r.reservation_id),
        Some("r1".into())
    );
    let entries = ledger(&*store, Some(TENANT)).await;
    assert_eq!(anomalies(&entries), [("r2".to_string(), "task-1".to_string())]);
    assert_eq!(
        store.recover(&recovery("nope", "task-2", None)).await.unwrap(),
        RecoverOutcome::NotFound
    );
    assert_eq!(usage(&*store).await, (0, 830_000, 2), "a recovery moves no money");
}

async fn a_refused_recovery_binds_nothing_and_writes_one_anomaly(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    for _ in 0..2 {
        assert_eq!(
            store
                .recover(&recovery("r1", "task-1", Some("wrong model")))
                .await
                .unwrap(),
            RecoverOutcome::Refused("wrong model".into())
        );
    }
    assert_eq!(store.reservation("r1").await.unwrap().unwrap().task_id, None);
    assert_eq!(store.task("task-1").await.unwrap(), None);
    let entries = ledger(&*store, Some(TENANT)).await;
    let notes: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == LedgerKind::Anomaly)
        .map(|e| e.note.as_str())
        .collect();
    assert_eq!(notes, ["wrong model"]);
    // A later, fitting task is still taken.
    assert!(matches!(
        store.recover(&recovery("r1", "task-2", None)).await.unwrap(),
        RecoverOutcome::Bound(_)
    ));
}

async fn a_task_created_after_its_create_was_refused_is_charged_late_once(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    ok(store.refund("r1", NOW_MS + 1_000).await.unwrap());
    assert!(matches!(
        store.late_settle("r1", &settlement(405_000)).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));
    let RecoverOutcome::Bound(bound) = store.recover(&recovery("r1", "task-1", None)).await.unwrap() else {
        panic!("a refunded hold without a task takes the task");
    };
    assert_eq!((bound.state, bound.recovered), (ReservationState::Refunded, true));
    assert!(
        due(&*store, Queue::Tasks, NOW_MS + 5_000)
            .await
            .contains(&"r1".to_string())
    );
    let settled = ok(store.late_settle("r1", &settlement(405_000)).await.unwrap());
    assert_eq!(
        (settled.state, settled.charged),
        (ReservationState::Settled, Some(405_000))
    );
    assert!(matches!(
        store.late_settle("r1", &settlement(405_000)).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));
    assert_eq!(usage(&*store).await, (405_000, 0, 0));
    let entries: Vec<LedgerEntry> = ledger(&*store, Some(TENANT))
        .await
        .into_iter()
        .filter(|e| e.kind != LedgerKind::BudgetChange)
        .collect();
    let kinds: Vec<LedgerKind> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            LedgerKind::Reserve,
            LedgerKind::Refund,
            LedgerKind::LateSettle,
            LedgerKind::Anomaly
        ]
    );
    assert_eq!((entries[2].amount, entries[2].task_id.as_str()), (405_000, "task-1"));
    assert_eq!(entries[3].note, REFUSED_LATE_NOTE);
    let november = store.usage(TENANT, "2026-11", false).await.unwrap().total();
    assert_eq!(
        (november.spent, november.tasks.settled, november.tasks.refunded),
        (405_000, 1, 0)
    );
    // Relayed like any ending of a task the caller asked to hear about.
    assert!(
        due(&*store, Queue::Outbox, i64::MAX / 2)
            .await
            .contains(&event_id("r1", LedgerKind::LateSettle))
    );
}

async fn a_released_reserve_is_refunded_and_a_reserve_after_its_release_holds_nothing(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    // The reserve landed before its release: refunded once.
    reserved(&*store, &request("r1", "ann", 415_000)).await;
    ok(store.release_unsent("r1", NOW_MS + 1_000).await.unwrap());
    assert!(matches!(
        store.release_unsent("r1", NOW_MS + 2_000).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(_)
    ));
    assert_eq!(usage(&*store).await, (0, 0, 0));
    // The release came first: the reserve, arriving late, holds nothing.
    assert_eq!(
        store.release_unsent("r2", NOW_MS + 1_000).await.unwrap(),
        FinalizeOutcome::NotFound
    );
    assert!(matches!(
        store.reserve(&request("r2", "ann", 415_000)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(store.reservation("r2").await.unwrap(), None);
    assert_eq!(usage(&*store).await, (0, 0, 0));
    // A bound task is never released.
    reserved(&*store, &request("r3", "ann", 415_000)).await;
    store.bind("r3", "task-3", "{}").await.unwrap();
    assert!(matches!(
        store.release_unsent("r3", NOW_MS + 1_000).await.unwrap(),
        FinalizeOutcome::AlreadyFinal(r) if r.state == ReservationState::Reserved
    ));
    let kinds: Vec<LedgerKind> = ledger(&*store, Some(TENANT))
        .await
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| *k != LedgerKind::BudgetChange)
        .collect();
    assert_eq!(kinds, [LedgerKind::Reserve, LedgerKind::Refund, LedgerKind::Reserve]);
}

async fn an_idempotency_key_stays_in_progress_while_its_first_outcome_is_unknown(store: Arc<dyn Store>) {
    with_tenant(&*store, settings()).await;
    let keyed = |id: &str, key: &str| ReserveRequest {
        idempotency: Some(IdempotencyClaim {
            key: key.into(),
            body_hash: "h".into(),
            ttl_ms: 86_400_000,
        }),
        ..request(id, "ann", 415_000)
    };
    // Released with its outcome unknown (expired unbound): in progress for the key's lifetime.
    reserved(&*store, &keyed("r1", "k1")).await;
    assert_eq!(
        refusal(&*store, &keyed("r2", "k1")).await,
        ReserveRefusal::RequestInProgress { outcome_unknown: false }
    );
    ok(store.expire("r1", NOW_MS + 1_000).await.unwrap());
    assert_eq!(
        refusal(&*store, &keyed("r2", "k1")).await,
        ReserveRefusal::RequestInProgress { outcome_unknown: true }
    );
    // Recovered later: the key replays the task.
    store.recover(&recovery("r1", "task-1", None)).await.unwrap();
    assert!(matches!(
        store.reserve(&keyed("r2", "k1")).await.unwrap().outcome,
        ReserveOutcome::Replay(r) if r.reservation_id == "r1"
    ));
    // Refused for certain (refunded unbound): a retry runs anew.
    reserved(&*store, &keyed("r3", "k2")).await;
    ok(store.refund("r3", NOW_MS + 1_000).await.unwrap());
    reserved(&*store, &keyed("r4", "k2")).await;
}

/// Team self-service: the task index the reserve step writes, batch reads of reservations,
/// and the user counters quotes read.
mod task_list {
    use super::*;
    use vidgate::store::{TaskIndexEntry, TaskIndexRange, TaskListQuery, task_page};

    for_both_backends!(
        the_task_index_lists_a_tenants_reservations_newest_first_within_the_range,
        a_task_page_filters_by_state_and_user_and_resumes_after_its_cursor,
        the_user_counters_follow_the_users_holds_and_charges,
    );

    fn at(reservation_id: &str, user: &str, now_ms: i64) -> ReserveRequest {
        ReserveRequest {
            now_ms,
            ..request(reservation_id, user, 100_000)
        }
    }

    fn entry(created_ms: i64, reservation_id: &str) -> TaskIndexEntry {
        TaskIndexEntry {
            created_ms,
            reservation_id: reservation_id.into(),
        }
    }

    async fn index(store: &dyn Store, range: TaskIndexRange, limit: usize) -> Vec<TaskIndexEntry> {
        store.task_index(TENANT, &range, limit).await.unwrap()
    }

    async fn the_task_index_lists_a_tenants_reservations_newest_first_within_the_range(store: Arc<dyn Store>) {
        with_tenant(&*store, settings()).await;
        store
            .apply_config_tenant("other", &settings(), "hash-1", NOW_MS)
            .await
            .unwrap();
        for (id, ms) in [
            ("r1", NOW_MS),
            ("r3", NOW_MS + 10),
            ("r2", NOW_MS + 10),
            ("r4", NOW_MS + 20),
        ] {
            reserved(&*store, &at(id, "ann", ms)).await;
        }
        // A retry writes no second entry; a refusal writes none; another tenant's stays apart.
        reserved(&*store, &at("r1", "ann", NOW_MS + 30)).await;
        let refused = ReserveRequest {
            quality: "4k".into(),
            ..at("r9", "ann", NOW_MS + 30)
        };
        refusal(&*store, &refused).await;
        let theirs = ReserveRequest {
            tenant: "other".into(),
            ..at("r5", "ann", NOW_MS + 5)
        };
        reserved(&*store, &theirs).await;

        let all = vec![
            entry(NOW_MS + 20, "r4"),
            entry(NOW_MS + 10, "r3"),
            entry(NOW_MS + 10, "r2"),
            entry(NOW_MS, "r1"),
        ];
        assert_eq!(index(&*store, TaskIndexRange::default(), 10).await, all);
        assert_eq!(index(&*store, TaskIndexRange::default(), 2).await, all[..2]);
        // Strictly older than the cursor, even within one ms.
        let after_r3 = TaskIndexRange {
            before: Some(entry(NOW_MS + 10, "r3")),
            ..TaskIndexRange::default()
        };
        assert_eq!(index(&*store, after_r3, 10).await, all[2..]);
        // `from` inclusive, `to` exclusive; the cursor and `to` together: the tighter wins.
        let window = TaskIndexRange {
            from_ms: Some(NOW_MS + 10),
            to_ms: Some(NOW_MS + 20),
            before: None,
        };
        assert_eq!(index(&*store, window.clone(), 10).await, all[1..3]);
        let late_cursor = TaskIndexRange {
            before: Some(entry(NOW_MS + 50, "r0")),
            ..window.clone()
        };
        assert_eq!(index(&*store, late_cursor, 10).await, all[1..3]);
        let inner_cursor = TaskIndexRange {
            before: Some(entry(NOW_MS + 10, "r3")),
            ..window
        };
        assert_eq!(index(&*store, inner_cursor, 10).await, all[2..3]);
        let empty = TaskIndexRange {
            from_ms: Some(NOW_MS + 21),
            to_ms: Some(NOW_MS + 20),
            before: None,
        };
        assert_eq!(index(&*store, empty, 10).await, Vec::new());
        assert_eq!(
            store.task_index("other", &TaskIndexRange::default(), 10).await.unwrap(),
            vec![entry(NOW_MS + 5, "r5")]
        );

        let ids: Vec<String> = ["r4", "nope", "r1"].map(String::from).to_vec();
        let mut found: Vec<String> = store
            .reservations(&ids)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.reservation_id)
            .collect();
        found.sort();
        assert_eq!(found, vec!["r1", "r4"]);
        assert_eq!(store.reservations(&[]).await.unwrap(), Vec::new());
    }

    async fn a_task_page_filters_by_state_and_user_and_resumes_after_its_cursor(store: Arc<dyn Store>) {
        with_tenant(&*store, settings()).await;
        for i in 0..12 {
            let user = if i % 3 == 0 { "bob" } else { "ann" };
            reserved(&*store, &at(&format!("r{i:02}"), user, NOW_MS + i)).await;
        }
        store.settle("r03", &settlement(90_000)).await.unwrap();
        store.refund("r06", NOW_MS + 100).await.unwrap();
        let ids = |page: &vidgate::store::TaskPage| -> Vec<String> {
            page.records.iter().map(|r| r.reservation_id.clone()).collect()
        };
        let query = |state, user: Option<&str>, before, limit| TaskListQuery {
            range: TaskIndexRange {
                before,
                ..TaskIndexRange::default()
            },
            state,
            user: user.map(String::from),
            limit,
        };
        let page = task_page(&*store, TENANT, &query(None, Some("bob"), None, 3))
            .await
            .unwrap();
        assert_eq!(ids(&page), vec!["r09", "r06", "r03"]);
        let next = page.next.expect("a cursor after a full page").0;
        let page = task_page(&*store, TENANT, &query(None, Some("bob"), Some(next), 3))
            .await
            .unwrap();
        assert_eq!(ids(&page), vec!["r00"]);
        assert!(page.next.is_none(), "the index ended");
        let page = task_page(&*store, TENANT, &query(Some(ReservationState::Settled), None, None, 20))
            .await
            .unwrap();
        assert_eq!(ids(&page), vec!["r03"]);
        assert_eq!(page.records[0].charged, Some(90_000));
        let page = task_page(
            &*store,
            TENANT,
            &query(Some(ReservationState::Reserved), Some("ann"), None, 20),
        )
        .await
        .unwrap();
        assert_eq!(ids(&page).len(), 8);
        let page = task_page(&*store, "nobody", &query(None, None, None, 20))
            .await
            .unwrap();
        assert!(page.records.is_empty() && page.next.is_none());
    }

    async fn the_user_counters_follow_the_users_holds_and_charges(store: Arc<dyn Store>) {
        with_tenant(&*store, settings()).await;
        reserved(&*store, &request("r1", "ann", 400_000)).await;
        reserved(&*store, &request("r2", "ann", 100_000)).await;
        reserved(&*store, &request("r3", "bob", 50_000)).await;
        store.settle("r1", &settlement(390_000)).await.unwrap();
        let ann = store.user_period_usage(TENANT, "ann", "2026-11").await.unwrap();
        assert_eq!((ann.spent, ann.reserved, ann.in_flight), (390_000, 100_000, 2));
        let bob = store.user_period_usage(TENANT, "bob", "2026-11").await.unwrap();
        assert_eq!((bob.spent, bob.reserved), (0, 50_000));
        let nobody = store.user_period_usage(TENANT, "cid", "2026-12").await.unwrap();
        assert_eq!((nobody.spent, nobody.reserved), (0, 0));
        assert!(!store.describe().await.unwrap().is_empty());
    }
}

/// Retention on both stores, with a short retention: Redis expires by itself (real time
/// passes), the embedded store deletes when purged at the same moment of the gateway's clock.
mod retention {
    use std::time::Instant;

    use super::*;
    use vidgate::store::{TaskIndexEntry, TaskIndexRange};

    const RETENTION: Duration = Duration::from_millis(300);

    async fn stores() -> Vec<(&'static str, Backend)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let embedded = EmbeddedStore::open(&dir.path().join("store.redb"), "test:")
            .expect("open embedded store")
            .with_retention(RETENTION);
        let redis = RedisStore::connect(&support::redis::shared().url(), &support::random_prefix())
            .await
            .expect("connect")
            .with_retention(RETENTION);
        vec![
            ("embedded", Backend::new(embedded, Some(dir))),
            ("redis", Backend::new(redis, None)),
        ]
    }

    /// Lets `wait` of real time pass, then purges at `step_ms` + the time passed.
    async fn after(store: &dyn Store, step_ms: i64, since: Instant, wait: Duration) {
        tokio::time::sleep(wait.saturating_sub(since.elapsed())).await;
        let passed = i64::try_from(since.elapsed().as_millis()).unwrap();
        store.purge(step_ms + passed).await.unwrap();
    }

    async fn listed(store: &dyn Store) -> Vec<TaskIndexEntry> {
        store.task_index(TENANT, &TaskIndexRange::default(), 100).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_final_record_its_task_index_and_task_list_entry_go_after_retention() {
        for (name, backend) in stores().await {
            let store = &*backend.store;
            with_tenant(store, settings()).await;
            reserved(store, &request("r1", "ann", 415_000)).await;
            reserved(store, &request("r2", "ann", 415_000)).await;
            store.bind("r1", "task-1", "{}").await.unwrap();
            let ended = Instant::now();
            ok(store.settle("r1", &settlement(405_000)).await.unwrap());
            store.purge(NOW_MS + 60_000).await.unwrap();
            assert!(
                store.reservation("r1").await.unwrap().is_some(),
                "{name}: kept during retention"
            );
            after(store, NOW_MS + 60_000, ended, RETENTION + Duration::from_millis(200)).await;
            assert_eq!(store.reservation("r1").await.unwrap(), None, "{name}");
            assert_eq!(store.task("task-1").await.unwrap(), None, "{name}");
            // The hold still running is kept; finance's ledger and aggregates stay.
            assert!(store.reservation("r2").await.unwrap().is_some(), "{name}");
            let ids: Vec<String> = listed(store).await.into_iter().map(|e| e.reservation_id).collect();
            assert_eq!(ids, ["r2"], "{name}");
            assert_eq!(usage(store).await, (405_000, 415_000, 1), "{name}");
            let kinds: Vec<LedgerKind> = ledger(store, Some(TENANT)).await.into_iter().map(|e| e.kind).collect();
            assert!(kinds.contains(&LedgerKind::Settle), "{name}: {kinds:?}");
            let november = store.usage(TENANT, "2026-11", false).await.unwrap().total();
            assert_eq!((november.spent, november.tasks.settled), (405_000, 1), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_an_idempotency_claim_names_stays_while_the_claim_lives() {
        for (name, backend) in stores().await {
            let store = &*backend.store;
            with_tenant(store, settings()).await;
            let keyed = ReserveRequest {
                idempotency: Some(IdempotencyClaim {
                    key: "k1".into(),
                    body_hash: "h".into(),
                    ttl_ms: 1_500,
                }),
                ..request("r1", "ann", 415_000)
            };
            reserved(store, &keyed).await;
            store.bind("r1", "task-1", "{}").await.unwrap();
            let ended = Instant::now();
            ok(store.refund("r1", NOW_MS).await.unwrap());
            after(store, NOW_MS, ended, RETENTION + Duration::from_millis(200)).await;
            assert!(
                matches!(
                    store.reserve(&ReserveRequest { reservation_id: "r2".into(), ..keyed.clone() }).await.unwrap().outcome,
                    ReserveOutcome::Replay(r) if r.reservation_id == "r1"
                ),
                "{name}: the claim still replays its record"
            );
            after(store, NOW_MS, ended, Duration::from_millis(1_700)).await;
            assert_eq!(store.reservation("r1").await.unwrap(), None, "{name}");
            // The claim is gone too: the key runs anew.
            reserved(
                store,
                &ReserveRequest {
                    reservation_id: "r3".into(),
                    now_ms: NOW_MS + 1_700,
                    ..keyed.clone()
                },
            )
            .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn user_counters_of_a_closed_period_expire_and_tenant_counters_stay() {
        let december_first = chrono::Utc
            .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        for (name, backend) in stores().await {
            let store = &*backend.store;
            with_tenant(store, settings()).await;
            reserved(store, &request("r1", "ann", 415_000)).await;
            let ended = Instant::now();
            // Settled after November ended and a retention passed: its user counters go.
            let late = Settlement {
                now_ms: december_first + 400,
                ..settlement(405_000)
            };
            ok(store.settle("r1", &late).await.unwrap());
            assert_eq!(
                store.user_period_usage(TENANT, "ann", "2026-11").await.unwrap().spent,
                405_000,
                "{name}"
            );
            after(store, december_first + 400, ended, Duration::from_millis(100)).await;
            let user = store.user_period_usage(TENANT, "ann", "2026-11").await.unwrap();
            assert_eq!((user.spent, user.reserved), (0, 0), "{name}");
            assert_eq!(
                usage(store).await,
                (405_000, 0, 0),
                "{name}: the tenant's counters stay"
            );
        }
    }
}

/// Credentials (per-tenant webhook keys, API key hashes): their own invocation of the
/// macro, so the list above stays as it is.
mod credentials {
    use vidgate::store::{ApiKeyCreated, ApiKeyRecord, WebhookKey};

    use super::*;

    for_both_backends!(
        a_tenants_first_webhook_key_is_kept_and_differs_per_tenant,
        a_rotation_keeps_the_replaced_key_until_its_time_and_drops_an_older_one,
        api_keys_are_found_by_hash_named_once_per_tenant_and_revoked_once,
    );

    fn key(secret: &str, created_ms: i64) -> WebhookKey {
        WebhookKey {
            secret: secret.into(),
            created_ms,
        }
    }

    async fn a_tenants_first_webhook_key_is_kept_and_differs_per_tenant(store: Arc<dyn Store>) {
        let first = store.webhook_keys("a", &key("whsec_a1", 1)).await.unwrap();
        assert_eq!(first.current, key("whsec_a1", 1));
        assert_eq!((first.previous, first.previous_expires_ms), (None, None));
        // Later (and concurrent) callers get the stored key, not their candidate.
        let (a2, b1) = (key("whsec_a2", 2), key("whsec_b1", 3));
        let (again, other) = tokio::join!(store.webhook_keys("a", &a2), store.webhook_keys("b", &b1));
        assert_eq!(again.unwrap().current, key("whsec_a1", 1));
        assert_eq!(other.unwrap().current, key("whsec_b1", 3));
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.webhook_keys("c", &key(&format!("whsec_c{i}"), i)).await })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            winners.push(racer.await.unwrap().unwrap().current.secret);
        }
        winners.dedup();
        assert_eq!(winners.len(), 1, "one key for every caller: {winners:?}");
    }

    async fn a_rotation_keeps_the_replaced_key_until_its_time_and_drops_an_older_one(store: Arc<dyn Store>) {
        // A tenant without a key gets the fresh one alone.
        let fresh = store.rotate_webhook_key("new", &key("whsec_n1", 1), 100).await.unwrap();
        assert_eq!((fresh.current, fresh.previous), (key("whsec_n1", 1), None));
        store.webhook_keys("a", &key("whsec_a1", 1)).await.unwrap();
        let rotated = store.rotate_webhook_key("a", &key("whsec_a2", 10), 1000).await.unwrap();
        assert_eq!(rotated.current, key("whsec_a2", 10));
        assert_eq!(rotated.previous, Some(key("whsec_a1", 1)));
        assert_eq!(rotated.previous_expires_ms, Some(1000));
        assert_eq!(store.webhook_keys("a", &key("whsec_x", 99)).await.unwrap(), rotated);
        let twice = store.rotate_webhook_key("a", &key("whsec_a3", 20), 2000).await.unwrap();
        assert_eq!(twice.previous, Some(key("whsec_a2", 10)));
        assert_eq!(twice.signing_at(1999).len(), 2);
        assert_eq!(twice.signing_at(2000), vec![&key("whsec_a3", 20)]);
    }

    fn api_key(tenant: &str, name: &str, hash: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: format!("key_{tenant}_{name}"),
            tenant: tenant.into(),
            name: name.into(),
            hash: hash.into(),
            created_ms: NOW_MS,
            expires_ms: Some(NOW_MS + 1000),
        }
    }

    async fn api_keys_are_found_by_hash_named_once_per_tenant_and_revoked_once(store: Arc<dyn Store>) {
        let ci = api_key("a", "ci", "h1");
        assert_eq!(store.create_api_key(&ci).await.unwrap(), ApiKeyCreated::Created);
        assert_eq!(
            store.create_api_key(&api_key("a", "ci", "h2")).await.unwrap(),
            ApiKeyCreated::NameTaken
        );
        assert_eq!(store.api_key("h2").await.unwrap(), None, "a refused key is not stored");
        let other = api_key("b", "ci", "h3");
        assert_eq!(store.create_api_key(&other).await.unwrap(), ApiKeyCreated::Created);
        let batch = api_key("a", "batch", "h4");
        store.create_api_key(&batch).await.unwrap();
        assert_eq!(store.api_key("h1").await.unwrap(), Some(ci.clone()));
        assert_eq!(store.api_keys("a").await.unwrap(), vec![batch.clone(), ci.clone()]);
        assert_eq!(store.api_keys("b").await.unwrap(), vec![other.clone()]);
        assert_eq!(store.api_keys("nobody").await.unwrap(), vec![]);
        // Another tenant's id revokes nothing.
        assert_eq!(store.revoke_api_key("b", &ci.id).await.unwrap(), None);
        assert_eq!(store.revoke_api_key("a", &ci.id).await.unwrap(), Some(ci.clone()));
        assert_eq!(store.revoke_api_key("a", &ci.id).await.unwrap(), None);
        assert_eq!(store.api_key("h1").await.unwrap(), None);
        assert_eq!(store.api_keys("a").await.unwrap(), vec![batch]);
        // The name is free again.
        assert_eq!(
            store.create_api_key(&api_key("a", "ci", "h5")).await.unwrap(),
            ApiKeyCreated::Created
        );
    }
}

/// Keys an older vidgate wrote without an expiry get the one retention gives, with no manual
/// step: the first purge of a process finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_written_before_retention_get_their_expiry_at_the_first_purge() {
    let url = support::redis::shared().url();
    let prefix = support::random_prefix();
    let store = RedisStore::connect(&url, &prefix).await.expect("connect");
    with_tenant(&store, settings()).await;
    reserved(&store, &request("r1", "ann", 415_000)).await;
    store.bind("r1", "task-1", "{}").await.unwrap();
    ok(store.settle("r1", &settlement(405_000)).await.unwrap());
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = [
        format!("{prefix}res:r1"),
        format!("{prefix}task:task-1"),
        format!("{prefix}uspent:{TENANT}:2026-11:ann"),
    ];
    // As an older version left them: no expiry.
    for key in &keys {
        let _: i64 = ::redis::cmd("PERSIST").arg(key).query_async(&mut conn).await.unwrap();
    }
    let restarted = RedisStore::connect(&url, &prefix)
        .await
        .expect("connect")
        .with_retention(Duration::from_secs(3600));
    restarted.purge(NOW_MS + 60_000).await.unwrap();
    for key in &keys {
        let ttl: i64 = ::redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}

/// Console sessions: a ticket's single use and the sessions it opens, shared by replicas.
mod console_sessions {
    use super::*;
    use vidgate::store::ConsoleSession;

    for_both_backends!(
        a_ticket_opens_one_session_and_never_a_second,
        a_session_is_read_until_it_expires_or_ends,
        concurrent_redeemers_of_one_ticket_open_one_session,
    );

    fn session(user: &str, expires_ms: i64) -> ConsoleSession {
        ConsoleSession {
            user: user.into(),
            tenant: None,
            roles: vec!["finance".into()],
            created_ms: NOW_MS,
            expires_ms,
        }
    }

    async fn a_ticket_opens_one_session_and_never_a_second(store: Arc<dyn Store>) {
        let far = NOW_MS + 3_600_000;
        assert!(
            store
                .open_console_session("jti-1", far, "k1", &session("fin", far))
                .await
                .unwrap()
        );
        assert!(
            !store
                .open_console_session("jti-1", far, "k2", &session("fin", far))
                .await
                .unwrap()
        );
        assert_eq!(store.console_session("k2", NOW_MS).await.unwrap(), None);
        assert_eq!(
            store.console_session("k1", NOW_MS).await.unwrap(),
            Some(session("fin", far))
        );
        assert!(
            store
                .open_console_session("jti-2", far, "k3", &session("fin", far))
                .await
                .unwrap()
        );
    }

    async fn a_session_is_read_until_it_expires_or_ends(store: Arc<dyn Store>) {
        let far = NOW_MS + 3_600_000;
        let ends = NOW_MS + 1000;
        assert!(
            store
                .open_console_session("jti-a", far, "short", &session("ann", ends))
                .await
                .unwrap()
        );
        assert!(
            store
                .open_console_session("jti-b", far, "long", &session("bob", far))
                .await
                .unwrap()
        );
        assert!(store.console_session("short", ends - 1).await.unwrap().is_some());
        assert_eq!(store.console_session("short", ends).await.unwrap(), None);
        store.end_console_session("long").await.unwrap();
        assert_eq!(store.console_session("long", NOW_MS).await.unwrap(), None);
        store.end_console_session("never-was").await.unwrap();
    }

    async fn concurrent_redeemers_of_one_ticket_open_one_session(store: Arc<dyn Store>) {
        let far = NOW_MS + 3_600_000;
        let attempts = (0..16).map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .open_console_session("jti-race", far, &format!("k{i}"), &session("fin", far))
                    .await
                    .unwrap()
            })
        });
        let opened = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|won| *won.as_ref().unwrap())
            .count();
        assert_eq!(opened, 1);
    }
}

mod archive_queue {
    use super::*;

    for_both_backends!(
        a_copy_is_queued_once_and_leaves_with_its_release,
        the_archived_mark_sticks_to_its_record_and_creates_none,
    );

    async fn a_copy_is_queued_once_and_leaves_with_its_release(store: Arc<dyn Store>) {
        store.enqueue_archive("rsv_a", NOW_MS).await.unwrap();
        store.enqueue_archive("rsv_a", NOW_MS + 60_000).await.unwrap();
        assert_eq!(store.due(Queue::Archive, NOW_MS, 10).await.unwrap(), vec!["rsv_a"]);
        assert!(store.due(Queue::Tasks, NOW_MS, 10).await.unwrap().is_empty());
        let claimed = store
            .claim(Queue::Archive, "rsv_a", "me", NOW_MS, 60_000)
            .await
            .unwrap()
            .expect("due, unleased");
        assert_eq!(
            store
                .claim(Queue::Archive, "rsv_a", "other", NOW_MS, 60_000)
                .await
                .unwrap(),
            None
        );
        store
            .release(Queue::Archive, "rsv_a", "me", claimed, Some(NOW_MS + 2_000))
            .await
            .unwrap();
        assert!(store.due(Queue::Archive, NOW_MS + 1_999, 10).await.unwrap().is_empty());
        assert_eq!(
            store.due(Queue::Archive, NOW_MS + 2_000, 10).await.unwrap(),
            vec!["rsv_a"]
        );
        let claimed = store
            .claim(Queue::Archive, "rsv_a", "me", NOW_MS + 2_000, 60_000)
            .await
            .unwrap()
            .unwrap();
        store
            .release(Queue::Archive, "rsv_a", "me", claimed, None)
            .await
            .unwrap();
        assert!(store.due(Queue::Archive, i64::MAX / 2, 10).await.unwrap().is_empty());
    }

    async fn the_archived_mark_sticks_to_its_record_and_creates_none(store: Arc<dyn Store>) {
        with_tenant(store.as_ref(), settings()).await;
        let held = reserved(store.as_ref(), &request("rsv_m", "ann", 415_000)).await;
        assert!(!held.archived);
        store.bind("rsv_m", "task-m", "{\"id\":\"task-m\"}").await.unwrap();
        store.settle("rsv_m", &settlement(405_000)).await.unwrap();
        store.mark_archived("rsv_m").await.unwrap();
        let record = store.reservation("rsv_m").await.unwrap().unwrap();
        assert!(record.archived);
        assert_eq!(record.charged, Some(405_000), "the money is untouched");
        assert!(store.task("task-m").await.unwrap().unwrap().archived);
        store.mark_archived("rsv_gone").await.unwrap();
        assert_eq!(store.reservation("rsv_gone").await.unwrap(), None);
    }
}
