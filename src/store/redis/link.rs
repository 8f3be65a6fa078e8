//! Finding the primary and keeping a connection to it across failovers.
//!
//! `store.redis_url` names either one Redis (`redis://`, `rediss://`, `unix://`: a single
//! server, or a managed Redis that fails over behind one DNS name) or a Sentinel group
//! (`redis+sentinel://[user:pass@]h1:26379,h2:26379/mymaster[/db][?sentinel_username=u&sentinel_password=p]`:
//! the userinfo authenticates to the primary, the query to the sentinels).
//!
//! A link is one resolved primary with its connections. A write refused with `READONLY`
//! (the server became a replica) drops the link and resolves again (Sentinel: asks the
//! sentinels; one DNS name: connects anew, so the name is looked up again); with Sentinel a
//! connection failure does too, since the old address may be dead for good. Nothing is
//! ever written to a replica: Redis refuses it, and the link moves on.
//!
//! `rediss://` is TLS (rustls): the server's certificate is checked against the platform's
//! roots, or against `store.redis_ca_file` alone when set, and must name the URL's host.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use ::redis::{Client, ConnectionAddr, ErrorKind, RedisError, ServerErrorKind, TlsCertificates};
use secrecy::{ExposeSecret, SecretString};

/// How long one resolution of the primary may take (a frozen server accepts connections
/// and never answers).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one resolution this often: a dead primary fails every call at once.
const RESOLVE_PAUSE: Duration = Duration::from_millis(150);

/// What `store.redis_url` names.
#[derive(Clone)]
pub enum Target {
    /// One server (or one DNS name in front of a managed primary).
    Url(String),
    Sentinel(SentinelTarget),
}

#[derive(Clone)]
pub struct SentinelTarget {
    pub sentinels: Vec<(String, u16)>,
    pub master: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<SecretString>,
}

impl Target {
    /// Parses and checks `store.redis_url`; the error says what is wrong, never the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return parse_sentinel(rest).map(Self::Sentinel);
        }
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "redis" | "rediss" | "unix" | "redis+unix") {
            return Err("must be a redis://, rediss://, unix:// or redis+sentinel:// URL".into());
        }
        Ok(Self::Url(url.to_string()))
    }

    /// For the startup log: the sentinels and master name, or nothing for one server.
    pub fn describe(&self) -> Option<String> {
        match self {
            Self::Url(_) => None,
            Self::Sentinel(s) => Some(format!(
                "primary of {:?} from sentinels {}",
                s.master,
                s.sentinels
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        }
    }

    fn is_sentinel(&self) -> bool {
        matches!(self, Self::Sentinel(_))
    }

    /// Whether the URL is `rediss://` (TLS to one server).
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Url(url) if url.starts_with("rediss://"))
    }
}

/// Checks a PEM bundle of CA certificates for `store.redis_ca_file` (as the redis crate will
/// read it); the error says what is wrong.
pub fn check_ca_pem(pem: &[u8]) -> Result<(), String> {
    if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Client::build_with_tls("rediss://127.0.0.1", ca_certificates(pem))
        .map(drop)
        .map_err(|e| e.to_string())
}

fn ca_certificates(pem: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

fn parse_sentinel(rest: &str) -> Result<SentinelTarget, String> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest
        .split_once('/')
        .ok_or("a Sentinel URL names its master: redis+sentinel://host:26379,host2:26379/mymaster")?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let sentinels = hosts
        .split(',')
        .map(|host| {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) if !name.ends_with(']') || name.starts_with('[') => (
                    name,
                    port.parse::<u16>()
                        .map_err(|_| format!("sentinel {host:?}: bad port"))?,
                ),
                _ => (host, 26379),
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(format!("sentinel {host:?}: no host"));
            }
            Ok((name.to_string(), port))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let master = decode(parts.next().ok_or("a Sentinel URL names its master after the hosts")?)?;
    let db = match parts.next() {
        Some(db) => db.parse().map_err(|_| format!("database {db:?} is not a number"))?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err("a Sentinel URL's path is /master or /master/db".into());
    }
    let (username, password) = match userinfo {
        Some(info) => {
            let (user, pass) = info.split_once(':').unwrap_or((info, ""));
            (
                Some(decode(user)?).filter(|u| !u.is_empty()),
                Some(decode(pass)?).filter(|p| !p.is_empty()).map(SecretString::from),
            )
        }
        None => (None, None),
    };
    let mut target = SentinelTarget {
        sentinels,
        master,
        db,
        username,
        password,
        sentinel_username: None,
        sentinel_password: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value)?;
        match name {
            "sentinel_username" => target.sentinel_username = Some(value),
            "sentinel_password" => target.sentinel_password = Some(SecretString::from(value)),
            other => return Err(format!("unknown Sentinel URL parameter {other:?}")),
        }
    }
    Ok(target)
}

