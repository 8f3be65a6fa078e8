//! The archive: every completed video is copied, as soon as its task is settled, from the
//! upstream's result link (valid 24 h) into storage the company keeps: a directory
//! (`file:PATH`, one node) or an S3-compatible bucket (`s3://bucket/prefix`, replicas), both
//! through `object_store`. Objects are named `{tenant}/{task_id}.mp4`, so the content route
//! finds a video from the caller's tenant and the task id alone, after the task's record is
//! gone too.
//!
//! The copy streams (a multipart upload fed chunk by chunk, never a whole video in memory),
//! goes through the probe's client for results (the result host is allowed, its addresses
//! still checked), stops at `archive.max_bytes`, and runs in a queue worker ([`worker`]) fed
//! by the completion path, so no request or relayed callback waits for it.

pub mod worker;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, GetResult, ObjectMeta, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::sync::Notify;

use crate::config::{ArchiveConfig, ArchiveLocation, StoreBackend};

/// Part size of an S3 multipart upload: the smallest S3 accepts for every part but the last.
const S3_PART_BYTES: usize = 5 * 1024 * 1024;
/// Part size into a local directory (parts are written straight into a staging file).
const FILE_PART_BYTES: usize = 1024 * 1024;

/// Why the archive could not answer.
#[derive(Debug, thiserror::Error)]
#[error("archive: {0}")]
pub struct ArchiveError(String);

impl From<object_store::Error> for ArchiveError {
    fn from(error: object_store::Error) -> Self {
        Self(error.to_string())
    }
}

/// Why one copy did not land.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Over `archive.max_bytes` (the bytes seen, or the announced length): never retried.
    #[error("the result is larger than archive.max_bytes ({0} bytes or more)")]
    TooLarge(u64),
    /// The result host failed (refused, unreachable, too slow, an error status): retried.
    #[error("{0}")]
    Source(String),
    /// The archive failed: retried.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// The configured archive of one gateway.
