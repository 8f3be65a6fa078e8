//! Zero drift: a randomized run of tasks straight through the Store API (random durations,
//! qualities, audio, failures, repeated settles and refunds, concurrent tasks) on both
//! backends; the ledger, the period counters, the usage aggregates and an independent
//! recomputation from the task list must agree to the micro-unit.
//!
//! Size: `DRIFT_TASKS` (default 300); seed: `DRIFT_SEED` (default random, printed).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::TimeZone;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vidgate::billing;
use vidgate::config::PeriodKind;
use vidgate::store::embedded::EmbeddedStore;
use vidgate::store::redis::RedisStore;
use vidgate::store::{
    FinalizeOutcome, LedgerKind, LedgerQuery, PeriodKeys, ReserveOutcome, ReserveRequest, Settlement, Store,
    TenantSettings, Totals, ledger_page,
};

use crate::support;

const TENANTS: [&str; 3] = ["alpha", "beta", "capped"];
const USERS: [&str; 4] = ["ann", "bob", "cy", "di|pipe"];
/// Prices per second (micros) by (quality, audio), the list prices.
const PRICES: [(&str, bool, i64); 4] = [
    ("720p", true, 50_000),
    ("720p", false, 25_000),
    ("1080p", true, 75_000),
    ("1080p", false, 37_500),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Settle {
        output_ms: u64,
        anomaly: bool,
    },
    Refund,
    /// Still running at the end of the run.
    Open,
}

#[derive(Debug, Clone)]
struct Task {
    id: String,
    tenant: &'static str,
    user: &'static str,
    quality: &'static str,
    audio: bool,
    price: i64,
    references_ms: Vec<u64>,
    requested_ms: u64,
    reserved_at_ms: i64,
    end: End,
    /// Extra calls that must move nothing: a second reserve, a second settle, a refund
    /// after the end (or a settle after a refund).
    repeats: bool,
}

impl Task {
    fn random(rng: &mut StdRng, i: usize) -> Self {
        let (quality, audio, price) = PRICES[rng.random_range(0..PRICES.len())];
        let references = rng.random_range(1..=3);
        // November 2026 and the first days of December, to the ms.
        let start = chrono::Utc
            .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let end = match rng.random_range(0..10) {
            0..=5 => End::Settle {
                output_ms: rng.random_range(500..=12_000),
                anomaly: rng.random_bool(0.2),
            },
            6..=8 => End::Refund,
            _ => End::Open,
        };
        Self {
            id: format!("t{i}"),
            tenant: TENANTS[rng.random_range(0..TENANTS.len())],
            user: USERS[rng.random_range(0..USERS.len())],
            quality,
            audio,
            price,
            references_ms: (0..references).map(|_| rng.random_range(0..20_000)).collect(),
            requested_ms: rng.random_range(2..=10) * 1000,
            reserved_at_ms: start + rng.random_range(0..35 * 86_400_000),
            end,
            repeats: rng.random_bool(0.3),
        }
    }

    fn hold(&self) -> i64 {
        billing::charge(&self.references_ms, self.requested_ms, self.price).amount
    }

    fn charge(&self) -> Option<billing::Charge> {
        match self.end {
            End::Settle { output_ms, .. } => Some(billing::charge(&self.references_ms, output_ms, self.price)),
            _ => None,
        }
    }

    fn periods(&self) -> PeriodKeys {
        PeriodKeys::at(chrono::DateTime::from_timestamp_millis(self.reserved_at_ms).unwrap())
    }

    fn request(&self) -> ReserveRequest {
        ReserveRequest {
            reservation_id: self.id.clone(),
            tenant: self.tenant.into(),
            user: self.user.into(),
            request_id: format!("req-{}", self.id),
            periods: self.periods(),
            model: "wan2.6-reference-video-flash".into(),
            quality: self.quality.into(),
            audio: self.audio,
            currency: "USD".into(),
            price_per_second: self.price,
            reference_durations_ms: self.references_ms.clone(),
            billed_input_ms: billing::billed_input_ms(&self.references_ms),
            requested_output_ms: self.requested_ms,
            amount: self.hold(),
            callback_url: None,
            now_ms: self.reserved_at_ms,
            idempotency: None,
            rate: Vec::new(),
        }
    }

