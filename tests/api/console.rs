//! The console's sessions over real HTTP: `console-link` tickets (single use), the session
//! cookie's reach (GET routes and the listed writes with `X-CSRF-Token`), sign-out, the
//! console being off without a session secret; and the admin routes' `group_by=quality` and
//! `kind=` it reads. The pages themselves are checked in a real browser (tests/console/).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use secrecy::SecretString;
use serde_json::{Value, json};
use vidgate::auth::session::Ticket;

use crate::helpers::{Backend, TestApp, quick_mock, spawn_app, spawn_app_with};

const SESSION_SECRET: &str = "console-session-secret-for-tests-0123456789";

async fn console_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, quick_mock(), |config| {
        config.console.session_secret = SecretString::from(SESSION_SECRET.to_string());
    })
    .await
}

fn ticket(tenant: Option<&str>, sub: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    Ticket::new(sub, tenant, &roles, Duration::from_secs(900), now_ms)
        .unwrap()
        .sign(SESSION_SECRET.as_bytes())
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

/// A signed-in session: the `Cookie` header value and the page's CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn sign_in(app: &TestApp, ticket: &str) -> reqwest::Response {
    browser()
        .get(format!("{}/console/link?ticket={ticket}", app.base))
        .send()
        .await
        .unwrap()
}

