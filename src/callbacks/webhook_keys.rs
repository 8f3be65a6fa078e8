//! Each tenant's own webhook signing key: 32 random bytes made by the gateway, kept in the
//! store, created on first use and rotated on request (the old key keeps signing for 24 h),
//! so no team can sign a delivery another team would accept. The shared
//! `callbacks.signing_secret` only signs as well, as the legacy key, until
//! `callbacks.legacy_signature_until`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};

use crate::config::CallbacksConfig;
use crate::state::AppState;
use crate::store::{StoreError, WebhookKey, WebhookKeys};

/// Random bytes in a tenant's key.
const KEY_BYTES: usize = 32;
/// How long the key a rotation replaced keeps signing.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;

/// A fresh key made at `now_ms`, in the Standard Webhooks form `whsec_<base64>`.
pub fn new_key(now_ms: i64) -> WebhookKey {
    let bytes: [u8; KEY_BYTES] = rand::random();
    WebhookKey {
        secret: format!("whsec_{}", STANDARD.encode(bytes)),
        created_ms: now_ms,
    }
}

/// The HMAC key inside a `whsec_...` secret.
pub fn key_bytes(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix("whsec_")?).ok()
}

/// The legacy shared key and until when it signs (from `[callbacks]`).
#[derive(Clone, Default)]
pub struct Legacy {
    key: Option<Vec<u8>>,
    until: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Legacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Legacy")
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .field("until", &self.until)
            .finish()
    }
}

impl Legacy {
    pub fn new(key: Option<Vec<u8>>, until: Option<DateTime<Utc>>) -> Self {
        Self { key, until }
    }

    /// From `[callbacks]`, saying at startup whether the legacy key still signs: an operator
    /// who upgrades without setting the date should learn why old receivers refuse deliveries.
    pub fn from_config(callbacks: &CallbacksConfig) -> Result<Self, String> {
        let legacy = Self::new(callbacks.signing_key()?, callbacks.legacy_until()?);
        match (&legacy.key, legacy.until) {
            (None, _) => {}
            (Some(_), Some(until)) if Utc::now() < until => tracing::info!(
                until = %until.to_rfc3339(),
                "deliveries also carry a signature with the legacy callbacks.signing_secret until callbacks.legacy_signature_until"
            ),
            (Some(_), _) => tracing::warn!(
                "callbacks.signing_secret no longer signs deliveries (callbacks.legacy_signature_until is empty or past): \
                 receivers verify with their tenant's key (GET /v1/webhooks/secret)"
            ),
        }
        Ok(legacy)
    }

    /// The legacy key, while it still signs at `now`.
    pub fn at(&self, now: DateTime<Utc>) -> Option<&[u8]> {
        self.key
            .as_deref()
            .filter(|_| self.until.is_some_and(|until| now < until))
    }
}

/// The tenant's keys, its first one made now if it has none.
pub async fn keys(state: &AppState, tenant: &str) -> Result<WebhookKeys, StoreError> {
    let now_ms = state.clock.now().timestamp_millis();
    state.store.webhook_keys(tenant, &new_key(now_ms)).await
}

/// A new key for the tenant; the replaced one signs too for `ROTATION_OVERLAP_MS`.
pub async fn rotate(state: &AppState, tenant: &str) -> Result<WebhookKeys, StoreError> {
    let now_ms = state.clock.now().timestamp_millis();
    state
        .store
        .rotate_webhook_key(tenant, &new_key(now_ms), now_ms.saturating_add(ROTATION_OVERLAP_MS))
        .await
}

/// The HMAC keys a delivery for `tenant` is signed with now: the tenant's current key, its
/// previous one during a rotation's overlap, and the legacy key until its date.
pub async fn signing_keys(state: &AppState, tenant: &str, legacy: &Legacy) -> Result<Vec<Vec<u8>>, StoreError> {
    let now = state.clock.now();
    let stored = keys(state, tenant).await?;
    let mut out: Vec<Vec<u8>> = stored
        .signing_at(now.timestamp_millis())
        .into_iter()
        .map(|key| {
            key_bytes(&key.secret)
                .ok_or_else(|| StoreError::Corrupt(format!("the webhook key of {tenant} is not whsec_ base64")))
        })
        .collect::<Result<_, _>>()?;
    out.extend(legacy.at(now).map(<[u8]>::to_vec));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_32_random_bytes_in_the_whsec_form() {
        let (one, two) = (new_key(1), new_key(1));
        assert_ne!(one.secret, two.secret);
        assert_eq!(key_bytes(&one.secret).map(|k| k.len()), Some(KEY_BYTES));
        assert_eq!(key_bytes("nope"), None);
    }

    #[test]
    fn the_legacy_key_signs_only_before_its_date() {
        let date = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let legacy = Legacy::new(Some(vec![1; 24]), Some(date("2027-03-01T00:00:00Z")));
        assert!(legacy.at(date("2027-02-28T23:59:59Z")).is_some());
        assert!(legacy.at(date("2027-03-01T00:00:00Z")).is_none());
        assert!(
            Legacy::new(Some(vec![1; 24]), None)
                .at(date("2000-01-01T00:00:00Z"))
                .is_none()
        );
        assert!(
            Legacy::new(None, Some(date("2100-01-01T00:00:00Z")))
                .at(date("2027-01-01T00:00:00Z"))
                .is_none()
        );
    }
}
