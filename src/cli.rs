//! The commands behind the `vidgate` binary: serve, mock-upstream, demo, token, check-config,
//! store export and import.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::app::{Application, announce};
use crate::auth;
use crate::billing;
use crate::config::{Config, DEFAULT_MODEL, PeriodKind, StoreBackend, StoreConfig, TenantConfig};
use crate::mock_upstream::{self, MockOptions, MockServer};
use crate::store::{self, DumpCounts, DumpItem, Store};

/// A failed command: the message is printed, the process exits non-zero.
pub type CommandResult = Result<(), String>;

/// `vidgate serve`: run the gateway until SIGTERM.
pub async fn serve(config_path: &Path) -> CommandResult {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let app = Application::build(config).await.map_err(|e| e.to_string())?;
    announce(app.addr());
    let store = app
        .state()
        .store
        .describe()
        .await
        .unwrap_or_else(|e| format!("{:?} ({e})", app.state().config.store.backend));
    tracing::info!(addr = %app.addr(), %store, "vidgate serving");
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

/// `vidgate check-config`: validate and print the effective config, secrets masked.
pub fn check_config(config_path: &Path) -> CommandResult {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    print!("{}", config.to_masked_toml());
    Ok(())
}

/// `vidgate token`: mint an HS256 token from the configured secret; prints the JWT only.
pub fn token(config_path: &Path, tenant: Option<&str>, sub: &str, roles: &[String], ttl: &str) -> CommandResult {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    config.validate_auth().map_err(|e| e.to_string())?;
    let ttl = auth::parse_ttl(ttl).map_err(|e| format!("--ttl: {e}"))?;
    let jwt = auth::mint_hs256(&config.auth, tenant, sub, roles, ttl).map_err(|e| e.to_string())?;
    println!("{jwt}");
    Ok(())
}

/// `vidgate console-link`: a one-time sign-in URL for the console, signed with
/// `console.session_secret`. Never opens the store: the gateway records the ticket's use.
pub fn console_link(config_path: &Path, tenant: Option<&str>, sub: &str, roles: &[String], ttl: &str) -> CommandResult {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let ttl = auth::parse_ttl(ttl).map_err(|e| format!("--ttl: {e}"))?;
    println!("{}", sign_in_url(&config, tenant, sub, roles, ttl)?);
    Ok(())
}

/// `{public_base_url or http://listen}/console/link?ticket=...`.
fn sign_in_url(
    config: &Config,
    tenant: Option<&str>,
    sub: &str,
    roles: &[String],
    ttl: Duration,
) -> Result<String, String> {
    let secret = config.console.session_secret.expose_secret();
    if secret.is_empty() {
        return Err(
            "console.session_secret is empty: the console is off; set it (at least 32 bytes), \
             VIDGATE_CONSOLE__SESSION_SECRET or console.session_secret_file"
                .into(),
        );
    }
    if !config.console.enabled {
        return Err("console.enabled is false: the console is off".into());
    }
    if secret.len() < crate::config::MIN_SESSION_SECRET_BYTES {
        return Err("console.session_secret must be at least 32 bytes".into());
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let ticket = auth::session::Ticket::new(sub, tenant, roles, ttl, now_ms).map_err(|e| e.to_string())?;
    let base = match config.server.public_base_url.trim_end_matches('/') {
        "" => format!("http://{}", config.server.listen),
        base => base.to_string(),
    };
    Ok(format!("{base}/console/link?ticket={}", ticket.sign(secret.as_bytes())))
}

/// `vidgate mock-upstream`: the upstream simulator on its own.
pub async fn mock_upstream(options: MockOptions) -> CommandResult {
    mock_upstream::run(options).await.map_err(|e| e.to_string())
}

/// `vidgate demo`: mock upstream + gateway (a fresh embedded store, one demo tenant) in one
/// process. `config_path` supplies everything but the upstream, the probe and the store.
pub async fn demo(listen: Option<&str>, config_path: Option<&Path>) -> CommandResult {
    let base = match config_path {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let mock = MockServer::start(MockOptions {
        allow_local_callbacks: true,
        ..MockOptions::default()
    })
    .await
    .map_err(|e| format!("cannot start the mock upstream: {e}"))?;
    let config = demo_config(base, &mock, listen);
    let tenant = config.tenants.first().cloned().ok_or("the demo needs a tenant")?;
    let tokens = DemoTokens::mint(&config, &tenant.id)?;
    let summary = tenant_summary(&config, &tenant);
    let store_path = config.store.path.clone();
    let results = demo_results_dir();
    let app = Application::build(config).await.map_err(|e| e.to_string())?;
    let base = format!("http://{}", app.addr());
    announce(app.addr());
    let console = demo_console_link(&app.state().config, &base)?;
    print_demo_instructions(
        &base,
        &tokens,
        &tenant.id,
        &summary,
        &mock.sample_reference_url(),
        &console,
    );
    let result = app.run_until_stopped().await.map_err(|e| e.to_string());
    mock.stop().await;
    // The demo's store is its own temporary file: nothing in it outlives the demo.
    let _ = std::fs::remove_file(store_path);
    let _ = std::fs::remove_dir_all(results);
    result
}

/// The demo's archive of finished videos: a temporary directory, like its store.
fn demo_results_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("vidgate-demo-{}-results", std::process::id()))
}

/// A `console-link` URL for finance on the gateway's real address (port 0 resolved).
fn demo_console_link(config: &Config, base: &str) -> Result<String, String> {
    let mut config = config.clone();
    config.server.public_base_url = base.to_string();
    let roles = ["finance".to_string()];
    sign_in_url(&config, None, "finance-user", &roles, Duration::from_secs(86_400))
}

/// The demo's config: `config` with the mock as upstream, probing allowed for the mock's own
/// host only, polling instead of callbacks, a fresh embedded store (never the file's: demo
/// tasks must not land in a real ledger), an HS256 secret and a tenant when it has none.
fn demo_config(mut config: Config, mock: &MockServer, listen: Option<&str>) -> Config {
    if let Some(listen) = listen {
        config.server.listen = listen.to_string();
    }
    config.server.public_base_url = String::new();
    config.upstream.base_url = mock.base_url();
    config.upstream.files_base_url = mock.base_url();
    config.upstream.api_key = SecretString::from(MockOptions::default().api_key);
    if !config.auth.algorithms.iter().any(|a| a == "HS256") {
        config.auth.algorithms.push("HS256".into());
    }
    if config.auth.hs256_secret.expose_secret().len() < 32 {
        config.auth.hs256_secret = SecretString::from(random_secret());
    }
    if config.console.session_secret.expose_secret().len() < crate::config::MIN_SESSION_SECRET_BYTES {
        config.console.session_secret = SecretString::from(random_secret());
    }
    config.store = StoreConfig {
        backend: StoreBackend::Embedded,
        path: std::env::temp_dir().join(format!("vidgate-demo-{}.redb", std::process::id())),
        ..StoreConfig::default()
    };
    config.archive.url = Some(format!("file:{}", demo_results_dir().display()));
    config.probe.allowed_hosts = vec![mock.addr().ip().to_string()];
    config.probe.allow_private_networks = true;
    if config.tenants.is_empty() {
        config.tenants = vec![TenantConfig {
            id: "demo".into(),
            budget: "50.00".into(),
            ..TenantConfig::default()
        }];
    }
    config
}

fn random_secret() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(48)
        .map(char::from)
        .collect()
}

