//! Startup: builds the state once, seeds tenants from config, binds the listener first (so
//! port 0 works) and runs the HTTP server until SIGTERM, with the completion workers
//! (reconciler, relay) alongside: started here, stopped when the server stops.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use sha2::{Digest, Sha256};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::archive::Archive;
use crate::auth::Authenticator;
use crate::callbacks::{self, Completion, Workers};
use crate::config::{Config, ConfigError};
use crate::console;
use crate::metrics::Metrics;
use crate::openapi::ApiDoc;
use crate::probe::{Prober, Resolver, SystemResolver};
use crate::routes;
use crate::state::{AppState, Clock, SystemClock, TenantCache};
use crate::store::{self, Store, StoreError, TenantSettings};
use crate::telemetry;
use crate::upstream::UpstreamClient;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}

/// A built gateway, listening but not yet serving.
pub struct Application {
    addr: SocketAddr,
    server: Server,
    metrics: Option<(SocketAddr, Server)>,
    state: AppState,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As `build`, with an injected clock (tests cross period boundaries with it).
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        Self::build_with_resolver(config, clock, Arc::new(SystemResolver)).await
    }

    /// As `build_with_clock`, with the resolver for callers' callback hosts (tests map names
    /// with it).
    pub async fn build_with_resolver(
        config: Config,
        clock: Arc<dyn Clock>,
        resolver: Arc<dyn Resolver>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        if config.server.public_base_url.is_empty() {
            tracing::warn!(
                "server.public_base_url is empty: tasks are polled only, and a create whose outcome is unknown \
                 (an upstream 500/504, a timeout) cannot be recovered: its hold is released after \
                 reconciler.unbound_hold_grace_secs and the task, if the upstream made it, is not charged"
            );
        }
        warn_if_console_off(&config);
        let metrics = Arc::new(Metrics::new());
        let prober = Prober::new(&config.probe).map_err(|reason| ConfigError::Invalid {
            key: "probe".into(),
            reason,
        })?;
        let shortfalls = metrics.replica_ack_shortfall.clone();
        let on_shortfall: store::redis::ShortfallHook =
            Arc::new(move |operation| shortfalls.with_label_values(&[operation]).inc());
        let store = store::Instrumented::wrap(
            store::open_observed(&config.store, on_shortfall).await?,
            metrics.clone(),
        );
        seed_tenants(&config, store.as_ref(), clock.now().timestamp_millis()).await?;
        let indexed = store.index_earlier_tasks().await?;
        if indexed > 0 {
            tracing::info!(
                indexed,
                "task list: indexed the reservations kept before it existed (once per store)"
            );
        }
        let token_key = callbacks::token::load_key(store.as_ref()).await?;
        let completion = Completion::new(&config, token_key, resolver).map_err(|reason| ConfigError::Invalid {
            key: "callbacks".into(),
            reason,
        })?;
        let archive = Archive::open(&config.archive, config.store.backend).map_err(|reason| ConfigError::Invalid {
            key: "archive.url".into(),
            reason,
        })?;
        if let Some(archive) = &archive {
            tracing::info!(archive = %archive.describe(), "finished videos are archived");
        }
        let state = AppState {
            auth: Arc::new(Authenticator::from_config(&config.auth).await?),
            upstream: UpstreamClient::new(&config.upstream, metrics.clone()).map_err(|reason| {
                ConfigError::Invalid {
                    key: "upstream".into(),
                    reason,
                }
            })?,
            config: Arc::new(config),
            store,
            clock,
            tenants: TenantCache::default(),
            metrics,
            prober: Arc::new(prober),
            prelimit: Arc::default(),
            completion: Arc::new(completion),
            archive: archive.map(Arc::new),
        };
        // Built without contacting the IdP: discovery waits for the first sign-in.
        let idp = console::Idp::from_config(&state.config)
            .map_err(|reason| ConfigError::Invalid {
                key: "console.oidc_issuer".into(),
                reason,
            })?
            .map(web::Data::new);
        let listen = state.config.server.listen.clone();
        let listener = TcpListener::bind(&listen).map_err(|source| StartError::Listen {
            addr: listen.clone(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: listen.clone(),
            source,
        })?;
        let server =
            http_server(state.clone(), idp, listener).map_err(|source| StartError::Listen { addr: listen, source })?;
        let metrics = match state.config.metrics.listen.as_str() {
            "" => None,
            listen => {
                let listen_error = |source| StartError::Listen {
                    addr: listen.to_string(),
                    source,
                };
                let listener = TcpListener::bind(listen).map_err(listen_error)?;
                let metrics_addr = listener.local_addr().map_err(listen_error)?;
                Some((
                    metrics_addr,
                    metrics_server(state.clone(), listener).map_err(listen_error)?,
                ))
            }
        };
        Ok(Self {
            addr,
            server,
            metrics,
            state,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when it has its own listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops the server gracefully when called (tests; SIGTERM does the same in production).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT: stop accepting, finish in-flight requests, stop the
    /// completion workers, return.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let workers = Workers::start(&self.state);
        let result = match self.metrics {
            None => self.server.await,
            Some((_, metrics)) => {
                let metrics_handle = metrics.handle();
                let metrics_task = tokio::spawn(metrics);
                let result = self.server.await;
                metrics_handle.stop(true).await;
                let _ = metrics_task.await;
                result
            }
        };
        workers.stop().await;
        result
    }
}

fn http_server(
    state: AppState,
    idp: Option<web::Data<console::Idp>>,
    listener: TcpListener,
) -> std::io::Result<Server> {
    let serve_metrics = state.config.metrics.listen.is_empty();
    let console_on = state.config.console.is_on();
    let data = web::Data::new(state);
    let document = ApiDoc::openapi();
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(routes::limit::limit_reads))
            .wrap(from_fn(routes::guard::authenticate))
            .wrap(from_fn(telemetry::request_context))
            .configure(|cfg| routes::configure(cfg, serve_metrics))
            .configure(|cfg| {
                if console_on {
                    console::configure(cfg, idp.clone());
                }
            })
            .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document.clone()))
            .default_service(web::to(routes::not_found))
    })
    .shutdown_timeout(30)
    .listen(listener)?
    .run())
}

