//! Console credentials: one-time `console-link` tickets and session cookies, both signed
//! with `console.session_secret` (HMAC-SHA256). A session itself lives in the store; the
//! cookie carries its random id, signed so that junk never reaches the store.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::claims::{Caller, ROLE_ADMIN, ROLE_FINANCE};
use crate::config::valid_tenant_id;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "vidgate_session";
/// The header a console write must carry, with the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A ticket lives at most this long, whatever `--ttl` asks.
pub const MAX_TICKET_TTL: Duration = Duration::from_secs(7 * 86_400);

type HmacSha256 = Hmac<Sha256>;

/// What a `console-link` ticket says: who signs in, until when, and its one-time id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub jti: String,
    /// Unix ms.
    pub exp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is malformed")]
    Malformed,
    #[error("the ticket's signature does not match console.session_secret")]
    BadSignature,
    #[error("the ticket has expired")]
    Expired,
    #[error("{0}")]
    Invalid(String),
}

impl Ticket {
    /// A fresh ticket with a random `jti`, valid for `ttl` from `now_ms`. Refuses what the
    /// gateway would refuse at sign-in.
    pub fn new(
        sub: &str,
        tenant: Option<&str>,
        roles: &[String],
        ttl: Duration,
        now_ms: i64,
    ) -> Result<Self, TicketError> {
        if sub.is_empty() || sub.len() > 255 {
            return Err(TicketError::Invalid("--sub must be 1 to 255 bytes".into()));
        }
        if sub.starts_with("key:") {
            return Err(TicketError::Invalid("--sub must not start with `key:`".into()));
        }
        if let Some(tenant) = tenant.filter(|t| !valid_tenant_id(t)) {
            return Err(TicketError::Invalid(format!(
                "--tenant {tenant:?}: 1-64 of a-z, A-Z, 0-9, '-', '_', '.'"
            )));
        }
        let privileged = roles.iter().any(|r| r == ROLE_FINANCE || r == ROLE_ADMIN);
        if tenant.is_none() && !privileged {
            return Err(TicketError::Invalid(
                "without --tenant the user needs the role finance or admin".into(),
            ));
        }
        if ttl.is_zero() || ttl > MAX_TICKET_TTL {
            return Err(TicketError::Invalid("--ttl must be from 1s to 7d".into()));
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        Ok(Self {
            sub: sub.to_string(),
            tenant: tenant.map(str::to_string),
            roles: roles.to_vec(),
            jti: random_token(),
            exp_ms: now_ms.saturating_add(ttl_ms),
        })
    }

    /// `payload.signature`, both base64url.
    pub fn sign(&self, secret: &[u8]) -> String {
        // Serialising a struct of strings and numbers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let payload = URL_SAFE_NO_PAD.encode(json);
        let signature = URL_SAFE_NO_PAD.encode(mac(secret, "ticket", payload.as_bytes()));
        format!("{payload}.{signature}")
    }

    /// Checks the signature (in constant time) and the expiry; the single use is the store's.
    pub fn verify(text: &str, secret: &[u8], now_ms: i64) -> Result<Self, TicketError> {
        let (payload, signature) = text.split_once('.').ok_or(TicketError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TicketError::Malformed)?;
        let mut check = keyed(secret, "ticket");
        check.update(payload.as_bytes());
        check.verify_slice(&signature).map_err(|_| TicketError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TicketError::Malformed)?;
        let ticket: Self = serde_json::from_slice(&json).map_err(|_| TicketError::Malformed)?;
        if ticket.exp_ms <= now_ms {
            return Err(TicketError::Expired);
        }
        Ok(ticket)
    }

    pub fn caller(&self) -> Caller {
        Caller {
            tenant: self.tenant.clone(),
            user: self.sub.clone(),
            roles: self.roles.clone(),
        }
    }
}

/// The value of cookie `name` in a `Cookie` header value (`a=1; b=2`).
pub fn cookie_in_header<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// A new session id: 32 random bytes, base64url.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The cookie value for a session id: `id.signature`.
pub fn cookie_value(session_id: &str, secret: &[u8]) -> String {
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, "cookie", session_id.as_bytes()));
    format!("{session_id}.{signature}")
}

/// The session id of a cookie value whose signature matches.
pub fn session_id_of_cookie<'a>(value: &'a str, secret: &[u8]) -> Option<&'a str> {
    let (id, signature) = value.split_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut check = keyed(secret, "cookie");
    check.update(id.as_bytes());
    check.verify_slice(&signature).ok()?;
    Some(id)
}

