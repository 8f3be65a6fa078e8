//! Authentication as the middleware runs it on every request: JWT verification (HS256 and
//! RS256 with the signature checked, and a token the authenticator verified lately), and the
//! tenant API key lookup (`vgk_...`: SHA-256 of the key, then a hash-map lookup in the
//! in-process cache that the store refills every few seconds).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::json;
use vidgate::auth::{Authenticator, mint_hs256};
use vidgate::config::AuthConfig;

const SECRET: &str = "bench-secret-0123456789-0123456789-0123456789";
/// More distinct tokens than the authenticator's verified-token cache holds (4,096; it starts
/// over when full): cycling through them, every verification checks the signature.
const DISTINCT_TOKENS: usize = 5000;

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

/// Builds the authenticator as the gateway does (PEM files are read at start-up).
fn authenticator(config: &AuthConfig) -> Authenticator {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(Authenticator::from_config(config))
        .expect("authenticator")
}

/// Verification never waits on anything with a fixed key, so it completes on first poll.
fn verify(auth: &Authenticator, token: &str) {
    let caller = auth
        .verify(black_box(token))
        .now_or_never()
        .expect("no I/O with fixed keys")
        .expect("valid token");
    black_box(caller);
}

fn jwt(c: &mut Criterion) {
    let hs_config = AuthConfig {
        hs256_secret: SecretString::from(SECRET),
        ..AuthConfig::default()
    };
    let hs_tokens: Vec<String> = (0..DISTINCT_TOKENS)
        .map(|i| {
            mint_hs256(
                &hs_config,
                Some("bench"),
                &format!("user-{i}"),
                &[],
                Duration::from_secs(3600),
            )
            .expect("mint")
        })
        .collect();
    let hs = authenticator(&hs_config);

    let rs_config = AuthConfig {
        algorithms: vec!["RS256".into()],
        public_key_pem_files: vec![keys_dir().join("rsa1.pem")],
        ..AuthConfig::default()
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa1".into());
    let pem = std::fs::read(keys_dir().join("rsa1.key")).expect("rsa1.key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("key");
    let rs_tokens: Vec<String> = (0..DISTINCT_TOKENS)
        .map(|i| {
            let claims =
                json!({"aud": "vidgate", "sub": format!("user-{i}"), "tenant": "bench", "iat": now, "exp": now + 3600});
            jsonwebtoken::encode(&header, &claims, &key).expect("sign")
        })
        .collect();
    let rs = authenticator(&rs_config);

    let mut group = c.benchmark_group("jwt_verify");
    let mut next = 0;
    group.bench_function("hs256", |b| {
        b.iter(|| {
            next = (next + 1) % DISTINCT_TOKENS;
            verify(&hs, &hs_tokens[next]);
        })
    });
    group.bench_function("rs256", |b| {
        b.iter(|| {
            next = (next + 1) % DISTINCT_TOKENS;
            verify(&rs, &rs_tokens[next]);
        })
    });
    group.bench_function("hs256_verified_lately", |b| b.iter(|| verify(&hs, &hs_tokens[0])));
    group.finish();
}

/// The API key lookup on its hot path: a key seen within the cache's lifetime. The cache is
/// refilled from an embedded store when its entry ages out (every 4 s, off the clock).
fn api_key(c: &mut Criterion) {
    use std::sync::Arc;
    use vidgate::store::Store;
    use vidgate::store::embedded::EmbeddedStore;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&dir.path().join("bench.redb"), "bench:").expect("embedded store"));
    let now_ms = 1_800_000_000_000;
    let (key, record) = vidgate::auth::issue("bench", "render-ci", now_ms, None);
    runtime.block_on(store.create_api_key(&record)).expect("store the key");
    let auth = authenticator(&AuthConfig {
        hs256_secret: SecretString::from(SECRET),
        ..AuthConfig::default()
    });
    let keys = auth.api_keys();
    let refill = || {
        runtime
            .block_on(keys.authenticate(store.as_ref(), &key, now_ms))
            .expect("store answers")
            .expect("a valid key")
    };
    refill();
    let mut group = c.benchmark_group("api_key_lookup");
    group.bench_function("cached", |b| {
        b.iter(|| match keys.cached(black_box(&key), now_ms) {
            Some(caller) => black_box(caller.expect("a valid key")),
            None => refill(),
        })
    });
    group.finish();
}

criterion_group!(benches, jwt, api_key);
criterion_main!(benches);
