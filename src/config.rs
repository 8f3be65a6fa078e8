//! Typed configuration: one struct loaded from a TOML file plus `VIDGATE_<SECTION>__<KEY>`
//! environment overrides, secrets from `<key>_file`, validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::billing::{self, Micros};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "config/vidgate.toml";
/// The only model vidgate is built to price today; others need their own `pricing.models` entry.
pub const DEFAULT_MODEL: &str = "wan2.6-reference-video-flash";

/// Why a configuration was refused; always names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    pub probe: ProbeConfig,
    pub callbacks: CallbacksConfig,
    pub reconciler: ReconcilerConfig,
    pub idempotency: IdempotencyConfig,
    pub alerts: AlertsConfig,
    pub metrics: MetricsConfig,
    pub console: ConsoleConfig,
    pub archive: ArchiveConfig,
    pub pricing: PricingConfig,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub public_base_url: String,
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_base_url: String::new(),
            max_body_bytes: 65_536,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    pub base_url: String,
    pub files_base_url: String,
    #[serde(serialize_with = "mask_secret")]
    pub api_key: SecretString,
    pub api_key_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    pub timeout_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.evolink.ai".into(),
            files_base_url: "https://files-api.evolink.ai".into(),
            api_key: SecretString::default(),
            api_key_file: None,
            connect_timeout_ms: 3000,
            timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    #[serde(serialize_with = "mask_secret")]
    pub hs256_secret: SecretString,
    pub hs256_secret_file: Option<PathBuf>,
    pub public_key_pem_files: Vec<PathBuf>,
    pub jwks_url: String,
    pub jwks_refresh_cooldown_secs: u64,
    pub tenant_claim: String,
    pub roles_claim: String,
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: "vidgate".into(),
            algorithms: vec!["HS256".into()],
            hs256_secret: SecretString::default(),
            hs256_secret_file: None,
            public_key_pem_files: Vec::new(),
            jwks_url: String::new(),
            jwks_refresh_cooldown_secs: 60,
            tenant_claim: "tenant".into(),
            roles_claim: "roles".into(),
            leeway_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub path: PathBuf,
    pub redis_url: String,
    /// PEM CA certificates a `rediss://` server's certificate must chain to, instead of the
    /// platform's roots; empty: the platform's roots.
    pub redis_ca_file: PathBuf,
    /// ≥ 1: every money step waits (`WAIT`) until this many replicas have it.
    pub min_replicas_acked: u32,
    /// How long a money step waits for its replicas.
    pub replica_ack_timeout_ms: u64,
    pub key_prefix: String,
    /// A final task's record and task-index entry go this long after the task ended.
    pub retention_secs: Seconds,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            path: "data/vidgate.redb".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: PathBuf::new(),
            min_replicas_acked: 0,
            replica_ack_timeout_ms: 500,
            key_prefix: "vidgate:".into(),
            retention_secs: Seconds::from_secs(35 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    pub timeout_ms: u64,
    pub max_bytes: u64,
    pub cache_ttl_secs: u64,
    pub allowed_hosts: Vec<String>,
    pub allow_private_networks: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_bytes: 4_194_304,
            cache_ttl_secs: 3600,
            allowed_hosts: Vec::new(),
            allow_private_networks: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbacksConfig {
    #[serde(serialize_with = "mask_secret")]
    pub signing_secret: SecretString,
    pub signing_secret_file: Option<PathBuf>,
    /// RFC 3339; until then deliveries carry a signature by `signing_secret` too; "": never.
    pub legacy_signature_until: String,
    pub allowed_networks: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub allow_private_networks: bool,
    pub timeout_ms: u64,
    pub retry_delays_ms: Vec<u64>,
}

/// Standard Webhooks keys are 24 to 64 random bytes.
const SIGNING_KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

impl CallbacksConfig {
    /// The relay's HMAC key: the base64 after `whsec_`; `None` when no secret is set.
    pub fn signing_key(&self) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine;
        let secret = self.signing_secret.expose_secret();
        if secret.is_empty() {
            return Ok(None);
        }
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or("must be \"whsec_\" followed by the base64 of the key")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("the part after \"whsec_\" is not base64: {e}"))?;
        if !SIGNING_KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; Standard Webhooks keys are 24 to 64 bytes (e.g. \"whsec_$(openssl rand -base64 32)\")",
                key.len()
            ));
        }
        Ok(Some(key))
    }

    /// Until when the legacy `signing_secret` still signs deliveries; `None`: it does not.
    pub fn legacy_until(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        if self.legacy_signature_until.is_empty() {
            return Ok(None);
        }
        chrono::DateTime::parse_from_rfc3339(&self.legacy_signature_until)
            .map(|time| Some(time.to_utc()))
            .map_err(|e| format!("not an RFC 3339 time like 2027-03-01T00:00:00Z: {e}"))
    }
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        Self {
            signing_secret: SecretString::default(),
            signing_secret_file: None,
            legacy_signature_until: String::new(),
            allowed_networks: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_private_networks: false,
            timeout_ms: 10_000,
            retry_delays_ms: vec![1000, 2000, 4000],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcilerConfig {
    pub enabled: bool,
    pub first_poll_after_secs: Seconds,
    pub poll_interval_secs: Seconds,
    pub max_task_age_secs: Seconds,
    pub unbound_hold_grace_secs: Seconds,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            first_poll_after_secs: Seconds::from_secs(60),
            poll_interval_secs: Seconds::from_secs(30),
            max_task_age_secs: Seconds::from_secs(86_400),
            unbound_hold_grace_secs: Seconds::from_secs(600),
        }
    }
}

