//! What the store keeps for credentials: each tenant's webhook signing keys, and the tenant
//! API keys (only their hash). The gateway makes the random values; the store keeps them.

use serde::{Deserialize, Serialize};

/// One webhook signing key: `whsec_` + base64 of 32 random bytes, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookKey {
    pub secret: String,
    pub created_ms: i64,
}

/// A tenant's signing keys: the current one, and after a rotation the one before it, which
/// still signs until `previous_expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookKeys {
    pub current: WebhookKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<WebhookKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_expires_ms: Option<i64>,
}

impl WebhookKeys {
    /// The keys that sign a delivery at `now_ms`: the current one, then the previous one
    /// while it has not expired.
    pub fn signing_at(&self, now_ms: i64) -> Vec<&WebhookKey> {
        let previous = self
            .previous
            .as_ref()
            .filter(|_| self.previous_expires_ms.is_some_and(|until| now_ms < until));
        std::iter::once(&self.current).chain(previous).collect()
    }

    /// After a rotation at `fresh`: `fresh` signs, the current key signs too until `until_ms`.
    pub fn rotated(stored: Option<Self>, fresh: WebhookKey, until_ms: i64) -> Self {
        match stored {
            Some(stored) => Self {
                current: fresh,
                previous: Some(stored.current),
                previous_expires_ms: Some(until_ms),
            },
            None => Self {
                current: fresh,
                previous: None,
                previous_expires_ms: None,
            },
        }
    }
}

/// A tenant API key as stored: never the key itself, only its SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// `key_` + a ULID: how admins name it to revoke it.
    pub id: String,
    pub tenant: String,
    /// `[a-z0-9-]{1,64}`, unique per tenant; the caller's user is `key:<name>`.
    pub name: String,
    pub hash: String,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

/// What `create_api_key` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyCreated {
    Created,
    /// The tenant has a key of that name: nothing written.
    NameTaken,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str, created_ms: i64) -> WebhookKey {
        WebhookKey {
            secret: secret.into(),
            created_ms,
        }
    }

    #[test]
    fn the_previous_key_signs_only_until_it_expires() {
        let first = WebhookKeys::rotated(None, key("a", 1), 0);
        assert_eq!(first.signing_at(5), vec![&key("a", 1)]);
        let second = WebhookKeys::rotated(Some(first), key("b", 10), 100);
        assert_eq!(second.signing_at(99), vec![&key("b", 10), &key("a", 1)]);
        assert_eq!(second.signing_at(100), vec![&key("b", 10)]);
        // A second rotation within the window drops the oldest key.
        let third = WebhookKeys::rotated(Some(second), key("c", 20), 200);
        assert_eq!(third.signing_at(50), vec![&key("c", 20), &key("b", 10)]);
    }
}
