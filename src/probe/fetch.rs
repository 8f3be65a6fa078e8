//! SSRF-safe HTTP client: every URL and every resolved address checked by the address rules.
//!
//! The pieces that make it safe, each closing a known hole:
//! - `check_url` runs on the first URL and on every redirect hop, before any DNS lookup:
//!   scheme, credentials, host allow-list, and IP literals in any spelling (reqwest does not
//!   call a custom resolver for IP-literal hosts, so they are decided here).
//! - Names are resolved by a reqwest resolver that checks *every* address it returns and
//!   hands the checked ones to the connector: no second lookup, so DNS rebinding between
//!   "check" and "connect" is impossible.
//! - Redirects are followed by hand (reqwest's policy is `none`), at most [`MAX_REDIRECTS`].
//! - No proxy, whatever `*_PROXY` says: a proxy would resolve and connect on our behalf.
//! - Every lookup gives up after [`DNS_TIMEOUT`], and the system resolver's blocking calls run
//!   on the blocking pool, a bounded number at a time: a name server that never answers ties
//!   up neither a request nor the threads the embedded store runs on.
//! - Errors name the host, never the whole URL (its path or query may be a credential).

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, StatusCode};
use url::Url;

use super::address::{AddressPolicy, UrlRefusal, check_url};

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// Every name lookup gives up after this long.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// System lookups blocking a thread at once; more wait for a slot (within their timeout).
const MAX_BLOCKING_LOOKUPS: usize = 32;

/// Turns a host name into addresses. Injectable so tests can map a name to loopback.
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver (`getaddrinfo`), on the blocking pool, at most
/// `MAX_BLOCKING_LOOKUPS` at once: a lookup that hangs keeps its slot until the system
/// gives up, so hanging lookups cannot take every blocking thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

static LOOKUP_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_BLOCKING_LOOKUPS);

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let slot = LOOKUP_SLOTS.acquire().await.map_err(io::Error::other)?;
        let host = host.to_string();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            (host.as_str(), 0)
                .to_socket_addrs()
                .map(|addrs| addrs.map(|addr| addr.ip()).collect())
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// `resolver`'s answer for `host`, or a timeout error after `DNS_TIMEOUT`.
pub async fn resolve_within(resolver: &dyn Resolver, host: &str) -> io::Result<Vec<IpAddr>> {
    tokio::time::timeout(DNS_TIMEOUT, resolver.resolve(host))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no DNS answer within {} s", DNS_TIMEOUT.as_secs()),
            ))
        })
}

/// A name resolved to an address the policy refuses.
#[derive(Debug, Clone, thiserror::Error)]
#[error("host {host:?} resolves to {ip}, an internal address that is not allowed")]
pub struct AddressRefused {
    pub host: String,
    pub ip: IpAddr,
}

/// The addresses of `host`, refused whole when any one is not allowed: a name with one
/// public and one internal address must not be usable to reach the internal one.
pub fn checked_addresses(host: &str, ips: Vec<IpAddr>, policy: &AddressPolicy) -> Result<Vec<IpAddr>, AddressRefused> {
    match ips.iter().find(|ip| !policy.address_allowed(**ip)) {
        Some(ip) => Err(AddressRefused {
            host: host.to_string(),
            ip: *ip,
        }),
        None => Ok(ips),
    }
}

/// The resolver reqwest connects through: resolves, checks, and returns only checked
/// addresses, so the connection goes exactly where the check looked.
struct CheckingResolver {
    inner: Arc<dyn Resolver>,
    policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let inner = Arc::clone(&self.inner);
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = resolve_within(inner.as_ref(), &host).await?;
            if ips.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("{host:?} has no addresses")).into());
            }
            let ips = checked_addresses(&host, ips, &policy)?;
            // Port 0: reqwest puts the URL's port (or the scheme's default) in its place.
            let addrs: reqwest::dns::Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Why a fetch did not happen or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Not a URL at all.
    #[error("{0}")]
    InvalidUrl(String),
    /// The address rules refused the URL, a redirect target, or a resolved address.
    #[error("{0}")]
    Refused(String),
    /// No usable answer: DNS, connection, TLS, timeout, too many redirects.
    #[error("{0}")]
    Unreachable(String),
}

impl From<UrlRefusal> for FetchError {
    fn from(refusal: UrlRefusal) -> Self {
        match refusal {
            UrlRefusal::Malformed => Self::InvalidUrl(refusal.to_string()),
            other => Self::Refused(other.to_string()),
        }
    }
}

/// A response and the URL that gave it (after redirects).
#[derive(Debug)]
pub struct Fetched {
    pub response: reqwest::Response,
    pub url: Url,
}

/// HTTP client for caller-supplied URLs (reference videos, callback deliveries).
/// Cheap to clone; clones share the connection pool and the request counter.
#[derive(Clone)]
pub struct SafeHttp {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    https_only: bool,
    requests: Arc<AtomicU64>,
    resolver: Arc<dyn Resolver>,
}

impl std::fmt::Debug for SafeHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeHttp")
            .field("policy", &self.policy)
            .field("https_only", &self.https_only)
            .finish_non_exhaustive()
    }
}

