//! Reference-video measurement and the address rules every outgoing fetch obeys.
//!
//! [`Prober`] measures a video behind a URL (container, duration, size, audio) from a few
//! range requests: [`fetch::SafeHttp`] makes them without becoming a way into the company
//! network, [`boxes`] walks the mp4/mov boxes, [`limits`] says what a reference video must
//! be, and a small cache keeps a URL from being probed twice.

pub mod address;
pub mod boxes;
mod cache;
pub mod fetch;
pub mod limits;
mod reader;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::config::ProbeConfig;
use address::AddressPolicy;
use boxes::{Movie, Step, Walker};
use cache::{Lookup, ProbeCache, Validator};
use fetch::{FetchError, SafeHttp};
pub use fetch::{Resolver, SystemResolver};
use reader::{Fill, RangeReader};

/// Measurements kept at once; a few hundred bytes each.
const CACHE_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp4,
    Mov,
}

impl std::fmt::Display for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mp4 => "mp4",
            Self::Mov => "mov",
        })
    }
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoInfo {
    pub container: Container,
    pub duration_ms: u64,
    /// From `Content-Range`/`Content-Length`, or the bytes seen when the body ended;
    /// `None` when the server never said (chunked, and the walk ended before the body).
    pub size: Option<u64>,
    pub has_audio: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The video is not acceptable: container, duration, size, or unreadable boxes.
    #[error("{0}")]
    Invalid(String),
    /// It could not be fetched (within the time and byte limits).
    #[error("{0}")]
    Unreachable(String),
    /// The address rules refused the URL, a redirect target or a resolved address.
    #[error("{0}")]
    Forbidden(String),
}

impl ProbeError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "reference_video_invalid",
            Self::Unreachable(_) => "reference_video_unreachable",
            Self::Forbidden(_) => "reference_video_forbidden",
        }
    }
}

impl From<FetchError> for ProbeError {
    fn from(error: FetchError) -> Self {
        match error {
            FetchError::InvalidUrl(m) => Self::Invalid(m),
            FetchError::Refused(m) => Self::Forbidden(m),
            FetchError::Unreachable(m) => Self::Unreachable(m),
        }
    }
}

/// Counters since start (for tests and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Probes that went to the network (cache misses and revalidations).
    pub probes: u64,
    pub cache_hits: u64,
    /// Body bytes received.
    pub bytes_read: u64,
    /// HTTP requests sent, redirect hops included.
    pub requests: u64,
}

/// A measurement before any limit is applied (what the cache keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Measured {
    movie: Movie,
    size: Option<u64>,
}

impl Measured {
    fn info(&self) -> VideoInfo {
        VideoInfo {
            container: self.movie.container,
            duration_ms: self.movie.duration_ms,
            size: self.size,
            has_audio: self.movie.has_audio,
        }
    }
}

/// Which rules a URL is probed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A caller's reference video: host allow-list, 2–30 s, 100 MB.
    Reference,
    /// The upstream's generated video: any host (addresses still checked), any duration.
    Result,
    /// A file a caller uploaded to the upstream's file host: that host is trusted like a
    /// result's (addresses still checked), the reference limits apply.
    Upload,
}

/// Measures videos behind URLs. `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct Prober {
    references: SafeHttp,
    results: SafeHttp,
    cache: ProbeCache,
    timeout: Duration,
    max_bytes: u64,
    probes: AtomicU64,
    cache_hits: AtomicU64,
    bytes_read: AtomicU64,
}

