//! The pure parts of a create: body parsing and validation, billing, and the box walker
//! on a reference video's `moov`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use vidgate::billing;
use vidgate::probe::boxes::walk_bytes;
use vidgate::routes::validate::parse_create;

const BODY: &[u8] = br#"{"model":"wan2.6-reference-video-flash","prompt":"character1 dances in the rain","video_urls":["https://cdn.example.com/ref.mp4"],"quality":"720p","duration":5,"model_params":{"generate_audio":true}}"#;

fn validation(c: &mut Criterion) {
    c.bench_function("validate/parse_create", |b| {
        b.iter(|| {
            let body: serde_json::Value = serde_json::from_slice(black_box(BODY)).expect("json");
            let request = parse_create(&body, |model| model == "wan2.6-reference-video-flash").expect("valid");
            black_box(request);
        })
    });
}

fn billing(c: &mut Criterion) {
    let mut group = c.benchmark_group("billing");
    group.bench_function("charge_3_refs", |b| {
        b.iter(|| billing::charge(black_box(&[2000, 4200, 1700]), black_box(5000), black_box(50_000)))
    });
    group.bench_function("charge_and_format", |b| {
        b.iter(|| billing::format_money(billing::charge(black_box(&[3300]), black_box(10_000), 75_000).amount))
    });
    group.finish();
}

fn box_walker(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/video");
    let mut group = c.benchmark_group("walk_bytes");
    for name in ["faststart_2s_audio.mp4", "limit_30s.mp4"] {
        let data = std::fs::read(dir.join(name)).expect("fixture");
        // 64 KiB: the prober's first range request covers these files whole.
        group.bench_function(name, |b| {
            b.iter(|| walk_bytes(black_box(&data), 65_536).expect("a movie"))
        });
    }
    group.finish();
}

criterion_group!(benches, validation, billing, box_walker);
criterion_main!(benches);
