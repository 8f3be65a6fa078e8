//! Redis store: shared by all replicas; one Lua script per money step.
// SKELETON: replaced by the store implementation.
use super::*;

pub struct RedisStore;

impl RedisStore {
    pub async fn connect(_url: &str, _prefix: &str) -> Result<Self, StoreError> {
        Err(StoreError::Unavailable("redis store not built yet".into()))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn apply_config_tenant(&self, _: &str, _: &TenantSettings, _: &str) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn tenant(&self, _: &str) -> Result<Option<TenantRecord>, StoreError> {
        unimplemented!()
    }
    async fn reserve(&self, _: &ReserveRequest) -> Result<ReserveOutcome, StoreError> {
        unimplemented!()
    }
    async fn bind(&self, _: &str, _: &str) -> Result<Option<ReservationRecord>, StoreError> {
        unimplemented!()
    }
    async fn reservation(&self, _: &str) -> Result<Option<ReservationRecord>, StoreError> {
        unimplemented!()
    }
    async fn task(&self, _: &str) -> Result<Option<ReservationRecord>, StoreError> {
        unimplemented!()
    }
    async fn settle(&self, _: &str, _: &Settlement) -> Result<FinalizeOutcome, StoreError> {
        unimplemented!()
    }
    async fn refund(&self, _: &str, _: i64) -> Result<FinalizeOutcome, StoreError> {
        unimplemented!()
    }
    async fn period_usage(&self, _: &str, _: &str) -> Result<PeriodUsage, StoreError> {
        unimplemented!()
    }
}
