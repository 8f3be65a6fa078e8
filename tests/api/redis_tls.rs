//! `rediss://`: the Redis store over TLS to a real redis-server with a throwaway CA, and a
//! server whose certificate the gateway does not trust refused before any command.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use vidgate::config::{Config, StoreBackend, StoreConfig};
use vidgate::store::redis::RedisStore;
use vidgate::store::{Store, StoreError};

use crate::support;
use crate::support::process::BIN;
use crate::support::redis::{RedisServer, free_port};

/// A CA, and a server certificate for `host` it signed: (CA PEM, server cert PEM, key PEM).
fn ca_and_server_cert(host: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: a client would otherwise try another CA's certificate as the issuer.
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("vidgate test CA {}", support::random_prefix()),
    );
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut server_params = CertificateParams::new(vec![host.to_string()]).expect("server params");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer).expect("server cert");
    (ca_cert.pem(), server_cert.pem(), server_key.serialize_pem())
}

/// redis-server with TLS only on the returned port (plain on another, for the readiness
/// check of `start_args`), serving `cert`/`key`.
fn tls_redis(dir: &Path, cert: &str, key: &str) -> (RedisServer, u16) {
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let (plain, tls) = (free_port(), free_port());
    let args: Vec<String> = [
        "--port",
        &plain.to_string(),
        "--tls-port",
        &tls.to_string(),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        &dir.join("server.pem").display().to_string(),
        "--tls-key-file",
        &dir.join("server.key").display().to_string(),
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    (RedisServer::start_args(plain, &args), tls)
}

/// A TLS Redis whose certificate chains to a fresh CA written to `ca.pem` in `dir`.
fn trusted_setup(dir: &Path) -> (RedisServer, u16) {
    let (ca, cert, key) = ca_and_server_cert("127.0.0.1");
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    tls_redis(dir, &cert, &key)
}

fn store_config(url: &str, ca_file: &Path) -> StoreConfig {
    StoreConfig {
        backend: StoreBackend::Redis,
        redis_url: url.into(),
        redis_ca_file: ca_file.into(),
        key_prefix: support::random_prefix(),
        ..StoreConfig::default()
    }
}

#[tokio::test]
async fn the_store_moves_money_over_tls_to_a_server_its_ca_file_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, port) = trusted_setup(dir.path());
    let config = store_config(&format!("rediss://127.0.0.1:{port}"), &dir.path().join("ca.pem"));
    let store: Arc<dyn Store> = vidgate::store::open(&config).await.expect("open the store over TLS");
    assert!(store.describe().await.unwrap().starts_with("redis "));
    crate::store_conformance::a_settle_charges_the_amount_and_releases_the_hold(store).await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, port) = trusted_setup(dir.path());
    let (other_ca, _, _) = ca_and_server_cert("127.0.0.1");
    let url = format!("rediss://127.0.0.1:{port}");
    let refused = RedisStore::connect_with_ca(&url, "t:", Some(other_ca.into_bytes())).await;
    let Err(StoreError::Unavailable(message)) = refused else {
        panic!("a certificate from an untrusted CA must be refused");
    };
    assert!(message.contains("invalid peer certificate: UnknownIssuer"), "{message}");
    // The platform's roots do not know the throwaway CA either.
    let Err(StoreError::Unavailable(message)) = RedisStore::connect(&url, "t:").await else {
        panic!("a certificate no platform root vouches for must be refused");
    };
    assert!(message.contains("invalid peer certificate: UnknownIssuer"), "{message}");
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Signed by the CA the client trusts, but for 127.0.0.2, not the 127.0.0.1 it dials.
    let (ca, cert, key) = ca_and_server_cert("127.0.0.2");
    let (_redis, port) = tls_redis(dir.path(), &cert, &key);
    let url = format!("rediss://127.0.0.1:{port}");
    let Err(StoreError::Unavailable(message)) = RedisStore::connect_with_ca(&url, "t:", Some(ca.into_bytes())).await
    else {
        panic!("a certificate for another address must be refused");
    };
    assert!(
        message.contains("certificate not valid for name \"127.0.0.1\""),
        "{message}"
    );
}

#[test]
fn check_config_wants_a_readable_pem_ca_file_and_a_rediss_url() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = ca_and_server_cert("127.0.0.1");
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    let config = |url: &str, file: &str| {
        let mut config = Config::from_toml_str(&format!(
            "[upstream]\napi_key = \"k\"\n[auth]\nhs256_secret = \"{}\"\n",
            "s".repeat(32)
        ))
        .unwrap();
        config.store = store_config(url, &dir.path().join(file));
        config.validate()
    };
    config("rediss://redis.internal:6380/0", "ca.pem").expect("a rediss URL with a PEM CA file");
    for (url, file, why) in [
        ("redis://redis.internal:6379/0", "ca.pem", "needs a rediss://"),
        ("rediss://redis.internal:6380/0", "junk.pem", "holds no PEM certificate"),
        ("rediss://redis.internal:6380/0", "missing.pem", "cannot read"),
    ] {
        match config(url, file) {
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("store.redis_ca_file") && text.contains(why), "{text}");
            }
            Ok(()) => panic!("{url} with {file} must be refused"),
        }
    }
}

/// `vidgate store export` on a `rediss://` store: the platform's roots (here named by
/// `SSL_CERT_FILE`, which rustls-native-certs honours as the system's bundle would be) or
/// `store.redis_ca_file` vouch for the server; with neither it is refused.
#[test]
fn the_cli_trusts_the_platform_roots_or_the_ca_file_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, port) = trusted_setup(dir.path());
    let ca = dir.path().join("ca.pem");
    let export = |ca_file: &str, ssl_cert_file: Option<&Path>| {
        let config = dir.path().join("store.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nbackend = \"redis\"\nredis_url = \"rediss://127.0.0.1:{port}\"\nredis_ca_file = \"{ca_file}\"\n\
                 key_prefix = \"{}\"\n",
                support::random_prefix()
            ),
        )
        .unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["store", "export", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .env_remove("SSL_CERT_DIR")
            .env_remove("SSL_CERT_FILE");
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("VIDGATE_")) {
            command.env_remove(key);
        }
        if let Some(file) = ssl_cert_file {
            command.env("SSL_CERT_FILE", file);
        }
        command.output().expect("run vidgate store export")
    };
    let by_roots = export("", Some(&ca));
    assert!(
        by_roots.status.success(),
        "{}",
        String::from_utf8_lossy(&by_roots.stderr)
    );
    let by_ca_file = export(ca.to_str().unwrap(), None);
    assert!(
        by_ca_file.status.success(),
        "{}",
        String::from_utf8_lossy(&by_ca_file.stderr)
    );
    let unknown = export("", None);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && stderr.contains("invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
}
