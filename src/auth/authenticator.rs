//! `Authenticator`: verifies a bearer JWT with the configured algorithms and keys and returns the `Caller`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::api_keys::ApiKeys;
use super::claims::{Caller, caller_from_claims};
use super::jwks::{JwksCache, Snapshot};
use super::keys::{VerifyKey, alg_name, config_error, load_pem_files, parse_algorithms};
use super::{AuthError, sanitize};
use crate::config::{AuthConfig, ConfigError};

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest HS256 secret accepted (as `Config::validate_auth`).
pub(super) const MIN_HS256_SECRET_BYTES: usize = 32;

/// Verifies tokens; `Send + Sync`, meant to be built once and shared in an `Arc`.
pub struct Authenticator {
    /// One prepared validation per configured algorithm; nothing else is ever accepted.
    validations: Vec<(Algorithm, Validation)>,
    hs256: Option<DecodingKey>,
    pem_keys: Vec<VerifyKey>,
    jwks: Option<JwksCache>,
    tenant_claim: String,
    roles_claim: String,
    leeway_secs: u64,
    verified: Verified,
    api_keys: ApiKeys,
}

/// Tokens verified lately, so that a caller's every request does not pay for the signature
/// again: keyed by the whole token, each kept `VERIFIED_TTL_SECS` at most and never past the
/// moment verification itself would refuse it (`exp` + leeway). A key removed from the JWKS
/// stops tokens it signed within that time.
#[derive(Default)]
struct Verified {
    entries: Mutex<HashMap<Box<str>, (Caller, u64)>>,
}

const VERIFIED_TTL_SECS: u64 = 30;
/// About 2 MB of tokens at most; the map starts over when full.
const VERIFIED_MAX: usize = 4096;

impl Verified {
    fn get(&self, token: &str, now: u64) -> Option<Caller> {
        let entries = self.lock();
        let (caller, until) = entries.get(token)?;
        (now < *until).then(|| caller.clone())
    }

    fn insert(&self, token: &str, caller: &Caller, until: u64) {
        let mut entries = self.lock();
        if entries.len() >= VERIFIED_MAX {
            entries.clear();
        }
        entries.insert(token.into(), (caller.clone(), until));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, (Caller, u64)>> {
        // Entries are whole values: a panic elsewhere cannot leave one half-written.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<&str> = self.validations.iter().map(|(alg, _)| alg_name(*alg)).collect();
        f.debug_struct("Authenticator")
            .field("algorithms", &algorithms)
            .field("hs256_secret", &self.hs256.as_ref().map(|_| "[redacted]"))
            .field("pem_keys", &self.pem_keys.len())
            .field("jwks", &self.jwks.as_ref().map(|j| j.snapshot().keys.len()))
            .finish()
    }
}

/// The two header fields that decide which key verifies a token.
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

enum KeyOutcome {
    /// This key did not verify the signature; another key may.
    TryNext,
    Fail(AuthError),
}

impl Authenticator {
    /// Loads the HS256 secret and PEM keys, and fetches the JWKS once if `jwks_url` is set
    /// (a failed fetch is logged and retried when a token needs a key).
    pub async fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let algorithms = parse_algorithms(&config.algorithms)?;
        let hs256 = hs256_key(config, &algorithms)?;
        let asymmetric: Vec<Algorithm> = algorithms
            .iter()
            .copied()
            .filter(|alg| *alg != Algorithm::HS256)
            .collect();
        let pem_keys = load_pem_files(&config.public_key_pem_files, &asymmetric).await?;
        let jwks = jwks_cache(config, &asymmetric)?;
        if let Some(cache) = &jwks {
            cache.initial_fetch().await;
        }
        if !asymmetric.is_empty() && pem_keys.is_empty() && jwks.is_none() {
            return Err(config_error(
                "auth.public_key_pem_files",
                "RS256/ES256 need public_key_pem_files or jwks_url",
            ));
        }
        let validations = algorithms.iter().map(|alg| (*alg, validation(config, *alg))).collect();
        Ok(Self {
            validations,
            hs256,
            pem_keys,
            jwks,
            tenant_claim: config.tenant_claim.clone(),
            roles_claim: config.roles_claim.clone(),
            leeway_secs: config.leeway_secs,
            verified: Verified::default(),
            api_keys: ApiKeys::default(),
        })
    }

    /// Tenant API keys (`vgk_...`): the other credential the middleware accepts.
    pub fn api_keys(&self) -> &ApiKeys {
        &self.api_keys
    }

    /// For `/readyz`: at least one key can verify a token.
    pub fn keys_loaded(&self) -> bool {
        self.hs256.is_some() || !self.pem_keys.is_empty() || self.jwks.as_ref().is_some_and(JwksCache::has_keys)
    }

