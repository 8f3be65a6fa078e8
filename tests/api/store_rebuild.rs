//! `Store::rebuild` (a reservation whose record a Redis failover lost, rebuilt from its
//! callback token), written once and run against both backends.

use std::sync::Arc;

use chrono::TimeZone;
use vidgate::config::PeriodKind;
use vidgate::store::{
    BindOutcome, FinalizeOutcome, LedgerEntry, LedgerKind, LedgerPosition, PeriodKeys, Queue, Rebuild, RebuildOutcome,
    ReservationState, ReserveOutcome, ReserveRequest, Settlement, Store, TaskIndexRange, TenantSettings,
};

use crate::support::backends::{embedded, for_both_backends, redis};

for_both_backends!(
    a_lost_reservation_is_rebuilt_once_bound_and_then_charged,
    a_rebuild_naming_another_reservations_task_writes_one_anomaly_and_charges_nothing,
    a_refused_rebuild_is_written_once_as_an_anomaly,
    a_rebuild_for_an_unknown_tenant_writes_nothing,
    a_rebuild_of_a_record_the_store_holds_changes_nothing,
);

const TENANT: &str = "acme";
const CREATED_MS: i64 = 1_795_600_000_000;
const NOW_MS: i64 = CREATED_MS + 60_000;
/// 0.05/s for 3300 + 5000 ms.
const AMOUNT: i64 = 415_000;

async fn with_tenant(store: &dyn Store) {
    let settings = TenantSettings {
        budget: Some(1),
        period: PeriodKind::Month,
        creates_per_minute: 60,
        creates_burst: 10,
        reads_per_minute: 600,
        reads_burst: 100,
        max_concurrent_tasks: 0,
        user_budget: None,
        user_creates_per_minute: 0,
        allowed_qualities: vec!["720p".into()],
        alert_webhook_url: None,
    };
    store
        .apply_config_tenant(TENANT, &settings, "hash-1", CREATED_MS)
        .await
        .unwrap();
}

fn hold(reservation_id: &str) -> ReserveRequest {
    ReserveRequest {
        reservation_id: reservation_id.into(),
        tenant: TENANT.into(),
        user: "ann".into(),
        request_id: String::new(),
        periods: PeriodKeys::at(chrono::Utc.timestamp_millis_opt(CREATED_MS).unwrap()),
        model: "wan2.6-reference-video-flash".into(),
        quality: "720p".into(),
        audio: true,
        currency: "USD".into(),
        price_per_second: 50_000,
        reference_durations_ms: vec![3300],
        billed_input_ms: 3300,
        requested_output_ms: 5000,
        amount: AMOUNT,
        callback_url: None,
        now_ms: CREATED_MS,
        idempotency: None,
        rate: Vec::new(),
    }
}