/// A duration written in seconds: a whole number (`30`) or, for tests and labs, a fraction
/// (`0.05`), kept to the ms. Shown back as it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds {
    ms: u64,
}

impl Seconds {
    pub const fn from_secs(secs: u64) -> Self {
        Self {
            ms: secs.saturating_mul(1000),
        }
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self { ms }
    }

    pub fn as_millis(self) -> u64 {
        self.ms
    }

    /// As signed ms, for arithmetic on unix-ms times.
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.ms).unwrap_or(i64::MAX)
    }

    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ms)
    }
}

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.ms.is_multiple_of(1000) {
            s.serialize_u64(self.ms / 1000)
        } else {
            s.serialize_f64(self.ms as f64 / 1000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Seconds;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-negative number of seconds")
            }

            fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<Seconds, E> {
                Ok(Seconds::from_secs(secs))
            }

            fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<Seconds, E> {
                u64::try_from(secs)
                    .map(Seconds::from_secs)
                    .map_err(|_| E::custom("seconds must not be negative"))
            }

            fn visit_f64<E: serde::de::Error>(self, secs: f64) -> Result<Seconds, E> {
                // Bounded to keep the ms exact and the cast in range.
                if secs.is_finite() && (0.0..=1e12).contains(&secs) {
                    Ok(Seconds::from_millis((secs * 1000.0).round() as u64))
                } else {
                    Err(E::custom("seconds must be a non-negative finite number"))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    pub ttl_secs: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self { ttl_secs: 86_400 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub webhook_url: String,
    pub thresholds: Vec<f64>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook_url: String::new(),
            thresholds: vec![0.8, 0.95, 1.0],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(serialize_with = "mask_secret")]
    pub bearer_token: SecretString,
    pub bearer_token_file: Option<PathBuf>,
    pub listen: String,
}

/// The web console at `/console/`. Sessions start from a sign-in with the company IdP
/// (`oidc_*`, when `oidc_issuer` is set) or a `vidgate console-link` ticket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    pub enabled: bool,
    pub oidc_issuer: String,
    pub oidc_client_id: String,
    #[serde(serialize_with = "mask_secret")]
    pub oidc_client_secret: SecretString,
    pub oidc_client_secret_file: Option<PathBuf>,
    pub session_ttl_secs: u64,
    /// Signs session cookies and console-link tickets; empty: the console is off.
    #[serde(serialize_with = "mask_secret")]
    pub session_secret: SecretString,
    pub session_secret_file: Option<PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            oidc_issuer: String::new(),
            oidc_client_id: String::new(),
            oidc_client_secret: SecretString::default(),
            oidc_client_secret_file: None,
            session_ttl_secs: 28_800,
            session_secret: SecretString::default(),
            session_secret_file: None,
        }
    }
}

/// `console.session_secret` must be at least this long.
pub const MIN_SESSION_SECRET_BYTES: usize = 32;

impl ConsoleConfig {
    /// The console serves pages and sessions: enabled and given a session secret.
    pub fn is_on(&self) -> bool {
        self.enabled && !self.session_secret.expose_secret().is_empty()
    }

    fn validate(&self, public_base_url: &str) -> Result<(), ConfigError> {
        let secret = self.session_secret.expose_secret();
        if !secret.is_empty() && secret.len() < MIN_SESSION_SECRET_BYTES {
            return Err(ConfigError::invalid(
                "console.session_secret",
                format!("must be at least {MIN_SESSION_SECRET_BYTES} bytes"),
            ));
        }
        if !(60..=30 * 86_400).contains(&self.session_ttl_secs) {
            return Err(ConfigError::invalid(
                "console.session_ttl_secs",
                "must be from 60 to 2592000 (30 days)",
            ));
        }
        if !self.oidc_issuer.is_empty() {
            check_url("console.oidc_issuer", &self.oidc_issuer)?;
            if public_base_url.is_empty() {
                return Err(ConfigError::invalid(
                    "console.oidc_issuer",
                    "needs server.public_base_url (the redirect URI is {public_base_url}/console/auth/callback)",
                ));
            }
            if self.oidc_client_id.is_empty() {
                return Err(ConfigError::invalid(
                    "console.oidc_client_id",
                    "needs the client id registered at the IdP (console.oidc_issuer is set)",
                ));
            }
        }
        Ok(())
    }
}