pub struct Archive {
    objects: Arc<dyn ObjectStore>,
    location: ArchiveLocation,
    part_bytes: usize,
    max_bytes: u64,
    retention: Option<Duration>,
    /// This replica's lease owner id in the copy queue.
    owner: String,
    /// Pokes the worker: a completion was settled.
    wake: Notify,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// The archive `archive.url` names (its default depends on the store backend), or `None`
    /// when it is off. S3 credentials come from the usual `AWS_*` environment (keys, or a web
    /// identity token file for a service-account role).
    pub fn open(config: &ArchiveConfig, backend: StoreBackend) -> Result<Option<Self>, String> {
        let location = config.location(backend)?;
        let (objects, part_bytes): (Arc<dyn ObjectStore>, usize) = match &location {
            ArchiveLocation::Off => return Ok(None),
            ArchiveLocation::File(root) => {
                std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
                let local = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| format!("cannot use {}: {e}", root.display()))?
                    .with_automatic_cleanup(true);
                (Arc::new(local), FILE_PART_BYTES)
            }
            ArchiveLocation::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if !config.s3_endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&config.s3_endpoint)
                        .with_allow_http(config.s3_endpoint.starts_with("http://"));
                }
                if !config.s3_region.is_empty() {
                    builder = builder.with_region(&config.s3_region);
                }
                let s3 = builder.build().map_err(|e| format!("S3: {e}"))?;
                let objects: Arc<dyn ObjectStore> = match prefix.as_str() {
                    "" => Arc::new(s3),
                    prefix => Arc::new(PrefixStore::new(s3, prefix)),
                };
                (objects, S3_PART_BYTES)
            }
        };
        let retention = (config.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(config.retention_days).saturating_mul(86_400)));
        Ok(Some(Self {
            objects,
            location,
            part_bytes,
            max_bytes: config.max_bytes,
            retention,
            owner: format!("{}-{}", std::process::id(), ulid::Ulid::new()),
            wake: Notify::new(),
        }))
    }

    /// Where a task's video is kept: `{tenant}/{task_id}.mp4`; `None` for ids that are no
    /// plain path segment (the content route then finds nothing, the copy logs and skips).
    pub fn path(tenant: &str, task_id: &str) -> Option<Path> {
        let plain = |s: &str| {
            (1..=200).contains(&s.len())
                && !s.starts_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        (plain(tenant) && plain(task_id))
            .then(|| Path::parse(format!("{tenant}/{task_id}.mp4")).ok())
            .flatten()
    }

    /// The stored object's metadata, `None` when there is none.
    pub async fn head(&self, path: &Path) -> Result<Option<ObjectMeta>, ArchiveError> {
        match self.objects.head(path).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The object's bytes in `range` (all of it when `None`), streamed.
    pub async fn get(
        &self,
        path: &Path,
        range: Option<Range<u64>>,
    ) -> Result<impl Stream<Item = Result<Bytes, ArchiveError>> + use<>, ArchiveError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result: GetResult = self.objects.get_opts(path, options).await?;
        Ok(result.into_stream().map_err(ArchiveError::from))
    }

    /// Streams `body` into `path` as a multipart upload, one part in flight and one being
    /// filled at most; aborted (nothing visible) on any failure, when more than
    /// `archive.max_bytes` arrive, or when the body stalls for `idle`. Returns the bytes stored.
    pub async fn write<S, E>(&self, path: &Path, body: S, idle: Duration) -> Result<u64, CopyError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let upload = self.objects.put_multipart(path).await.map_err(ArchiveError::from)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_bytes);
        let mut body = std::pin::pin!(body);
        let mut total: u64 = 0;
        let fed = loop {
            let next = match tokio::time::timeout(idle, body.next()).await {
                Ok(next) => next,
                Err(_) => break Err(CopyError::Source(format!("no data for {} ms", idle.as_millis()))),
            };
            let chunk = match next {
                None => break Ok(()),
                Some(Err(error)) => break Err(CopyError::Source(format!("reading the result: {error}"))),
                Some(Ok(chunk)) => chunk,
            };
            total = total.saturating_add(chunk.len() as u64);
            if total > self.max_bytes {
                break Err(CopyError::TooLarge(total));
            }
            if let Err(error) = writer.wait_for_capacity(1).await {
                break Err(CopyError::Archive(error.into()));
            }
            writer.put(chunk);
        };
        match fed {
            Ok(()) => {
                writer.finish().await.map_err(ArchiveError::from)?;
                Ok(total)
            }
            Err(error) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(path = %path, "archive: could not abort an upload: {abort}");
                }
                Err(error)
            }
        }
    }

    /// Deletes what `archive.retention_days` says is over at `now` (file: archives; an S3
    /// bucket does this with a lifecycle rule). Returns how many objects went.
    pub async fn purge(&self, now: chrono::DateTime<chrono::Utc>) -> Result<usize, ArchiveError> {
        let (ArchiveLocation::File(_), Some(retention)) = (&self.location, self.retention) else {
            return Ok(0);
        };
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return Ok(0);
        };
        let cutoff = now - retention;
        let mut listing = self.objects.list(None);
        let mut deleted = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if meta.last_modified < cutoff {
                match self.objects.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(deleted)
    }

    /// The largest result copied.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Wakes this replica's copy worker: a completion was settled.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// `file:PATH` or `s3://bucket/prefix`, for the startup log.
    pub fn describe(&self) -> String {
        match &self.location {
            ArchiveLocation::Off => "off".into(),
            ArchiveLocation::File(root) => format!("file:{}", root.display()),
            ArchiveLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// The gateway's path of a completed task's video (`vidgate.content_url`).
pub fn content_path(task_id: &str) -> String {
    format!("/v1/tasks/{task_id}/content")
}

/// A completion was seen: its reservation enters the copy queue before its money step, so a
/// crash between the two still copies (the worker waits for the settlement). Idempotent.
pub async fn enqueue(
    state: &crate::state::AppState,
    reservation_id: &str,
    now_ms: i64,
) -> Result<(), crate::store::StoreError> {
    match &state.archive {
        Some(_) => state.store.enqueue_archive(reservation_id, now_ms).await,
        None => Ok(()),
    }
}

/// A final step moved money: the worker looks at its queue now.
pub fn wake(state: &crate::state::AppState) {
    if let Some(archive) = &state.archive {
        archive.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_by_tenant_and_task_and_odd_ids_have_no_name() {
        assert_eq!(
            Archive::path("team-a", "task-unified-1").map(|p| p.to_string()),
            Some("team-a/task-unified-1.mp4".to_string())
        );
        for (tenant, task) in [
            ("..", "t"),
            ("a", ".."),
            ("a", "x/y"),
            ("a", ""),
            ("a/b", "t"),
            ("a", "t%2f"),
        ] {
            assert_eq!(Archive::path(tenant, task), None, "{tenant} {task}");
        }
    }
}
