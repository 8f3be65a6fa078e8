//! The one integration-test binary: modules by feature, all over real HTTP on loopback.

mod admin;
mod alerts;
mod auth;
mod chaos;
mod cli;
mod completion;
mod contract;
mod crash;
mod drift;
mod helpers;
mod idempotency;
mod limits;
mod money;
mod newcomer;
mod overspend;
mod quotes;
mod references;
mod reports;
mod store_conformance;
mod store_move;
mod support;
mod task_list;
mod tasks;
mod unknown_outcomes;
mod upstream_faults;
mod validation;
