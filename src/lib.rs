//! vidgate: a company-wide gateway for paid AI video generation. One endpoint for every
//! team: JWT auth per tenant, budgets in money held before the upstream call and settled
//! on measured seconds, limits, callbacks, metrics.

pub mod auth;
pub mod billing;
pub mod config;
pub mod mock_upstream;
pub mod store;
