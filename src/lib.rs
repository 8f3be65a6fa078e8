//! vidgate: a company-wide gateway for paid AI video generation. One endpoint for every
//! team: JWT auth per tenant, budgets in money held before the upstream call and settled
//! on measured seconds, limits, callbacks, metrics.

pub mod alerts;
pub mod app;
pub mod archive;
pub mod auth;
pub mod billing;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod mock_upstream;
pub mod openapi;
pub mod probe;
pub mod reports;
pub mod routes;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;
