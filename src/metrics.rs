//! Prometheus metrics: one registry per gateway, names and labels as the product contract
//! lists them. Labels are bounded: route templates, methods, statuses, operations, error
//! codes, outcomes, qualities and the configured tenants (plus "unknown"); never a user,
//! task, reservation id or URL.

use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::billing::{MICROS_PER_UNIT, Micros};
use crate::store::ReservationRecord;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub rejections: IntCounterVec,
    pub tasks: IntCounterVec,
    pub spend: CounterVec,
    pub refunds: CounterVec,
    pub billed_seconds: CounterVec,
    pub budget_limit: GaugeVec,
    pub budget_spent: GaugeVec,
    pub budget_reserved: GaugeVec,
    pub probes: IntCounterVec,
    pub probe_bytes: IntCounter,
    pub callback_deliveries: IntCounterVec,
    pub store_duration: HistogramVec,
    pub store_errors: IntCounterVec,
    pub replica_ack_shortfall: IntCounterVec,
    pub archive: IntCounterVec,
    pub archive_bytes: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| invalid(name, e));
    register(registry, metric)
}

fn float_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let metric = CounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| invalid(name, e));
    register(registry, metric)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let metric = GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| invalid(name, e));
    register(registry, metric)
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let metric = HistogramVec::new(opts, labels).unwrap_or_else(|e| invalid(name, e));
    register(registry, metric)
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    // Names are constants registered once on a fresh registry: a clash is a programming error.
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric registration: {e}"));
    metric
}

fn invalid(name: &str, error: prometheus::Error) -> ! {
    panic!("metric {name} is malformed: {error}")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("vidgate_build_info", "Always 1; the version label says which build"),
            &["version"],
        )
        .unwrap_or_else(|e| invalid("vidgate_build_info", e));
        let build_info = register(&r, build_info);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        Self {
            http_requests: counter(
                &r,
                "vidgate_http_requests_total",
                "HTTP requests served",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                &r,
                "vidgate_http_request_duration_seconds",
                "HTTP request latency",
                &["route", "method"],
            ),
            upstream_requests: counter(
                &r,
                "vidgate_upstream_requests_total",
                "Calls to the upstream API",
                &["operation", "status"],
            ),
            upstream_duration: histogram(
                &r,
                "vidgate_upstream_request_duration_seconds",
                "Upstream call latency",
                &["operation"],
            ),
            rejections: counter(
                &r,
                "vidgate_rejections_total",
                "Requests refused, by error code",
                &["tenant", "code"],
            ),
            tasks: counter(
                &r,
                "vidgate_tasks_total",
                "Task lifecycle events",
                &["tenant", "outcome"],
            ),
            spend: float_counter(
                &r,
                "vidgate_spend_total",
                "Money charged (currency units)",
                &["tenant", "currency", "quality", "audio"],
            ),
            refunds: float_counter(
                &r,
                "vidgate_refunds_total",
                "Holds released without charge (currency units)",
                &["tenant", "currency"],
            ),
            billed_seconds: float_counter(
                &r,
                "vidgate_billed_seconds_total",
                "Billed video seconds",
                &["tenant", "kind"],
            ),
            budget_limit: gauge(
                &r,
                "vidgate_budget_limit",
                "Budget of the current period (currency units)",
                &["tenant", "currency"],
            ),
            budget_spent: gauge(
                &r,
                "vidgate_budget_spent",
                "Spent in the current period (currency units)",
                &["tenant", "currency"],
            ),
            budget_reserved: gauge(
                &r,
                "vidgate_budget_reserved",
                "Held in the current period (currency units)",
                &["tenant", "currency"],
            ),
            probes: counter(&r, "vidgate_probe_total", "Video probes", &["outcome"]),
            probe_bytes: register(
                &r,
                IntCounter::new("vidgate_probe_bytes_total", "Bytes read by video probes")
                    .unwrap_or_else(|e| invalid("vidgate_probe_bytes_total", e)),
            ),
            callback_deliveries: counter(
                &r,
                "vidgate_callback_deliveries_total",
                "Callback delivery attempts",
                &["outcome"],
            ),
            store_duration: histogram(
                &r,
                "vidgate_store_operation_duration_seconds",
                "Store operation latency",
                &["operation"],
            ),
            store_errors: counter(
                &r,
                "vidgate_store_errors_total",
                "Store operations that failed",
                &["operation"],
            ),
            replica_ack_shortfall: counter(
                &r,
                "vidgate_store_replica_ack_shortfall_total",
                "Money steps fewer than store.min_replicas_acked replicas acknowledged in time",
                &["operation"],
            ),
            archive: counter(
                &r,
                "vidgate_archive_total",
                "Finished videos copied into the archive, or not (failed, too_large)",
                &["outcome"],
            ),
            archive_bytes: register(
                &r,
                IntCounter::new("vidgate_archive_bytes_total", "Bytes copied into the archive")
                    .unwrap_or_else(|e| invalid("vidgate_archive_bytes_total", e)),
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_upstream(&self, operation: &str, status: &str, elapsed: Duration) {
        self.upstream_requests.with_label_values(&[operation, status]).inc();
        self.upstream_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_store(&self, operation: &str, ok: bool, elapsed: Duration) {
        self.store_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.with_label_values(&[operation]).inc();
        }
    }

    /// A settlement that moved money: spend and billed seconds, once, on this replica.
    pub fn record_settlement(&self, done: &ReservationRecord) {
        let tenant = done.tenant.as_str();
        let audio = if done.audio { "true" } else { "false" };
        let spend = self
            .spend
            .with_label_values(&[tenant, &done.currency, &done.quality, audio]);
        spend.inc_by(units(done.charged.unwrap_or(0)));
        let seconds = |ms: u64| ms as f64 / 1000.0;
        self.billed_seconds
            .with_label_values(&[tenant, "input"])
            .inc_by(seconds(done.billed_input_ms));
        let output = done.billed_output_ms.unwrap_or(0);
        self.billed_seconds
            .with_label_values(&[tenant, "output"])
            .inc_by(seconds(output));
    }

    pub fn record_refund(&self, tenant: &str, currency: &str, released: Micros) {
        self.refunds
            .with_label_values(&[tenant, currency])
            .inc_by(units(released));
    }

    pub fn set_budget(&self, tenant: &str, currency: &str, limit: Option<Micros>, spent: Micros, reserved: Micros) {
        let labels = [tenant, currency];
        match limit {
            Some(limit) => self.budget_limit.with_label_values(&labels).set(units(limit)),
            None => {
                let _ = self.budget_limit.remove_label_values(&labels);
            }
        }
        self.budget_spent.with_label_values(&labels).set(units(spent));
        self.budget_reserved.with_label_values(&labels).set(units(reserved));
    }
}

fn units(micros: Micros) -> f64 {
    micros as f64 / MICROS_PER_UNIT as f64
}