impl Prober {
    pub fn new(config: &ProbeConfig) -> Result<Self, String> {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// As [`Prober::new`] with another resolver (tests map names to loopback with it).
    pub fn with_resolver(config: &ProbeConfig, resolver: Arc<dyn Resolver>) -> Result<Self, String> {
        let policy = AddressPolicy {
            allowed_hosts: config.allowed_hosts.clone(),
            allowed_networks: Vec::new(),
            allow_private_networks: config.allow_private_networks,
        };
        // Reference videos may be plain http: they are public files, not secrets.
        let references = SafeHttp::new(policy, false, resolver)?;
        Ok(Self {
            results: references.without_host_allow_list(),
            references,
            cache: ProbeCache::new(Duration::from_secs(config.cache_ttl_secs), CACHE_CAPACITY),
            timeout: Duration::from_millis(config.timeout_ms),
            max_bytes: config.max_bytes,
            probes: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
        })
    }

    /// Probes 1–3 reference videos concurrently under one overall timeout
    /// (`config.timeout_ms`), applying the limits; on failure returns the index of the
    /// first failing URL.
    pub async fn probe_references(&self, urls: &[String]) -> Result<Vec<VideoInfo>, (usize, ProbeError)> {
        if urls.is_empty() || urls.len() > limits::MAX_REFERENCES {
            let index = urls.len().min(limits::MAX_REFERENCES);
            return Err((
                index,
                ProbeError::Invalid(format!(
                    "{} reference videos, expected 1 to {}",
                    urls.len(),
                    limits::MAX_REFERENCES
                )),
            ));
        }
        // One deadline for all: each probe stops at it, so the first failure by index is
        // well defined even when the time runs out.
        let deadline = Instant::now() + self.timeout;
        let outcomes = join_all(urls.iter().map(|url| self.probe_until(url, Kind::Reference, deadline))).await;
        outcomes
            .into_iter()
            .enumerate()
            .map(|(index, outcome)| outcome.map_err(|e| (index, e)))
            .collect()
    }

    /// One reference video, limits applied, cached.
    pub async fn probe(&self, url: &str) -> Result<VideoInfo, ProbeError> {
        self.probe_until(url, Kind::Reference, Instant::now() + self.timeout)
            .await
    }

    /// A generated video: host allow-list bypassed (addresses still checked), any positive
    /// duration.
    pub async fn probe_result(&self, url: &str) -> Result<VideoInfo, ProbeError> {
        self.probe_until(url, Kind::Result, Instant::now() + self.timeout).await
    }

    /// A file just uploaded to the upstream's file host, checked as a reference video.
    pub async fn probe_upload(&self, url: &str) -> Result<VideoInfo, ProbeError> {
        self.probe_until(url, Kind::Upload, Instant::now() + self.timeout).await
    }

    /// The client for the upstream's result links (host allow-list bypassed, addresses
    /// checked): the archive copies and the content route stream results through it.
    pub fn result_client(&self) -> &SafeHttp {
        &self.results
    }

    pub fn stats(&self) -> ProbeStats {
        ProbeStats {
            probes: self.probes.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            requests: self.references.requests_sent(),
        }
    }

    async fn probe_until(&self, raw_url: &str, kind: Kind, deadline: Instant) -> Result<VideoInfo, ProbeError> {
        let http = match kind {
            Kind::Reference => &self.references,
            Kind::Result | Kind::Upload => &self.results,
        };
        // The rules first, even for a cached URL: the cache is shared by both kinds.
        let url = http.check(raw_url)?;
        let measuring = self.measure(http, url.as_str(), kind);
        let measured = tokio::time::timeout_at(deadline, measuring).await.map_err(|_| {
            ProbeError::Unreachable(format!("no complete answer within {} ms", self.timeout.as_millis()))
        })??;
        match kind {
            Kind::Reference | Kind::Upload => limits::reference(&measured),
            Kind::Result => limits::result(&measured),
        }
    }

    /// From the cache, or from the network (revalidating a stale entry on the way).
    async fn measure(&self, http: &SafeHttp, url: &str, kind: Kind) -> Result<Measured, ProbeError> {
        let revalidate = match self.cache.lookup(url, std::time::Instant::now()) {
            Lookup::Fresh(measured) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(measured);
            }
            Lookup::Stale(validator) => Some(validator),
            Lookup::Miss => None,
        };
        self.probes.fetch_add(1, Ordering::Relaxed);
        if revalidate.is_some() {
            match self.walk(http, url, kind, revalidate).await? {
                Walked::NotModified => {
                    if let Some(measured) = self.cache.refresh(url, std::time::Instant::now()) {
                        return Ok(measured);
                    }
                    // Evicted meanwhile: measure again below.
                }
                Walked::Measured(measured, validator) => {
                    return Ok(self.remember(url, measured, validator));
                }
            }
        }
        match self.walk(http, url, kind, None).await? {
            Walked::Measured(measured, validator) => Ok(self.remember(url, measured, validator)),
            Walked::NotModified => Err(ProbeError::Unreachable(
                "the server answered 304 to an unconditional request".into(),
            )),
        }
    }

    fn remember(&self, url: &str, measured: Measured, validator: Option<Validator>) -> Measured {
        self.cache
            .store(url, measured.clone(), validator, std::time::Instant::now());
        measured
    }

    /// Walks the boxes over range reads until the walker is done.
    async fn walk(
        &self,
        http: &SafeHttp,
        url: &str,
        kind: Kind,
        revalidate: Option<Validator>,
    ) -> Result<Walked, ProbeError> {
        let mut reader = RangeReader::new(http, url, self.max_bytes, &self.bytes_read, revalidate);
        let mut walker = Walker::new();
        let (mut offset, mut len) = (0, boxes::MAX_HEADER);
        loop {
            if reader.fill(offset, len).await? == Fill::NotModified {
                return Ok(Walked::NotModified);
            }
            // Refuse a too-big reference as soon as the size is known, before reading on.
            if let (Kind::Reference | Kind::Upload, Some(size)) = (kind, reader.file_size()) {
                limits::check_reference_size(size)?;
            }
            match walker
                .step(&reader.window())
                .map_err(|e| ProbeError::Invalid(e.to_string()))?
            {
                Step::Done(movie) => {
                    let measured = Measured {
                        movie,
                        size: reader.file_size(),
                    };
                    return Ok(Walked::Measured(measured, reader.validator()));
                }
                Step::Need {
                    offset: next,
                    len: next_len,
                } => (offset, len) = (next, next_len),
            }
        }
    }
}

enum Walked {
    Measured(Measured, Option<Validator>),
    NotModified,
}