    /// Verifies signature, time, issuer and audience, then reads the caller from the claims.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        // The clock jsonwebtoken checks `exp` against.
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(caller) = self.verified.get(token, now) {
            return Ok(caller);
        }
        let header = parse_header(token)?;
        let (alg, validation) = self.allowed(&header.alg)?;
        let claims = if alg.family() == AlgorithmFamily::Hmac {
            // One secret: a `kid` on an HS256 token does not select anything.
            verify_with_keys(token, alg, validation, self.hs256.iter())?
        } else {
            self.verify_asymmetric(token, alg, validation, header.kid.as_deref())
                .await?
        };
        let caller = caller_from_claims(&claims, &self.tenant_claim, &self.roles_claim)?;
        // `exp` is required: verification refused a token without one.
        if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
            let until = exp.saturating_add(self.leeway_secs).min(now + VERIFIED_TTL_SECS);
            self.verified.insert(token, &caller, until);
        }
        Ok(caller)
    }

    fn allowed(&self, alg: &str) -> Result<(Algorithm, &Validation), AuthError> {
        self.validations
            .iter()
            .find(|(allowed, _)| alg_name(*allowed) == alg)
            .map(|(allowed, validation)| (*allowed, validation))
            .ok_or_else(|| AuthError::AlgorithmNotAllowed(sanitize(alg)))
    }

    /// PEM keys first, then JWKS keys; refreshes the JWKS (within its cooldown) when no
    /// key fits the token's algorithm and `kid`.
    async fn verify_asymmetric(
        &self,
        token: &str,
        alg: Algorithm,
        validation: &Validation,
        kid: Option<&str>,
    ) -> Result<Map<String, Value>, AuthError> {
        let mut snapshot = self.jwks.as_ref().map(JwksCache::snapshot);
        if let Some(jwks) = &self.jwks
            && let Some(seen) = &snapshot
            && self.candidates(Some(seen), alg, kid).is_empty()
        {
            snapshot = Some(jwks.refresh(seen).await);
        }
        let keys = self.candidates(snapshot.as_deref(), alg, kid);
        if keys.is_empty() {
            return Err(match kid {
                Some(kid) => AuthError::UnknownKeyId(sanitize(kid)),
                None => AuthError::NoKey(alg_name(alg)),
            });
        }
        verify_with_keys(token, alg, validation, keys.into_iter())
    }

    fn candidates<'a>(&'a self, jwks: Option<&'a Snapshot>, alg: Algorithm, kid: Option<&str>) -> Vec<&'a DecodingKey> {
        let jwks_keys = jwks.map(|snapshot| snapshot.keys.as_slice()).unwrap_or_default();
        self.pem_keys
            .iter()
            .chain(jwks_keys)
            .filter(|key| key.matches(alg, kid))
            .map(|key| &key.key)
            .collect()
    }
}

fn hs256_key(config: &AuthConfig, algorithms: &[Algorithm]) -> Result<Option<DecodingKey>, ConfigError> {
    if !algorithms.contains(&Algorithm::HS256) {
        return Ok(None);
    }
    let secret = config.hs256_secret.expose_secret();
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(config_error(
            "auth.hs256_secret",
            "HS256 needs a secret of at least 32 bytes",
        ));
    }
    Ok(Some(DecodingKey::from_secret(secret.as_bytes())))
}

fn jwks_cache(config: &AuthConfig, asymmetric: &[Algorithm]) -> Result<Option<JwksCache>, ConfigError> {
    if config.jwks_url.is_empty() {
        return Ok(None);
    }
    if asymmetric.is_empty() {
        tracing::warn!("auth.jwks_url is ignored: auth.algorithms has neither RS256 nor ES256");
        return Ok(None);
    }
    let cooldown = Duration::from_secs(config.jwks_refresh_cooldown_secs);
    JwksCache::new(&config.jwks_url, cooldown, asymmetric.to_vec())
        .map(Some)
        .map_err(|reason| config_error("auth.jwks_url", reason))
}

/// The checks for one algorithm, every default of `jsonwebtoken` set on purpose.
fn validation(config: &AuthConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = config.leeway_secs;
    validation.reject_tokens_expiring_in_less_than = 0;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    validation.iss = None;
    if !config.issuer.is_empty() {
        validation.set_issuer(&[config.issuer.as_str()]);
        required.push("iss");
    }
    validation.aud = None;
    validation.validate_aud = !config.audience.is_empty();
    if validation.validate_aud {
        validation.set_audience(&[config.audience.as_str()]);
        required.push("aud");
    }
    validation.sub = None;
    validation.set_required_spec_claims(&required);
    validation
}

/// Tries each key in turn; the first that verifies the signature decides the outcome.
fn verify_with_keys<'a>(
    token: &str,
    alg: Algorithm,
    validation: &Validation,
    keys: impl Iterator<Item = &'a DecodingKey>,
) -> Result<Map<String, Value>, AuthError> {
    let mut tried = false;
    for key in keys {
        tried = true;
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(error) => match classify(error.kind()) {
                KeyOutcome::TryNext => continue,
                KeyOutcome::Fail(error) => return Err(error),
            },
        }
    }
    Err(if tried {
        AuthError::BadSignature
    } else {
        AuthError::NoKey(alg_name(alg))
    })
}

