//! A local simulator of the upstream video API, file host and callbacks, for demo and tests.

mod callbacks;
mod errors;
mod files;
mod mp4;
mod net;
mod samples;
mod tasks;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use tokio::task::{AbortHandle, JoinHandle};

use self::callbacks::CallbackPolicy;
use self::errors::ApiError;

pub use self::mp4::mp4_with_duration;
pub use self::samples::REFERENCE_4S;

/// How the mock behaves; `Default` gives quick tasks on a random loopback port.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Address to bind; port 0 picks a free port (see [`MockServer::addr`]).
    pub listen: SocketAddr,
    /// The only key accepted in `Authorization: Bearer <key>`.
    pub api_key: String,
    /// How long a new task stays `pending`.
    pub pending_ms: u64,
    /// How long a task then stays `processing` (plus any `[mock:slow=S]`).
    pub processing_ms: u64,
    /// Added to the requested duration to give the generated length (clamped to at least 500 ms).
    pub output_offset_ms: i64,
    /// Accept plain-http and loopback/private `callback_url`s (tests and the demo).
    pub allow_local_callbacks: bool,
    /// Percent of tasks whose callback is never sent (lost), 0–100.
    pub callback_drop_pct: u8,
    /// Percent of the callbacks sent that are sent twice (two concurrent deliveries), 0–100.
    pub callback_dup_pct: u8,
    /// Each callback waits a random 0..=N ms before its first attempt (out of order).
    pub callback_delay_ms: u64,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_key: "sk-evo-mock".into(),
            pending_ms: 300,
            processing_ms: 1000,
            output_offset_ms: 0,
            allow_local_callbacks: false,
            callback_drop_pct: 0,
            callback_dup_pct: 0,
            callback_delay_ms: 0,
        }
    }
}

/// Counters of what the mock saw, as a snapshot (also served at `GET /_mock/stats`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MockStats {
    /// Create requests received, including refused ones.
    pub creates: u64,
    /// Tasks actually created.
    pub tasks_created: u64,
    /// Task queries received (`GET /v1/tasks/{id}`), including refused ones.
    pub queries: u64,
    /// Files stored by the file host.
    pub uploads: u64,
    /// Tasks pending or processing now.
    pub open_tasks: u64,
    /// Callback attempts (every try, retries included).
    pub callbacks_sent: u64,
    /// Callbacks never sent (`callback_drop_pct`).
    pub callbacks_dropped: u64,
    /// Callbacks sent twice (`callback_dup_pct`).
    pub callbacks_duplicated: u64,
    /// The last create body received with a valid key and well-formed JSON.
    pub last_create_body: Option<serde_json::Value>,
}

/// State shared by the handlers and the background timers of one mock server.
pub(crate) struct Shared {
    options: MockOptions,
    base_url: String,
    /// The runtime that started the server: timers, callbacks and fetches run there, so they
    /// outlive no actix worker and share one connection pool.
    runtime: tokio::runtime::Handle,
    tasks: Mutex<HashMap<String, tasks::Task>>,
    files: Mutex<HashMap<String, files::StoredFile>>,
    stats: Mutex<MockStats>,
    background: Mutex<Vec<AbortHandle>>,
    http: reqwest::Client,
    callback_policy: CallbackPolicy,
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the maps consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Checks `Authorization: Bearer <api_key>` (scheme case-insensitive).
    fn authorize(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let header = req.headers().get(actix_web::http::header::AUTHORIZATION);
        let token = header.and_then(|value| value.to_str().ok()).and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        match token {
            Some(token) if token == self.options.api_key => Ok(()),
            Some(_) => Err(ApiError::unauthorized("Invalid API key provided")),
            None => Err(ApiError::unauthorized(
                "Missing API key: send Authorization: Bearer <key>",
            )),
        }
    }

    fn count(&self, update: impl FnOnce(&mut MockStats)) {
        update(&mut lock(&self.stats));
    }

    fn snapshot(&self) -> MockStats {
        let mut stats = lock(&self.stats).clone();
        let now = Instant::now();
        stats.open_tasks = lock(&self.tasks).values().filter(|task| task.is_open(now)).count() as u64;
        stats
    }

    /// Runs a future on the owner runtime, remembered so that `stop` can abort it.
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.runtime.spawn(future);
        let mut background = lock(&self.background);
        background.retain(|task| !task.is_finished());
        background.push(handle.abort_handle());
        handle
    }

    fn abort_background(&self) {
        for task in lock(&self.background).drain(..) {
            task.abort();
        }
    }
}

