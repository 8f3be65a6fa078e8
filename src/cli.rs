//! The commands behind the `vidgate` binary: serve, mock-upstream, demo, token, check-config.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use rand::Rng;
use secrecy::SecretString;

use crate::app::{Application, announce};
use crate::auth;
use crate::config::{Config, DEFAULT_MODEL, TenantConfig};
use crate::mock_upstream::{self, MockOptions, MockServer};

/// A failed command: the message is printed, the process exits non-zero.
pub type CommandResult = Result<(), String>;

/// `vidgate serve`: run the gateway until SIGTERM.
pub async fn serve(config_path: &Path) -> CommandResult {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let app = Application::build(config).await.map_err(|e| e.to_string())?;
    announce(app.addr());
    tracing::info!(addr = %app.addr(), "vidgate serving");
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

/// `vidgate mock-upstream`: the upstream simulator on its own.
pub async fn mock_upstream(options: MockOptions) -> CommandResult {
    mock_upstream::run(options).await.map_err(|e| e.to_string())
}

/// `vidgate demo`: mock upstream + gateway (embedded store, one demo tenant) in one process.
pub async fn demo(listen: &str) -> CommandResult {
    let mock = MockServer::start(MockOptions {
        allow_local_callbacks: true,
        ..MockOptions::default()
    })
    .await
    .map_err(|e| format!("cannot start the mock upstream: {e}"))?;
    let reference_url = upload_demo_reference(&mock).await?;
    let config = demo_config(&mock, listen);
    let jwt = auth::mint_hs256(
        &config.auth,
        Some("demo"),
        "demo-user",
        &[],
        Duration::from_secs(86_400),
    )
    .map_err(|e| e.to_string())?;
    let app = Application::build(config).await.map_err(|e| e.to_string())?;
    let base = format!("http://{}", app.addr());
    announce(app.addr());
    print_demo_instructions(&base, &jwt, &reference_url);
    let result = app.run_until_stopped().await.map_err(|e| e.to_string());
    mock.stop().await;
    result
}

fn demo_config(mock: &MockServer, listen: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = listen.to_string();
    config.upstream.base_url = mock.base_url();
    config.upstream.files_base_url = mock.base_url();
    config.upstream.api_key = SecretString::from(MockOptions::default().api_key);
    let secret: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(48)
        .map(char::from)
        .collect();
    config.auth.hs256_secret = SecretString::from(secret);
    config.store.path = std::env::temp_dir().join(format!("vidgate-demo-{}.redb", std::process::id()));
    config.probe.allowed_hosts = vec![mock.addr().ip().to_string()];
    config.probe.allow_private_networks = true;
    config.tenants = vec![TenantConfig {
        id: "demo".into(),
        budget: "50.00".into(),
        ..TenantConfig::default()
    }];
    config
}

/// Puts a small reference video on the mock's file host, as a team would with the upload API.
async fn upload_demo_reference(mock: &MockServer) -> Result<String, String> {
    let video = mock_upstream::mp4_with_duration(4000);
    let body = serde_json::json!({
        "base64_data": base64::engine::general_purpose::STANDARD.encode(video),
        "file_name": "reference-4s.mp4",
    });
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/v1/files/upload/base64", mock.base_url()))
        .bearer_auth(MockOptions::default().api_key)
        .json(&body)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("cannot upload the demo reference video: {e}"))?
        .json()
        .await
        .map_err(|e| format!("unexpected upload answer: {e}"))?;
    answer["data"]["file_url"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "upload answer without file_url".into())
}

fn print_demo_instructions(base: &str, jwt: &str, reference_url: &str) {
    println!(
        r#"
vidgate demo: a gateway at {base} in front of a simulated upstream.

  export TOKEN={jwt}

  # create a task (the simulated upstream completes it after about 1.5 s)
  curl -s {base}/v1/videos/generations -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' \
    -d '{{"model":"{DEFAULT_MODEL}","prompt":"character1 waves at the camera","video_urls":["{reference_url}"],"duration":5}}'

  # query it (use the "id" from the answer): "status":"completed" with a result URL
  curl -s {base}/v1/tasks/TASK_ID -H "Authorization: Bearer $TOKEN"

Ctrl-C stops the demo."#
    );
}
