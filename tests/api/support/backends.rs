//! The two store backends, for tests written once and run against both (embedded and Redis).

use std::sync::Arc;

use vidgate::store::Store;
use vidgate::store::embedded::EmbeddedStore;
use vidgate::store::redis::RedisStore;

/// A store under test and what must live as long as it.
pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub fn new(store: impl Store + 'static, dir: Option<tempfile::TempDir>) -> Self {
        Self {
            store: Arc::new(store),
            _dir: dir,
        }
    }
}

pub async fn embedded() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("store.redb"), "test:").expect("open embedded store");
    Backend::new(store, Some(dir))
}

pub async fn redis() -> Backend {
    let url = super::redis::shared().url();
    let store = RedisStore::connect(&url, &super::random_prefix())
        .await
        .expect("connect to the shared redis");
    Backend::new(store, None)
}

/// Runs each case (an `async fn(Arc<dyn Store>)` of the calling module) against both
/// backends, as `embedded::<case>` and `redis::<case>`; the caller imports `embedded` and
/// `redis` from this module.
macro_rules! for_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let backend = super::embedded().await;
                    super::$case(std::sync::Arc::clone(&backend.store)).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let backend = super::redis().await;
                    super::$case(std::sync::Arc::clone(&backend.store)).await;
                }
            )*
        }
    };
}
pub(crate) use for_both_backends;
