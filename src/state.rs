//! Shared application state: config, store, authenticator, upstream client, clock and the
//! in-process tenant cache. Built once, cloned cheaply into every worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::archive::Archive;
use crate::auth::Authenticator;
use crate::callbacks::Completion;
use crate::config::Config;
use crate::limits::LocalLimiter;
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::store::{Store, StoreError, TenantRecord};
use crate::upstream::UpstreamClient;

/// How long a tenant lookup is trusted before asking the store again; admin changes reach
/// every replica within this time.
const TENANT_CACHE_TTL: Duration = Duration::from_secs(5);

/// The gateway's clock; tests inject one to cross period boundaries.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    pub upstream: UpstreamClient,
    pub clock: Arc<dyn Clock>,
    pub tenants: TenantCache,
    pub metrics: Arc<Metrics>,
    pub prober: Arc<Prober>,
    /// The in-process shield in front of the probe (limits set above the store's).
    pub prelimit: Arc<LocalLimiter>,
    pub completion: Arc<Completion>,
    /// Where finished videos are copied; `None`: `archive.url` is off.
    pub archive: Option<Arc<Archive>>,
}

/// Tenant id → the record and when it was read.
type TenantEntries = HashMap<String, (Arc<TenantRecord>, Instant)>;

/// Known tenants, cached briefly; unknown ones are always asked again.
#[derive(Clone, Default)]
pub struct TenantCache {
    entries: Arc<Mutex<TenantEntries>>,
}

impl TenantCache {
    pub async fn get(&self, store: &dyn Store, id: &str) -> Result<Option<Arc<TenantRecord>>, StoreError> {
        if let Some(hit) = self.cached(id) {
            return Ok(Some(hit));
        }
        let Some(fresh) = store.tenant(id).await?.map(Arc::new) else {
            return Ok(None);
        };
        self.lock().insert(id.to_string(), (Arc::clone(&fresh), Instant::now()));
        Ok(Some(fresh))
    }

    /// Forgets a tenant, so the next lookup reads the store (after an admin change here).
    pub fn invalidate(&self, id: &str) {
        self.lock().remove(id);
    }

    fn cached(&self, id: &str) -> Option<Arc<TenantRecord>> {
        let entries = self.lock();
        let (record, at) = entries.get(id)?;
        (at.elapsed() < TENANT_CACHE_TTL).then(|| Arc::clone(record))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TenantEntries> {
        // A panic while holding this lock cannot leave the map inconsistent: keep going.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
