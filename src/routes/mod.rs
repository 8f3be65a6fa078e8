//! HTTP routes: thin handlers that read as validate → authorize → reserve → forward → bind.

mod admin;
mod body;
mod generations;
pub mod guard;
mod health;
pub mod metrics;
mod query;
mod usage;
pub mod validate;
mod view;

use actix_web::{HttpResponse, web};

use crate::error::ApiError;

/// Registers every route, plus error handlers so extractor failures use our envelope.
/// `/metrics` is left out when it has its own listener.
pub fn configure(cfg: &mut web::ServiceConfig, serve_metrics: bool) {
    if serve_metrics {
        configure_metrics(cfg);
    }
    cfg.app_data(web::PathConfig::default().error_handler(|e, _| ApiError::invalid_body(e.to_string()).into()))
        .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::invalid_body(e.to_string()).into()))
        .app_data(web::JsonConfig::default().error_handler(|e, _| ApiError::invalid_body(e.to_string()).into()))
        .service(resource("/healthz").route(web::get().to(health::healthz)))
        .service(resource("/readyz").route(web::get().to(health::readyz)))
        .service(resource("/v1/videos/generations").route(web::post().to(generations::create)))
        .service(resource("/v1/tasks/{task_id}").route(web::get().to(generations::get_task)))
        .service(resource("/v1/usage").route(web::get().to(usage::usage)))
        .service(resource("/v1/admin/usage").route(web::get().to(admin::usage)))
        .service(resource("/v1/admin/ledger").route(web::get().to(admin::ledger)))
        .service(resource("/v1/admin/tenants").route(web::get().to(admin::list_tenants)))
        .service(resource("/v1/admin/tenants/{id}").route(web::put().to(admin::put_tenant)));
}

/// A resource whose other methods get 405 in our envelope.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async { Err::<HttpResponse, _>(ApiError::MethodNotAllowed) }))
}

/// Unknown paths: 404 in our envelope.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// The metrics route alone (the main app, or `metrics.listen`'s own server).
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics").route(web::get().to(metrics::metrics)));
}
