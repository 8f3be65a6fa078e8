//! Helpers shared by the integration tests: real backing services and random names.

pub mod backends;
pub mod garage;
pub mod process;
pub mod receiver;
pub mod redis;

/// A fresh key prefix, so tests sharing one Redis never see each other's keys.
pub fn random_prefix() -> String {
    format!("test:{}:", ulid::Ulid::new())
}