/// Percent-decoding of one URL component.
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("bad percent-encoding")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent-encoding")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding is not UTF-8".into())
}

/// One resolved primary and the connections to it.
pub(super) struct Link {
    pub generation: u64,
    /// The first connection: used by any thread whose own connection could not be made.
    conn: ConnectionManager,
    client: Client,
    /// One connection per calling thread, driven by its runtime: a call never hops threads.
    // Without it every call went to the runtime thread driving the one connection and back:
    // two context switches, 19 % of a create's CPU. Bounded by the threads that call the store.
    /// Keyed also by whether the connection carries money steps that `WAIT` for replicas: a
    /// `WAIT` holds up every later command on its connection, so reads never queue behind one.
    per_thread: Mutex<HashMap<(ThreadId, bool), ConnectionManager>>,
    /// Lost its connection (Sentinel only): not used until the primary is found again.
    stale: AtomicBool,
}

impl Link {
    fn connections(&self) -> MutexGuard<'_, HashMap<(ThreadId, bool), ConnectionManager>> {
        // Every update is one insert: a panic elsewhere cannot leave the map inconsistent.
        self.per_thread.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The current link, and how to make the next one.
pub(super) struct Links {
    target: Target,
    config: ConnectionManagerConfig,
    attempt_timeout: Duration,
    current: RwLock<Arc<Link>>,
    resolver: tokio::sync::Mutex<Resolver>,
}

struct Resolver {
    /// PEM CA certificates trusted instead of the platform's roots (`rediss://` only).
    ca: Option<Vec<u8>>,
    sentinel: Option<SentinelClient>,
    last_attempt: Option<Instant>,
}

impl Links {
    pub async fn open(
        target: Target,
        ca: Option<Vec<u8>>,
        config: ConnectionManagerConfig,
        attempt_timeout: Duration,
    ) -> Result<Self, RedisError> {
        let mut resolver = Resolver {
            ca,
            sentinel: None,
            last_attempt: None,
        };
        let client = resolver.primary(&target).await?;
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(Self {
            target,
            config,
            attempt_timeout,
            current: RwLock::new(Arc::new(Link {
                generation: 0,
                conn,
                client,
                per_thread: Mutex::default(),
                stale: AtomicBool::new(false),
            })),
            resolver: tokio::sync::Mutex::new(resolver),
        })
    }

    fn link(&self) -> Arc<Link> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// This thread's connection to the current primary (made on first use; the link's
    /// first one if that fails in time), and the link's generation; `waits`: one for money
    /// steps followed by `WAIT`. With Sentinel, a link
    /// that lost its connection is not used again until the primary is found anew: its
    /// address may come back as an empty, restarted old primary that still calls itself one.
    pub async fn connection(&self, waits: bool) -> Result<(u64, ConnectionManager), String> {
        let mut link = self.link();
        if link.stale.load(Ordering::SeqCst) {
            self.relink(link.generation, false).await;
            link = self.link();
            if link.stale.load(Ordering::SeqCst) {
                return Err("the primary was lost and the sentinels name no reachable one yet".into());
            }
        }
        let thread = (std::thread::current().id(), waits);
        if let Some(conn) = link.connections().get(&thread) {
            return Ok((link.generation, conn.clone()));
        }
        let made = tokio::time::timeout(
            self.attempt_timeout,
            ConnectionManager::new_with_config(link.client.clone(), self.config.clone()),
        )
        .await;
        let conn = match made {
            Ok(Ok(conn)) => link.connections().entry(thread).or_insert(conn).clone(),
            _ => link.conn.clone(),
        };
        Ok((link.generation, conn))
    }

    /// After a failed call on link `generation`: whether to look for the primary again, and
    /// if so, does it. True when the call is safe to repeat on the new link: `READONLY` means
    /// nothing was written.
    pub async fn after_error(&self, error: &RedisError, generation: u64) -> bool {
        let read_only = is_read_only(error);
        let lost = self.target.is_sentinel()
            && (error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_connection_refusal());
        if lost {
            let link = self.link();
            if link.generation == generation {
                link.stale.store(true, Ordering::SeqCst);
            }
        }
        if !(read_only || lost) {
            return false;
        }
        self.relink(generation, read_only).await && read_only
    }

