//! Task completion: turning an observed final upstream state into exactly one settlement
//! or refund, learning of it by the upstream's callbacks and by polling (the reconciler),
//! and relaying it to the caller's own callback URL, signed, from a durable outbox.

mod completion;
pub mod reapply;
mod rebuild;
mod reconciler;
mod relay;
pub mod token;
pub mod webhook_keys;

pub use completion::{observe, recover};
pub use rebuild::lost_record;
pub use relay::signature;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::{CallbacksConfig, Config};
use crate::error::ApiError;
use crate::probe::address::AddressPolicy;
use crate::probe::fetch::{FetchError, Resolver, SafeHttp};
use crate::state::AppState;
use crate::store::ReservationRecord;
use token::Tokens;

/// The path of vidgate's own callback route, before the token.
pub const UPSTREAM_CALLBACK_PATH: &str = "/v1/upstream/callbacks/";

/// The address policy for callers' callback receivers.
pub fn policy(config: &CallbacksConfig) -> AddressPolicy {
    AddressPolicy {
        allowed_hosts: config.allowed_hosts.clone(),
        allowed_networks: config.allowed_networks.iter().filter_map(|n| n.parse().ok()).collect(),
        allow_private_networks: config.allow_private_networks,
    }
}

/// What completion shares across the app: the callback token key, the relay's client and
/// signing key, this replica's lease owner id, and the pokes that wake the workers early.
pub struct Completion {
    tokens: Tokens,
    relay: SafeHttp,
    legacy: webhook_keys::Legacy,
    owner: String,
    reconcile_now: Notify,
    deliver_now: Notify,
}

impl Completion {
    /// `token_key`: from `token::load_key`; `resolver` resolves callers' callback hosts
    /// (tests map names with it).
    pub fn new(config: &Config, token_key: Vec<u8>, resolver: Arc<dyn Resolver>) -> Result<Self, String> {
        Ok(Self {
            tokens: Tokens::new(token_key),
            relay: SafeHttp::new(policy(&config.callbacks), true, resolver)?,
            legacy: webhook_keys::Legacy::from_config(&config.callbacks)?,
            owner: format!("{}-{}", std::process::id(), ulid::Ulid::new()),
            reconcile_now: Notify::new(),
            deliver_now: Notify::new(),
        })
    }

    /// The token of vidgate's own callback URL for a reservation: its payload, sealed.
    pub fn sealed_token(&self, record: &ReservationRecord) -> String {
        self.tokens.seal(&token::TokenPayload::of(record))
    }

    /// A token as minted before tokens were sealed (still accepted; it names the
    /// reservation only): what an upstream may still hold.
    pub fn callback_token(&self, reservation_id: &str) -> String {
        self.tokens.legacy(reservation_id)
    }

    /// What a callback token stands for, if genuine.
    pub fn verify_token(&self, token: &str) -> Option<token::Verified> {
        self.tokens.verify(token)
    }

    /// The client for every webhook the gateway sends (relayed callbacks, budget alerts):
    /// the callback egress rules, checked on every resolved address.
    pub fn egress(&self) -> &SafeHttp {
        &self.relay
    }

    /// Wakes this replica's reconciler (others find the work at their next tick).
    pub fn wake_reconciler(&self) {
        self.reconcile_now.notify_one();
    }

    /// Wakes this replica's relay: an event entered the outbox.
    pub fn wake_relay(&self) {
        self.deliver_now.notify_one();
    }
}

/// The longest `callback_url` the upstream takes.
const MAX_CALLBACK_URL: usize = 2048;

/// The `callback_url` vidgate sends upstream for a reservation, when `server.public_base_url`
/// is set (else the task is only polled). Within the upstream's 2048 characters: should a
/// very long base URL push the sealed token over, the short token (reservation id only) goes.
pub fn upstream_callback_url(state: &AppState, record: &ReservationRecord) -> Option<String> {
    let base = state.config.server.public_base_url.trim_end_matches('/');
    if base.is_empty() {
        return None;
    }
    let sealed = format!(
        "{base}{UPSTREAM_CALLBACK_PATH}{}",
        state.completion.sealed_token(record)
    );
    if sealed.len() <= MAX_CALLBACK_URL {
        return Some(sealed);
    }
    tracing::warn!(
        reservation_id = %record.reservation_id,
        "the sealed callback URL would exceed {MAX_CALLBACK_URL} characters: sending the short token \
         (a lost reservation record could not be rebuilt from it)"
    );
    Some(format!(
        "{base}{UPSTREAM_CALLBACK_PATH}{}",
        state.completion.callback_token(&record.reservation_id)
    ))
}

/// Refuses a caller's callback URL at create time (its length is checked with the body):
/// scheme, host and addresses (the name is resolved, within the DNS timeout, and each
/// address checked now; every delivery checks again). Deliveries are signed with the
/// tenant's own key, so no gateway-wide secret is needed.
pub async fn check_callback_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    let refused = |message: String| ApiError::InvalidCallbackUrl {
        message,
        param: Some("callback_url".into()),
    };
    match state.completion.relay.check_resolved(url).await {
        Ok(_) => Ok(()),
        Err(FetchError::InvalidUrl(reason) | FetchError::Refused(reason) | FetchError::Unreachable(reason)) => {
            Err(refused(format!("callback_url refused: {reason}")))
        }
    }
}

/// The background workers of one replica (reconciler and relay), started once at startup
/// and stopped at shutdown.
pub struct Workers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts the relay, the retention purge, and the reconciler unless
    /// `reconciler.enabled = false`.
    pub fn start(state: &AppState) -> Self {
        let (stop, stopped) = watch::channel(false);
        let retention = state.config.store.retention_secs.as_duration();
        let clock = state.clock.clone();
        let mut tasks = vec![
            tokio::spawn(relay::run(state.clone(), stopped.clone())),
            tokio::spawn(crate::store::retention::run(
                state.store.clone(),
                move || clock.now().timestamp_millis(),
                crate::store::retention::interval(retention),
                stopped.clone(),
            )),
        ];
        if let Some(archive) = &state.archive {
            tasks.push(tokio::spawn(crate::archive::worker::run(
                state.clone(),
                archive.clone(),
                stopped.clone(),
            )));
        }
        if state.config.reconciler.enabled {
            tasks.push(tokio::spawn(reconciler::run(state.clone(), stopped)));
        }
        Self { stop, tasks }
    }

    /// Asks every worker to stop and waits for them: work in hand finishes (its lease would
    /// cover it anyway), nothing new starts.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!("a completion worker ended abnormally: {error}");
            }
        }
    }
}

/// Waits `tick`, or until woken, or until told to stop; false when stopping.
async fn pause(tick: Duration, wake: &Notify, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(tick) => true,
        _ = wake.notified() => true,
        _ = stop.changed() => false,
    }
}

/// How often a worker looks for due work when nothing wakes it: often enough for the
/// shortest of its delays, at most once a second, at least every 10 ms.
fn tick_for(delays_ms: impl IntoIterator<Item = u64>) -> Duration {
    let shortest = delays_ms.into_iter().filter(|d| *d > 0).min().unwrap_or(2000);
    Duration::from_millis((shortest / 2).clamp(10, 1000))
}

fn now_ms(state: &AppState) -> i64 {
    state.clock.now().timestamp_millis()
}
