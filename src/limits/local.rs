//! In-process keyed limiters (`governor`) for the embedded store, one node only. Quotas
//! follow the tenant's current settings: a changed limit replaces its limiter.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{RateCheck, RateDecision};

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Checks between two sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

#[derive(Default)]
pub struct LocalLimiter {
    /// One limiter per (per_minute, burst) quota, keyed by the check's key.
    limiters: Mutex<HashMap<(u32, u32), Arc<Keyed>>>,
    checks: AtomicU64,
}

impl LocalLimiter {
    /// Checks the limits in order (tenant, then user) and stops at the first refusal; governor
    /// cannot peek, so a request the user limit refuses has still used a tenant slot.
    pub fn check(&self, checks: &[RateCheck]) -> Option<RateDecision> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.evict_idle();
        }
        let mut decision: Option<RateDecision> = None;
        for check in checks {
            let this = self.check_one(check);
            decision = Some(decision.map_or(this, |d| d.tighter(this)));
            if !this.allowed {
                break;
            }
        }
        decision
    }

    fn check_one(&self, check: &RateCheck) -> RateDecision {
        let limiter = self.limiter(check.per_minute, check.burst);
        let interval_ms = check.emission_interval_ms();
        match limiter.check_key(&check.key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = u64::from(check.burst.saturating_sub(remaining));
                RateDecision {
                    allowed: true,
                    remaining,
                    retry_after_ms: 0,
                    reset_ms: used * interval_ms,
                    per_minute: check.per_minute,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now()).as_millis() as u64;
                RateDecision {
                    allowed: false,
                    remaining: 0,
                    retry_after_ms: wait.max(1),
                    reset_ms: wait + u64::from(check.burst.saturating_sub(1)) * interval_ms,
                    per_minute: check.per_minute,
                }
            }
        }
    }

    /// Forgets keys whose limit has fully recovered (a fresh key would decide the same), and
    /// limiters left with no key (a quota no tenant uses any more): the maps hold only callers
    /// seen within their burst's recovery time, whatever the traffic.
    pub fn evict_idle(&self) {
        let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        limiters.retain(|_, limiter| {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            !limiter.is_empty()
        });
    }

    /// Keys held across all limiters.
    pub fn keys(&self) -> usize {
        let limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        limiters.values().map(|limiter| limiter.len()).sum()
    }

    fn limiter(&self, per_minute: u32, burst: u32) -> Arc<Keyed> {
        let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        limiters
            .entry((per_minute, burst))
            .or_insert_with(|| {
                let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
                Arc::new(RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)).with_middleware())
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_admitted_then_refused_with_a_retry_time() {
        let limiter = LocalLimiter::default();
        let check = RateCheck {
            key: "creates:t".into(),
            per_minute: 60,
            burst: 3,
        };
        let admitted = (0..10)
            .filter(|_| limiter.check(std::slice::from_ref(&check)).is_some_and(|d| d.allowed))
            .count();
        assert_eq!(admitted, 3);
        let refused = limiter.check(std::slice::from_ref(&check)).expect("one check");
        assert!(!refused.allowed);
        assert!((1..=1000).contains(&refused.retry_after_ms), "{refused:?}");
        assert_eq!(refused.retry_after_secs(), 1);
    }

    #[test]
    fn idle_keys_and_unused_quotas_are_forgotten() {
        let limiter = LocalLimiter::default();
        // A fast quota recovers within milliseconds.
        for i in 0..1000 {
            let check = RateCheck {
                key: format!("reads:user-{i}"),
                per_minute: 60_000,
                burst: 1,
            };
            limiter.check(std::slice::from_ref(&check));
        }
        assert_eq!(limiter.keys(), 1000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        limiter.evict_idle();
        assert_eq!(limiter.keys(), 0);
        assert!(
            limiter
                .limiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }

    #[test]
    fn keys_are_independent() {
        let limiter = LocalLimiter::default();
        let a = RateCheck {
            key: "creates:a".into(),
            per_minute: 60,
            burst: 1,
        };
        let b = RateCheck {
            key: "creates:b".into(),
            per_minute: 60,
            burst: 1,
        };
        assert!(limiter.check(std::slice::from_ref(&a)).is_some_and(|d| d.allowed));
        assert!(!limiter.check(std::slice::from_ref(&a)).is_some_and(|d| d.allowed));
        assert!(limiter.check(std::slice::from_ref(&b)).is_some_and(|d| d.allowed));
    }
}
