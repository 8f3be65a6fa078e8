//! Logging and request identity: JSON logs via `tracing`, an `x-request-id` on every
//! response, and one access-log line per request (never a token or the upstream key).

use std::io::BufWriter;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use tracing::Instrument;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use crate::auth::Caller;
use crate::error::ErrorCode;
use crate::state::AppState;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, if any (error bodies and logs carry it).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Flushes the log queue when dropped (`shutdown`).
static LOG_GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the JSON log subscriber; `RUST_LOG` filters (default `info`).
pub fn init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Lines go through a queue to a thread that writes them in batches, flushed whenever
    // the queue is empty, so that a slow log pipe does not hold requests. Never lossy: a
    // full queue (128,000 lines) makes the caller wait.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("vidgate-log")
        .finish(BufWriter::new(std::io::stderr()));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer);
    // A second init (tests, demo) is harmless: the first subscriber stays.
    if tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(otlp::layer())
        .try_init()
        .is_ok()
    {
        *LOG_GUARD.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);
    }
}

/// Writes the queued log lines and flushes spans not yet exported (OTLP, with the feature).
pub fn shutdown() {
    drop(LOG_GUARD.lock().unwrap_or_else(PoisonError::into_inner).take());
    otlp::shutdown();
}

/// Whether spans go to a trace collector (their late-recorded fields are only for it).
pub fn exporting_traces() -> bool {
    otlp::exporting()
}

/// OTLP trace export, built only with the `otlp` cargo feature and switched on by the
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. `http://collector:4318`): every request and
/// upstream call span goes to the collector as well as to the log.
#[cfg(feature = "otlp")]
mod otlp {
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    pub fn layer<S>() -> Option<impl tracing_subscriber::Layer<S>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
            .map_err(|e| eprintln!("vidgate: OTLP export disabled: {e}"))
            .ok()?;
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).build();
        let tracer = provider.tracer("vidgate");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    pub fn shutdown() {
        if let Some(provider) = PROVIDER.get() {
            let _ = provider.shutdown();
        }
    }

    pub fn exporting() -> bool {
        PROVIDER.get().is_some()
    }
}

#[cfg(not(feature = "otlp"))]
mod otlp {
    /// Without the feature there is nothing to add.
    pub fn layer() -> Option<tracing_subscriber::layer::Identity> {
        None
    }

    pub fn shutdown() {}

    pub fn exporting() -> bool {
        false
    }
}

/// A caller-supplied id is kept when it is short and printable; otherwise a new one is made.
fn request_id_for(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", ulid::Ulid::new()))
}

/// Outermost middleware: request id in scope for the whole request, echoed in the response,
/// and an access-log line with route template, status, latency and tenant.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let request_id = request_id_for(&req);
    let method = req.method().to_string();
    let started = Instant::now();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route = tracing::field::Empty, tenant = tracing::field::Empty);
    let mut response = REQUEST_ID
        .scope(request_id.clone(), next.call(req).instrument(span.clone()))
        .await?;
    let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".into());
    let tenant = response
        .request()
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.tenant.clone());
    // Recording on a span re-encodes all its fields in the JSON log: only traces need it,
    // the access-log line below carries route and tenant itself.
    if otlp::exporting() {
        span.record("route", route.as_str());
        if let Some(tenant) = &tenant {
            span.record("tenant", tenant.as_str());
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    let status = response.status().as_u16();
    let error = response.response().extensions().get::<ErrorCode>().cloned();
    let code = error.as_ref().map(|e| e.code);
    if let Some(state) = response.request().app_data::<web::Data<AppState>>() {
        state.metrics.observe_http(&route, &method, status, started.elapsed());
        if let Some(code) = code.filter(|_| status < 500) {
            state
                .metrics
                .rejections
                .with_label_values(&[tenant.as_deref().unwrap_or("unknown"), code])
                .inc();
        }
    }
    span.in_scope(|| {
        tracing::info!(
            route,
            tenant,
            status,
            code,
            error = error.as_ref().map(|e| e.message.as_str()),
            latency_ms = started.elapsed().as_millis() as u64,
            "request done"
        );
    });
    Ok(response)
}