/// Where finished videos are copied before the upstream's 24-hour link dies (see `archive/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `""` (off), `file:PATH` or `s3://bucket/prefix`; unset: the store backend's default
    /// (see `Config::archive_url`), filled in at load so `check-config` shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub s3_endpoint: String,
    pub s3_region: String,
    /// Archived videos are deleted this long after they were copied; 0 keeps them.
    pub retention_days: u32,
    pub max_bytes: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            url: None,
            s3_endpoint: String::new(),
            s3_region: String::new(),
            retention_days: 90,
            max_bytes: 209_715_200,
        }
    }
}

/// Where `archive.url` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveLocation {
    Off,
    File(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl ArchiveConfig {
    /// One node keeps its videos beside its store; replicas share nothing by default.
    pub fn default_url(backend: StoreBackend) -> &'static str {
        match backend {
            StoreBackend::Embedded => "file:data/results",
            StoreBackend::Redis => "",
        }
    }

    /// `archive.url` parsed (`backend` gives the default when it is unset).
    pub fn location(&self, backend: StoreBackend) -> Result<ArchiveLocation, String> {
        let url = self.url.as_deref().unwrap_or(Self::default_url(backend)).trim();
        if url.is_empty() {
            return Ok(ArchiveLocation::Off);
        }
        if let Some(path) = url.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return match path.is_empty() {
                true => Err("file: needs a path, e.g. file:/var/lib/vidgate/results".into()),
                false => Ok(ArchiveLocation::File(PathBuf::from(path))),
            };
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !valid {
                return Err(format!("{bucket:?} is not an S3 bucket name (3-63 of a-z 0-9 . -)"));
            }
            return Ok(ArchiveLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        Err(format!("{url:?}: expected \"\" (off), file:PATH or s3://bucket/prefix"))
    }

    fn validate(&self, backend: StoreBackend) -> Result<(), ConfigError> {
        self.location(backend)
            .map_err(|reason| ConfigError::invalid("archive.url", reason))?;
        check_url_or_empty("archive.s3_endpoint", &self.s3_endpoint)?;
        if self.max_bytes == 0 {
            return Err(ConfigError::invalid("archive.max_bytes", "must be at least 1"));
        }
        Ok(())
    }
}

/// Per-second prices of one quality, as decimal strings in currency units.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub audio: String,
    pub silent: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    pub currency: String,
    /// model → quality → prices
    pub models: BTreeMap<String, BTreeMap<String, PriceEntry>>,
}

impl Default for PricingConfig {
    fn default() -> Self {
        let entry = |audio: &str, silent: &str| PriceEntry {
            audio: audio.into(),
            silent: silent.into(),
        };
        let qualities = BTreeMap::from([
            ("720p".to_string(), entry("0.05", "0.025")),
            ("1080p".to_string(), entry("0.075", "0.0375")),
        ]);
        Self {
            currency: "USD".into(),
            models: BTreeMap::from([(DEFAULT_MODEL.to_string(), qualities)]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    Month,
    Week,
    Day,
    Total,
}

/// One `[[tenants]]` entry: a team with its budget and limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Per period, in currency units; empty: no cap.
    pub budget: String,
    pub period: PeriodKind,
    pub creates_per_minute: u32,
    pub creates_burst: u32,
    pub reads_per_minute: u32,
    pub reads_burst: u32,
    pub max_concurrent_tasks: u32,
    /// Optional cap per user per period; empty: none.
    pub user_budget: String,
    pub user_creates_per_minute: u32,
    pub allowed_qualities: Vec<String>,
    /// Optional: this tenant's budget alerts also go here. Left out of the serialized entry
    /// when empty, so the config hash of entries without it stays what it was.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub alert_webhook_url: String,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            budget: String::new(),
            period: PeriodKind::Month,
            creates_per_minute: 60,
            creates_burst: 10,
            reads_per_minute: 600,
            reads_burst: 100,
            max_concurrent_tasks: 5,
            user_budget: String::new(),
            user_creates_per_minute: 0,
            allowed_qualities: vec!["720p".into(), "1080p".into()],
            alert_webhook_url: String::new(),
        }
    }
}

/// What check-config shows instead of a secret.
const MASK: &str = "********";

