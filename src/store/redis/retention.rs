//! Retention on Redis: the money scripts give final records, their task index entries and
//! closed periods' user counters an expiry, so Redis deletes them by itself. What is left
//! here: task list entries whose record expired (a sorted set's members cannot expire), and,
//! once per process, the same expiries for keys written before retention existed.

use std::sync::atomic::Ordering;

use ::redis::cmd;

use super::RedisStore;
use crate::store::{Period, Store, StoreError, TaskIndexEntry};

/// Task list members checked per round trip.
const TRIM_CHUNK: usize = 500;

impl RedisStore {
    pub(super) async fn purge_now(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mut purged = 0;
        if !self.retention_migrated.swap(true, Ordering::SeqCst) {
            purged += self.expire_earlier_keys(now_ms).await.inspect_err(|_| {
                self.retention_migrated.store(false, Ordering::SeqCst);
            })?;
        }
        let tenants: Vec<String> = self
            .query(cmd("SMEMBERS").arg(format!("{}tenants", self.prefix)))
            .await?;
        for tenant in tenants {
            purged += self.trim_task_list(&tenant, now_ms).await?;
        }
        Ok(purged)
    }

    /// Removes the task list members created more than `retention` ago whose record is gone
    /// (a record outlives its creation by at least the retention, so newer ones are kept).
    async fn trim_task_list(&self, tenant: &str, now_ms: i64) -> Result<usize, StoreError> {
        let key = self.key("tasklist", tenant);
        let cutoff = TaskIndexEntry {
            created_ms: now_ms.saturating_sub(self.retention_ms),
            reservation_id: String::new(),
        };
        let (mut offset, mut removed) = (0, 0);
        loop {
            let members: Vec<String> = self
                .query(
                    cmd("ZRANGEBYLEX")
                        .arg(&key)
                        .arg("-")
                        .arg(format!("({}", cutoff.member()))
                        .arg("LIMIT")
                        .arg(offset)
                        .arg(TRIM_CHUNK),
                )
                .await?;
            if members.is_empty() {
                return Ok(removed);
            }
            let mut exists = ::redis::pipe();
            for member in &members {
                let rid = member.split_once(':').map_or("", |(_, rid)| rid);
                exists.cmd("EXISTS").arg(self.key("res", rid));
            }
            let found: Vec<bool> = exists
                .query_async(&mut self.connection().await?)
                .await
                .map_err(super::unavailable)?;
            let gone: Vec<&String> = members
                .iter()
                .zip(&found)
                .filter(|(_, e)| !**e)
                .map(|(m, _)| m)
                .collect();
            if !gone.is_empty() {
                self.query::<i64>(cmd("ZREM").arg(&key).arg(&gone)).await?;
            }
            removed += gone.len();
            offset += members.len() - gone.len();
            if members.len() < TRIM_CHUNK {
                return Ok(removed);
            }
        }
    }

    /// Keys written before retention existed have no expiry: final records and their task
    /// index entries get the one the scripts give now, user counters of closed periods theirs.
    async fn expire_earlier_keys(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mut expired = 0;
        for key in self.scan("res:*").await? {
            if self.query::<i64>(cmd("PTTL").arg(&key)).await? != -1 {
                continue;
            }
            let Some(record) = self.reservation(self.unprefixed(&key, "res:")?).await? else {
                continue;
            };
            let Some(until) = record.kept_until_ms(self.retention_ms) else {
                continue;
            };
            let ttl = until.saturating_sub(now_ms).max(1);
            self.query::<i64>(cmd("PEXPIRE").arg(&key).arg(ttl)).await?;
            if let Some(task_id) = &record.task_id {
                self.query::<i64>(cmd("PEXPIRE").arg(self.key("task", task_id)).arg(ttl))
                    .await?;
            }
            expired += 1;
        }
        for kind in ["uspent:", "ureserved:"] {
            for key in self.scan(&format!("{kind}*")).await? {
                let Some(end) = user_counter_period_end(self.unprefixed(&key, kind)?) else {
                    continue;
                };
                if self.query::<i64>(cmd("PTTL").arg(&key)).await? == -1 {
                    let ttl = end.saturating_add(self.retention_ms).saturating_sub(now_ms).max(1);
                    self.query::<i64>(cmd("PEXPIRE").arg(&key).arg(ttl)).await?;
                    expired += 1;
                }
            }
        }
        Ok(expired)
    }
}

/// The end of the period a user counter key (`{tenant}:{period}:{user}`) counts in.
fn user_counter_period_end(rest: &str) -> Option<i64> {
    let (_tenant, rest) = rest.split_once(':')?;
    let (period, _user) = rest.split_once(':')?;
    Period::end_of(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_counter_key_names_its_period() {
        assert_eq!(
            user_counter_period_end("acme:2026-11:key:render-ci"),
            Period::end_of("2026-11")
        );
        assert_eq!(user_counter_period_end("acme:total:ann"), None);
        assert_eq!(user_counter_period_end("garbage"), None);
    }
}