/// Maps `jsonwebtoken` errors to ours without ever carrying token text along.
fn classify(kind: &ErrorKind) -> KeyOutcome {
    use KeyOutcome::{Fail, TryNext};
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TryNext,
        ErrorKind::ExpiredSignature => Fail(AuthError::Expired),
        ErrorKind::ImmatureSignature => Fail(AuthError::NotYetValid),
        ErrorKind::InvalidIssuer => Fail(AuthError::WrongIssuer),
        ErrorKind::InvalidAudience => Fail(AuthError::WrongAudience),
        ErrorKind::MissingRequiredClaim(claim) => Fail(AuthError::MissingClaim(sanitize(claim))),
        ErrorKind::InvalidClaimFormat(claim) => Fail(AuthError::InvalidClaim {
            claim: sanitize(claim),
            reason: "wrong type",
        }),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            Fail(AuthError::AlgorithmNotAllowed("header and key disagree".into()))
        }
        ErrorKind::Base64(_) => Fail(AuthError::Malformed("a part is not base64url")),
        ErrorKind::Json(_) => Fail(AuthError::Malformed("claims are not a JSON object")),
        ErrorKind::Utf8(_) => Fail(AuthError::Malformed("a part is not UTF-8")),
        _ => Fail(AuthError::Malformed("not a valid JWT")),
    }
}

/// Reads `alg` and `kid` from the unverified header; refuses `alg: none` and `crit`.
fn parse_header(token: &str) -> Result<TokenHeader, AuthError> {
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed("empty header or payload"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url"))?;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(AuthError::Malformed("header is not a JSON object"));
    };
    let Some(Value::String(alg)) = fields.get("alg") else {
        return Err(AuthError::Malformed("header has no `alg`"));
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::AlgorithmNotAllowed("none".into()));
    }
    if fields.contains_key("crit") {
        return Err(AuthError::Malformed("header extensions (`crit`) are not supported"));
    }
    let kid = match fields.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed("header `kid` is not a string")),
    };
    Ok(TokenHeader { alg: alg.clone(), kid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    #[test]
    fn header_alg_and_kid_are_read() {
        let token = format!("{}.{}.sig", b64(r#"{"alg":"RS256","kid":"rsa1"}"#), b64("{}"));
        let header = parse_header(&token).unwrap();
        assert_eq!(header.alg, "RS256");
        assert_eq!(header.kid.as_deref(), Some("rsa1"));
    }

    #[test]
    fn alg_none_is_refused_in_any_case() {
        for alg in ["none", "None", "NONE"] {
            let token = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64("{}"));
            assert_eq!(
                parse_header(&token).err(),
                Some(AuthError::AlgorithmNotAllowed("none".into()))
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let cases = [
            "abc".to_string(),
            "a.b".to_string(),
            "a.b.c.d".to_string(),
            format!(".{}.sig", b64("{}")),
            format!("!!!.{}.sig", b64("{}")),
            format!("{}.{}.sig", b64("[1]"), b64("{}")),
            format!("{}.{}.sig", b64(r#"{"typ":"JWT"}"#), b64("{}")),
            format!("{}.{}.sig", b64(r#"{"alg":"HS256","kid":5}"#), b64("{}")),
            format!("{}.{}.sig", b64(r#"{"alg":"HS256","crit":["b64"]}"#), b64("{}")),
            "a".repeat(MAX_TOKEN_BYTES + 1),
        ];
        for token in cases {
            assert!(
                matches!(parse_header(&token), Err(AuthError::Malformed(_))),
                "{token:.40}"
            );
        }
        assert_eq!(parse_header("").err(), Some(AuthError::MissingToken));
    }

    #[test]
    fn validation_sets_every_default_explicitly() {
        let config = AuthConfig {
            issuer: "https://idp".into(),
            leeway_secs: 7,
            ..AuthConfig::default()
        };
        let v = validation(&config, Algorithm::RS256);
        assert_eq!(v.algorithms, [Algorithm::RS256]);
        assert_eq!(v.leeway, 7);
        assert!(v.validate_exp && v.validate_nbf && v.validate_aud);
        for claim in ["exp", "sub", "iss", "aud"] {
            assert!(v.required_spec_claims.contains(claim), "{claim}");
        }
        let open = AuthConfig {
            issuer: String::new(),
            audience: String::new(),
            ..AuthConfig::default()
        };
        let v = validation(&open, Algorithm::HS256);
        assert!(!v.validate_aud);
        assert!(v.iss.is_none() && v.aud.is_none());
        assert!(!v.required_spec_claims.contains("iss") && !v.required_spec_claims.contains("aud"));
    }
}
