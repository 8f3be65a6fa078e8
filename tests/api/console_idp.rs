//! The console's IdP sign-in routes over real HTTP, without an IdP: the gateway starts while
//! the IdP is down and says so on a page; a callback this browser did not start is refused
//! and the flow cookie cleared; without `oidc_issuer` the routes are not there. Sign-in
//! through a real OpenID provider in a real browser is tests/oidc/.

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use secrecy::SecretString;

use crate::helpers::{Backend, TestApp, own_callbacks, quick_mock, spawn_app_with};

const SESSION_SECRET: &str = "console-session-secret-for-tests-0123456789";

/// A gateway whose IdP is a loopback port nothing listens on.
async fn app_with_idp_down() -> (TestApp, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        own_callbacks(config);
        config.console.session_secret = SecretString::from(SESSION_SECRET.to_string());
        config.console.oidc_issuer = issuer.clone();
        config.console.oidc_client_id = "vidgate".into();
    })
    .await;
    (app, issuer)
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

async fn page(app: &TestApp, path: &str, cookie: Option<&str>) -> (StatusCode, Option<String>, String) {
    let mut request = browser().get(format!("{}{path}", app.base));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (status, set_cookie, response.text().await.unwrap())
}

#[tokio::test]
async fn the_gateway_starts_while_the_idp_is_down_and_the_sign_in_says_so() {
    let (app, issuer) = app_with_idp_down().await;
    let (status, _, body) = page(&app, "/console/", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains(r#"href="/console/auth/login""#) && body.contains("Sign in with your company account"));
    let (status, set_cookie, body) = page(&app, "/console/auth/login", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("Sign-in service unreachable") && body.contains(&issuer),
        "{body}"
    );
    assert!(set_cookie.is_none(), "no sign-in attempt starts");
    // The API does not depend on the IdP.
    let health = browser().get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_callback_this_browser_did_not_start_is_refused() {
    let (app, _) = app_with_idp_down().await;
    let (status, set_cookie, body) = page(&app, "/console/auth/callback?code=c&state=s", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not started in this browser"), "{body}");
    let set_cookie = set_cookie.expect("the flow cookie is cleared");
    assert!(set_cookie.starts_with("vidgate_oidc=;") && set_cookie.contains("Max-Age=0"));
    assert!(set_cookie.contains("Path=/console/auth") && set_cookie.contains("HttpOnly"));
    // A flow cookie not signed with the session secret: a state mismatch, whatever it says.
    let (status, _, body) = page(
        &app,
        "/console/auth/callback?code=c&state=s",
        Some("vidgate_oidc=e30.AAAA"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("state does not match"), "{body}");
}

#[tokio::test]
async fn without_an_issuer_the_idp_routes_are_not_there() {
    let app = spawn_app_with(Backend::Embedded, quick_mock(), |config| {
        config.console.session_secret = SecretString::from(SESSION_SECRET.to_string());
    })
    .await;
    for path in ["/console/auth/login", "/console/auth/callback?code=c&state=s"] {
        let (status, _, body) = page(&app, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(body.contains("console.oidc_issuer"), "{path}: {body}");
    }
    let (_, _, body) = page(&app, "/console/", None).await;
    assert!(!body.contains("company account") && body.contains("console-link"));
}
