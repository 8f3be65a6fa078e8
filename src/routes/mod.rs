//! HTTP routes: thin handlers that read as validate → authorize → reserve → forward → bind.

pub(crate) mod admin;
mod body;
pub(crate) mod callbacks;
pub(crate) mod content;
pub(crate) mod generations;
pub mod guard;
pub(crate) mod health;
pub(crate) mod keys;
pub mod limit;
pub mod metrics;
mod query;
pub(crate) mod quotes;
mod session;
pub(crate) mod tasks;
pub(crate) mod uploads;
pub(crate) mod usage;
pub mod validate;
pub(crate) mod view;
pub(crate) mod webhooks;

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
        .service(resource("/healthz", "GET").route(web::get().to(health::healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(health::readyz)))
        .service(resource("/docs", "GET").route(web::get().to(docs_redirect)))
        .service(resource("/v1/videos/generations", "POST").route(web::post().to(generations::create)))
        .service(resource("/v1/tasks/{task_id}", "GET").route(web::get().to(generations::get_task)))
        .service(resource("/v1/upstream/callbacks/{token}", "POST").route(web::post().to(callbacks::upstream_callback)))
        .service(resource("/api/v1/files/upload/stream", "POST").route(web::post().to(uploads::stream)))
        .service(resource("/api/v1/files/upload/base64", "POST").route(web::post().to(uploads::base64)))
        .service(resource("/api/v1/files/upload/url", "POST").route(web::post().to(uploads::url)))
        .service(resource("/v1/usage", "GET").route(web::get().to(usage::usage)))
        .service(resource("/v1/admin/usage", "GET").route(web::get().to(admin::usage)))
        .service(resource("/v1/admin/ledger", "GET").route(web::get().to(admin::ledger)))
        .service(resource("/v1/admin/tenants", "GET").route(web::get().to(admin::list_tenants)))
        .service(resource("/v1/admin/tenants/{id}", "PUT").route(web::put().to(admin::put_tenant)))
        .service(resource("/v1/tasks", "GET").route(web::get().to(tasks::list)))
        .service(resource("/v1/quotes", "POST").route(web::post().to(quotes::quote)));
    webhooks::configure(cfg);
    keys::configure(cfg);
    content::configure(cfg);
}

/// A resource whose other methods get 405 in our envelope, with `Allow` listing `allow`.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow))
    }))
}

/// Unknown paths: 404 in our envelope.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// The metrics route alone (the main app, or `metrics.listen`'s own server).
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", "GET").route(web::get().to(metrics::metrics)));
}

/// Swagger UI lives under `/docs/`.
async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("location", "/docs/"))
        .finish()
}
