//! Request-rate limits (GCRA) per tenant and per user: the limits a request must pass, the
//! decision, the `RateLimit`/`RateLimit-Policy` headers, and the in-process limiter the
//! embedded store uses. With Redis the same arithmetic runs in the store's scripts, on the
//! Redis clock, so every replica shares one limit.

mod local;

pub use local::LocalLimiter;

use serde::{Deserialize, Serialize};

use crate::store::TenantSettings;

/// Which quota a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// `POST /v1/videos/generations`: expensive.
    Creates,
    /// Every other authenticated call.
    Reads,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Creates => "creates",
            Self::Reads => "reads",
        }
    }
}

/// One GCRA limit: `per_minute` sustained, up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCheck {
    /// The limiter's identity, e.g. `creates:marketing` or `creates:marketing:alice`.
    pub key: String,
    pub per_minute: u32,
    pub burst: u32,
}

impl RateCheck {
    /// Milliseconds between two admissions at the sustained rate.
    pub fn emission_interval_ms(&self) -> u64 {
        60_000 / u64::from(self.per_minute.max(1))
    }
}

/// The limits one request of `policy` must pass: the tenant's, then the user's if set.
/// A user limit has no burst key of its own: it bursts as the tenant does, capped at its rate.
pub fn checks_for(policy: Policy, tenant: &str, user: &str, settings: &TenantSettings) -> Vec<RateCheck> {
    let (per_minute, burst) = match policy {
        Policy::Creates => (settings.creates_per_minute, settings.creates_burst),
        Policy::Reads => (settings.reads_per_minute, settings.reads_burst),
    };
    let mut checks = vec![RateCheck {
        key: format!("{}:{tenant}", policy.name()),
        per_minute,
        burst: burst.max(1),
    }];
    if policy == Policy::Creates && settings.user_creates_per_minute > 0 {
        let per_minute = settings.user_creates_per_minute;
        checks.push(RateCheck {
            key: format!("creates:{tenant}:{user}"),
            per_minute,
            burst: burst.clamp(1, per_minute),
        });
    }
    checks
}

/// The outcome of the tightest limit a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateDecision {
    pub allowed: bool,
    /// Requests still admitted right now.
    pub remaining: u32,
    /// When refused: ms until a request would be admitted.
    pub retry_after_ms: u64,
    /// Ms until the quota is whole again.
    pub reset_ms: u64,
    /// The limit the headers describe.
    pub per_minute: u32,
}

impl RateDecision {
    /// The stricter of two decisions (a refusal wins; otherwise fewer remaining).
    pub fn tighter(self, other: Self) -> Self {
        match (self.allowed, other.allowed) {
            (true, false) => other,
            (false, true) => self,
            (false, false) if other.retry_after_ms > self.retry_after_ms => other,
            (true, true) if other.remaining < self.remaining => other,
            _ => self,
        }
    }

    /// `Retry-After` in whole seconds, rounded up (never 0 for a refusal).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms.div_ceil(1000).max(1)
    }

    /// `RateLimit-Policy` and `RateLimit` header values (IETF httpapi draft syntax).
    pub fn headers(&self, policy: Policy) -> [(&'static str, String); 2] {
        let name = policy.name();
        [
            ("RateLimit-Policy", format!("\"{name}\";q={};w=60", self.per_minute)),
            (
                "RateLimit",
                format!("\"{name}\";r={};t={}", self.remaining, self.reset_ms.div_ceil(1000)),
            ),
        ]
    }
}

/// GCRA on a theoretical arrival time (`tat_ms`): returns the decision and the new TAT to
/// store. The same arithmetic as the Redis script (`store/lua/gcra.lua`).
pub fn gcra(tat_ms: Option<u64>, now_ms: u64, check: &RateCheck) -> (RateDecision, u64) {
    let interval = check.emission_interval_ms();
    let tolerance = interval * u64::from(check.burst.max(1) - 1);
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    if tat - now_ms > tolerance {
        let decision = RateDecision {
            allowed: false,
            remaining: 0,
            retry_after_ms: tat - now_ms - tolerance,
            reset_ms: tat - now_ms,
            per_minute: check.per_minute,
        };
        return (decision, tat);
    }
    let new_tat = tat + interval;
    let ahead = new_tat - now_ms;
    let remaining = if ahead > tolerance + interval {
        0
    } else {
        ((tolerance + interval - ahead) / interval) as u32
    };
    let decision = RateDecision {
        allowed: true,
        remaining,
        retry_after_ms: 0,
        reset_ms: ahead,
        per_minute: check.per_minute,
    };
    (decision, new_tat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(per_minute: u32, burst: u32) -> RateCheck {
        RateCheck {
            key: "k".into(),
            per_minute,
            burst,
        }
    }

    #[test]
    fn a_burst_is_admitted_at_once_then_the_sustained_rate() {
        let limit = check(60, 10);
        let (mut tat, mut admitted) = (None, 0);
        for _ in 0..20 {
            let (decision, new_tat) = gcra(tat, 1_000_000, &limit);
            tat = Some(new_tat);
            admitted += u32::from(decision.allowed);
        }
        assert_eq!(admitted, 10);
        let (refused, _) = gcra(tat, 1_000_000, &limit);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ms, 1000);
        let (later, _) = gcra(tat, 1_001_000, &limit);
        assert!(later.allowed, "one more after one emission interval");
    }

    #[test]
    fn remaining_counts_down_to_zero() {
        let limit = check(60, 3);
        let (first, tat) = gcra(None, 0, &limit);
        assert_eq!(first.remaining, 2);
        let (second, tat) = gcra(Some(tat), 0, &limit);
        assert_eq!(second.remaining, 1);
        let (third, _) = gcra(Some(tat), 0, &limit);
        assert_eq!(third.remaining, 0);
    }

    #[test]
    fn admissions_over_a_window_never_exceed_rate_plus_burst() {
        let limit = check(120, 5);
        let mut tat = None;
        let mut admitted = 0u32;
        for now in (0..60_000).step_by(10) {
            let (decision, new_tat) = gcra(tat, now, &limit);
            tat = Some(new_tat);
            admitted += u32::from(decision.allowed);
        }
        assert!(admitted <= 120 + 5, "{admitted}");
        assert!(admitted >= 120 * 95 / 100, "{admitted}");
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let (decision, _) = gcra(None, 0, &check(60, 10));
        let [policy, state] = decision.headers(Policy::Creates);
        assert_eq!(policy, ("RateLimit-Policy", "\"creates\";q=60;w=60".to_string()));
        assert_eq!(state, ("RateLimit", "\"creates\";r=9;t=1".to_string()));
    }
}