/// A team member of the demo tenant, finance and an admin (both without a tenant), for a day.
struct DemoTokens {
    team: String,
    finance: String,
    admin: String,
}

impl DemoTokens {
    fn mint(config: &Config, tenant: &str) -> Result<Self, String> {
        let day = Duration::from_secs(86_400);
        let mint = |tenant: Option<&str>, sub: &str, role: Option<&str>| {
            let roles: Vec<String> = role.into_iter().map(str::to_owned).collect();
            auth::mint_hs256(&config.auth, tenant, sub, &roles, day).map_err(|e| e.to_string())
        };
        Ok(Self {
            team: mint(Some(tenant), "demo-user", None)?,
            finance: mint(None, "finance-user", Some("finance"))?,
            admin: mint(None, "admin-user", Some("admin"))?,
        })
    }
}

/// One line on the tenant: its budget and what the first curl line below holds of it.
fn tenant_summary(config: &Config, tenant: &TenantConfig) -> String {
    let currency = &config.pricing.currency;
    let budget = match tenant.budget_micros() {
        Ok(Some(budget)) => format!(
            "a budget of {} {currency} {} (go over it and a create is refused with 402)",
            billing::format_money(budget),
            match tenant.period {
                PeriodKind::Month => "a month",
                PeriodKind::Week => "a week",
                PeriodKind::Day => "a day",
                PeriodKind::Total => "in total",
            }
        ),
        _ => "no budget cap".to_string(),
    };
    let example = config
        .price_per_second(DEFAULT_MODEL, "720p", true)
        .map(|price| {
            let hold = billing::charge(&[SAMPLE_REFERENCE_MS], 5000, price).amount;
            format!(
                "; the create below holds {} {currency}: (4 s of reference + 5 s of output) x {} {currency}/s at 720p with audio",
                billing::format_money(hold),
                billing::format_money(price)
            )
        })
        .unwrap_or_default();
    format!("Tenant \"{}\" has {budget}{example}.", tenant.id)
}

/// The length of the mock's sample reference video.
const SAMPLE_REFERENCE_MS: u64 = 4000;