/// `/metrics` on its own listener (`metrics.listen`), e.g. a port only Prometheus reaches.
fn metrics_server(state: AppState, listener: TcpListener) -> std::io::Result<Server> {
    let data = web::Data::new(state);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(telemetry::request_context))
            .configure(routes::configure_metrics)
            .default_service(web::to(routes::not_found))
    })
    .workers(1)
    .shutdown_timeout(5)
    .listen(listener)?
    .run())
}

fn warn_if_console_off(config: &Config) {
    if config.console.enabled && !config.console.is_on() {
        tracing::warn!(
            "console.session_secret is empty: the web console at /console/ is off (404) and \
             `vidgate console-link` refuses; set it (at least 32 bytes) or console.session_secret_file"
        );
    }
}

/// Inserts config tenants; re-applies an entry only when it changed since last applied, so
/// admin changes persist until the config entry itself changes. Each write is audited.
async fn seed_tenants(config: &Config, store: &dyn Store, now_ms: i64) -> Result<(), StartError> {
    for (i, entry) in config.tenants.iter().enumerate() {
        let settings = TenantSettings::from_config(entry).map_err(|reason| ConfigError::Invalid {
            key: format!("tenants[{i}]"),
            reason,
        })?;
        let hash = config_hash(entry);
        if store.apply_config_tenant(&entry.id, &settings, &hash, now_ms).await? {
            tracing::info!(tenant = %entry.id, "tenant settings applied from config");
        }
    }
    Ok(())
}

fn config_hash(entry: &crate::config::TenantConfig) -> String {
    let canonical = serde_json::to_vec(entry).unwrap_or_default();
    Sha256::digest(&canonical).iter().map(|b| format!("{b:02x}")).collect()
}

/// Prints the first stdout line tests and scripts wait for.
pub fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
}