    /// Runs the task's steps; returns whether the hold was accepted.
    async fn run(&self, store: &dyn Store) -> bool {
        let request = self.request();
        let ReserveOutcome::Reserved(_) = store.reserve(&request).await.unwrap().outcome else {
            return false;
        };
        if self.repeats {
            assert!(matches!(
                store.reserve(&request).await.unwrap().outcome,
                ReserveOutcome::Reserved(_)
            ));
        }
        store.bind(&self.id, &format!("task-{}", self.id), "{}").await.unwrap();
        let end_ms = self.reserved_at_ms + 90_000;
        let settlement = self.charge().map(|charge| Settlement {
            billed_output_ms: charge.billed_output_ms,
            amount: charge.amount,
            anomaly: matches!(self.end, End::Settle { anomaly: true, .. }),
            now_ms: end_ms,
        });
        let first = match (&settlement, self.end) {
            (Some(settlement), _) => store.settle(&self.id, settlement).await.unwrap(),
            (None, End::Refund) => store.refund(&self.id, end_ms).await.unwrap(),
            _ => return true,
        };
        assert!(matches!(first, FinalizeOutcome::Applied(_)), "{first:?}");
        if self.repeats {
            let again = match &settlement {
                Some(settlement) => store.settle(&self.id, settlement).await.unwrap(),
                None => store.refund(&self.id, end_ms).await.unwrap(),
            };
            assert!(matches!(again, FinalizeOutcome::AlreadyFinal(_)), "{again:?}");
            let crossed = Settlement {
                billed_output_ms: 1,
                amount: 1,
                anomaly: false,
                now_ms: end_ms,
            };
            assert!(matches!(
                store.refund(&self.id, end_ms).await.unwrap(),
                FinalizeOutcome::AlreadyFinal(_)
            ));
            assert!(matches!(
                store.settle(&self.id, &crossed).await.unwrap(),
                FinalizeOutcome::AlreadyFinal(_)
            ));
        }
        true
    }

    /// What this task adds to its buckets, recomputed from the task alone.
    fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        match (self.end, self.charge()) {
            (End::Settle { .. }, Some(charge)) => {
                totals.spent = charge.amount;
                totals.billed_input_ms = charge.billed_input_ms as i64;
                totals.billed_output_ms = charge.billed_output_ms as i64;
                totals.tasks.settled = 1;
            }
            (End::Refund, _) => totals.tasks.refunded = 1,
            _ => {
                totals.reserved = self.hold();
                totals.tasks.reserved = 1;
            }
        }
        totals
    }
}

async fn setup(store: &dyn Store) {
    for tenant in TENANTS {
        let settings = TenantSettings {
            // One tenant runs into its budget, so refused holds are part of the run.
            budget: (tenant == "capped").then_some(20_000_000),
            period: PeriodKind::Month,
            max_concurrent_tasks: 1_000_000,
            ..TenantSettings::default()
        };
        store.apply_config_tenant(tenant, &settings, "seed", 0).await.unwrap();
    }
}

/// Every entry of a tenant's ledger.
async fn ledger(store: &dyn Store, tenant: &str) -> Vec<vidgate::store::LedgerEntry> {
    let mut query = LedgerQuery {
        kind: None,
        tenant: Some(tenant.into()),
        from_ms: 0,
        to_ms: u64::MAX,
        cursor: None,
        limit: 1000,
    };
    let mut out = Vec::new();
    loop {
        let page = ledger_page(store, &query).await.unwrap();
        out.extend(page.rows.into_iter().map(|r| r.entry));
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return out,
        }
    }
}

fn sum(totals: impl IntoIterator<Item = Totals>) -> Totals {
    let mut out = Totals::default();
    totals.into_iter().for_each(|t| out.add(&t));
    out
}

