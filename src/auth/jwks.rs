//! JWKS cache: fetches the IdP's keys, refreshes on unknown `kid` at most once per cooldown, keeps the last good keys.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::keys::{VerifyKey, jwk_key};

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The whole fetch; verifies waiting for a refresh wait at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REDIRECTS: usize = 3;

/// The keys currently served, and how many refreshes were attempted before them.
pub(super) struct Snapshot {
    pub attempts: u64,
    pub keys: Arc<Vec<VerifyKey>>,
}

/// Cached keys of `auth.jwks_url`. Readers never wait; refreshes run one at a time.
pub(super) struct JwksCache {
    url: String,
    /// `url` without user info or query, for logs.
    log_url: String,
    client: reqwest::Client,
    cooldown: Duration,
    allowed: Vec<Algorithm>,
    current: watch::Sender<Arc<Snapshot>>,
    /// Held for the length of a fetch; holds the moment of the last attempt that arms the cooldown.
    refresh: Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(url: &str, cooldown: Duration, allowed: Vec<Algorithm>) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let loopback = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        let log_url = redacted(&parsed);
        if parsed.scheme() != "https" && !loopback {
            tracing::warn!(
                url = %log_url,
                "auth.jwks_url is not https: keys can be tampered with in transit"
            );
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .user_agent(concat!("vidgate/", env!("CARGO_PKG_VERSION")));
        if loopback {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| format!("cannot build HTTP client: {e}"))?;
        let empty = Arc::new(Snapshot {
            attempts: 0,
            keys: Arc::new(Vec::new()),
        });
        Ok(Self {
            url: url.to_string(),
            log_url,
            client,
            cooldown,
            allowed,
            current: watch::Sender::new(empty),
            refresh: Mutex::new(None),
        })
    }

    /// The keys now; never waits for a refresh.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
    }

    pub fn has_keys(&self) -> bool {
        !self.current.borrow().keys.is_empty()
    }

    /// The first fetch at startup. A failure is logged and does not arm the cooldown, so
    /// the first token that needs a key retries at once.
    pub async fn initial_fetch(&self) {
        let mut last_attempt = self.refresh.lock().await;
        match self.fetch().await {
            Ok(keys) => {
                *last_attempt = Some(Instant::now());
                self.publish(Arc::new(keys));
            }
            Err(reason) => {
                tracing::warn!(url = %self.log_url, %reason, "JWKS fetch failed; retrying when a token needs a key");
            }
        }
    }

    /// Refreshes the keys because a token needed one that `seen` lacks. One refresh at a
    /// time: a caller that waited while another refreshed takes that result; within the
    /// cooldown of the last attempt nothing is fetched. A failed fetch keeps the old keys.
    pub async fn refresh(&self, seen: &Snapshot) -> Arc<Snapshot> {
        let mut last_attempt = self.refresh.lock().await;
        let current = self.snapshot();
        if current.attempts != seen.attempts {
            return current;
        }
        if let Some(at) = *last_attempt
            && at.elapsed() < self.cooldown
        {
            tracing::debug!(url = %self.log_url, "JWKS refresh skipped: within the cooldown");
            return current;
        }
        *last_attempt = Some(Instant::now());
        let keys = match self.fetch().await {
            Ok(keys) => Arc::new(keys),
            Err(reason) => {
                tracing::warn!(url = %self.log_url, %reason, "JWKS refresh failed; keeping the last good keys");
                Arc::clone(&current.keys)
            }
        };
        self.publish(keys)
    }

    fn publish(&self, keys: Arc<Vec<VerifyKey>>) -> Arc<Snapshot> {
        let attempts = self.current.borrow().attempts + 1;
        let next = Arc::new(Snapshot { attempts, keys });
        self.current.send_replace(Arc::clone(&next));
        next
    }

    async fn fetch(&self) -> Result<Vec<VerifyKey>, String> {
        let body = self.fetch_body().await?;
        let document: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let entries = document
            .get("keys")
            .and_then(|keys| keys.as_array())
            .ok_or_else(|| "no `keys` array".to_string())?;
        let mut keys = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            match jwk_key(entry, &self.allowed) {
                Ok(key) => keys.push(key),
                Err(reason) => tracing::debug!(url = %self.log_url, index, %reason, "JWK skipped"),
            }
        }
        if keys.is_empty() {
            return Err(format!("none of {} keys is a usable signature key", entries.len()));
        }
        let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        tracing::info!(url = %self.log_url, count = keys.len(), ?kids, "JWKS keys loaded");
        Ok(keys)
    }

    async fn fetch_body(&self) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        if response.content_length().is_some_and(|len| len > MAX_JWKS_BYTES as u64) {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading failed: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The URL as logs may show it: no user info, no query (either may carry a credential).
fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot have user info (not http/https), which is fine.
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_carry_no_credentials() {
        let url = url::Url::parse("https://user:pw@idp.example/jwks?api_key=s3cret#x").unwrap();
        assert_eq!(redacted(&url), "https://idp.example/jwks");
    }
}