/// A URL with the password of its userinfo masked (`redis://:pw@host` → `redis://:********@host`),
/// also in forms the URL parser refuses (Sentinel's `redis+sentinel://:pw@h1:26379,h2:26379/m`);
/// text without `scheme://` is masked whole, since it cannot be told apart from a secret.
pub fn mask_url_password(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return MASK.into();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let rest = mask_query_passwords(rest);
    let Some(at) = authority.rfind('@') else {
        return format!("{scheme}://{rest}");
    };
    let user = match authority[..at].split_once(':') {
        Some((user, _)) => format!("{user}:{MASK}"),
        // A lone userinfo may be a token (`redis://token@host`): masked too.
        None => MASK.into(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

/// The value of every `…password=` query parameter masked (Sentinel's `sentinel_password`).
fn mask_query_passwords(rest: &str) -> String {
    let Some((before, query)) = rest.split_once('?') else {
        return rest.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.ends_with("password") => format!("{name}={MASK}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{before}?{}", query.join("&"))
}

/// A webhook URL shown as scheme, host and port only: Slack-style URLs carry their token
/// in the path, others in the query or the userinfo.
pub fn mask_webhook_url(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    let Ok(url) = url::Url::parse(text) else {
        return MASK.into();
    };
    let host = url.host_str().unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some();
    format!("{}://{host}{port}/{}", url.scheme(), if hidden { MASK } else { "" })
}

fn mask_secret<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.expose_secret().is_empty() {
        ""
    } else {
        "********"
    })
}

impl Config {
    /// Loads `path` (which must exist), then environment overrides, then `*_file` secrets.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                reason: "no such file".into(),
            });
        }
        Self::from_figment(Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(path)))
    }

    /// Parses a TOML string with the same rules (environment overrides included).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        // Only `SECTION__KEY` names are config: Kubernetes adds `VIDGATE_PORT`-style service
        // variables to every pod, and those must not stop the gateway.
        let env = Env::prefixed("VIDGATE_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        let figment = figment.merge(env);
        let mut config: Config = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            ConfigError::invalid(if key.is_empty() { "(file)".into() } else { key }, e.kind.to_string())
        })?;
        config.load_secret_files()?;
        let backend = config.store.backend;
        config
            .archive
            .url
            .get_or_insert_with(|| ArchiveConfig::default_url(backend).to_string());
        Ok(config)
    }

    /// `store.redis_ca_file`: only with a `rediss://` URL, a readable PEM of CA certificates.
    fn validate_redis_ca(&self, target: &crate::store::redis::Target) -> Result<(), ConfigError> {
        let path = &self.store.redis_ca_file;
        if path.as_os_str().is_empty() {
            return Ok(());
        }
        let invalid = |e: String| ConfigError::invalid("store.redis_ca_file", e);
        if !target.is_tls() {
            return Err(invalid("needs a rediss:// store.redis_url (TLS to one server)".into()));
        }
        let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        crate::store::redis::check_ca_pem(&pem).map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    fn load_secret_files(&mut self) -> Result<(), ConfigError> {
        load_secret(
            &mut self.upstream.api_key,
            &self.upstream.api_key_file,
            "upstream.api_key_file",
        )?;
        load_secret(
            &mut self.auth.hs256_secret,
            &self.auth.hs256_secret_file,
            "auth.hs256_secret_file",
        )?;
        load_secret(
            &mut self.callbacks.signing_secret,
            &self.callbacks.signing_secret_file,
            "callbacks.signing_secret_file",
        )?;
        load_secret(
            &mut self.metrics.bearer_token,
            &self.metrics.bearer_token_file,
            "metrics.bearer_token_file",
        )?;
        load_secret(
            &mut self.console.oidc_client_secret,
            &self.console.oidc_client_secret_file,
            "console.oidc_client_secret_file",
        )?;
        load_secret(
            &mut self.console.session_secret,
            &self.console.session_secret_file,
            "console.session_secret_file",
        )
    }

    /// Everything `serve` needs: refuses with the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::invalid("server.listen", e.to_string()))?;
        self.validate_public_base_url()?;
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::invalid("server.max_body_bytes", "must be at least 1024"));
        }
        check_url("upstream.base_url", &self.upstream.base_url)?;
        check_url("upstream.files_base_url", &self.upstream.files_base_url)?;
        if self.upstream.api_key.expose_secret().trim().is_empty() {
            return Err(ConfigError::invalid(
                "upstream.api_key",
                "required: set it, VIDGATE_UPSTREAM__API_KEY or upstream.api_key_file",
            ));
        }
        self.validate_auth()?;
        if self.store.retention_secs.as_millis() == 0 {
            return Err(ConfigError::invalid("store.retention_secs", "must be more than 0"));
        }
        if self.store.key_prefix.is_empty() {
            return Err(ConfigError::invalid("store.key_prefix", "must not be empty"));
        }
        if self.store.backend == StoreBackend::Redis {
            let target = crate::store::redis::Target::parse(&self.store.redis_url)
                .map_err(|e| ConfigError::invalid("store.redis_url", e))?;
            self.validate_redis_ca(&target)?;
            if self.store.min_replicas_acked > 0 && !(1..=1500).contains(&self.store.replica_ack_timeout_ms) {
                return Err(ConfigError::invalid(
                    "store.replica_ack_timeout_ms",
                    "must be 1 to 1500 when store.min_replicas_acked >= 1 (a store command times out after 2 s)",
                ));
            }
        }
        self.validate_callbacks()?;
        if self.alerts.thresholds.iter().any(|t| !(*t > 0.0 && *t <= 1.0)) {
            return Err(ConfigError::invalid(
                "alerts.thresholds",
                "each threshold must be in (0, 1]",
            ));
        }
        if !self.alerts.webhook_url.is_empty() {
            check_alert_webhook_url(&self.alerts.webhook_url, &self.callbacks)
                .map_err(|reason| ConfigError::invalid("alerts.webhook_url", reason))?;
        }
        self.validate_pricing()?;
        self.console.validate(&self.server.public_base_url)?;
        self.archive.validate(self.store.backend)?;
        self.validate_unknown_outcomes()?;
        self.validate_tenants()
    }

    /// Values that would break a money step half-way or expire a hold whose create may still
    /// be binding: an idempotency claim must live (`SET ... PX 0` fails inside the reserve
    /// script), and an unbound hold must outlive two create timeouts with a minute to spare.
    fn validate_unknown_outcomes(&self) -> Result<(), ConfigError> {
        if self.idempotency.ttl_secs < 1 {
            return Err(ConfigError::invalid("idempotency.ttl_secs", "must be at least 1"));
        }
        let minimum_ms = self.upstream.timeout_ms.saturating_mul(2).saturating_add(60_000);
        if self.reconciler.unbound_hold_grace_secs.as_millis() < minimum_ms {
            return Err(ConfigError::invalid(
                "reconciler.unbound_hold_grace_secs",
                format!(
                    "must be at least 2 x upstream.timeout_ms + 60 s = {} s, so that a slow create still binds before its hold is released",
                    minimum_ms.div_ceil(1000)
                ),
            ));
        }
        Ok(())
    }

    /// Where the upstream sends task callbacks: https (the token in the path is a secret),
    /// any scheme in labs that allow private networks; no query or fragment (the route path
    /// is appended).
    fn validate_public_base_url(&self) -> Result<(), ConfigError> {
        const KEY: &str = "server.public_base_url";
        let value = &self.server.public_base_url;
        if value.is_empty() {
            return Ok(());
        }
        check_url(KEY, value)?;
        let url = url::Url::parse(value).map_err(|e| ConfigError::invalid(KEY, e.to_string()))?;
        if url.scheme() != "https" && !self.callbacks.allow_private_networks {
            return Err(ConfigError::invalid(
                KEY,
                "must be https (plain http only with callbacks.allow_private_networks = true)",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(ConfigError::invalid(
                KEY,
                "must be a base URL without credentials, query or fragment",
            ));
        }
        Ok(())
    }

    fn validate_callbacks(&self) -> Result<(), ConfigError> {
        let callbacks = &self.callbacks;
        for (i, net) in callbacks.allowed_networks.iter().enumerate() {
            net.parse::<ipnet::IpNet>().map_err(|e| {
                ConfigError::invalid(format!("callbacks.allowed_networks[{i}]"), format!("{net:?}: {e}"))
            })?;
        }
        callbacks
            .signing_key()
            .map_err(|reason| ConfigError::invalid("callbacks.signing_secret", reason))?;
        callbacks
            .legacy_until()
            .map_err(|reason| ConfigError::invalid("callbacks.legacy_signature_until", reason))?;
        if callbacks.timeout_ms == 0 {
            return Err(ConfigError::invalid("callbacks.timeout_ms", "must be at least 1"));
        }
        let reconciler = &self.reconciler;
        if reconciler.poll_interval_secs.as_millis() == 0 {
            return Err(ConfigError::invalid(
                "reconciler.poll_interval_secs",
                "must be positive",
            ));
        }
        if reconciler.max_task_age_secs.as_millis() == 0 {
            return Err(ConfigError::invalid("reconciler.max_task_age_secs", "must be positive"));
        }
        Ok(())
    }

    /// The part of validation that minting and verifying tokens needs.
    pub fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "auth.algorithms",
                "at least one of HS256, RS256, ES256",
            ));
        }
        for alg in &auth.algorithms {
            if !matches!(alg.as_str(), "HS256" | "RS256" | "ES256") {
                return Err(ConfigError::invalid(
                    "auth.algorithms",
                    format!("unknown algorithm {alg:?}"),
                ));
            }
        }
        let hs256 = auth.algorithms.iter().any(|a| a == "HS256");
        if hs256 && auth.hs256_secret.expose_secret().len() < 32 {
            return Err(ConfigError::invalid(
                "auth.hs256_secret",
                "HS256 needs a secret of at least 32 bytes",
            ));
        }
        let asymmetric = auth.algorithms.iter().any(|a| a != "HS256");
        if asymmetric && auth.public_key_pem_files.is_empty() && auth.jwks_url.is_empty() {
            return Err(ConfigError::invalid(
                "auth.public_key_pem_files",
                "RS256/ES256 need public_key_pem_files or jwks_url",
            ));
        }
        check_url_or_empty("auth.jwks_url", &auth.jwks_url)?;
        if auth.tenant_claim.is_empty() {
            return Err(ConfigError::invalid("auth.tenant_claim", "must not be empty"));
        }
        Ok(())
    }

    fn validate_pricing(&self) -> Result<(), ConfigError> {
        if self.pricing.currency.trim().is_empty() {
            return Err(ConfigError::invalid("pricing.currency", "must not be empty"));
        }
        if self.pricing.models.is_empty() {
            return Err(ConfigError::invalid(
                "pricing.models",
                "at least one model must be priced",
            ));
        }
        for (model, qualities) in &self.pricing.models {
            for (quality, price) in qualities {
                if !matches!(quality.as_str(), "720p" | "1080p") {
                    return Err(ConfigError::invalid(
                        format!("pricing.models.{model}"),
                        format!("unknown quality {quality:?}"),
                    ));
                }
                for (name, value) in [("audio", &price.audio), ("silent", &price.silent)] {
                    billing::parse_money(value).map_err(|reason| {
                        ConfigError::invalid(format!("pricing.models.\"{model}\".\"{quality}\".{name}"), reason)
                    })?;
                }
            }
        }
        Ok(())
    }

    fn validate_tenants(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, tenant) in self.tenants.iter().enumerate() {
            let key = |field: &str| format!("tenants[{i}].{field}");
            if !valid_tenant_id(&tenant.id) {
                return Err(ConfigError::invalid(
                    key("id"),
                    "1-64 characters from a-z, A-Z, 0-9, '-', '_', '.'",
                ));
            }
            if !seen.insert(tenant.id.as_str()) {
                return Err(ConfigError::invalid(
                    key("id"),
                    format!("duplicate tenant {:?}", tenant.id),
                ));
            }
            tenant
                .budget_micros()
                .map_err(|r| ConfigError::invalid(key("budget"), r))?;
            tenant
                .user_budget_micros()
                .map_err(|r| ConfigError::invalid(key("user_budget"), r))?;
            if tenant.creates_per_minute == 0 || tenant.reads_per_minute == 0 {
                return Err(ConfigError::invalid(
                    key("creates_per_minute"),
                    "rates must be at least 1 per minute",
                ));
            }
            for q in &tenant.allowed_qualities {
                if !matches!(q.as_str(), "720p" | "1080p") {
                    return Err(ConfigError::invalid(
                        key("allowed_qualities"),
                        format!("unknown quality {q:?}"),
                    ));
                }
            }
            if !tenant.alert_webhook_url.is_empty() {
                check_alert_webhook_url(&tenant.alert_webhook_url, &self.callbacks)
                    .map_err(|reason| ConfigError::invalid(key("alert_webhook_url"), reason))?;
            }
        }
        Ok(())
    }

    /// Price in micro-units per second for a model/quality/audio combination, if priced.
    pub fn price_per_second(&self, model: &str, quality: &str, audio: bool) -> Option<Micros> {
        let entry = self.pricing.models.get(model)?.get(quality)?;
        billing::parse_money(if audio { &entry.audio } else { &entry.silent }).ok()
    }

    /// The configuration as TOML with every secret masked (for `check-config`): secret keys,
    /// URL passwords, and everything after the host of webhook URLs.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        for url in [
            &mut shown.server.public_base_url,
            &mut shown.upstream.base_url,
            &mut shown.upstream.files_base_url,
            &mut shown.auth.jwks_url,
            &mut shown.store.redis_url,
        ] {
            *url = mask_url_password(url);
        }
        shown.alerts.webhook_url = mask_webhook_url(&shown.alerts.webhook_url);
        for tenant in &mut shown.tenants {
            tenant.alert_webhook_url = mask_webhook_url(&tenant.alert_webhook_url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl TenantConfig {
    pub fn budget_micros(&self) -> Result<Option<Micros>, String> {
        optional_money(&self.budget)
    }

    pub fn user_budget_micros(&self) -> Result<Option<Micros>, String> {
        optional_money(&self.user_budget)
    }
}

fn optional_money(text: &str) -> Result<Option<Micros>, String> {
    if text.trim().is_empty() {
        Ok(None)
    } else {
        billing::parse_money(text).map(Some)
    }
}

/// Tenant ids appear in store keys and metric labels, so keep them short and plain.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn load_secret(secret: &mut SecretString, file: &Option<PathBuf>, key: &str) -> Result<(), ConfigError> {
    let Some(path) = file else { return Ok(()) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))?;
    *secret = SecretString::from(text.trim_end_matches(['\n', '\r']).to_string());
    Ok(())
}