/// The key a session is stored under: a hash of its id, so a store dump holds no cookie.
pub fn session_key(session_id: &str) -> String {
    let digest = Sha256::digest(session_id.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CSRF token of a session: derived, so it needs no storage, and unknown to other sites.
pub fn csrf_token(session_id: &str, secret: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(mac(secret, "csrf", session_id.as_bytes()))
}

/// Compares a presented CSRF token in constant time.
pub fn csrf_matches(session_id: &str, secret: &[u8], presented: &str) -> bool {
    let Ok(presented) = URL_SAFE_NO_PAD.decode(presented) else {
        return false;
    };
    let mut check = keyed(secret, "csrf");
    check.update(session_id.as_bytes());
    check.verify_slice(&presented).is_ok()
}

/// `payload.signature` (base64url) for a value the browser keeps for the gateway, such as the
/// sign-in flow's cookie; `purpose` keeps one kind from passing as another.
pub fn sign_value(secret: &[u8], purpose: &str, payload: &str) -> String {
    format!(
        "{payload}.{}",
        URL_SAFE_NO_PAD.encode(mac(secret, purpose, payload.as_bytes()))
    )
}

/// The payload of a `sign_value` text whose signature matches (checked in constant time).
pub fn verified_value<'a>(secret: &[u8], purpose: &str, text: &'a str) -> Option<&'a str> {
    let (payload, signature) = text.rsplit_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut check = keyed(secret, purpose);
    check.update(payload.as_bytes());
    check.verify_slice(&signature).ok()?;
    Some(payload)
}

/// One HMAC key per purpose, so a signature of one kind never passes as another.
fn keyed(secret: &[u8], purpose: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(purpose.as_bytes());
    mac.update(b"\0");
    mac
}

fn mac(secret: &[u8], purpose: &str, data: &[u8]) -> Vec<u8> {
    let mut mac = keyed(secret, purpose);
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_795_600_000_000;

    fn finance() -> Vec<String> {
        vec!["finance".into()]
    }

    #[test]
    fn a_signed_ticket_verifies_until_it_expires() {
        let ticket = Ticket::new("fin", None, &finance(), Duration::from_secs(60), NOW).unwrap();
        let text = ticket.sign(SECRET);
        assert_eq!(Ticket::verify(&text, SECRET, NOW + 59_999), Ok(ticket));
        assert_eq!(Ticket::verify(&text, SECRET, NOW + 60_000), Err(TicketError::Expired));
    }

    #[test]
    fn a_ticket_signed_with_another_secret_or_altered_is_refused() {
        let text = Ticket::new("fin", None, &finance(), Duration::from_secs(60), NOW)
            .unwrap()
            .sign(SECRET);
        assert_eq!(
            Ticket::verify(&text, b"another secret of thirty-two bytes!", NOW),
            Err(TicketError::BadSignature)
        );
        let (payload, signature) = text.split_once('.').unwrap();
        let forged = Ticket::new("admin", None, &["admin".into()], Duration::from_secs(60), NOW)
            .unwrap()
            .sign(b"attacker");
        let forged_payload = forged.split_once('.').unwrap().0;
        assert_eq!(
            Ticket::verify(&format!("{forged_payload}.{signature}"), SECRET, NOW),
            Err(TicketError::BadSignature)
        );
        assert_eq!(Ticket::verify(payload, SECRET, NOW), Err(TicketError::Malformed));
    }

    #[test]
    fn a_ticket_needs_a_tenant_or_a_finance_role_and_a_sane_ttl() {
        let ttl = Duration::from_secs(60);
        assert!(Ticket::new("ann", None, &[], ttl, NOW).is_err());
        assert!(Ticket::new("ann", Some("bad id!"), &[], ttl, NOW).is_err());
        assert!(Ticket::new("key:ci", Some("acme"), &[], ttl, NOW).is_err());
        assert!(Ticket::new("ann", Some("acme"), &[], Duration::from_secs(8 * 86_400), NOW).is_err());
        assert!(Ticket::new("ann", Some("acme"), &[], ttl, NOW).is_ok());
    }

    #[test]
    fn two_tickets_never_share_a_jti() {
        let a = Ticket::new("fin", None, &finance(), Duration::from_secs(60), NOW).unwrap();
        let b = Ticket::new("fin", None, &finance(), Duration::from_secs(60), NOW).unwrap();
        assert_ne!(a.jti, b.jti);
    }

    #[test]
    fn a_cookie_carries_its_session_id_only_with_a_matching_signature() {
        let id = random_token();
        let cookie = cookie_value(&id, SECRET);
        assert_eq!(session_id_of_cookie(&cookie, SECRET), Some(id.as_str()));
        assert_eq!(session_id_of_cookie(&cookie, b"other"), None);
        assert_eq!(session_id_of_cookie(&format!("x{cookie}"), SECRET), None);
        assert_eq!(session_id_of_cookie("garbage", SECRET), None);
        assert_eq!(session_key(&id).len(), 64);
    }

    #[test]
    fn a_cookie_is_found_among_others_in_the_header() {
        assert_eq!(
            cookie_in_header("a=1; vidgate_session=x.y; b=2", SESSION_COOKIE),
            Some("x.y")
        );
        assert_eq!(cookie_in_header("vidgate_sessionx=1", SESSION_COOKIE), None);
        assert_eq!(cookie_in_header("", SESSION_COOKIE), None);
    }

    #[test]
    fn the_csrf_token_belongs_to_its_session() {
        let (a, b) = (random_token(), random_token());
        let token = csrf_token(&a, SECRET);
        assert!(csrf_matches(&a, SECRET, &token));
        assert!(!csrf_matches(&b, SECRET, &token));
        assert!(!csrf_matches(&a, SECRET, ""));
        assert!(!csrf_matches(&a, SECRET, "!!"));
    }
}
