//! The one integration-test binary: modules by feature, all over real HTTP on loopback.

mod admin;
mod alerts;
mod api_keys;
mod auth;
mod chaos;
mod cli;
mod completion;
mod contract;
mod crash;
mod drift;
mod egress;
mod helpers;
mod idempotency;
mod limits;
mod money;
mod overspend;
mod references;
mod reports;
mod secrets_in_logs;
mod store_conformance;
mod support;
mod tasks;
mod upstream_faults;
mod validation;
mod webhook_keys;