fn rebuild(reservation_id: &str, task_id: &str, refusal: Option<&str>) -> Rebuild {
    Rebuild {
        hold: hold(reservation_id),
        task_id: task_id.into(),
        created_task: format!(r#"{{"id":"{task_id}"}}"#),
        now_ms: NOW_MS,
        refusal: refusal.map(str::to_string),
    }
}

async fn ledger(store: &dyn Store) -> Vec<LedgerEntry> {
    store
        .ledger_range(TENANT, LedgerPosition { ms: 0, seq: 0 }, u64::MAX, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.entry)
        .filter(|e| e.kind != LedgerKind::BudgetChange)
        .collect()
}

fn kinds(entries: &[LedgerEntry]) -> Vec<LedgerKind> {
    entries.iter().map(|e| e.kind).collect()
}

async fn usage(store: &dyn Store) -> (i64, i64, u32) {
    let month = PeriodKeys::at(chrono::Utc.timestamp_millis_opt(CREATED_MS).unwrap()).month;
    let usage = store.period_usage(TENANT, &month).await.unwrap();
    (usage.spent, usage.reserved, usage.in_flight)
}

async fn a_lost_reservation_is_rebuilt_once_bound_and_then_charged(store: Arc<dyn Store>) {
    with_tenant(store.as_ref()).await;
    // No budget or cap check (the budget is 1 micro, the cap 0): the task ran.
    let RebuildOutcome::Rebuilt(record) = store.rebuild(&rebuild("rsv_lost", "task-1", None)).await.unwrap() else {
        panic!("rebuilt")
    };
    assert_eq!(record.state, ReservationState::Reserved);
    assert_eq!(record.task_id.as_deref(), Some("task-1"));
    assert_eq!((record.reserved, record.created_ms), (AMOUNT, CREATED_MS));
    assert_eq!(
        record.period,
        PeriodKeys::at(chrono::Utc.timestamp_millis_opt(CREATED_MS).unwrap()).month
    );
    assert_eq!(store.reservation("rsv_lost").await.unwrap(), Some(record.clone()));
    assert_eq!(store.task("task-1").await.unwrap(), Some(record.clone()));
    assert_eq!(usage(store.as_ref()).await, (0, AMOUNT, 1));
    assert_eq!(store.due(Queue::Tasks, NOW_MS, 10).await.unwrap(), ["rsv_lost"]);
    let listed = store.task_index(TENANT, &TaskIndexRange::default(), 10).await.unwrap();
    assert_eq!(listed.len(), 1);

    // Again (a duplicated callback): the record stands, nothing is written twice.
    assert!(matches!(
        store.rebuild(&rebuild("rsv_lost", "task-1", None)).await.unwrap(),
        RebuildOutcome::Exists(existing) if existing == record
    ));
    let settlement = Settlement {
        billed_output_ms: 5000,
        amount: AMOUNT,
        anomaly: false,
        now_ms: NOW_MS + 1,
    };
    assert!(matches!(
        store.settle("rsv_lost", &settlement).await.unwrap(),
        FinalizeOutcome::Applied(_)
    ));
    assert_eq!(usage(store.as_ref()).await, (AMOUNT, 0, 0));
    let entries = ledger(store.as_ref()).await;
    assert_eq!(kinds(&entries), [LedgerKind::Reserve, LedgerKind::Settle]);
    assert_eq!(entries[0].time_ms, CREATED_MS);
    assert_eq!(entries[1].task_id, "task-1");
}

async fn a_rebuild_naming_another_reservations_task_writes_one_anomaly_and_charges_nothing(store: Arc<dyn Store>) {
    with_tenant(store.as_ref()).await;
    let mut allowed = hold("rsv_owner");
    allowed.amount = 0;
    let tenant_settings = store.tenant(TENANT).await.unwrap().unwrap().settings;
    store
        .apply_config_tenant(
            TENANT,
            &TenantSettings {
                budget: None,
                max_concurrent_tasks: 10,
                ..tenant_settings
            },
            "hash-2",
            CREATED_MS,
        )
        .await
        .unwrap();
    assert!(matches!(
        store.reserve(&allowed).await.unwrap().outcome,
        ReserveOutcome::Reserved(_)
    ));
    assert_eq!(
        store.bind("rsv_owner", "task-1", "{}").await.unwrap(),
        BindOutcome::Bound
    );
    let before = usage(store.as_ref()).await;
    for _ in 0..2 {
        match store.rebuild(&rebuild("rsv_lost", "task-1", None)).await.unwrap() {
            RebuildOutcome::Refused(note) => assert!(note.contains("rsv_owner"), "{note}"),
            RebuildOutcome::Exists(tombstone) => {
                assert_eq!(tombstone.state, ReservationState::Refunded);
                assert_eq!((tombstone.charged, tombstone.task_id), (Some(0), None));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(usage(store.as_ref()).await, before);
    assert_eq!(store.task("task-1").await.unwrap().unwrap().reservation_id, "rsv_owner");
    let anomalies: Vec<LedgerEntry> = ledger(store.as_ref())
        .await
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Anomaly)
        .collect();
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert_eq!(
        (
            anomalies[0].reservation_id.as_str(),
            anomalies[0].task_id.as_str(),
            anomalies[0].amount
        ),
        ("rsv_lost", "task-1", 0)
    );
}

async fn a_refused_rebuild_is_written_once_as_an_anomaly(store: Arc<dyn Store>) {
    with_tenant(store.as_ref()).await;
    let note = "token older than store.retention_secs: not charged";
    assert_eq!(
        store.rebuild(&rebuild("rsv_old", "task-9", Some(note))).await.unwrap(),
        RebuildOutcome::Refused(note.into())
    );
    assert!(matches!(
        store.rebuild(&rebuild("rsv_old", "task-9", Some(note))).await.unwrap(),
        RebuildOutcome::Exists(_)
    ));
    assert_eq!(usage(store.as_ref()).await, (0, 0, 0));
    assert_eq!(store.task("task-9").await.unwrap(), None);
    assert!(store.due(Queue::Tasks, i64::MAX / 2, 10).await.unwrap().is_empty());
    let entries = ledger(store.as_ref()).await;
    assert_eq!(kinds(&entries), [LedgerKind::Anomaly]);
    assert_eq!((entries[0].note.as_str(), entries[0].amount), (note, 0));
}

async fn a_rebuild_for_an_unknown_tenant_writes_nothing(store: Arc<dyn Store>) {
    assert_eq!(
        store.rebuild(&rebuild("rsv_lost", "task-1", None)).await.unwrap(),
        RebuildOutcome::UnknownTenant
    );
    assert_eq!(store.reservation("rsv_lost").await.unwrap(), None);
    assert_eq!(store.task("task-1").await.unwrap(), None);
}

async fn a_rebuild_of_a_record_the_store_holds_changes_nothing(store: Arc<dyn Store>) {
    with_tenant(store.as_ref()).await;
    let tenant_settings = store.tenant(TENANT).await.unwrap().unwrap().settings;
    store
        .apply_config_tenant(
            TENANT,
            &TenantSettings {
                budget: None,
                max_concurrent_tasks: 10,
                ..tenant_settings
            },
            "hash-2",
            CREATED_MS,
        )
        .await
        .unwrap();
    let ReserveOutcome::Reserved(held) = store.reserve(&hold("rsv_kept")).await.unwrap().outcome else {
        panic!("held")
    };
    let before = (usage(store.as_ref()).await, kinds(&ledger(store.as_ref()).await));
    assert_eq!(
        store.rebuild(&rebuild("rsv_kept", "task-1", None)).await.unwrap(),
        RebuildOutcome::Exists(held)
    );
    assert_eq!(
        (usage(store.as_ref()).await, kinds(&ledger(store.as_ref()).await)),
        before
    );
    assert_eq!(store.task("task-1").await.unwrap(), None);
}
