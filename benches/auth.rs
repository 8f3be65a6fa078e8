//! JWT verification, as the auth middleware runs it on every request: HS256 and RS256 with
//! the signature checked, and a token the authenticator verified lately (its cache).

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

criterion_group!(benches, jwt);
criterion_main!(benches);