async fn session(app: &TestApp, tenant: Option<&str>, sub: &str, roles: &[&str]) -> Session {
    let response = sign_in(app, &ticket(tenant, sub, roles)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    // Plain http to loopback: the one case where `Secure` is left out.
    assert!(!set_cookie.contains("Secure"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let page = browser()
        .get(format!("{}/console/team", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split(r#"<meta name="csrf-token" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a signed-in page carries the CSRF token")
        .to_string();
    Session { cookie, csrf }
}

async fn with_cookie(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    session: &Session,
    csrf: bool,
) -> reqwest::Response {
    let mut request = browser()
        .request(method, format!("{}{path}", app.base))
        .header("cookie", &session.cookie);
    if csrf {
        request = request.header("x-csrf-token", &session.csrf);
    }
    request.json(&json!({"budget": "7.00"})).send().await.unwrap()
}

async fn code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test]
async fn without_a_session_secret_the_console_answers_404() {
    let app = spawn_app(Backend::Embedded).await;
    for path in ["/console/", "/console/link?ticket=x", "/console/assets/console.css"] {
        let response = browser().get(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn a_ticket_signs_in_once_embedded() {
    a_ticket_signs_in_once(Backend::Embedded).await;
}

#[tokio::test]
async fn a_ticket_signs_in_once_redis() {
    a_ticket_signs_in_once(Backend::Redis).await;
}

async fn a_ticket_signs_in_once(backend: Backend) {
    let app = console_app(backend).await;
    let ticket = ticket(None, "fin", &["finance"]);
    assert_eq!(sign_in(&app, &ticket).await.status(), StatusCode::SEE_OTHER);
    let again = sign_in(&app, &ticket).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    assert!(again.headers().get("set-cookie").is_none());
    assert!(again.text().await.unwrap().contains("already used"));
    let forged = ticket.replace('.', ".x");
    assert_eq!(sign_in(&app, &forged).await.status(), StatusCode::UNAUTHORIZED);
    let other_secret = Ticket::new("fin", None, &["admin".into()], Duration::from_secs(60), 0)
        .unwrap()
        .sign(b"another secret, 32 bytes or more!!");
    assert_eq!(sign_in(&app, &other_secret).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_cookie_reads_get_routes_and_makes_only_the_listed_writes_with_csrf_embedded() {
    the_cookie_reads_get_routes_and_makes_only_the_listed_writes_with_csrf(Backend::Embedded).await;
}

#[tokio::test]
async fn the_cookie_reads_get_routes_and_makes_only_the_listed_writes_with_csrf_redis() {
    the_cookie_reads_get_routes_and_makes_only_the_listed_writes_with_csrf(Backend::Redis).await;
}

async fn the_cookie_reads_get_routes_and_makes_only_the_listed_writes_with_csrf(backend: Backend) {
    let app = console_app(backend).await;
    let admin = session(&app, None, "root", &["admin"]).await;
    let get = |path: &'static str| with_cookie(&app, reqwest::Method::GET, path, &admin, false);
    assert_eq!(get("/v1/admin/tenants").await.status(), StatusCode::OK);
    assert_eq!(get("/v1/admin/usage?group_by=quality").await.status(), StatusCode::OK);
    let put = |csrf| with_cookie(&app, reqwest::Method::PUT, "/v1/admin/tenants/team-a", &admin, csrf);
    assert_eq!(
        code(put(false).await).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(put(true).await.status(), StatusCode::OK);
    let ledger = get("/v1/admin/ledger?tenant=team-a&kind=budget_change")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let last = ledger["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["kind"].as_str(), last["actor"].as_str()),
        (Some("budget_change"), Some("root"))
    );
    // Any other write ignores the cookie, CSRF token or not.
    for path in ["/v1/videos/generations", "/v1/quotes"] {
        let response = with_cookie(&app, reqwest::Method::POST, path, &admin, true).await;
        assert_eq!(
            code(response).await,
            (StatusCode::UNAUTHORIZED, "unauthenticated".into()),
            "{path}"
        );
    }
    // A team member's session: its own tenant only, by the same rules as its token.
    let team = session(&app, Some("team-a"), "ann", &[]).await;
    let usage = with_cookie(&app, reqwest::Method::GET, "/v1/usage", &team, false).await;
    assert_eq!(usage.json::<Value>().await.unwrap()["tenant"], "team-a");
    let admin_usage = with_cookie(&app, reqwest::Method::GET, "/v1/admin/usage", &team, false).await;
    assert_eq!(admin_usage.status(), StatusCode::FORBIDDEN);
    let put = with_cookie(&app, reqwest::Method::PUT, "/v1/admin/tenants/team-a", &team, true).await;
    assert_eq!(put.status(), StatusCode::FORBIDDEN);
    // Sign-out: without the CSRF header it is refused; with it the session ends in the store.
    let logout = |csrf| with_cookie(&app, reqwest::Method::POST, "/console/logout", &admin, csrf);
    assert_eq!(logout(false).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(logout(true).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(get("/v1/admin/tenants").await.status(), StatusCode::UNAUTHORIZED);
    let page = get("/console/").await;
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
    assert!(page.text().await.unwrap().contains("console-link"));
}

#[tokio::test]
async fn signing_in_again_in_the_same_browser_ends_the_session_it_replaces() {
    let app = console_app(Backend::Embedded).await;
    let first = session(&app, Some("team-a"), "ann", &[]).await;
    let again = browser()
        .get(format!(
            "{}/console/link?ticket={}",
            app.base,
            ticket(Some("team-a"), "ann", &[])
        ))
        .header("cookie", &first.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    let second = Session {
        cookie: again.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string(),
        csrf: String::new(),
    };
    let old = with_cookie(&app, reqwest::Method::GET, "/v1/usage", &first, false).await;
    assert_eq!(code(old).await, (StatusCode::UNAUTHORIZED, "unauthenticated".into()));
    let new = with_cookie(&app, reqwest::Method::GET, "/v1/usage", &second, false).await;
    assert_eq!(new.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_bearer_token_wins_over_a_cookie_and_a_bad_cookie_is_refused() {
    let app = console_app(Backend::Embedded).await;
    let team = session(&app, Some("team-a"), "ann", &[]).await;
    let response = browser()
        .get(format!("{}/v1/usage", app.base))
        .header("cookie", &team.cookie)
        .bearer_auth(app.token_for("team-b", "bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["tenant"], "team-b");
    let forged = Session {
        cookie: team.cookie.replace('.', "x."),
        csrf: team.csrf.clone(),
    };
    let response = with_cookie(&app, reqwest::Method::GET, "/v1/usage", &forged, false).await;
    assert_eq!(
        code(response).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );
}

#[tokio::test]
async fn usage_by_quality_and_the_ledger_by_kind_follow_the_tasks() {
    let app = console_app(Backend::Embedded).await;
    let task = app.create_task("team-a", "a cat").await;
    app.wait_final("team-a", task["id"].as_str().unwrap()).await;
    let finance = app.finance_token();
    let by_quality = app
        .get_json("/v1/admin/usage?tenant=team-a&group_by=quality", &finance)
        .await;
    let tenant = app.get_json("/v1/usage", &app.token("team-a")).await;
    let rows = by_quality["rows"].as_array().unwrap();
    let breakdown = tenant["breakdown"].as_array().unwrap();
    assert_eq!(rows.len(), breakdown.len());
    for (row, kind) in rows.iter().zip(breakdown) {
        assert_eq!(
            (&row["quality"], &row["audio"], &row["spent"]),
            (&kind["quality"], &kind["audio"], &kind["spent"])
        );
    }
    let settles = app
        .get_json("/v1/admin/ledger?tenant=team-a&kind=settle", &finance)
        .await;
    let entries = settles["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["amount"], tenant["spent"]);
    let bad = app.get("/v1/admin/ledger?kind=bogus", &finance).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let bad = app.get("/v1/admin/usage?group_by=model", &finance).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn console_link_refuses_without_a_session_secret_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vidgate.toml");
    std::fs::write(&path, "[console]\nenabled = true\n").unwrap();
    let error = vidgate::cli::console_link(&path, None, "fin", &["finance".into()], "15m").unwrap_err();
    assert!(error.contains("console.session_secret"), "{error}");
    std::fs::write(&path, format!("[console]\nsession_secret = \"{SESSION_SECRET}\"\n")).unwrap();
    vidgate::cli::console_link(&path, None, "fin", &["finance".into()], "15m").unwrap();
    let error = vidgate::cli::console_link(&path, None, "ann", &[], "15m").unwrap_err();
    assert!(error.contains("--tenant"), "{error}");
}

#[tokio::test]
async fn a_session_and_its_sign_out_hold_on_every_replica() {
    let prefix = format!("test:{}:", ulid::Ulid::new());
    let replica = || {
        let prefix = prefix.clone();
        spawn_app_with(Backend::Redis, quick_mock(), move |config| {
            config.console.session_secret = SecretString::from(SESSION_SECRET.to_string());
            config.store.key_prefix = prefix;
        })
    };
    let (a, b) = (replica().await, replica().await);
    let ticket = ticket(None, "fin", &["finance"]);
    assert_eq!(sign_in(&a, &ticket).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        sign_in(&b, &ticket).await.status(),
        StatusCode::UNAUTHORIZED,
        "used on the other replica"
    );
    let finance = session(&a, None, "fin", &["finance"]).await;
    let on_b = |s| with_cookie(&b, reqwest::Method::GET, "/v1/admin/usage", s, false);
    assert_eq!(on_b(&finance).await.status(), StatusCode::OK);
    let logout = with_cookie(&a, reqwest::Method::POST, "/console/logout", &finance, true).await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        on_b(&finance).await.status(),
        StatusCode::UNAUTHORIZED,
        "signed out everywhere at once"
    );
}

#[tokio::test]
async fn sessions_and_used_tickets_move_with_the_store_export_and_import() {
    use vidgate::store::embedded::EmbeddedStore;
    use vidgate::store::redis::RedisStore;
    use vidgate::store::{ConsoleSession, Store};

    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(&dir.path().join("s.redb"), "x:").unwrap();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let session = ConsoleSession {
        user: "fin".into(),
        tenant: None,
        roles: vec!["finance".into()],
        created_ms: now_ms,
        expires_ms: now_ms + 3_600_000,
    };
    assert!(
        embedded
            .open_console_session("jti-m", now_ms + 600_000, "key-m", &session)
            .await
            .unwrap()
    );
    let (sink, mut items) = tokio::sync::mpsc::channel(64);
    embedded.export(sink).await.unwrap();
    let mut dumped = Vec::new();
    while let Some(item) = items.recv().await {
        dumped.push(item);
    }
    let redis = RedisStore::connect(&crate::support::redis::shared().url(), &crate::support::random_prefix())
        .await
        .unwrap();
    redis.import(dumped).await.unwrap();
    assert_eq!(
        redis.console_session("key-m", now_ms).await.unwrap(),
        Some(session.clone())
    );
    assert!(
        !redis
            .open_console_session("jti-m", now_ms + 600_000, "key-n", &session)
            .await
            .unwrap()
    );
}

#[test]
fn a_short_session_secret_or_an_issuer_without_a_public_url_is_refused_by_name() {
    let base = "[upstream]\napi_key = \"k\"\n[auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n";
    let check = |extra: &str| {
        vidgate::config::Config::from_toml_str(&format!("{base}{extra}"))
            .and_then(|config| config.validate())
            .map_err(|e| e.to_string())
    };
    assert!(
        check("[console]\nsession_secret = \"short\"\n")
            .unwrap_err()
            .contains("console.session_secret")
    );
    let issuer = check("[console]\noidc_issuer = \"https://idp.example.com\"\n").unwrap_err();
    assert!(
        issuer.contains("console.oidc_issuer") && issuer.contains("public_base_url"),
        "{issuer}"
    );
    assert!(
        check("[console]\nsession_ttl_secs = 10\n")
            .unwrap_err()
            .contains("console.session_ttl_secs")
    );
    check(&format!("[console]\nsession_secret = \"{SESSION_SECRET}\"\n")).unwrap();
}