/// An alert webhook passes the callback egress rules that need no DNS (the name is resolved
/// and checked again at every delivery).
pub fn check_alert_webhook_url(url: &str, callbacks: &CallbacksConfig) -> Result<(), String> {
    let policy = crate::callbacks::policy(callbacks);
    crate::probe::address::check_url(url, &policy, true)
        .map(drop)
        .map_err(|refusal| refusal.to_string())
}

fn check_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(value).map_err(|e| ConfigError::invalid(key, format!("{value:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::invalid(key, "must be an http or https URL"));
    }
    Ok(())
}

fn check_url_or_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        Ok(())
    } else {
        check_url(key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        let mut config = Config::default();
        config.upstream.api_key = SecretString::from("sk-evo-x".to_string());
        config.auth.hs256_secret = SecretString::from("x".repeat(32));
        config
    }

    fn refused_key(config: &Config) -> Option<String> {
        match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            Err(other) => panic!("{other}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn reconciler_durations_take_whole_or_fractional_seconds_and_show_them_back() {
        let config: ReconcilerConfig =
            toml::from_str("first_poll_after_secs = 60\npoll_interval_secs = 0.05\nmax_task_age_secs = 1.5").unwrap();
        assert_eq!(config.first_poll_after_secs, Seconds::from_secs(60));
        assert_eq!(config.poll_interval_secs.as_millis(), 50);
        assert_eq!(config.max_task_age_secs.as_millis(), 1500);
        let shown = toml::to_string(&config).unwrap();
        assert!(shown.contains("first_poll_after_secs = 60\n"), "{shown}");
        assert!(shown.contains("poll_interval_secs = 0.05\n"), "{shown}");
        assert!(toml::from_str::<ReconcilerConfig>("poll_interval_secs = -1").is_err());
        assert!(toml::from_str::<ReconcilerConfig>("poll_interval_secs = \"soon\"").is_err());
        let mut zero = valid();
        zero.reconciler.poll_interval_secs = Seconds::from_secs(0);
        assert_eq!(refused_key(&zero).as_deref(), Some("reconciler.poll_interval_secs"));
    }

    #[test]
    fn the_signing_secret_must_be_a_standard_webhooks_secret() {
        let mut config = valid();
        assert_eq!(refused_key(&config), None);
        assert_eq!(config.callbacks.signing_key(), Ok(None));
        config.callbacks.signing_secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string());
        assert_eq!(refused_key(&config), None);
        assert_eq!(config.callbacks.signing_key().unwrap().map(|k| k.len()), Some(24));
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
            &format!("whsec_{}", "QUFB".repeat(30)),
        ] {
            config.callbacks.signing_secret = SecretString::from(bad.to_string());
            assert_eq!(
                refused_key(&config).as_deref(),
                Some("callbacks.signing_secret"),
                "{bad}"
            );
        }
    }

    #[test]
    fn check_config_masks_url_passwords_and_everything_after_a_webhook_host() {
        assert_eq!(
            mask_url_password("redis://:hunter2@redis:6379/0"),
            "redis://:********@redis:6379/0"
        );
        assert_eq!(
            mask_url_password("redis://user:hunter2@redis:6379"),
            "redis://user:********@redis:6379"
        );
        assert_eq!(mask_url_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(mask_url_password("not a url hunter2"), MASK);
        assert_eq!(
            mask_url_password("redis+sentinel://:hunter2@h1:26379,h2:26379/mymaster"),
            "redis+sentinel://:********@h1:26379,h2:26379/mymaster"
        );
        assert_eq!(mask_url_password("redis://hunter2@redis/0"), "redis://********@redis/0");
        assert_eq!(
            mask_url_password("https://idp.example/jwks?a=b@c"),
            "https://idp.example/jwks?a=b@c"
        );
        assert_eq!(
            mask_webhook_url("https://hooks.slack.com/services/T0/B0/tok3n"),
            "https://hooks.slack.com/********"
        );
        assert_eq!(
            mask_webhook_url("https://h.example:8443/?token=x"),
            "https://h.example:8443/********"
        );
        assert_eq!(mask_webhook_url("https://u:p@h.example/"), "https://h.example/********");
        assert_eq!(mask_webhook_url("https://h.example"), "https://h.example/");
        let mut config = valid();
        config.store.redis_url = "redis://:hunter2@redis:6379".into();
        assert_eq!(
            mask_url_password("redis+sentinel://:pw1@h1:26379,h2:26379/m?sentinel_password=pw2&x=1"),
            "redis+sentinel://:********@h1:26379,h2:26379/m?sentinel_password=********&x=1"
        );
        config.alerts.webhook_url = "https://hooks.slack.com/services/T0/B0/tok3n".into();
        config.tenants = vec![TenantConfig {
            id: "t".into(),
            alert_webhook_url: "https://alerts.example.com/hook?key=s3cr3t".into(),
            ..TenantConfig::default()
        }];
        let shown = config.to_masked_toml();
        for secret in ["hunter2", "tok3n", "s3cr3t", "sk-evo-x", &"x".repeat(32)] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("https://alerts.example.com/********"), "{shown}");
    }

    #[test]
    fn tenant_alert_webhooks_and_the_legacy_date_are_checked() {
        let mut config = valid();
        config.tenants = vec![TenantConfig {
            id: "t".into(),
            alert_webhook_url: "https://10.0.0.1/hook".into(),
            ..TenantConfig::default()
        }];
        assert_eq!(refused_key(&config).as_deref(), Some("tenants[0].alert_webhook_url"));
        config.tenants[0].alert_webhook_url = "https://alerts.example.com/hook".into();
        assert_eq!(refused_key(&config), None);
        config.callbacks.legacy_signature_until = "next spring".into();
        assert_eq!(
            refused_key(&config).as_deref(),
            Some("callbacks.legacy_signature_until")
        );
        config.callbacks.legacy_signature_until = "2027-03-01T00:00:00Z".into();
        assert_eq!(refused_key(&config), None);
        assert!(config.callbacks.legacy_until().unwrap().is_some());
    }

    #[test]
    fn an_entry_without_an_alert_webhook_serializes_as_before() {
        let entry = TenantConfig {
            id: "t".into(),
            ..TenantConfig::default()
        };
        assert!(!serde_json::to_string(&entry).unwrap().contains("alert_webhook_url"));
    }

    #[test]
    fn the_public_base_url_is_https_unless_private_networks_are_allowed() {
        let mut config = valid();
        for (url, private, ok) in [
            ("https://vidgate-callbacks.example.com", false, true),
            ("https://example.com/prefix/", false, true),
            ("http://vidgate-callbacks.example.com", false, false),
            ("http://127.0.0.1:8080", true, true),
            ("https://example.com/?a=b", false, false),
            ("https://u:p@example.com", false, false),
            ("ftp://example.com", true, false),
            ("not a url", true, false),
        ] {
            config.server.public_base_url = url.into();
            config.callbacks.allow_private_networks = private;
            let key = refused_key(&config);
            assert_eq!(key.is_none(), ok, "{url}: {key:?}");
            if let Some(key) = key {
                assert_eq!(key, "server.public_base_url");
            }
        }
    }

    #[test]
    fn sign_in_with_an_idp_needs_a_public_base_url_and_a_client_id() {
        let mut config = valid();
        config.console.oidc_issuer = "https://idp.example.com/realms/company".into();
        config.console.oidc_client_id = "vidgate".into();
        let Err(ConfigError::Invalid { key, reason }) = config.validate() else {
            panic!("an IdP without server.public_base_url was accepted")
        };
        assert_eq!(key, "console.oidc_issuer");
        assert!(reason.contains("server.public_base_url"), "{reason}");
        config.server.public_base_url = "https://vidgate.example.com".into();
        assert_eq!(refused_key(&config), None);
        config.console.oidc_client_id = String::new();
        assert_eq!(refused_key(&config).as_deref(), Some("console.oidc_client_id"));
        config.console.oidc_client_id = "vidgate".into();
        config.console.oidc_issuer = "idp.example.com".into();
        assert_eq!(refused_key(&config).as_deref(), Some("console.oidc_issuer"));
    }

    #[test]
    fn sentinel_urls_and_replica_acks_are_checked() {
        let mut config = valid();
        config.store.backend = StoreBackend::Redis;
        config.store.redis_url = "redis+sentinel://:pw@h1:26379,h2:26379/mymaster".into();
        config.store.min_replicas_acked = 1;
        assert!(config.validate().is_ok());
        for timeout in [0, 1501] {
            config.store.replica_ack_timeout_ms = timeout;
            assert!(
                matches!(config.validate(), Err(ConfigError::Invalid { key, .. }) if key == "store.replica_ack_timeout_ms"),
                "{timeout}"
            );
        }
        config.store.replica_ack_timeout_ms = 500;
        config.store.redis_url = "redis+sentinel://h1:26379".into();
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { key, .. }) if key == "store.redis_url"));
    }

    #[test]
    fn the_archive_is_on_beside_an_embedded_store_and_off_with_redis_unless_set() {
        let embedded = Config::from_toml_str("").unwrap();
        assert_eq!(embedded.archive.url.as_deref(), Some("file:data/results"));
        let redis = Config::from_toml_str("[store]\nbackend = \"redis\"\n").unwrap();
        assert_eq!(redis.archive.url.as_deref(), Some(""));
        assert_eq!(redis.archive.location(StoreBackend::Redis), Ok(ArchiveLocation::Off));
        let set =
            Config::from_toml_str("[store]\nbackend = \"redis\"\n[archive]\nurl = \"s3://videos/vidgate/prod/\"\n")
                .unwrap();
        assert_eq!(
            set.archive.location(StoreBackend::Redis),
            Ok(ArchiveLocation::S3 {
                bucket: "videos".into(),
                prefix: "vidgate/prod".into()
            })
        );
    }

    #[test]
    fn a_bad_archive_setting_is_refused_by_name() {
        for (url, endpoint, max_bytes, key) in [
            ("ftp://x", "", 1, "archive.url"),
            ("file:", "", 1, "archive.url"),
            ("s3://A_B", "", 1, "archive.url"),
            ("s3://videos", "not a url", 1, "archive.s3_endpoint"),
            ("file:/var/lib/vidgate/results", "", 0, "archive.max_bytes"),
        ] {
            let mut config = valid();
            config.archive.url = Some(url.into());
            config.archive.s3_endpoint = endpoint.into();
            config.archive.max_bytes = max_bytes;
            assert_eq!(
                refused_key(&config).as_deref(),
                Some(key),
                "{url} {endpoint} {max_bytes}"
            );
        }
    }
}