/// A running mock upstream; stop it with [`MockServer::stop`] (dropping it also stops it).
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handle: ServerHandle,
    join: JoinHandle<io::Result<()>>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Binds `options.listen` (port 0 works), then serves in the background of the current
    /// tokio runtime.
    pub async fn start(options: MockOptions) -> io::Result<MockServer> {
        Self::start_with(options, CallbackPolicy::upstream()).await
    }

    pub(crate) async fn start_with(options: MockOptions, callback_policy: CallbackPolicy) -> io::Result<MockServer> {
        let listener = std::net::TcpListener::bind(options.listen)?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{}", reachable(addr)),
            options,
            runtime: tokio::runtime::Handle::current(),
            tasks: Mutex::default(),
            files: Mutex::default(),
            stats: Mutex::default(),
            background: Mutex::default(),
            http,
            callback_policy,
        });
        let data = web::Data::from(Arc::clone(&shared));
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
            .workers(2)
            // Idle connections live longer than the gateway's pool keeps them (60 s), as behind
            // the upstream's load balancer: a connection the server closes just as the gateway
            // reuses it breaks a create after sending (an unknown outcome).
            .keep_alive(std::time::Duration::from_secs(75))
            .disable_signals()
            .shutdown_timeout(1)
            .listen(listener)?
            .run();
        let handle = server.handle();
        let join = tokio::spawn(server);
        Ok(MockServer {
            addr,
            shared,
            handle,
            join,
        })
    }

    /// The bound address (with the real port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`: the API, the file host and the result files all live there.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The 4 s sample reference video anyone may fetch (no key): a `video_urls` entry.
    pub fn sample_reference_url(&self) -> String {
        format!("{}{REFERENCE_4S}", self.shared.base_url)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.snapshot()
    }

    /// Ends a task now, whatever its timing (tests: `[mock:slow=3600]` then this, so a test
    /// decides when a task ends), and sends its callback if it asked for one. False for an
    /// unknown task.
    pub async fn complete(&self, task_id: &str) -> bool {
        self.shared.finish(task_id).await
    }

    /// Stops accepting, aborts pending timers and callbacks, and waits for the server to end.
    pub async fn stop(mut self) {
        self.shared.abort_background();
        self.handle.stop(true).await;
        if let Err(error) = (&mut self.join).await {
            tracing::warn!(%error, "mock upstream server task ended abnormally");
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shared.abort_background();
        // The stop command is sent when `stop` is called; awaiting only waits for completion.
        std::mem::drop(self.handle.stop(false));
    }
}

/// The address clients should use: an unspecified bind address becomes loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(web::PayloadConfig::new(files::MAX_JSON_BODY))
        .route("/v1/videos/generations", web::post().to(tasks::create))
        .route("/v1/tasks/{task_id}", web::get().to(tasks::query))
        .route("/api/v1/files/upload/stream", web::post().to(files::upload_stream))
        .route("/api/v1/files/upload/base64", web::post().to(files::upload_base64))
        .route("/api/v1/files/upload/url", web::post().to(files::upload_url))
        .service(
            web::resource("/files/results/{name}")
                .route(web::get().to(tasks::result_file))
                .route(web::head().to(tasks::result_file)),
        )
        .service(
            web::resource("/files/uploads/{file_id}")
                .route(web::get().to(files::uploaded_file))
                .route(web::head().to(files::uploaded_file)),
        )
        .service(
            web::resource(samples::REFERENCE_4S)
                .route(web::get().to(samples::reference_4s))
                .route(web::head().to(samples::reference_4s)),
        )
        .route("/_mock/stats", web::get().to(stats))
        .route("/_mock/tasks", web::get().to(task_list))
        .default_service(web::to(not_found));
}

/// `GET /_mock/stats`: the counters as JSON (no key needed: a test hook, not an upstream route).
async fn stats(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.snapshot())
}

/// `GET /_mock/tasks`: every task with its prompt, status and whether its callback got
/// through (a test hook: what the upstream ran, for reconciling a gateway's charges).
async fn task_list(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.task_list())
}

async fn not_found(req: HttpRequest, shared: web::Data<Shared>) -> Result<HttpResponse, ApiError> {
    shared.authorize(&req)?;
    Err(ApiError::not_found(format!(
        "No route for {} {}",
        req.method(),
        req.path()
    )))
}

/// `vidgate mock-upstream`: start, print `listening on http://ADDR` as the first stdout line,
/// and serve until SIGTERM or Ctrl-C.
pub async fn run(options: MockOptions) -> io::Result<()> {
    let server = MockServer::start(options).await?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening on {}", server.base_url())?;
        writeln!(out, "sample reference video: {}", server.sample_reference_url())?;
        out.flush()?;
    }
    wait_for_shutdown().await;
    server.stop().await;
    Ok(())
}

async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot listen for Ctrl-C; stopping");
    }
}
