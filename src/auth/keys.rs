//! Verification keys: the configured algorithms, PEM public keys and JWKs, each bound to one algorithm.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::ConfigError;

/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// A P-256 public point, uncompressed: 0x04 ‖ x ‖ y.
const P256_POINT_BYTES: usize = 65;
const P256_COORDINATE_BYTES: usize = 32;

/// One public key and the single algorithm it verifies (`Debug` redacts the key bytes).
#[derive(Debug)]
pub(super) struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl VerifyKey {
    /// Whether this key may verify a token of `alg` naming `kid` (no kid: any key of `alg`).
    pub fn matches(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.alg == alg && kid.is_none_or(|kid| self.kid.as_deref() == Some(kid))
    }
}

pub(super) fn config_error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The name of an algorithm vidgate supports, as written in config and JWT headers.
pub(super) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "unsupported",
    }
}

/// `auth.algorithms` as algorithms; only HS256, RS256 and ES256 exist here.
pub(super) fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    if names.is_empty() {
        return Err(config_error("auth.algorithms", "at least one of HS256, RS256, ES256"));
    }
    let mut algorithms = Vec::new();
    for name in names {
        let alg = match name.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err(config_error("auth.algorithms", format!("unknown algorithm {other:?}")));
            }
        };
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    Ok(algorithms)
}

/// Loads every PEM file; the key id of each is its file stem. Keys of an algorithm that is
/// not configured are skipped with a warning; unreadable or unusable files are refused.
pub(super) async fn load_pem_files(paths: &[PathBuf], allowed: &[Algorithm]) -> Result<Vec<VerifyKey>, ConfigError> {
    let mut keys = Vec::new();
    for path in paths {
        let bytes = read_file(path).await?;
        let (alg, key) = pem_key(&bytes)
            .map_err(|reason| config_error("auth.public_key_pem_files", format!("{}: {reason}", path.display())))?;
        if !allowed.contains(&alg) {
            tracing::warn!(
                path = %path.display(),
                algorithm = alg_name(alg),
                "public key skipped: its algorithm is not in auth.algorithms"
            );
            continue;
        }
        let kid = path.file_stem().map(|stem| stem.to_string_lossy().into_owned());
        tracing::info!(path = %path.display(), kid = kid.as_deref().unwrap_or(""), algorithm = alg_name(alg), "public key loaded");
        keys.push(VerifyKey { kid, alg, key });
    }
    Ok(keys)
}

async fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || std::fs::read(owned)).await;
    let unreadable = |reason: String| {
        config_error(
            "auth.public_key_pem_files",
            format!("cannot read {}: {reason}", path.display()),
        )
    };
    match read {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(unreadable(e.to_string())),
        Err(e) => Err(unreadable(e.to_string())),
    }
}

/// One PEM public key (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`): RSA ≥ 2048 bits means
/// RS256, P-256 means ES256. Private keys and certificates are refused.
pub(super) fn pem_key(bytes: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not a PEM text file".to_string())?;
    if text.contains("PRIVATE KEY-----") {
        return Err("is a private key: give the public key (openssl pkey -pubout)".into());
    }
    if text.matches("-----BEGIN ").count() != 1 {
        return Err("must hold exactly one PEM block".into());
    }
    if text.contains("-----BEGIN RSA PUBLIC KEY-----") || text.contains("-----BEGIN PUBLIC KEY-----") {
        if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            check_rsa_der(&key)?;
            return Ok((Algorithm::RS256, key));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            check_p256_point(key.try_get_as_bytes().map_err(|_| "unreadable EC key".to_string())?)?;
            return Ok((Algorithm::ES256, key));
        }
        return Err("not an RSA or P-256 public key".into());
    }
    Err("expected `-----BEGIN PUBLIC KEY-----` (RSA or P-256)".into())
}

/// Parses the RSA DER the way verification will, and checks the modulus size.
fn check_rsa_der(key: &DecodingKey) -> Result<(), String> {
    let der = key.try_get_as_bytes().map_err(|_| "unreadable RSA key".to_string())?;
    let components = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
        .key_utils
        .rsa_pub_components_from_public_key;
    let (n, _e) = components(der).map_err(|_| "not a valid RSA public key".to_string())?;
    check_rsa_modulus(&n)
}

