//! Sign-in with a `console-link` ticket (single use, recorded in the store) and sign-out.

use std::net::IpAddr;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;

use super::{PageError, html_error, session_id};
use crate::auth::session::{SESSION_COOKIE, Ticket, cookie_value, random_token, session_key};
use crate::state::AppState;
use crate::store::ConsoleSession;

/// `GET /console/link?ticket=...`: opens a session and sends the browser to its home page.
pub async fn link(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let refused = |text: &str| html_error(StatusCode::UNAUTHORIZED, "Sign-in link not valid", text, None);
    let Some(ticket) = ticket_param(&req) else {
        return refused("This address carries no ticket. Use the whole URL `vidgate console-link` printed.");
    };
    let secret = state.config.console.session_secret.expose_secret().as_bytes();
    let now_ms = state.clock.now().timestamp_millis();
    let ticket = match Ticket::verify(&ticket, secret, now_ms) {
        Ok(ticket) => ticket,
        Err(error) => return refused(&format!("{error}. Ask for a new link.")),
    };
    if let Some(tenant) = &ticket.tenant {
        match state.store.tenant(tenant).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return refused(&format!(
                    "The link is for tenant {tenant:?}, which this gateway does not know."
                ));
            }
            Err(error) => return PageError::Store(error).into_response(None),
        }
    }
    let ttl_ms = i64::try_from(state.config.console.session_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let session = ConsoleSession {
        user: ticket.sub.clone(),
        tenant: ticket.tenant.clone(),
        roles: ticket.roles.clone(),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(ttl_ms),
    };
    let id = random_token();
    match state
        .store
        .open_console_session(&ticket.jti, ticket.exp_ms, &session_key(&id), &session)
        .await
    {
        Ok(true) => {}
        Ok(false) => return refused("This sign-in link was already used; each link signs in once. Ask for a new one."),
        Err(error) => return PageError::Store(error).into_response(None),
    }
    tracing::info!(user = %ticket.sub, tenant = ?ticket.tenant, "console session opened with a console-link ticket");
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        cookie_value(&id, secret),
        state.config.console.session_ttl_secs,
        if secure_cookie(&state, &req) { "; Secure" } else { "" }
    );
    HttpResponse::SeeOther()
        .insert_header(("location", "/console/"))
        .insert_header(("set-cookie", cookie))
        .insert_header(("cache-control", "no-store"))
        .insert_header(("referrer-policy", "no-referrer"))
        .finish()
}

/// `POST /console/logout` (session + `X-CSRF-Token`, checked by the auth middleware): the
/// session is deleted from the store, so no replica accepts the cookie afterwards.
pub async fn logout(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let secret = state.config.console.session_secret.expose_secret().as_bytes();
    if let Some(id) = session_id(&req, secret)
        && let Err(error) = state.store.end_console_session(&session_key(id)).await
    {
        return PageError::Store(error).into_response(None);
    }
    let clear = format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
        if secure_cookie(&state, &req) { "; Secure" } else { "" }
    );
    HttpResponse::NoContent()
        .insert_header(("set-cookie", clear))
        .insert_header(("cache-control", "no-store"))
        .finish()
}

fn ticket_param(req: &HttpRequest) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(key, _)| key == "ticket")
        .map(|(_, value)| value.into_owned())
        .filter(|value| !value.is_empty())
}

/// `Secure` always, except for plain http to a loopback address (a laptop, the demo, tests),
/// where a browser would otherwise never send the cookie back.
fn secure_cookie(state: &AppState, req: &HttpRequest) -> bool {
    let base = &state.config.server.public_base_url;
    if !base.is_empty() {
        return !base.starts_with("http://") || !loopback_url(base);
    }
    let info = req.connection_info();
    !(info.scheme() == "http" && loopback_host(info.host()))
}

fn loopback_url(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(loopback_name))
        .unwrap_or(false)
}

/// A `Host` value (with or without a port) that names this machine.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    loopback_name(name)
}

fn loopback_name(name: &str) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_count_as_loopback() {
        assert!(loopback_host("127.0.0.1:8080"));
        assert!(loopback_host("localhost"));
        assert!(loopback_host("[::1]:8080"));
        assert!(!loopback_host("10.0.0.1:8080"));
        assert!(!loopback_host("vidgate.example.com"));
        assert!(loopback_url("http://127.0.0.1:9000"));
        assert!(!loopback_url("http://gateway.internal"));
    }
}
