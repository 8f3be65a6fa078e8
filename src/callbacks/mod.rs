//! Task completion: turning an observed final upstream state into exactly one settlement
//! or refund, and the rules for callers' callback URLs.

mod completion;

pub use completion::observe;

use crate::config::CallbacksConfig;
use crate::error::ApiError;
use crate::probe::address::{AddressPolicy, check_url};

/// The address policy for callers' callback receivers.
pub fn policy(config: &CallbacksConfig) -> AddressPolicy {
    AddressPolicy {
        allowed_hosts: config.allowed_hosts.clone(),
        allowed_networks: config.allowed_networks.iter().filter_map(|n| n.parse().ok()).collect(),
        allow_private_networks: config.allow_private_networks,
    }
}

/// Refuses a callback URL whose scheme, host or literal address the rules forbid (names
/// are resolved and checked again at every delivery).
pub fn check_callback_url(url: &str, config: &CallbacksConfig) -> Result<(), ApiError> {
    check_url(url, &policy(config), true)
        .map(|_| ())
        .map_err(|refusal| ApiError::InvalidCallbackUrl {
            message: format!("callback_url refused: {refusal}"),
            param: Some("callback_url".into()),
        })
}
