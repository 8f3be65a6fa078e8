//! One sign-in attempt, kept by the browser between `/console/auth/login` and the callback in
//! a short-lived cookie signed with `console.session_secret`, so any replica can finish it.
//! It carries the `state` the callback must echo, the `nonce` the ID token must carry and
//! the PKCE verifier (the browser never shows it to the IdP: only its hash went there).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::session::{sign_value, verified_value};

/// The flow cookie's name; its path is `/console/auth`, so no other route sees it.
pub const FLOW_COOKIE: &str = "vidgate_oidc";
pub const FLOW_COOKIE_PATH: &str = "/console/auth";
/// A sign-in attempt must come back from the IdP within this time.
pub const FLOW_TTL_SECS: i64 = 600;
const PURPOSE: &str = "oidc-flow";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Unix ms.
    pub exp_ms: i64,
}

/// Why the callback's `state` and the flow cookie do not belong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowError {
    /// No flow cookie: it expired, or sign-in did not start in this browser.
    Missing,
    /// The cookie's signature does not match, or it cannot be read.
    Forged,
    Expired,
    /// The `state` the IdP sent back is not this attempt's.
    StateMismatch,
}

impl Flow {
    pub fn to_cookie_value(&self, secret: &[u8]) -> String {
        // Serialising a struct of strings and a number cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        sign_value(secret, PURPOSE, &URL_SAFE_NO_PAD.encode(json))
    }

    /// The attempt a callback finishes: the cookie is ours, alive, and its `state` is the
    /// one the IdP echoed (compared as hashes, so the time taken says nothing about it).
    pub fn check(cookie: Option<&str>, secret: &[u8], state: &str, now_ms: i64) -> Result<Self, FlowError> {
        let cookie = cookie.filter(|c| !c.is_empty()).ok_or(FlowError::Missing)?;
        let payload = verified_value(secret, PURPOSE, cookie).ok_or(FlowError::Forged)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| FlowError::Forged)?;
        let flow: Self = serde_json::from_slice(&json).map_err(|_| FlowError::Forged)?;
        if flow.exp_ms <= now_ms {
            return Err(FlowError::Expired);
        }
        if Sha256::digest(flow.state.as_bytes()) != Sha256::digest(state.as_bytes()) {
            return Err(FlowError::StateMismatch);
        }
        Ok(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_795_600_000_000;

    fn flow() -> Flow {
        Flow {
            state: "state-1".into(),
            nonce: "nonce-1".into(),
            pkce_verifier: "verifier-1".into(),
            exp_ms: NOW + 600_000,
        }
    }

    #[test]
    fn a_flow_comes_back_with_its_own_state() {
        let cookie = flow().to_cookie_value(SECRET);
        assert_eq!(Flow::check(Some(&cookie), SECRET, "state-1", NOW), Ok(flow()));
    }

    #[test]
    fn a_tampered_state_or_cookie_is_refused() {
        let cookie = flow().to_cookie_value(SECRET);
        assert_eq!(
            Flow::check(Some(&cookie), SECRET, "state-2", NOW),
            Err(FlowError::StateMismatch)
        );
        // A cookie made with another secret, or with its payload swapped, does not verify.
        let other = flow().to_cookie_value(b"another secret of thirty-two bytes!");
        assert_eq!(
            Flow::check(Some(&other), SECRET, "state-1", NOW),
            Err(FlowError::Forged)
        );
        let mut forged = flow();
        forged.state = "attacker".into();
        let forged_payload = forged.to_cookie_value(b"x").split_once('.').unwrap().0.to_string();
        let signature = cookie.rsplit_once('.').unwrap().1;
        assert_eq!(
            Flow::check(Some(&format!("{forged_payload}.{signature}")), SECRET, "attacker", NOW),
            Err(FlowError::Forged)
        );
        assert_eq!(
            Flow::check(Some("garbage"), SECRET, "state-1", NOW),
            Err(FlowError::Forged)
        );
    }

    #[test]
    fn a_missing_or_expired_flow_is_refused() {
        assert_eq!(Flow::check(None, SECRET, "state-1", NOW), Err(FlowError::Missing));
        assert_eq!(Flow::check(Some(""), SECRET, "state-1", NOW), Err(FlowError::Missing));
        let cookie = flow().to_cookie_value(SECRET);
        assert_eq!(
            Flow::check(Some(&cookie), SECRET, "state-1", NOW + 600_000),
            Err(FlowError::Expired)
        );
    }

    #[test]
    fn a_flow_cookie_does_not_pass_as_a_session_cookie() {
        let cookie = flow().to_cookie_value(SECRET);
        assert_eq!(crate::auth::session::session_id_of_cookie(&cookie, SECRET), None);
    }
}