    /// Finds the primary and links to it, once at a time (callers meanwhile go on with what
    /// they have), at most every `RESOLVE_PAUSE`; true when a newer link than `generation`
    /// exists afterwards.
    async fn relink(&self, generation: u64, read_only: bool) -> bool {
        let Ok(mut resolver) = self.resolver.try_lock() else {
            return false;
        };
        if self.link().generation != generation {
            return true;
        }
        if resolver.last_attempt.is_some_and(|at| at.elapsed() < RESOLVE_PAUSE) {
            return false;
        }
        resolver.last_attempt = Some(Instant::now());
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, async {
            let client = resolver.primary(&self.target).await?;
            let conn = ConnectionManager::new_with_config(client.clone(), self.config.clone()).await?;
            Ok::<_, RedisError>((client, conn))
        })
        .await;
        match found {
            Ok(Ok((client, conn))) => {
                let address = client.get_connection_info().addr().to_string();
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Link {
                    generation: generation + 1,
                    conn,
                    client,
                    per_thread: Mutex::default(),
                    stale: AtomicBool::new(false),
                });
                tracing::warn!(
                    primary = %address,
                    "redis: linked to the primary after {}",
                    if read_only { "a write was refused as READONLY" } else { "losing the connection" }
                );
                true
            }
            Ok(Err(e)) => {
                tracing::warn!("redis: no primary found yet: {e}");
                false
            }
            Err(_) => {
                tracing::warn!("redis: no primary found within {} ms", RESOLVE_TIMEOUT.as_millis());
                false
            }
        }
    }
}

impl Resolver {
    /// A client for the primary: the URL's, or the one the sentinels name now (checked with
    /// `ROLE` by the redis crate).
    async fn primary(&mut self, target: &Target) -> Result<Client, RedisError> {
        match target {
            Target::Url(url) => match &self.ca {
                Some(pem) => Client::build_with_tls(url.as_str(), ca_certificates(pem)),
                None => Client::open(url.as_str()),
            },
            Target::Sentinel(spec) => {
                if self.sentinel.is_none() {
                    self.sentinel = Some(sentinel_client(spec)?);
                }
                let sentinel = self.sentinel.as_mut().expect("set above");
                // Boxed: the redis crate's Sentinel future is deeply nested, and every
                // store call's future would otherwise contain its type.
                let found: Pin<Box<dyn Future<Output = Result<Client, RedisError>> + Send + '_>> =
                    Box::pin(sentinel.async_get_client());
                found.await
            }
        }
    }
}

fn sentinel_client(spec: &SentinelTarget) -> Result<SentinelClient, RedisError> {
    let addresses = spec
        .sentinels
        .iter()
        .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
    let mut builder = SentinelClientBuilder::new(addresses, &spec.master, SentinelServerType::Master)?
        .set_client_to_redis_db(spec.db);
    if let Some(user) = &spec.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &spec.password {
        builder = builder.set_client_to_redis_password(password.expose_secret());
    }
    if let Some(user) = &spec.sentinel_username {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &spec.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password.expose_secret());
    }
    builder.build()
}

/// A write refused because the server is a replica now (also when raised inside a script).
pub(super) fn is_read_only(error: &RedisError) -> bool {
    matches!(error.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly)) || error.to_string().contains("READONLY")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse_with_their_credentials_apart() {
        let Ok(Target::Sentinel(t)) = Target::parse(
            "redis+sentinel://app:p%40ss@10.0.0.1:26379,[::1]:26380,s3/mymaster/2?sentinel_password=sp&sentinel_username=su",
        ) else {
            panic!("a sentinel URL")
        };
        assert_eq!(
            t.sentinels,
            vec![
                ("10.0.0.1".to_string(), 26379),
                ("::1".to_string(), 26380),
                ("s3".to_string(), 26379)
            ]
        );
        assert_eq!((t.master.as_str(), t.db), ("mymaster", 2));
        assert_eq!(t.username.as_deref(), Some("app"));
        assert_eq!(
            t.password.as_ref().map(|p| p.expose_secret().to_string()),
            Some("p@ss".into())
        );
        assert_eq!(t.sentinel_username.as_deref(), Some("su"));
        assert_eq!(
            t.sentinel_password.as_ref().map(|p| p.expose_secret().to_string()),
            Some("sp".into())
        );
        let Ok(Target::Sentinel(t)) = Target::parse("redis+sentinel://:pw@h1:26379/m") else {
            panic!("a sentinel URL")
        };
        assert_eq!((t.username, t.db), (None, 0));
        for bad in [
            "redis+sentinel://h1:26379",
            "redis+sentinel://h1:26379/",
            "redis+sentinel://h1:x/m",
            "redis+sentinel://h1/m/notadb",
            "redis+sentinel://h1/m?password=x",
            "http://h1/",
            "redis+sentinel://:%zz@h1/m",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Target::parse("redis://:pw@127.0.0.1:6379/0"),
            Ok(Target::Url(_))
        ));
    }
}
