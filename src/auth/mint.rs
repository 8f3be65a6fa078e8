//! Minting HS256 tokens from the configured secret (`vidgate token`) and parsing their lifetimes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::AuthError;
use super::authenticator::MIN_HS256_SECRET_BYTES;
use super::claims::{ROLE_ADMIN, ROLE_FINANCE};
use crate::config::{AuthConfig, valid_tenant_id};

fn mint_error(reason: impl Into<String>) -> AuthError {
    AuthError::Mint(reason.into())
}

/// A signed HS256 token with `sub`, the tenant and roles claims (named as configured), the
/// configured `iss`/`aud` when set, `iat` and `exp = iat + ttl`. Refuses what the gateway
/// itself would refuse: HS256 not configured, a short secret, no tenant without finance/admin.
pub fn mint_hs256(
    config: &AuthConfig,
    tenant: Option<&str>,
    sub: &str,
    roles: &[String],
    ttl: Duration,
) -> Result<String, AuthError> {
    check_request(config, tenant, sub, roles, ttl)?;
    let secret = config.hs256_secret.expose_secret();
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(mint_error("auth.hs256_secret must be at least 32 bytes"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| mint_error("the system clock is before 1970"))?
        .as_secs();
    let exp = now
        .checked_add(ttl.as_secs())
        .ok_or_else(|| mint_error("ttl too long"))?;
    let mut claims = Map::new();
    if let Some(tenant) = tenant {
        claims.insert(config.tenant_claim.clone(), Value::from(tenant));
    }
    if !roles.is_empty() {
        claims.insert(config.roles_claim.clone(), Value::from(roles.to_vec()));
    }
    if !config.issuer.is_empty() {
        claims.insert("iss".into(), Value::from(config.issuer.as_str()));
    }
    if !config.audience.is_empty() {
        claims.insert("aud".into(), Value::from(config.audience.as_str()));
    }
    claims.insert("sub".into(), Value::from(sub));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(exp));
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|_| mint_error("signing failed"))
}

fn check_request(
    config: &AuthConfig,
    tenant: Option<&str>,
    sub: &str,
    roles: &[String],
    ttl: Duration,
) -> Result<(), AuthError> {
    if !config.algorithms.iter().any(|alg| alg == "HS256") {
        return Err(mint_error(
            "HS256 is not in auth.algorithms: the gateway would refuse the token",
        ));
    }
    if sub.is_empty() {
        return Err(mint_error("sub must not be empty"));
    }
    if let Some(tenant) = tenant {
        if !valid_tenant_id(tenant) {
            return Err(mint_error("tenant must be 1-64 of a-z, A-Z, 0-9, '-', '_', '.'"));
        }
        if config.tenant_claim.is_empty() {
            return Err(mint_error("auth.tenant_claim is empty"));
        }
    }
    if roles
        .iter()
        .any(|role| role.is_empty() || role.contains(char::is_whitespace))
    {
        return Err(mint_error("roles must be non-empty words without spaces"));
    }
    if !roles.is_empty() && config.roles_claim.is_empty() {
        return Err(mint_error("auth.roles_claim is empty: roles cannot be carried"));
    }
    let privileged = roles.iter().any(|role| role == ROLE_FINANCE || role == ROLE_ADMIN);
    if tenant.is_none() && !privileged {
        return Err(mint_error("a token without tenant needs role finance or admin"));
    }
    if ttl.as_secs() == 0 {
        return Err(mint_error("ttl must be at least one second"));
    }
    Ok(())
}

/// A token lifetime: `30s`, `15m`, `1h`, `7d` or plain seconds; positive.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let help = "use e.g. 30s, 15m, 1h, 7d or plain seconds";
    if digits.is_empty() {
        return Err(format!("invalid duration {text:?}: {help}"));
    }
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit {unit:?}: {help}")),
    };
    let count: u64 = digits.parse().map_err(|_| format!("duration {text:?} is too long"))?;
    let secs = count
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))?;
    if secs == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_units_and_plain_seconds() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl(" 2h "), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn ttl_refuses_nonsense() {
        for text in [
            "",
            "h",
            "1w",
            "1.5h",
            "-1",
            "0",
            "0s",
            "1 h",
            "1hh",
            "99999999999999999999",
            "999999999999999999d",
        ] {
            assert!(parse_ttl(text).is_err(), "{text:?}");
        }
    }

    fn config() -> AuthConfig {
        AuthConfig {
            hs256_secret: "0123456789abcdef0123456789abcdef".to_string().into(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn mint_refuses_what_the_gateway_would_refuse() {
        let hour = Duration::from_secs(3600);
        let roles = |list: &[&str]| list.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        type Case<'a> = (AuthConfig, Option<&'a str>, &'a str, Vec<String>, Duration);
        let cases: Vec<Case> = vec![
            (config(), None, "u", roles(&["viewer"]), hour),
            (config(), Some("bad tenant"), "u", vec![], hour),
            (config(), Some("t"), "", vec![], hour),
            (config(), Some("t"), "u", roles(&["a b"]), hour),
            (config(), Some("t"), "u", vec![], Duration::ZERO),
            (
                AuthConfig {
                    hs256_secret: "short".to_string().into(),
                    ..config()
                },
                Some("t"),
                "u",
                vec![],
                hour,
            ),
            (
                AuthConfig {
                    algorithms: vec!["RS256".into()],
                    ..config()
                },
                Some("t"),
                "u",
                vec![],
                hour,
            ),
        ];
        for (config, tenant, sub, roles, ttl) in cases {
            let err = mint_hs256(&config, tenant, sub, &roles, ttl).unwrap_err();
            assert!(matches!(err, AuthError::Mint(_)), "{err}");
        }
    }

    #[test]
    fn mint_writes_configured_claims() {
        let config = AuthConfig {
            issuer: "https://idp".into(),
            tenant_claim: "team".into(),
            ..config()
        };
        let token = mint_hs256(&config, Some("t"), "u", &["admin".into()], Duration::from_secs(60)).unwrap();
        let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        assert_eq!(claims["team"], "t");
        assert_eq!(claims["roles"], serde_json::json!(["admin"]));
        assert_eq!(claims["iss"], "https://idp");
        assert_eq!(claims["aud"], "vidgate");
        assert_eq!(claims["sub"], "u");
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);
    }
}
