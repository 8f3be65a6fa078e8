//! Archive figures (a benchmark, not a timed test: it asserts that every copy lands, and only
//! prints the speed and memory): `ARCHIVE_BENCH_TASKS` results (50) of `ARCHIVE_BENCH_MB` MB
//! each (1 here; `bench/archive.sh` runs 100) completed at once by the mock upstream (its own
//! process), copied by a real gateway process into a `file:` archive; the gateway's RSS is
//! sampled every 100 ms while it copies. RSS staying flat as the results grow is what shows
//! that the copies stream. `ARCHIVE_BENCH_S3=1` copies into Garage (S3, see
//! support/garage.rs) instead of a directory.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{MODEL, SECRET, now, sign, upload_reference_to};
use crate::support::process::spawn;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The archive: a directory in `dir`, or a fresh prefix in Garage's bucket.
fn archive_section(dir: &Path, s3_prefix: Option<&str>) -> String {
    match s3_prefix {
        None => format!("url = \"file:{}\"", dir.join("results").display()),
        Some(prefix) => format!(
            "url = \"s3://{}/{prefix}\"\ns3_endpoint = \"{}\"\ns3_region = \"{}\"",
            crate::support::garage::BUCKET,
            crate::support::garage::shared().endpoint(),
            crate::support::garage::REGION
        ),
    }
}

fn write_config(dir: &Path, mock: &str, max_bytes: u64, archive: &str) -> std::path::PathBuf {
    let path = dir.join("vidgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[upstream]
base_url = "http://{mock}"
files_base_url = "http://{mock}"
api_key = "sk-evo-mock"
[auth]
hs256_secret = "{SECRET}"
[store]
path = "{store}"
[probe]
allow_private_networks = true
timeout_ms = 30000
[reconciler]
first_poll_after_secs = 0.2
poll_interval_secs = 0.2
[archive]
{archive}
max_bytes = {max_bytes}
[[tenants]]
id = "bench"
budget = "1000000.00"
creates_per_minute = 60000
creates_burst = 100000
reads_per_minute = 60000
reads_burst = 100000
max_concurrent_tasks = 100000
"#,
            store = dir.join("vidgate.redb").display(),
        ),
    )
    .expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_figures_concurrent_copies_stream_with_flat_memory() {
    let tasks = env_number("ARCHIVE_BENCH_TASKS", 50);
    let bytes = env_number("ARCHIVE_BENCH_MB", 1) * 1_000_000;
    let (_mock, mock) = spawn(&[
        "mock-upstream",
        "--listen",
        "127.0.0.1:0",
        "--pending-ms",
        "10",
        "--processing-ms",
        "300",
    ]);
    let reference = upload_reference_to(&format!("http://{mock}"), 5000).await;
    let dir = tempfile::tempdir().expect("dir");
    let s3_prefix = std::env::var_os("ARCHIVE_BENCH_S3").map(|_| format!("bench-{}", ulid::Ulid::new()));
    let archive = archive_section(dir.path(), s3_prefix.as_deref());
    let config = write_config(dir.path(), &mock, bytes + 1, &archive);
    let config = config.to_str().unwrap();
    let (gateway, addr) = match &s3_prefix {
        None => spawn(&["serve", "--config", config]),
        Some(_) => {
            let garage = crate::support::garage::shared();
            crate::support::process::spawn_with_env(
                &["serve", "--config", config],
                &[
                    ("AWS_ACCESS_KEY_ID", &garage.key_id),
                    ("AWS_SECRET_ACCESS_KEY", &garage.secret),
                ],
            )
        }
    };
    let pid = gateway.pid();
    let base = format!("http://{addr}");
    let token = sign(&json!({"sub": "bench", "tenant": "bench", "aud": "vidgate", "exp": now() + 3600}));
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kb = rss_kb(pid);

    let started = Instant::now();
    let creates = (0..tasks).map(|i| {
        let body = json!({"model": MODEL, "prompt": format!("bench {i} [mock:bytes={bytes}]"), "video_urls": [reference], "duration": 5});
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            let response = client
                .post(format!("{base}/v1/videos/generations"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        }
    });
    let ids = futures_util::future::join_all(creates).await;
    let (mut peak_kb, mut samples) = (idle_kb, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60 + tasks * bytes / 5_000_000);
    let archived = loop {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let done = metrics
            .lines()
            .find_map(|l| l.strip_prefix("vidgate_archive_total{outcome=\"archived\"} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        let rss = rss_kb(pid);
        peak_kb = peak_kb.max(rss);
        samples.push(rss);
        if done >= tasks {
            break done;
        }
        assert!(Instant::now() < deadline, "only {done} of {tasks} archived in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    let after_kb = rss_kb(pid);

    let mut stored = 0;
    for id in &ids {
        stored += match &s3_prefix {
            None => std::fs::metadata(dir.path().join(format!("results/bench/{id}.mp4")))
                .expect("archived")
                .len(),
            Some(prefix) => s3_size(&format!("{prefix}/bench/{id}.mp4")).await,
        };
    }
    assert_eq!(archived, tasks);
    assert_eq!(stored, tasks * bytes, "every byte of every result");
    samples.sort_unstable();
    let median_kb = samples[samples.len() / 2];
    let mb = (tasks * bytes) as f64 / 1e6;
    println!(
        "archive figures ({}): {tasks} results x {} MB = {mb:.0} MB archived in {:.1} s ({:.1} MB/s, create to last copy); \
         gateway RSS: idle {} MB, median while copying {} MB, peak {} MB, after {} MB ({} samples)",
        if s3_prefix.is_some() { "S3, Garage" } else { "file:" },
        bytes / 1_000_000,
        elapsed.as_secs_f64(),
        mb / elapsed.as_secs_f64(),
        idle_kb / 1024,
        median_kb / 1024,
        peak_kb / 1024,
        after_kb / 1024,
        samples.len()
    );
}

/// The size of an object in Garage's bucket.
async fn s3_size(key: &str) -> u64 {
    use object_store::ObjectStoreExt;
    let garage = crate::support::garage::shared();
    let bucket = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(crate::support::garage::BUCKET)
        .with_endpoint(garage.endpoint())
        .with_region(crate::support::garage::REGION)
        .with_access_key_id(&garage.key_id)
        .with_secret_access_key(&garage.secret)
        .with_allow_http(true)
        .build()
        .expect("S3 client");
    bucket
        .head(&object_store::path::Path::from(key))
        .await
        .expect("archived")
        .size
}