fn check_rsa_modulus(n: &[u8]) -> Result<(), String> {
    let significant = n.iter().skip_while(|b| **b == 0).count();
    if significant < MIN_RSA_MODULUS_BYTES {
        return Err(format!("RSA key of {} bits: at least 2048 needed", significant * 8));
    }
    Ok(())
}

fn check_p256_point(point: &[u8]) -> Result<(), String> {
    if point.len() != P256_POINT_BYTES || point.first() != Some(&0x04) {
        return Err("EC key is not on P-256 (ES256 needs P-256)".into());
    }
    Ok(())
}

/// One JWK of a JWKS, if it is an RS256/ES256 signature key of an allowed algorithm.
pub(super) fn jwk_key(value: &serde_json::Value, allowed: &[Algorithm]) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| "not a JWK this gateway reads".to_string())?;
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err("not a signature key (`use` is not `sig`)".into());
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("`key_ops` lacks `verify`".into());
    }
    let (alg, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            check_declared_alg(jwk.common.key_algorithm, KeyAlgorithm::RS256)?;
            check_rsa_modulus(&decode_b64url(&rsa.n)?)?;
            let key = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).map_err(|_| "bad RSA components")?;
            (Algorithm::RS256, key)
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            check_declared_alg(jwk.common.key_algorithm, KeyAlgorithm::ES256)?;
            if ec.curve != EllipticCurve::P256 {
                return Err("EC key is not on P-256".into());
            }
            if decode_b64url(&ec.x)?.len() != P256_COORDINATE_BYTES
                || decode_b64url(&ec.y)?.len() != P256_COORDINATE_BYTES
            {
                return Err("EC coordinates are not 32 bytes".into());
            }
            let key = DecodingKey::from_ec_components(&ec.x, &ec.y).map_err(|_| "bad EC components")?;
            (Algorithm::ES256, key)
        }
        _ => return Err("key type is neither RSA nor EC".into()),
    };
    if !allowed.contains(&alg) {
        return Err(format!("{} is not in auth.algorithms", alg_name(alg)));
    }
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

fn check_declared_alg(declared: Option<KeyAlgorithm>, expected: KeyAlgorithm) -> Result<(), String> {
    match declared {
        Some(alg) if alg != expected => Err(format!("declared `alg` {alg:?} is not {expected:?}")),
        _ => Ok(()),
    }
}

fn decode_b64url(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| "not base64url".to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    #[test]
    fn algorithms_are_parsed_and_unknown_ones_refused() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_algorithms(&names(&["RS256", "HS256", "RS256"])).unwrap(),
            [Algorithm::RS256, Algorithm::HS256]
        );
        assert!(parse_algorithms(&names(&["none"])).is_err());
        assert!(parse_algorithms(&names(&["hs256"])).is_err());
        assert!(parse_algorithms(&[]).is_err());
    }

    #[test]
    fn pem_keys_are_classified_by_their_content() {
        assert_eq!(pem_key(&fixture("rsa1.pem")).unwrap().0, Algorithm::RS256);
        assert_eq!(pem_key(&fixture("ec1.pem")).unwrap().0, Algorithm::ES256);
    }

    #[test]
    fn private_keys_and_garbage_are_refused() {
        assert!(pem_key(&fixture("rsa1.key")).unwrap_err().contains("private key"));
        assert!(pem_key(&fixture("ec1.key")).unwrap_err().contains("private key"));
        assert!(pem_key(b"hello").is_err());
        assert!(pem_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    }

    #[test]
    fn jwks_entries_that_are_not_signature_keys_are_refused() {
        let allowed = [Algorithm::RS256, Algorithm::ES256];
        assert!(jwk_key(&json!({"kty": "oct", "k": "c2VjcmV0"}), &allowed).is_err());
        assert!(
            jwk_key(&json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}), &allowed)
                .unwrap_err()
                .contains("bits")
        );
        let small = json!({"kty": "EC", "crv": "P-256", "x": "AQAB", "y": "AQAB", "use": "sig"});
        assert!(jwk_key(&small, &allowed).is_err());
        let enc = json!({"kty": "EC", "crv": "P-256", "x": "AQAB", "y": "AQAB", "use": "enc"});
        assert!(jwk_key(&enc, &allowed).unwrap_err().contains("sig"));
    }
}