impl SafeHttp {
    /// `https_only`: plain http only towards `allowed_networks` or when private networks are
    /// allowed (see `check_url`).
    pub fn new(policy: AddressPolicy, https_only: bool, resolver: Arc<dyn Resolver>) -> Result<Self, String> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            // Some CDNs refuse requests without one.
            .user_agent(concat!("vidgate/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(CheckingResolver {
                inner: Arc::clone(&resolver),
                policy: Arc::clone(&policy),
            }))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            policy,
            https_only,
            requests: Arc::new(AtomicU64::new(0)),
            resolver,
        })
    }

    /// The same client without the host allow-list, for URLs vidgate did not take from a
    /// caller (the upstream's result URLs). Addresses are still checked: the connector's
    /// resolver never looks at the allow-list, only at the address rules, which stay.
    pub fn without_host_allow_list(&self) -> Self {
        let mut policy = (*self.policy).clone();
        policy.allowed_hosts.clear();
        Self {
            policy: Arc::new(policy),
            ..self.clone()
        }
    }

    /// Everything about a URL that needs no network; the same check every hop gets.
    pub fn check(&self, raw: &str) -> Result<Url, FetchError> {
        Ok(check_url(raw, &self.policy, self.https_only)?)
    }

    /// `check`, then the name resolved and every address checked, as a connection would be:
    /// to refuse a URL early (a caller's callback URL at create time). Proves nothing about
    /// later: a delivery resolves and checks again.
    pub async fn check_resolved(&self, raw: &str) -> Result<Url, FetchError> {
        let url = self.check(raw)?;
        if let Some(url::Host::Domain(host)) = url.host() {
            let ips = resolve_within(self.resolver.as_ref(), host)
                .await
                .map_err(|e| FetchError::Unreachable(format!("cannot resolve {host:?}: {e}")))?;
            if ips.is_empty() {
                return Err(FetchError::Unreachable(format!("{host:?} has no addresses")));
            }
            checked_addresses(host, ips, &self.policy).map_err(|e| FetchError::Refused(e.to_string()))?;
        }
        Ok(url)
    }

    /// Sends one request and returns its answer as is, a redirect included (never
    /// followed): for webhook deliveries, where a redirect is not a delivery.
    pub async fn send_once(
        &self,
        method: Method,
        raw_url: &str,
        headers: &HeaderMap,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, FetchError> {
        let url = self.check(raw_url)?;
        self.request(method, &url, headers, body.as_ref()).await
    }

    async fn request(
        &self,
        method: Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<&Bytes>,
    ) -> Result<reqwest::Response, FetchError> {
        let mut request = self.client.request(method, url.clone()).headers(headers.clone());
        if let Some(body) = body {
            request = request.body(body.clone());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        request.send().await.map_err(|e| classify(&e.without_url(), url))
    }

    /// HTTP requests sent so far, redirect hops included (by this client and its clones).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Sends a request, following up to [`MAX_REDIRECTS`] redirects, each target checked
    /// before it is contacted. 303 (and 301/302 after a POST) continue as a bodiless GET,
    /// as browsers do; 307/308 repeat the request.
    pub async fn send(
        &self,
        method: Method,
        raw_url: &str,
        headers: &HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Fetched, FetchError> {
        let mut url = self.check(raw_url)?;
        let (mut method, mut body) = (method, body);
        let mut hops = 0;
        loop {
            let response = self.request(method.clone(), &url, headers, body.as_ref()).await?;
            let status = response.status();
            let follows = matches!(
                status,
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            );
            let location = response.headers().get(LOCATION).cloned();
            let Some(location) = location.filter(|_| follows) else {
                return Ok(Fetched { response, url });
            };
            if hops == MAX_REDIRECTS {
                return Err(FetchError::Unreachable(format!("more than {MAX_REDIRECTS} redirects")));
            }
            hops += 1;
            let target = location
                .to_str()
                .ok()
                .and_then(|location| url.join(location).ok())
                .ok_or_else(|| FetchError::Unreachable(format!("redirect {status} with an unusable Location")))?;
            url = self.check(target.as_str()).map_err(|e| match e {
                FetchError::Refused(reason) => FetchError::Refused(format!("redirect refused: {reason}")),
                other => other,
            })?;
            if status == StatusCode::SEE_OTHER
                || (method == Method::POST && matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND))
            {
                (method, body) = (Method::GET, None);
            }
        }
    }
}

/// Sorts a reqwest error (stripped of its URL): a refusal by the checking resolver, or the
/// network failing.
fn classify(error: &reqwest::Error, url: &Url) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut root = error.to_string();
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<AddressRefused>() {
            return FetchError::Refused(refused.to_string());
        }
        root = err.to_string();
        source = err.source();
    }
    let host = url.host_str().unwrap_or_default();
    if error.is_timeout() {
        FetchError::Unreachable(format!("{host}: timed out"))
    } else if error.is_connect() {
        FetchError::Unreachable(format!("cannot connect to {host}: {root}"))
    } else {
        FetchError::Unreachable(format!("request to {host} failed: {root}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name server that never answers.
    struct Silent;

    #[async_trait]
    impl Resolver for Silent {
        async fn resolve(&self, _host: &str) -> io::Result<Vec<IpAddr>> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_never_answers_gives_up_after_two_seconds() {
        let http = SafeHttp::new(AddressPolicy::default(), true, Arc::new(Silent)).unwrap();
        let started = tokio::time::Instant::now();
        let refused = http.check_resolved("https://silent.example/hook").await.unwrap_err();
        assert_eq!(started.elapsed(), DNS_TIMEOUT);
        assert!(
            matches!(&refused, FetchError::Unreachable(reason) if reason.contains("no DNS answer within 2 s")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn an_error_names_the_host_but_never_the_path_or_query() {
        // Nothing listens on port 9 of loopback: the connection is refused at once.
        let policy = AddressPolicy {
            allow_private_networks: true,
            ..AddressPolicy::default()
        };
        let http = SafeHttp::new(policy, false, Arc::new(SystemResolver)).unwrap();
        let error = http
            .send_once(
                Method::POST,
                "http://127.0.0.1:9/services/T0/s3cr3t?token=t0k3n",
                &HeaderMap::new(),
                None,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("127.0.0.1"), "{error}");
        assert!(!error.contains("s3cr3t") && !error.contains("t0k3n"), "{error}");
    }
}
