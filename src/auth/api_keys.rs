//! Tenant API keys (`vgk_...`) for machine callers: issued by admins per tenant, stored
//! only as their SHA-256, looked up by that hash on every request through a short-lived
//! in-process cache, so a revoked or expired key is refused on every replica within 5 s.
//!
//! A key is 32 random bytes: hashing it once (no salt, no slow KDF) is enough, since no
//! dictionary reaches that entropy; the lookup is a hash-map lookup, not a comparison loop.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::{AuthError, Caller};
use crate::store::{ApiKeyRecord, Store, StoreError};

/// What every API key starts with (and no JWT does: a JWT starts with `ey`).
pub const API_KEY_PREFIX: &str = "vgk_";
/// The user of an API-key caller is `key:<name>`; JWTs may not claim such a `sub`.
pub const API_KEY_USER_PREFIX: &str = "key:";
/// Random bytes in a key.
const KEY_BYTES: usize = 32;
/// Longer presented keys are refused before hashing.
const MAX_KEY_LEN: usize = 128;
/// How long a lookup is trusted: under the 5 s within which a revocation must reach every
/// replica, with room for the store read.
const CACHE_TTL: Duration = Duration::from_secs(4);
/// Entries kept at most; the map starts over when full.
const CACHE_MAX: usize = 4096;

/// A key's name: `[a-z0-9-]{1,64}`.
pub fn valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The SHA-256 (hex) a key is stored and found under.
pub fn key_hash(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

/// A new key for `tenant`: the key itself (shown once) and the record to store.
pub fn issue(tenant: &str, name: &str, now_ms: i64, expires_ms: Option<i64>) -> (String, ApiKeyRecord) {
    let bytes: [u8; KEY_BYTES] = rand::random();
    let key = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let record = ApiKeyRecord {
        id: format!("key_{}", ulid::Ulid::new()),
        tenant: tenant.to_string(),
        name: name.to_string(),
        hash: key_hash(&key),
        created_ms: now_ms,
        expires_ms,
    };
    (key, record)
}

/// The caller an API key stands for: its tenant, user `key:<name>`, no roles.
pub fn caller_of(record: &ApiKeyRecord) -> Caller {
    Caller {
        tenant: Some(record.tenant.clone()),
        user: format!("{API_KEY_USER_PREFIX}{}", record.name),
        roles: Vec::new(),
    }
}

/// What the cache keeps of a key: the caller it stands for and until when.
#[derive(Debug, Clone)]
struct Known {
    caller: Caller,
    expires_ms: Option<i64>,
}

impl Known {
    fn of(record: &ApiKeyRecord) -> Self {
        Self {
            caller: caller_of(record),
            expires_ms: record.expires_ms,
        }
    }
}

/// Hash → what the store said (`None`: no such key) and when it was read.
type Entries = HashMap<String, (Option<Known>, Instant)>;

/// The lookup with its cache; one per process, shared by every worker.
#[derive(Default)]
pub struct ApiKeys {
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("cached", &self.lock().len()).finish()
    }
}

impl ApiKeys {
    /// The caller of a presented key at `now_ms`; the outer error is the store's (503), the
    /// inner one the refusal (401). Error messages never contain the key.
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        key: &str,
        now_ms: i64,
    ) -> Result<Result<Caller, AuthError>, StoreError> {
        if let Some(answer) = self.cached(key, now_ms) {
            return Ok(answer);
        }
        if !plausible(key) {
            return Ok(Err(AuthError::UnknownApiKey));
        }
        let hash = key_hash(key);
        let known = store.api_key(&hash).await?.as_ref().map(Known::of);
        let answer = judge(known.as_ref(), now_ms);
        let mut entries = self.lock();
        if entries.len() >= CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (known, Instant::now()));
        Ok(answer)
    }

    /// The answer from the cache alone, when it holds a fresh one: the hot path.
    pub fn cached(&self, key: &str, now_ms: i64) -> Option<Result<Caller, AuthError>> {
        let hash = key_hash(key);
        let entries = self.lock();
        let (known, read) = entries.get(&hash)?;
        (read.elapsed() < CACHE_TTL).then(|| judge(known.as_ref(), now_ms))
    }

    /// Forgets a key at once (revoked on this replica; others follow within the TTL).
    pub fn forget(&self, hash: &str) {
        self.lock().remove(hash);
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Entries are whole values: a panic elsewhere cannot leave one half-written.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn plausible(key: &str) -> bool {
    key.starts_with(API_KEY_PREFIX) && key.len() <= MAX_KEY_LEN
}

fn judge(known: Option<&Known>, now_ms: i64) -> Result<Caller, AuthError> {
    match known {
        None => Err(AuthError::UnknownApiKey),
        Some(known) if known.expires_ms.is_some_and(|until| now_ms >= until) => Err(AuthError::ApiKeyExpired),
        Some(known) => Ok(known.caller.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_digits_and_dashes() {
        for ok in ["render-ci", "a", "0", &"x".repeat(64)] {
            assert!(valid_key_name(ok), "{ok}");
        }
        for bad in ["", "Render", "a_b", "a b", "ü", &"x".repeat(65)] {
            assert!(!valid_key_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_issued_key_is_random_and_stored_only_as_its_hash() {
        let (one, record) = issue("t", "ci", 5, Some(10));
        let (two, _) = issue("t", "ci", 5, None);
        assert_ne!(one, two);
        assert!(one.starts_with(API_KEY_PREFIX) && one.len() == API_KEY_PREFIX.len() + 43);
        assert_eq!(record.hash, key_hash(&one));
        assert_eq!(record.hash.len(), 64);
        assert_eq!(
            key_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let stored = serde_json::to_string(&record).unwrap();
        assert!(!stored.contains(&one[API_KEY_PREFIX.len()..]), "{stored}");
        assert!(record.id.starts_with("key_"));
        assert_eq!(caller_of(&record).user, "key:ci");
        assert!(caller_of(&record).roles.is_empty());
    }

    #[test]
    fn an_expired_or_unknown_key_is_refused() {
        let (_, record) = issue("t", "ci", 0, Some(100));
        let known = Known::of(&record);
        assert_eq!(judge(Some(&known), 99).map(|c| c.user), Ok("key:ci".to_string()));
        assert_eq!(judge(Some(&known), 100), Err(AuthError::ApiKeyExpired));
        assert_eq!(judge(None, 0), Err(AuthError::UnknownApiKey));
        assert!(!plausible("vgk"));
        assert!(!plausible(&format!("vgk_{}", "a".repeat(200))));
    }
}