fn print_demo_instructions(
    base: &str,
    tokens: &DemoTokens,
    tenant: &str,
    summary: &str,
    reference_url: &str,
    console: &str,
) {
    let DemoTokens { team, finance, admin } = tokens;
    let body = format!(
        r#"{{"model":"{DEFAULT_MODEL}","prompt":"character1 waves at the camera","video_urls":["{reference_url}"],"duration":5}}"#
    );
    println!(
        r#"
vidgate demo: a gateway at {base} in front of a simulated upstream (embedded store in a temp file).
{summary}

  export BASE={base}
  export TOKEN={team}
  export FINANCE_TOKEN={finance}
  export ADMIN_TOKEN={admin}

  # what would this create cost? (nothing is held, nothing is sent upstream)
  curl -s $BASE/v1/quotes -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{body}'

  # create a task (the simulated upstream completes it after about 1.5 s)
  curl -s $BASE/v1/videos/generations -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{body}'

  # query it (use the "id" from the answer): "status":"completed", a result URL, the money charged
  curl -s $BASE/v1/tasks/TASK_ID -H "Authorization: Bearer $TOKEN"

  # the team's tasks, newest first; and its spend this period
  curl -s "$BASE/v1/tasks?limit=20" -H "Authorization: Bearer $TOKEN"
  curl -s $BASE/v1/usage -H "Authorization: Bearer $TOKEN"

  # finance: spend by user as CSV, and the ledger as CSV
  curl -s "$BASE/v1/admin/usage?group_by=user&format=csv" -H "Authorization: Bearer $FINANCE_TOKEN"
  curl -s "$BASE/v1/admin/ledger?format=csv" -H "Authorization: Bearer $FINANCE_TOKEN"

  # admin: the tenants, and a bigger budget for this one
  curl -s $BASE/v1/admin/tenants -H "Authorization: Bearer $ADMIN_TOKEN"
  curl -s -X PUT $BASE/v1/admin/tenants/{tenant} -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' -d '{{"budget":"100.00"}}'

The web console, signed in as finance (open the link once, within a day):
  {console}

The sample reference video is {reference_url} (4 s). API docs: {base}/docs/
Ctrl-C stops the demo."#
    );
}

/// Items written to the store per import step.
const IMPORT_CHUNK: usize = 1000;

/// `vidgate store export`: everything the configured store holds, as JSON lines on stdout.
pub async fn store_export(config_path: &Path) -> CommandResult {
    use std::io::Write;
    let store = open_store(config_path).await?;
    let (sink, mut items) = tokio::sync::mpsc::channel(IMPORT_CHUNK);
    let reading = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.export(sink).await }
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut counts = DumpCounts::default();
    while let Some(item) = items.recv().await {
        let line = serde_json::to_string(&item).map_err(|e| format!("cannot encode a {}: {e}", item.kind()))?;
        writeln!(out, "{line}").map_err(|e| format!("cannot write the dump: {e}"))?;
        counts.add(&item);
    }
    out.flush().map_err(|e| format!("cannot write the dump: {e}"))?;
    reading
        .await
        .map_err(|e| format!("export failed: {e}"))?
        .map_err(|e| format!("export failed: {e}"))?;
    eprintln!(
        "vidgate: exported {} items ({counts}) from {}",
        counts.total(),
        describe(store.as_ref()).await
    );
    Ok(())
}

/// `vidgate store import`: a dump from stdin into the configured store, which must be empty.
pub async fn store_import(config_path: &Path) -> CommandResult {
    use std::io::BufRead;
    let store = open_store(config_path).await?;
    let target = describe(store.as_ref()).await;
    if let Some(held) = store.holds().await.map_err(|e| e.to_string())? {
        return Err(format!(
            "refusing to import into {target}: it is not empty (it holds {held}). Import into an empty \
             store only: a new store.path, an unused store.key_prefix or an empty Redis database; a gateway \
             started on a store first writes its config's tenants and keys there, so import before the first start"
        ));
    }
    let mut counts = DumpCounts::default();
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
    let mut written = false;
    let stopped = |line: usize, error: String, written: bool| {
        let state = match written {
            true => format!("{target} now holds part of the dump: empty it before importing again"),
            false => "nothing was written".to_string(),
        };
        format!("import stopped at line {line}: {error}; {state}")
    };
    let stdin = std::io::stdin().lock();
    let mut last = 0;
    for (index, line) in stdin.lines().enumerate() {
        last = index + 1;
        let line = line.map_err(|e| stopped(last, format!("cannot read the dump: {e}"), written))?;
        if line.trim().is_empty() {
            continue;
        }
        let item: DumpItem = serde_json::from_str(&line).map_err(|e| stopped(last, e.to_string(), written))?;
        counts.add(&item);
        chunk.push(item);
        if chunk.len() == IMPORT_CHUNK {
            store
                .import(std::mem::take(&mut chunk))
                .await
                .map_err(|e| stopped(last, e.to_string(), true))?;
            written = true;
        }
    }
    store
        .import(chunk)
        .await
        .map_err(|e| stopped(last, e.to_string(), true))?;
    eprintln!("vidgate: imported {} items ({counts}) into {target}", counts.total());
    Ok(())
}

/// The store of a config file, opened without starting a gateway (redb allows one process
/// per file: stop the gateway first).
async fn open_store(config_path: &Path) -> Result<Arc<dyn Store>, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    store::open(&config.store).await.map_err(|e| {
        format!(
            "cannot open the store ({e}); stop every gateway using it first (the embedded store allows one process)"
        )
    })
}

async fn describe(store: &dyn Store) -> String {
    store.describe().await.unwrap_or_else(|e| format!("the store ({e})"))
}
