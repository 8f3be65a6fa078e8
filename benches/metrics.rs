//! Metrics: what a create records on the hot path (figure: under 2 µs), and rendering
//! `/metrics` with 200 tenants (figure: under 10 ms of CPU, store refresh excluded).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use vidgate::metrics::Metrics;

/// Everything one successful create records: HTTP, the two store steps, the upstream call,
/// the task counter and the probe counters.
fn record_create(metrics: &Metrics) {
    let elapsed = Duration::from_micros(850);
    metrics.observe_store("reserve", true, Duration::from_micros(120));
    metrics.observe_upstream("create_task", "200", Duration::from_micros(300));
    metrics.tasks.with_label_values(&["bench", "created"]).inc();
    metrics.observe_store("bind", true, Duration::from_micros(90));
    metrics.probes.with_label_values(&["ok"]).inc();
    metrics.probe_bytes.inc_by(0);
    metrics.observe_http("/v1/videos/generations", "POST", 200, elapsed);
}

/// A registry as a busy gateway has it: 200 tenants with budgets, tasks, spend and refusals.
fn populated(tenants: usize) -> Metrics {
    let metrics = Metrics::new();
    for i in 0..tenants {
        let tenant = format!("team-{i:03}");
        metrics.set_budget(&tenant, "USD", Some(500_000_000), 120_000_000, 4_000_000);
        for outcome in ["created", "completed", "failed"] {
            metrics.tasks.with_label_values(&[&tenant, outcome]).inc();
        }
        for quality in ["720p", "1080p"] {
            metrics
                .spend
                .with_label_values(&[&tenant, "USD", quality, "true"])
                .inc_by(1.5);
        }
        metrics.refunds.with_label_values(&[&tenant, "USD"]).inc_by(0.25);
        metrics
            .billed_seconds
            .with_label_values(&[&tenant, "input"])
            .inc_by(3.3);
        metrics
            .billed_seconds
            .with_label_values(&[&tenant, "output"])
            .inc_by(5.0);
        metrics.rejections.with_label_values(&[&tenant, "rate_limited"]).inc();
    }
    for route in [
        "/v1/videos/generations",
        "/v1/tasks/{task_id}",
        "/v1/usage",
        "/healthz",
        "/metrics",
    ] {
        for status in [200, 400, 404, 429] {
            metrics.observe_http(route, "GET", status, Duration::from_millis(2));
        }
    }
    record_create(&metrics);
    metrics
}

fn recording(c: &mut Criterion) {
    let metrics = populated(200);
    let mut group = c.benchmark_group("metrics");
    group.bench_function("record_create", |b| b.iter(|| record_create(black_box(&metrics))));
    group.bench_function("observe_http", |b| {
        b.iter(|| metrics.observe_http(black_box("/v1/tasks/{task_id}"), "GET", 200, Duration::from_micros(400)))
    });
    group.bench_function("render_200_tenants", |b| b.iter(|| black_box(metrics.render())));
    group.finish();
}

criterion_group!(benches, recording);
criterion_main!(benches);
