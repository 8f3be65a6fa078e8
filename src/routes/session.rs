//! The console's session cookie as a credential: which routes it may authenticate (every GET,
//! and exactly the writes the contract lists, each with `X-CSRF-Token`), and the caller it
//! stands for, read from the store on every request so a sign-out holds on every replica.

use actix_web::dev::ServiceRequest;
use actix_web::http::Method;
use secrecy::ExposeSecret;

use crate::auth::Caller;
use crate::auth::session::{
    CSRF_HEADER, SESSION_COOKIE, cookie_in_header, csrf_matches, session_id_of_cookie, session_key,
};
use crate::error::ApiError;
use crate::state::AppState;

/// The writes a session may make, as (method, path pattern); `*` matches one path segment.
const COOKIE_WRITES: &[(Method, &str)] = &[
    (Method::PUT, "/v1/admin/tenants/*"),
    (Method::POST, "/v1/admin/tenants/*/keys"),
    (Method::DELETE, "/v1/admin/tenants/*/keys/*"),
    (Method::POST, "/v1/webhooks/secret/rotate"),
    (Method::POST, "/console/logout"),
];

/// Console pages (reads) answer a visitor without a session themselves (a sign-in hint, not
/// JSON); a console write without a valid session and CSRF token is refused like any other.
pub fn is_console_page(method: &Method, path: &str) -> bool {
    !is_write(method) && (path == "/console" || path.starts_with("/console/"))
}

/// The session's caller when the request carries a session cookie, no `Authorization`
/// header, and goes to a route a session may use; `None`: the cookie plays no part.
pub async fn cookie_caller(state: &AppState, req: &ServiceRequest) -> Option<Result<Caller, ApiError>> {
    if req.headers().contains_key(actix_web::http::header::AUTHORIZATION) || !state.config.console.is_on() {
        return None;
    }
    let header = req.headers().get(actix_web::http::header::COOKIE)?.to_str().ok()?;
    let cookie = cookie_in_header(header, SESSION_COOKIE)?;
    let write = is_write(req.method());
    if write
        && !COOKIE_WRITES
            .iter()
            .any(|(m, p)| m == req.method() && matches(p, req.path()))
    {
        return None;
    }
    Some(session_caller(state, req, cookie, write).await)
}

async fn session_caller(state: &AppState, req: &ServiceRequest, cookie: &str, write: bool) -> Result<Caller, ApiError> {
    let secret = state.config.console.session_secret.expose_secret().as_bytes();
    let expired = || ApiError::Unauthenticated("the console session has ended: sign in again".into());
    let id = session_id_of_cookie(cookie, secret).ok_or_else(expired)?;
    let now_ms = state.clock.now().timestamp_millis();
    let session = state
        .store
        .console_session(&session_key(id), now_ms)
        .await?
        .ok_or_else(expired)?;
    if write {
        let presented = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !presented.is_some_and(|token| csrf_matches(id, secret, token)) {
            return Err(ApiError::Forbidden(
                "a console write needs the session's X-CSRF-Token header".into(),
            ));
        }
    }
    Ok(Caller {
        tenant: session.tenant,
        user: session.user,
        roles: session.roles,
    })
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// `pattern` with `*` standing for exactly one non-empty segment.
fn matches(pattern: &str, path: &str) -> bool {
    let mut segments = path.split('/');
    let all = pattern.split('/').all(|want| match segments.next() {
        Some(got) if want == "*" => !got.is_empty(),
        Some(got) => got == want,
        None => false,
    });
    all && segments.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_writes_match() {
        assert!(matches("/v1/admin/tenants/*", "/v1/admin/tenants/acme"));
        assert!(!matches("/v1/admin/tenants/*", "/v1/admin/tenants/"));
        assert!(!matches("/v1/admin/tenants/*", "/v1/admin/tenants/acme/keys"));
        assert!(matches("/v1/admin/tenants/*/keys/*", "/v1/admin/tenants/a/keys/k1"));
        assert!(!matches("/console/logout", "/console/logout/"));
        assert!(!matches("/v1/webhooks/secret/rotate", "/v1/videos/generations"));
    }

    #[test]
    fn console_pages_are_those_under_console() {
        assert!(is_console_page(&Method::GET, "/console/"));
        assert!(is_console_page(&Method::GET, "/console/ledger"));
        assert!(!is_console_page(&Method::POST, "/console/logout"));
        assert!(!is_console_page(&Method::GET, "/consolex"));
        assert!(!is_console_page(&Method::GET, "/v1/usage"));
    }
}