async fn zero_drift(store: Arc<dyn Store>) {
    let size = std::env::var("DRIFT_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed = std::env::var("DRIFT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("zero drift: {size} tasks, DRIFT_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let tasks: Vec<Task> = (0..size).map(|i| Task::random(&mut rng, i)).collect();
    setup(&*store).await;

    let started = std::time::Instant::now();
    let accepted: Vec<bool> = futures_util::stream::iter(&tasks)
        .map(|task| {
            let store = Arc::clone(&store);
            async move { task.run(&*store).await }
        })
        .buffered(16)
        .collect()
        .await;
    let tasks: Vec<&Task> = tasks
        .iter()
        .zip(&accepted)
        .filter(|(_, ok)| **ok)
        .map(|(t, _)| t)
        .collect();
    println!("  {} accepted in {:?} (seed {seed})", tasks.len(), started.elapsed());
    assert!(tasks.len() > size / 2, "most tasks fit");

    for tenant in TENANTS {
        let mine: Vec<&Task> = tasks.iter().copied().filter(|t| t.tenant == tenant).collect();
        let expected = sum(mine.iter().map(|t| t.totals()));

        // The ledger: one reserve per accepted task, one final entry per ended task, an
        // anomaly per flagged settlement, and the sums of money.
        let entries = ledger(&*store, tenant).await;
        let of = |kind| entries.iter().filter(move |e| e.kind == kind);
        let amount = |kind| of(kind).map(|e| e.amount).sum::<i64>();
        assert_eq!(of(LedgerKind::Reserve).count(), mine.len(), "{tenant} seed {seed}");
        assert_eq!(amount(LedgerKind::Reserve), mine.iter().map(|t| t.hold()).sum::<i64>());
        assert_eq!(amount(LedgerKind::Settle), expected.spent, "{tenant} seed {seed}");
        let refunded: i64 = mine.iter().filter(|t| t.end == End::Refund).map(|t| t.hold()).sum();
        assert_eq!(amount(LedgerKind::Refund), refunded);
        assert_eq!(of(LedgerKind::Settle).count() as i64, expected.tasks.settled);
        assert_eq!(of(LedgerKind::Refund).count() as i64, expected.tasks.refunded);
        let flagged = mine
            .iter()
            .filter(|t| matches!(t.end, End::Settle { anomaly: true, .. }))
            .count();
        assert_eq!(of(LedgerKind::Anomaly).count(), flagged);
        // Every settle and refund releases its reservation's hold.
        let hold_of: BTreeMap<&str, i64> = of(LedgerKind::Reserve)
            .map(|e| (e.reservation_id.as_str(), e.amount))
            .collect();
        let released: i64 = of(LedgerKind::Settle)
            .chain(of(LedgerKind::Refund))
            .map(|e| hold_of[e.reservation_id.as_str()])
            .sum();
        assert_eq!(
            amount(LedgerKind::Reserve) - released,
            expected.reserved,
            "holds minus releases = still held"
        );
        assert_eq!(
            entries.len(),
            1 + mine.len() + (expected.tasks.settled + expected.tasks.refunded) as usize + flagged
        );

        // Counters and aggregates, bucket by bucket, against the recomputation.
        let mut by_day: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
        let mut by_month: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
        for task in &mine {
            let periods = task.periods();
            by_day.entry(periods.day).or_default().push(task);
            by_month.entry(periods.month).or_default().push(task);
        }
        assert_eq!(
            store.usage_days(tenant).await.unwrap(),
            by_day.keys().cloned().collect::<Vec<_>>()
        );
        let mut day_sum = Totals::default();
        for (day, day_tasks) in &by_day {
            let bucket = store.usage(tenant, day, true).await.unwrap();
            let want = sum(day_tasks.iter().map(|t| t.totals()));
            assert_eq!(bucket.total(), want, "{tenant} {day} seed {seed}");
            for user in USERS {
                let want = sum(day_tasks.iter().filter(|t| t.user == user).map(|t| t.totals()));
                assert_eq!(
                    bucket.by_user.get(user).copied().unwrap_or_default(),
                    want,
                    "{tenant} {day} {user}"
                );
            }
            for (quality, audio, _) in PRICES {
                let want = sum(day_tasks
                    .iter()
                    .filter(|t| t.quality == quality && t.audio == audio)
                    .map(|t| t.totals()));
                let got = bucket
                    .by_kind
                    .get(&(quality.to_string(), audio))
                    .copied()
                    .unwrap_or_default();
                assert_eq!(got, want, "{tenant} {day} {quality} {audio}");
            }
            day_sum.add(&want);
        }
        for (month, month_tasks) in &by_month {
            let want = sum(month_tasks.iter().map(|t| t.totals()));
            assert_eq!(
                store.usage(tenant, month, false).await.unwrap().total(),
                want,
                "{tenant} {month}"
            );
            let counters = store.period_usage(tenant, month).await.unwrap();
            assert_eq!(
                (counters.spent, counters.reserved),
                (want.spent, want.reserved),
                "{tenant} {month}"
            );
        }
        assert_eq!(day_sum, expected);
        assert_eq!(store.usage(tenant, "total", true).await.unwrap().total(), expected);
        let open = mine.iter().filter(|t| t.end == End::Open).count() as u32;
        assert_eq!(store.period_usage(tenant, "2026-11").await.unwrap().in_flight, open);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_counters_and_aggregates_agree_to_the_micro_unit_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("drift.redb"), "test:").unwrap();
    zero_drift(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_counters_and_aggregates_agree_to_the_micro_unit_redis() {
    let url = support::redis::shared().url();
    let store = RedisStore::connect(&url, &support::random_prefix()).await.unwrap();
    zero_drift(Arc::new(store)).await;
}
