//! Usage-report benchmark: fills a store with ledger entries over many tenants (a month of
//! reserve + settle/refund steps through the Store API), then times `GET /v1/admin/usage`
//! and friends through a real gateway. Run it with `bench/usage.sh`; not a test.
//!
//! `cargo run --release --example usage_bench -- --backend redis --redis-url URL --entries 1000000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use vidgate::app::Application;
use vidgate::billing;
use vidgate::config::{Config, PeriodKind, StoreBackend};
use vidgate::store::{self, PeriodKeys, ReserveOutcome, ReserveRequest, Settlement, Store, TenantSettings};

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0";
const USERS_PER_TENANT: usize = 20;
const RUNS: usize = 20;

struct Args {
    backend: StoreBackend,
    redis_url: String,
    path: String,
    entries: usize,
    tenants: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut args = Args {
        backend: StoreBackend::Redis,
        redis_url: "redis://127.0.0.1:6379".into(),
        path: "/dev/shm/vidgate-bench.redb".into(),
        entries: 1_000_000,
        tenants: 50,
        concurrency: 64,
    };
    let mut it = std::env::args().skip(1);
    while let (Some(flag), Some(value)) = (it.next(), it.next()) {
        match flag.as_str() {
            "--backend" if value == "embedded" => args.backend = StoreBackend::Embedded,
            "--backend" => args.backend = StoreBackend::Redis,
            "--redis-url" => args.redis_url = value,
            "--path" => args.path = value,
            "--entries" => args.entries = value.parse().expect("--entries N"),
            "--tenants" => args.tenants = value.parse().expect("--tenants N"),
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn config(args: &Args) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.upstream.base_url = "http://127.0.0.1:9".into();
    config.upstream.files_base_url = "http://127.0.0.1:9".into();
    config.upstream.api_key = SecretString::from("unused".to_string());
    config.auth.hs256_secret = SecretString::from(SECRET.to_string());
    config.store.backend = args.backend;
    config.store.redis_url = args.redis_url.clone();
    config.store.path = args.path.clone().into();
    config.store.key_prefix = format!("bench:{}:", ulid::Ulid::new());
    config
}

/// One task of the fill: reserve, then settle (9 in 10) or refund; 2 ledger entries.
async fn task(store: &dyn Store, i: usize, tasks: usize, tenants: usize, rng_seed: u64) {
    let mut rng = StdRng::seed_from_u64(rng_seed ^ i as u64);
    let november = chrono::Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .unwrap()
        .timestamp_millis();
    // Spread over the month in fill order, so ledger positions follow time.
    let now_ms = november + (i as f64 / tasks as f64 * 2_591_999_999.0) as i64;
    let (quality, audio, price) =
        [("720p", true, 50_000), ("720p", false, 25_000), ("1080p", true, 75_000)][rng.random_range(0..3)];
    let references = vec![rng.random_range(2000..8000)];
    let requested = rng.random_range(2..=10) * 1000;
    let hold = billing::charge(&references, requested, price);
    let request = ReserveRequest {
        reservation_id: format!("b{i}"),
        tenant: format!("tenant-{:02}", i % tenants),
        user: format!("user-{}", rng.random_range(0..USERS_PER_TENANT)),
        request_id: format!("req-{i}"),
        periods: PeriodKeys::at(chrono::DateTime::from_timestamp_millis(now_ms).unwrap()),
        model: "wan2.6-reference-video-flash".into(),
        quality: quality.into(),
        audio,
        currency: "USD".into(),
        price_per_second: price,
        billed_input_ms: hold.billed_input_ms,
        reference_durations_ms: references.clone(),
        requested_output_ms: requested,
        amount: hold.amount,
        callback_url: None,
        now_ms,
        idempotency: None,
        rate: Vec::new(),
    };
    let ReserveOutcome::Reserved(_) = store.reserve(&request).await.expect("reserve").outcome else {
        panic!("bench tenants have no cap");
    };
    if rng.random_bool(0.9) {
        let output_ms = requested - rng.random_range(0..500);
        let charge = billing::charge(&references, output_ms, price);
        let settlement = Settlement {
            billed_output_ms: output_ms,
            amount: charge.amount,
            anomaly: false,
            now_ms: now_ms + 60_000,
        };
        store
            .settle(&request.reservation_id, &settlement)
            .await
            .expect("settle");
    } else {
        store
            .refund(&request.reservation_id, now_ms + 5000)
            .await
            .expect("refund");
    }
}

async fn fill(args: &Args, config: &Config) {
    let store: Arc<dyn Store> = store::open(&config.store).await.expect("open the store");
    let settings = TenantSettings {
        period: PeriodKind::Month,
        max_concurrent_tasks: u32::MAX,
        ..TenantSettings::default()
    };
    for t in 0..args.tenants {
        store
            .apply_config_tenant(&format!("tenant-{t:02}"), &settings, "bench", 0)
            .await
            .expect("tenant");
    }
    let tasks = args.entries / 2;
    let started = Instant::now();
    let seed = 7;
    futures_util::stream::iter(0..tasks)
        .for_each_concurrent(args.concurrency, |i| {
            let store = Arc::clone(&store);
            async move {
                task(&*store, i, tasks, args.tenants, seed).await;
                if (i + 1) % 50_000 == 0 {
                    eprintln!("  {} tasks filled", i + 1);
                }
            }
        })
        .await;
    let elapsed = started.elapsed();
    println!(
        "fill: {} tasks = {} ledger entries (+{} budget changes) over {} tenants in {:.1}s ({:.0} steps/s)",
        tasks,
        tasks * 2,
        args.tenants,
        args.tenants,
        elapsed.as_secs_f64(),
        (tasks * 2) as f64 / elapsed.as_secs_f64()
    );
}

/// Times `RUNS` calls of one URL; prints min / median / max and the body size.
async fn time(client: &reqwest::Client, base: &str, token: &str, path: &str) {
    let mut samples = Vec::new();
    let mut bytes = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("answer");
        assert!(response.status().is_success(), "{path}: {}", response.status());
        bytes = response.bytes().await.expect("body").len();
        samples.push(started.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "GET {path:<60} min {:>7.1} ms  median {:>7.1} ms  max {:>7.1} ms  ({bytes} bytes)",
        ms(samples[0]),
        ms(samples[RUNS / 2]),
        ms(samples[RUNS - 1])
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let config = config(&args);
    if args.backend == StoreBackend::Embedded {
        let _ = std::fs::remove_file(&args.path);
    }
    fill(&args, &config).await;

    let app = Application::build(config.clone()).await.expect("gateway starts");
    let base = format!("http://{}", app.addr());
    tokio::spawn(app.run_until_stopped());
    let roles = ["finance".to_string()];
    let token =
        vidgate::auth::mint_hs256(&config.auth, None, "bench", &roles, Duration::from_secs(3600)).expect("token");
    let team = vidgate::auth::mint_hs256(&config.auth, Some("tenant-07"), "bench", &[], Duration::from_secs(3600))
        .expect("token");
    let client = reqwest::Client::new();
    println!("backend {:?}, {} runs each:", args.backend, RUNS);
    for path in [
        "/v1/admin/usage?period=2026-11",
        "/v1/admin/usage?period=2026-11&format=csv",
        "/v1/admin/usage?period=2026-11&group_by=user",
        "/v1/admin/usage?period=2026-11&group_by=day",
        "/v1/admin/usage?period=2026-11&group_by=day&format=csv",
        "/v1/admin/usage?period=2026-11&tenant=tenant-07&group_by=user",
        "/v1/admin/usage?period=2026-W47",
        "/v1/admin/usage?period=2026-W47&group_by=user",
        "/v1/admin/usage?period=total",
        "/v1/admin/usage?period=total&group_by=user",
        "/v1/admin/ledger?limit=1000",
        "/v1/admin/ledger?tenant=tenant-07&from=2026-11-15T00:00:00Z&limit=1000&format=csv",
    ] {
        time(&client, &base, &token, path).await;
    }
    time(&client, &base, &team, "/v1/usage").await;
    if args.backend == StoreBackend::Embedded {
        let _ = std::fs::remove_file(&args.path);
    }
}
