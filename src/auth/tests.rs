//! End-to-end tests of `Authenticator`: HS256, PEM keys, key confusion, and a local JWKS server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config::AuthConfig;

const SECRET: &str = "test-secret-of-at-least-32-bytes-long!";
const ISSUER: &str = "https://idp.example.test";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn hs_config() -> AuthConfig {
    AuthConfig {
        issuer: ISSUER.into(),
        hs256_secret: SECRET.to_string().into(),
        ..AuthConfig::default()
    }
}

fn pem_config(algorithms: &[&str], files: &[&str]) -> AuthConfig {
    AuthConfig {
        issuer: ISSUER.into(),
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        public_key_pem_files: files.iter().map(|f| fixture(f)).collect(),
        ..AuthConfig::default()
    }
}

/// Valid claims for tenant `marketing`, user `alice`; `extra` overrides or adds (null removes).
fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": "vidgate", "sub": "alice", "tenant": "marketing",
        "roles": ["user"], "iat": now(), "exp": now() + 600,
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut claims, extra) {
        for (key, value) in extra {
            if value.is_null() {
                base.remove(&key);
            } else {
                base.insert(key, value);
            }
        }
    }
    claims
}

fn sign_hs(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

fn sign_with(alg: Algorithm, private_key: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = fixture_bytes(private_key);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => panic!("unsupported test algorithm"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with any header, signed with HMAC-SHA256 over `secret` (for forgeries).
fn forge_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

async fn hs_auth() -> Authenticator {
    Authenticator::from_config(&hs_config()).await.unwrap()
}

/// The error, checked never to contain the token or any of its parts.
async fn refused(auth: &Authenticator, token: &str) -> AuthError {
    let error = auth.verify(token).await.unwrap_err();
    let message = error.to_string();
    let debug = format!("{error:?}");
    for part in std::iter::once(token).chain(token.split('.')).filter(|p| p.len() >= 8) {
        assert!(
            !message.contains(part) && !debug.contains(part),
            "{message} echoes the token"
        );
    }
    error
}

#[tokio::test]
async fn a_valid_hs256_token_yields_the_caller() {
    let auth = hs_auth().await;
    let caller = auth.verify(&sign_hs(&claims(json!({})))).await.unwrap();
    assert_eq!(
        caller,
        Caller {
            tenant: Some("marketing".into()),
            user: "alice".into(),
            roles: vec!["user".into()]
        }
    );
    assert!(auth.keys_loaded());
}

#[tokio::test]
async fn an_expired_token_is_refused_beyond_the_leeway() {
    let auth = hs_auth().await;
    let token = sign_hs(&claims(json!({"exp": now() - 120})));
    assert_eq!(refused(&auth, &token).await, AuthError::Expired);
    // Within `leeway_secs` (30) an expired token still passes: clocks differ.
    assert!(auth.verify(&sign_hs(&claims(json!({"exp": now() - 5})))).await.is_ok());
    let token = sign_hs(&claims(json!({"exp": null})));
    assert_eq!(refused(&auth, &token).await, AuthError::MissingClaim("exp".into()));
}

#[tokio::test]
async fn a_token_verified_before_is_still_refused_once_it_expires() {
    let auth = Authenticator::from_config(&AuthConfig {
        leeway_secs: 0,
        ..hs_config()
    })
    .await
    .unwrap();
    let token = sign_hs(&claims(json!({"exp": now() + 1})));
    let first = auth.verify(&token).await.unwrap();
    // The second answer comes from the verified-token cache.
    assert_eq!(auth.verify(&token).await.unwrap(), first);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(refused(&auth, &token).await, AuthError::Expired);
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused() {
    let auth = hs_auth().await;
    let token = sign_hs(&claims(json!({"nbf": now() + 300})));
    assert_eq!(refused(&auth, &token).await, AuthError::NotYetValid);
    assert!(auth.verify(&sign_hs(&claims(json!({"nbf": now() + 5})))).await.is_ok());
}

#[tokio::test]
async fn a_wrong_or_missing_issuer_is_refused() {
    let auth = hs_auth().await;
    let token = sign_hs(&claims(json!({"iss": "https://evil.example"})));
    assert_eq!(refused(&auth, &token).await, AuthError::WrongIssuer);
    let token = sign_hs(&claims(json!({"iss": null})));
    assert_eq!(refused(&auth, &token).await, AuthError::MissingClaim("iss".into()));
}

#[tokio::test]
async fn issuer_and_audience_are_unchecked_when_not_configured() {
    let config = AuthConfig {
        issuer: String::new(),
        audience: String::new(),
        ..hs_config()
    };
    let auth = Authenticator::from_config(&config).await.unwrap();
    let token = sign_hs(&claims(json!({"iss": "anyone", "aud": "anything"})));
    assert!(auth.verify(&token).await.is_ok());
    assert!(
        auth.verify(&sign_hs(&claims(json!({"iss": null, "aud": null}))))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_wrong_or_missing_audience_is_refused() {
    let auth = hs_auth().await;
    let token = sign_hs(&claims(json!({"aud": "other-service"})));
    assert_eq!(refused(&auth, &token).await, AuthError::WrongAudience);
    let token = sign_hs(&claims(json!({"aud": null})));
    assert_eq!(refused(&auth, &token).await, AuthError::MissingClaim("aud".into()));
    assert!(
        auth.verify(&sign_hs(&claims(json!({"aud": ["other", "vidgate"]}))))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused() {
    let auth = hs_auth().await;
    let token = forge_hs256(
        &json!({"alg": "HS256"}),
        &claims(json!({})),
        b"another-secret-of-at-least-32-bytes!",
    );
    assert_eq!(refused(&auth, &token).await, AuthError::BadSignature);
    // Change the signature's first character (the last one carries padding bits).
    let good = sign_hs(&claims(json!({})));
    let signature_at = good.rfind('.').unwrap() + 1;
    let replacement = if good[signature_at..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    let mut tampered = good.clone();
    tampered.replace_range(signature_at..signature_at + 1, replacement);
    assert_eq!(refused(&auth, &tampered).await, AuthError::BadSignature);
}

#[tokio::test]
async fn an_alg_none_token_is_refused() {
    let auth = hs_auth().await;
    for alg in ["none", "NONE", "nOnE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
        for token in [format!("{header}.{payload}."), format!("{header}.{payload}.c2ln")] {
            assert_eq!(
                refused(&auth, &token).await,
                AuthError::AlgorithmNotAllowed("none".into())
            );
        }
    }
}

#[tokio::test]
async fn an_algorithm_outside_the_configured_list_is_refused() {
    let auth = hs_auth().await;
    let token = sign_with(Algorithm::RS256, "rsa1.key", Some("rsa1"), &claims(json!({})));
    assert_eq!(
        refused(&auth, &token).await,
        AuthError::AlgorithmNotAllowed("RS256".into())
    );
    let token = forge_hs256(&json!({"alg": "HS512"}), &claims(json!({})), SECRET.as_bytes());
    assert_eq!(
        refused(&auth, &token).await,
        AuthError::AlgorithmNotAllowed("HS512".into())
    );
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    let public_pem = fixture_bytes("rsa1.pem");
    let body = claims(json!({}));
    // RS256-only gateway: the HS256 header is refused before any key is touched.
    let auth = Authenticator::from_config(&pem_config(&["RS256"], &["rsa1.pem"]))
        .await
        .unwrap();
    for header in [json!({"alg": "HS256"}), json!({"alg": "HS256", "kid": "rsa1"})] {
        let token = forge_hs256(&header, &body, &public_pem);
        assert_eq!(
            refused(&auth, &token).await,
            AuthError::AlgorithmNotAllowed("HS256".into())
        );
    }
    // Claiming RS256 with an HMAC signature fails the RSA check.
    let token = forge_hs256(&json!({"alg": "RS256", "kid": "rsa1"}), &body, &public_pem);
    assert_eq!(refused(&auth, &token).await, AuthError::BadSignature);
    // A gateway with both: HS256 is checked with the HS256 secret only, never a public key.
    let config = AuthConfig {
        hs256_secret: SECRET.to_string().into(),
        ..pem_config(&["HS256", "RS256"], &["rsa1.pem"])
    };
    let auth = Authenticator::from_config(&config).await.unwrap();
    for header in [json!({"alg": "HS256"}), json!({"alg": "HS256", "kid": "rsa1"})] {
        let token = forge_hs256(&header, &body, &public_pem);
        assert_eq!(refused(&auth, &token).await, AuthError::BadSignature);
    }
    assert!(auth.verify(&sign_hs(&body)).await.is_ok());
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_pem_keys() {
    let auth = Authenticator::from_config(&pem_config(&["RS256", "ES256"], &["rsa1.pem", "ec1.pem"]))
        .await
        .unwrap();
    assert!(auth.keys_loaded());
    let body = claims(json!({}));
    for kid in [Some("rsa1"), None] {
        let caller = auth
            .verify(&sign_with(Algorithm::RS256, "rsa1.key", kid, &body))
            .await
            .unwrap();
        assert_eq!(caller.user, "alice");
    }
    for kid in [Some("ec1"), None] {
        assert!(
            auth.verify(&sign_with(Algorithm::ES256, "ec1.key", kid, &body))
                .await
                .is_ok()
        );
    }
    let token = sign_with(Algorithm::RS256, "rsa1.key", Some("rsa9"), &body);
    assert_eq!(refused(&auth, &token).await, AuthError::UnknownKeyId("rsa9".into()));
    // The kid names the key of its own family only.
    let token = sign_with(Algorithm::ES256, "ec1.key", Some("rsa1"), &body);
    assert_eq!(refused(&auth, &token).await, AuthError::UnknownKeyId("rsa1".into()));
    let token = sign_with(Algorithm::RS256, "rsa2.key", None, &body);
    assert_eq!(refused(&auth, &token).await, AuthError::BadSignature);
}

#[tokio::test]
async fn an_es256_token_is_refused_by_an_rs256_gateway() {
    let auth = Authenticator::from_config(&pem_config(&["RS256"], &["rsa1.pem"]))
        .await
        .unwrap();
    let token = sign_with(Algorithm::ES256, "ec1.key", Some("ec1"), &claims(json!({})));
    assert_eq!(
        refused(&auth, &token).await,
        AuthError::AlgorithmNotAllowed("ES256".into())
    );
}

#[tokio::test]
async fn two_pem_keys_at_once_verify_tokens_of_either() {
    let auth = Authenticator::from_config(&pem_config(&["RS256"], &["rsa1.pem", "rsa2.pem"]))
        .await
        .unwrap();
    let body = claims(json!({}));
    for (key, kid) in [("rsa1.key", "rsa1"), ("rsa2.key", "rsa2")] {
        assert!(
            auth.verify(&sign_with(Algorithm::RS256, key, Some(kid), &body))
                .await
                .is_ok(),
            "{kid}"
        );
        assert!(
            auth.verify(&sign_with(Algorithm::RS256, key, None, &body))
                .await
                .is_ok(),
            "{kid} without kid"
        );
    }
    // A kid naming the other key is not silently retried with every key.
    let token = sign_with(Algorithm::RS256, "rsa1.key", Some("rsa2"), &body);
    assert_eq!(refused(&auth, &token).await, AuthError::BadSignature);
}

#[tokio::test]
async fn roles_are_read_as_an_array_or_a_space_separated_string() {
    let auth = hs_auth().await;
    let caller = auth
        .verify(&sign_hs(&claims(json!({"roles": ["finance", "admin"]}))))
        .await
        .unwrap();
    assert_eq!(caller.roles, ["finance", "admin"]);
    assert!(caller.is_admin() && caller.can_read_all_usage());
    let caller = auth
        .verify(&sign_hs(&claims(json!({"roles": "finance ops"}))))
        .await
        .unwrap();
    assert_eq!(caller.roles, ["finance", "ops"]);
    assert!(caller.can_read_all_usage() && !caller.is_admin());
    let token = sign_hs(&claims(json!({"roles": 3})));
    assert!(matches!(refused(&auth, &token).await, AuthError::InvalidClaim { .. }));
}

#[tokio::test]
async fn configured_claim_names_are_used() {
    let config = AuthConfig {
        tenant_claim: "team".into(),
        roles_claim: "groups".into(),
        ..hs_config()
    };
    let auth = Authenticator::from_config(&config).await.unwrap();
    let token = sign_hs(&claims(
        json!({"tenant": null, "roles": null, "team": "video", "groups": "admin"}),
    ));
    let caller = auth.verify(&token).await.unwrap();
    assert_eq!(caller.tenant.as_deref(), Some("video"));
    assert!(caller.is_admin());
    let token = sign_hs(&claims(json!({"team": null})));
    assert_eq!(refused(&auth, &token).await, AuthError::MissingClaim("team".into()));
}

#[tokio::test]
async fn a_finance_token_without_tenant_is_accepted() {
    let auth = hs_auth().await;
    let caller = auth
        .verify(&sign_hs(&claims(json!({"tenant": null, "roles": ["finance"]}))))
        .await
        .unwrap();
    assert_eq!(caller.tenant, None);
    assert!(caller.can_read_all_usage());
}

#[tokio::test]
async fn a_plain_user_token_without_tenant_is_refused() {
    let auth = hs_auth().await;
    let token = sign_hs(&claims(json!({"tenant": null})));
    let error = refused(&auth, &token).await;
    assert_eq!(error, AuthError::MissingClaim("tenant".into()));
    assert_eq!(error.to_string(), "missing claim `tenant`");
}

#[tokio::test]
async fn a_token_without_sub_is_refused() {
    let auth = hs_auth().await;
    let token = sign_hs(&claims(json!({"sub": null})));
    assert_eq!(refused(&auth, &token).await, AuthError::MissingClaim("sub".into()));
}

#[tokio::test]
async fn error_messages_never_contain_the_token() {
    let auth = hs_auth().await;
    let good = sign_hs(&claims(json!({})));
    let payload = good.split('.').nth(1).unwrap().to_string();
    let tokens = [
        sign_hs(&claims(json!({"exp": now() - 3600}))),
        sign_hs(&claims(json!({"aud": "x"}))),
        sign_hs(&claims(json!({"iss": "x"}))),
        sign_hs(&claims(json!({"tenant": "bad tenant id with spaces"}))),
        sign_hs(&claims(json!({"exp": "soon"}))),
        forge_hs256(
            &json!({"alg": "HS256"}),
            &claims(json!({})),
            b"wrong-secret-wrong-secret-wrong-secret",
        ),
        forge_hs256(
            &json!({"alg": "ES256", "kid": "k"}),
            &claims(json!({})),
            SECRET.as_bytes(),
        ),
        format!(
            "{}.{payload}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"secretive-kid-value"}"#)
        ),
        format!("{good}.extra-part"),
        format!(
            "{}.{payload}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
            "not*base64*at*all"
        ),
        format!("{}.bm90LWpzb24.sig", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#)),
        "garbage-garbage-garbage".to_string(),
    ];
    for token in tokens {
        refused(&auth, &token).await;
    }
    let rs = Authenticator::from_config(&pem_config(&["RS256"], &["rsa1.pem"]))
        .await
        .unwrap();
    let token = sign_with(
        Algorithm::RS256,
        "rsa2.key",
        Some("rsa2-with-a-long-kid"),
        &claims(json!({})),
    );
    refused(&rs, &token).await;
}

#[tokio::test]
async fn from_config_refuses_unusable_key_settings() {
    let cases = [
        AuthConfig {
            algorithms: vec![],
            ..hs_config()
        },
        AuthConfig {
            algorithms: vec!["none".into()],
            ..hs_config()
        },
        AuthConfig {
            hs256_secret: "short".to_string().into(),
            ..hs_config()
        },
        pem_config(&["RS256"], &[]),
        pem_config(&["RS256"], &["rsa1.key"]),
        pem_config(&["RS256"], &["missing.pem"]),
        pem_config(&["RS256"], &["README.md"]),
        // The only key is EC but only RS256 is configured: nothing can verify.
        pem_config(&["RS256"], &["ec1.pem"]),
    ];
    for config in cases {
        let Err(error) = Authenticator::from_config(&config).await else {
            panic!("accepted {:?} {:?}", config.algorithms, config.public_key_pem_files);
        };
        assert!(!error.to_string().contains(SECRET));
    }
}

#[tokio::test]
async fn a_minted_token_verifies() {
    let auth = hs_auth().await;
    let token = mint_hs256(
        &hs_config(),
        Some("marketing"),
        "bob",
        &["admin".into()],
        Duration::from_secs(60),
    )
    .unwrap();
    let caller = auth.verify(&token).await.unwrap();
    assert_eq!(caller.tenant.as_deref(), Some("marketing"));
    assert_eq!(caller.user, "bob");
    assert!(caller.is_admin());
    let token = mint_hs256(
        &hs_config(),
        None,
        "carol",
        &["finance".into()],
        parse_ttl("1h").unwrap(),
    )
    .unwrap();
    assert_eq!(auth.verify(&token).await.unwrap().tenant, None);
}

#[test]
fn an_authenticator_is_send_sync_and_debug_hides_the_secret() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Authenticator>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = runtime.block_on(hs_auth());
    let debug = format!("{auth:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("HS256"));
}

// ---- JWKS ----

/// A JWKS server on 127.0.0.1 that answers every request with the current status and body
/// and counts requests.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    response: Arc<Mutex<(u16, String)>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(status: u16, body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let response = Arc::new(Mutex::new((status, body)));
        let (task_hits, task_response) = (Arc::clone(&hits), Arc::clone(&response));
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (hits, response) = (Arc::clone(&task_hits), Arc::clone(&task_response));
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = response.lock().unwrap().clone();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            url,
            hits,
            response,
            task,
        }
    }

    fn set(&self, status: u16, body: String) {
        *self.response.lock().unwrap() = (status, body);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The public JWK of a fixture private key, with its kid.
fn jwk(alg: Algorithm, private_key: &str, kid: &str) -> Value {
    let pem = fixture_bytes(private_key);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    serde_json::to_value(jwk).unwrap()
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn jwks_config(url: &str, cooldown_secs: u64) -> AuthConfig {
    AuthConfig {
        issuer: ISSUER.into(),
        algorithms: vec!["RS256".into(), "ES256".into()],
        jwks_url: url.into(),
        jwks_refresh_cooldown_secs: cooldown_secs,
        ..AuthConfig::default()
    }
}

fn rs_token(private_key: &str, kid: &str) -> String {
    sign_with(Algorithm::RS256, private_key, Some(kid), &claims(json!({})))
}

#[tokio::test]
async fn jwks_keys_are_fetched_once_at_startup() {
    let keys = [
        jwk(Algorithm::RS256, "rsa1.key", "k1"),
        jwk(Algorithm::ES256, "ec1.key", "e1"),
    ];
    let server = JwksServer::start(200, jwks(&keys)).await;
    let auth = Authenticator::from_config(&jwks_config(&server.url, 60)).await.unwrap();
    assert_eq!(server.hits(), 1);
    assert!(auth.keys_loaded());
    assert!(auth.verify(&rs_token("rsa1.key", "k1")).await.is_ok());
    assert!(
        auth.verify(&sign_with(Algorithm::ES256, "ec1.key", Some("e1"), &claims(json!({}))))
            .await
            .is_ok()
    );
    assert!(
        auth.verify(&sign_with(Algorithm::RS256, "rsa1.key", None, &claims(json!({}))))
            .await
            .is_ok()
    );
    assert_eq!(server.hits(), 1, "known keys need no fetch");
}

#[tokio::test]
async fn a_new_kid_in_the_jwks_triggers_a_refresh() {
    let server = JwksServer::start(200, jwks(&[jwk(Algorithm::RS256, "rsa1.key", "k1")])).await;
    let auth = Authenticator::from_config(&jwks_config(&server.url, 0)).await.unwrap();
    // The IdP rotates: k2 is published, k1 retired.
    server.set(200, jwks(&[jwk(Algorithm::RS256, "rsa2.key", "k2")]));
    assert!(auth.verify(&rs_token("rsa2.key", "k2")).await.is_ok());
    assert_eq!(server.hits(), 2);
    assert!(auth.verify(&rs_token("rsa2.key", "k2")).await.is_ok());
    assert_eq!(server.hits(), 2);
    // The retired key is gone after the refresh.
    assert_eq!(
        refused(&auth, &rs_token("rsa1.key", "k1")).await,
        AuthError::UnknownKeyId("k1".into())
    );
}

#[tokio::test]
async fn the_refresh_cooldown_is_respected() {
    // Tokens first, so the steps within the cooldown take milliseconds even on a busy machine.
    let (k2, k3) = (rs_token("rsa2.key", "k2"), rs_token("rsa2.key", "k3"));
    let both = jwks(&[
        jwk(Algorithm::RS256, "rsa1.key", "k1"),
        jwk(Algorithm::RS256, "rsa2.key", "k2"),
    ]);
    let server = JwksServer::start(200, jwks(&[jwk(Algorithm::RS256, "rsa1.key", "k1")])).await;
    let auth = Authenticator::from_config(&jwks_config(&server.url, 2)).await.unwrap();
    assert_eq!(server.hits(), 1);
    // Within the cooldown of the startup fetch: unknown kids fetch nothing.
    for _ in 0..3 {
        assert_eq!(refused(&auth, &k2).await, AuthError::UnknownKeyId("k2".into()));
    }
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    server.set(200, both);
    assert!(auth.verify(&k2).await.is_ok());
    assert_eq!(server.hits(), 2);
    assert_eq!(refused(&auth, &k3).await, AuthError::UnknownKeyId("k3".into()));
    assert_eq!(
        server.hits(),
        2,
        "a second unknown kid within the cooldown fetches nothing"
    );
}

#[tokio::test]
async fn concurrent_unknown_kids_do_not_stampede_the_idp() {
    let server = JwksServer::start(200, jwks(&[jwk(Algorithm::RS256, "rsa1.key", "k1")])).await;
    let auth = Arc::new(Authenticator::from_config(&jwks_config(&server.url, 0)).await.unwrap());
    server.set(200, jwks(&[jwk(Algorithm::RS256, "rsa2.key", "k2")]));
    let token = rs_token("rsa2.key", "k2");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (auth, token) = (Arc::clone(&auth), token.clone());
            tokio::spawn(async move { auth.verify(&token).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_ok());
    }
    assert_eq!(server.hits(), 2, "one startup fetch, one refresh");
}

#[tokio::test]
async fn concurrent_unknown_kids_within_the_cooldown_fetch_once() {
    let server = JwksServer::start(500, "down".into()).await;
    let auth = Arc::new(Authenticator::from_config(&jwks_config(&server.url, 60)).await.unwrap());
    assert_eq!(server.hits(), 1);
    let token = rs_token("rsa1.key", "k9");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (auth, token) = (Arc::clone(&auth), token.clone());
            tokio::spawn(async move { auth.verify(&token).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap_err(), AuthError::UnknownKeyId("k9".into()));
    }
    assert_eq!(
        server.hits(),
        2,
        "the failed startup fetch is retried once, then the cooldown holds"
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let server = JwksServer::start(200, jwks(&[jwk(Algorithm::RS256, "rsa1.key", "k1")])).await;
    let auth = Authenticator::from_config(&jwks_config(&server.url, 0)).await.unwrap();
    for (status, body) in [(500, "oops".to_string()), (200, "not json".into()), (200, jwks(&[]))] {
        server.set(status, body);
        let before = server.hits();
        assert_eq!(
            refused(&auth, &rs_token("rsa2.key", "k2")).await,
            AuthError::UnknownKeyId("k2".into())
        );
        assert_eq!(server.hits(), before + 1, "a refresh was attempted");
        assert!(
            auth.verify(&rs_token("rsa1.key", "k1")).await.is_ok(),
            "old key still works after {status}"
        );
        assert!(auth.keys_loaded());
    }
}

#[tokio::test]
async fn a_failed_first_fetch_is_not_fatal_and_is_retried_on_demand() {
    let server = JwksServer::start(503, "starting".into()).await;
    let auth = Authenticator::from_config(&jwks_config(&server.url, 60)).await.unwrap();
    assert!(!auth.keys_loaded());
    server.set(200, jwks(&[jwk(Algorithm::RS256, "rsa1.key", "k1")]));
    assert!(auth.verify(&rs_token("rsa1.key", "k1")).await.is_ok());
    assert!(auth.keys_loaded());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn an_unreachable_jwks_url_is_not_fatal() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let auth = Authenticator::from_config(&jwks_config(&url, 60)).await.unwrap();
    assert!(!auth.keys_loaded());
    assert_eq!(
        refused(&auth, &rs_token("rsa1.key", "k1")).await,
        AuthError::UnknownKeyId("k1".into())
    );
    let token = sign_with(Algorithm::RS256, "rsa1.key", None, &claims(json!({})));
    assert_eq!(refused(&auth, &token).await, AuthError::NoKey("RS256"));
}

#[tokio::test]
async fn pem_keys_and_jwks_keys_work_side_by_side() {
    let server = JwksServer::start(200, jwks(&[jwk(Algorithm::RS256, "rsa2.key", "k2")])).await;
    let config = AuthConfig {
        public_key_pem_files: vec![fixture("rsa1.pem")],
        ..jwks_config(&server.url, 60)
    };
    let auth = Authenticator::from_config(&config).await.unwrap();
    assert!(auth.verify(&rs_token("rsa1.key", "rsa1")).await.is_ok());
    assert!(auth.verify(&rs_token("rsa2.key", "k2")).await.is_ok());
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn unusable_jwks_entries_are_skipped() {
    let mut other_alg = jwk(Algorithm::RS256, "rsa2.key", "wrong-alg");
    other_alg["alg"] = json!("RS512");
    let keys = [
        json!({"kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(SECRET)}),
        json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        other_alg,
        jwk(Algorithm::RS256, "rsa1.key", "k1"),
    ];
    let server = JwksServer::start(200, jwks(&keys)).await;
    let auth = Authenticator::from_config(&jwks_config(&server.url, 60)).await.unwrap();
    assert!(auth.verify(&rs_token("rsa1.key", "k1")).await.is_ok());
    assert_eq!(
        refused(&auth, &rs_token("rsa2.key", "wrong-alg")).await,
        AuthError::UnknownKeyId("wrong-alg".into())
    );
    // An HS256 token keyed with a JWKS `oct` secret is refused: HS256 is not configured.
    let token = forge_hs256(
        &json!({"alg": "HS256", "kid": "hmac"}),
        &claims(json!({})),
        SECRET.as_bytes(),
    );
    assert_eq!(
        refused(&auth, &token).await,
        AuthError::AlgorithmNotAllowed("HS256".into())
    );
}
