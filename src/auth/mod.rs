//! Caller authentication: verifies company JWTs (HS256, RS256/ES256 PEM keys, JWKS) and yields the caller's tenant, user and roles.

// Rules kept here: the algorithm comes from `auth.algorithms`, never from the token; a key is
// chosen by algorithm family and `kid`; `exp` and `sub` are required; `nbf`, `iss`, `aud` are
// checked with `auth.leeway_secs`. No error message ever contains the token.

mod api_keys;
mod authenticator;
mod claims;
mod jwks;
mod keys;
mod mint;
pub mod session;
#[cfg(test)]
mod tests;

pub use api_keys::{API_KEY_PREFIX, API_KEY_USER_PREFIX, ApiKeys, caller_of, issue, key_hash, valid_key_name};
pub use authenticator::Authenticator;
pub use claims::{Caller, MAX_SUB_BYTES, ROLE_ADMIN, ROLE_FINANCE, ROLE_TENANT_ADMIN, caller_from_claims};
pub use mint::{mint_hs256, parse_ttl};

/// Why a token was refused. Messages say why, never echo the token, and quote at most a
/// short, sanitised header value (`alg`, `kid`) to help operators during key rotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid (nbf is in the future)")]
    NotYetValid,
    #[error("bad signature")]
    BadSignature,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("missing claim `{0}`")]
    MissingClaim(String),
    #[error("invalid claim `{claim}`: {reason}")]
    InvalidClaim { claim: String, reason: &'static str },
    #[error("unknown key id {0:?}")]
    UnknownKeyId(String),
    #[error("algorithm {0:?} not allowed")]
    AlgorithmNotAllowed(String),
    #[error("no key available to verify {0} tokens")]
    NoKey(&'static str),
    #[error("cannot mint token: {0}")]
    Mint(String),
    #[error("unknown or revoked API key")]
    UnknownApiKey,
    #[error("API key expired")]
    ApiKeyExpired,
}

impl AuthError {
    /// A stable snake_case name of the reason, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed(_) => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim { .. } => "invalid_claim",
            Self::UnknownKeyId(_) => "unknown_key_id",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::NoKey(_) => "no_key",
            Self::Mint(_) => "mint",
            Self::UnknownApiKey => "unknown_api_key",
            Self::ApiKeyExpired => "api_key_expired",
        }
    }
}

/// At most this much of a token-supplied header value (`alg`, `kid`) appears in a message.
const MAX_QUOTED_CHARS: usize = 64;

/// A token-supplied value made safe to quote: short, printable ASCII only.
fn sanitize(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect();
    if value.chars().count() > MAX_QUOTED_CHARS {
        out.push_str("...");
    }
    out
}

/// The token of an `Authorization` header value `Bearer <token>` (scheme case-insensitive);
/// `None` for any other scheme, an empty token or a token with inner whitespace.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let value = header_value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() || token.contains(char::is_whitespace) {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn bearer_token_accepts_any_case_of_the_scheme() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc  "), Some("abc"));
        assert_eq!(bearer_token("  Bearer\tabc"), Some("abc"));
    }

    #[test]
    fn bearer_token_refuses_other_schemes_and_empty_tokens() {
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer a b"), None);
        assert_eq!(bearer_token("Token abc"), None);
        assert_eq!(bearer_token(""), None);
    }

    #[test]
    fn sanitize_keeps_short_printable_values_and_cuts_the_rest() {
        assert_eq!(sanitize("rsa1"), "rsa1");
        assert_eq!(sanitize("a\nb\u{7f}é"), "a?b??");
        let long = "k".repeat(100);
        assert_eq!(sanitize(&long), format!("{}...", "k".repeat(MAX_QUOTED_CHARS)));
    }

    #[test]
    fn every_error_has_a_reason_and_a_message() {
        let errors = [
            AuthError::MissingToken,
            AuthError::Malformed("x"),
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::BadSignature,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::MissingClaim("tenant".into()),
            AuthError::InvalidClaim {
                claim: "roles".into(),
                reason: "r",
            },
            AuthError::UnknownKeyId("k".into()),
            AuthError::AlgorithmNotAllowed("none".into()),
            AuthError::NoKey("RS256"),
            AuthError::Mint("m".into()),
            AuthError::UnknownApiKey,
            AuthError::ApiKeyExpired,
        ];
        for error in errors {
            assert!(!error.reason().is_empty());
            assert!(!error.to_string().is_empty());
        }
        assert_eq!(
            AuthError::MissingClaim("tenant".into()).to_string(),
            "missing claim `tenant`"
        );
    }
}
