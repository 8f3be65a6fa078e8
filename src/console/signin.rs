//! Sign-in, with the company IdP (OIDC code flow + PKCE, see `oidc`) or a `console-link`
//! ticket (single use, recorded in the store), and sign-out. Both open the same kind of
//! session, with the same store call and cookie.

use std::net::IpAddr;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, SET_COOKIE};
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;

use super::oidc::{FLOW_COOKIE, FLOW_COOKIE_PATH, FLOW_TTL_SECS, Flow, FlowError, Idp, IdpError};
use super::{PageError, html, html_error, html_response, session_id};
use crate::auth::session::{SESSION_COOKIE, Ticket, cookie_in_header, cookie_value, random_token, session_key};
use crate::auth::{AuthError, Caller, caller_from_claims};
use crate::state::AppState;
use crate::store::ConsoleSession;

/// The page a visitor without a session sees: the IdP's button when one is configured.
pub(super) fn sign_in_page(req: &HttpRequest) -> HttpResponse {
    let body = if req.app_data::<web::Data<Idp>>().is_some() {
        r#"<p>Sign in to see spend, budgets and your team's tasks.</p>
<p><a class="button" href="/console/auth/login">Sign in with your company account</a></p>
<p class="hint">Break-glass access: an operator can make a one-time sign-in link with the command
<code>vidgate console-link</code>.</p>"#
    } else {
        r#"<p class="notice" role="alert">You are not signed in, or your session has ended. Open a sign-in
link made by the command <code>vidgate console-link</code> (ask an operator for one).</p>"#
    };
    html_response(StatusCode::UNAUTHORIZED, html::page("Sign in", None, body))
}

/// `GET /console/auth/login`: sends the browser to the IdP, with this attempt's `state`,
/// `nonce` and PKCE verifier in the flow cookie.
pub async fn idp_login(state: web::Data<AppState>, idp: Option<web::Data<Idp>>, req: HttpRequest) -> HttpResponse {
    let Some(idp) = idp else {
        return idp_not_configured();
    };
    let now_ms = state.clock.now().timestamp_millis();
    match idp.begin(now_ms).await {
        Ok((url, flow)) => {
            let secret = state.config.console.session_secret.expose_secret().as_bytes();
            let cookie = flow_cookie(&flow.to_cookie_value(secret), FLOW_TTL_SECS, &state, &req);
            HttpResponse::SeeOther()
                .insert_header(("location", url.as_str()))
                .insert_header(("set-cookie", cookie))
                .insert_header(("cache-control", "no-store"))
                .insert_header(("referrer-policy", "no-referrer"))
                .finish()
        }
        Err(error) => idp_error_page(&idp, &error),
    }
}

/// `GET /console/auth/callback`: the IdP's answer. The attempt is checked against the flow
/// cookie (which every answer clears), the code redeemed, the ID token verified, and a
/// session opened for the caller its claims name.
pub async fn idp_callback(state: web::Data<AppState>, idp: Option<web::Data<Idp>>, req: HttpRequest) -> HttpResponse {
    let Some(idp) = idp else {
        return idp_not_configured();
    };
    let secret = state.config.console.session_secret.expose_secret().as_bytes();
    let presented = req
        .headers()
        .get(actix_web::http::header::COOKIE)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| cookie_in_header(h, FLOW_COOKIE));
    let returned_state = query_param(&req, "state").unwrap_or_default();
    let now_ms = state.clock.now().timestamp_millis();
    let mut response = match Flow::check(presented, secret, &returned_state, now_ms) {
        Ok(flow) => finish_idp_sign_in(&state, &idp, &req, &flow).await,
        Err(error) => flow_error_page(error),
    };
    if let Ok(clear) = HeaderValue::from_str(&flow_cookie("", 0, &state, &req)) {
        response.headers_mut().append(SET_COOKIE, clear);
    }
    response
}

async fn finish_idp_sign_in(state: &AppState, idp: &Idp, req: &HttpRequest, flow: &Flow) -> HttpResponse {
    if let Some(error) = query_param(req, "error") {
        let description = query_param(req, "error_description").unwrap_or_default();
        tracing::info!(%error, %description, "IdP sign-in answered with an error");
        let text = if error == "access_denied" {
            format!("The sign-in was cancelled or refused at your company's sign-in service ({description}).")
        } else {
            format!("Your company's sign-in service did not sign you in: {error} {description}")
        };
        return sign_in_problem(StatusCode::UNAUTHORIZED, "Not signed in", &text);
    }
    // RFC 9207: an IdP that names itself in the answer must be the configured one.
    if let Some(iss) = query_param(req, "iss")
        && iss != idp.issuer()
    {
        return idp_error_page(
            idp,
            &IdpError::BadIdToken(format!("the answer comes from issuer {iss:?}, not {:?}", idp.issuer())),
        );
    }
    let Some(code) = query_param(req, "code") else {
        return sign_in_problem(
            StatusCode::BAD_REQUEST,
            "Not signed in",
            "The answer from your company's sign-in service carries no code.",
        );
    };
    let claims = match idp.finish(&code, flow, state.clock.now()).await {
        Ok(claims) => claims,
        Err(error) => return idp_error_page(idp, &error),
    };
    let auth = &state.config.auth;
    let caller = match caller_from_claims(&claims, &auth.tenant_claim, &auth.roles_claim) {
        Ok(caller) => caller,
        Err(error) => return claims_problem(&claims, &error, &auth.tenant_claim, &auth.roles_claim),
    };
    if let Some(tenant) = &caller.tenant {
        match state.store.tenant(tenant).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return sign_in_problem(
                    StatusCode::FORBIDDEN,
                    "No access to the console",
                    &format!(
                        "Your company account names the team (tenant) {tenant:?}, which this gateway does not \
                         know. Ask an admin to add it."
                    ),
                );
            }
            Err(error) => return PageError::Store(error).into_response(None),
        }
    }
    match open_session(state, req, &caller, &format!("oidc:{}", flow.state), flow.exp_ms).await {
        Ok(Some(response)) => {
            tracing::info!(user = %caller.user, tenant = ?caller.tenant, roles = ?caller.roles, "console session opened with the IdP");
            response
        }
        Ok(None) => sign_in_problem(
            StatusCode::BAD_REQUEST,
            "Sign-in already used",
            "This sign-in was completed already; each one opens one session. Sign in again.",
        ),
        Err(error) => error.into_response(None),
    }
}

/// The page for claims that name no usable caller; most often neither a tenant nor a role.
fn claims_problem(
    claims: &serde_json::Map<String, serde_json::Value>,
    error: &AuthError,
    tenant_claim: &str,
    roles_claim: &str,
) -> HttpResponse {
    let who = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("your account");
    tracing::info!(user = %who, %error, "IdP sign-in refused: the ID token names no usable caller");
    let text = match error {
        AuthError::MissingClaim(claim) if claim == tenant_claim => format!(
            "You signed in as {who}, but your company account carries neither a team (claim \
             `{tenant_claim}`) nor the role finance or admin (claim `{roles_claim}`), so the console \
             has nothing to show you. No session was opened. Ask your IdP administrators to give \
             your account a team or a role for vidgate."
        ),
        other => format!(
            "You signed in as {who}, but the gateway cannot use what your company account says: \
             {other}. No session was opened. Tell your IdP administrators."
        ),
    };
    sign_in_problem(StatusCode::FORBIDDEN, "No access to the console", &text)
}

fn flow_error_page(error: FlowError) -> HttpResponse {
    let text = match error {
        FlowError::Missing | FlowError::Expired => {
            "This sign-in was not started in this browser, or took longer than 10 minutes. Nothing \
             was signed in."
        }
        FlowError::Forged | FlowError::StateMismatch => {
            "The answer from your company's sign-in service does not belong to the sign-in this \
             browser started (its state does not match). Nothing was signed in. If you did not just \
             sign in, someone may have sent you this address."
        }
    };
    sign_in_problem(StatusCode::BAD_REQUEST, "Sign-in not accepted", text)
}

fn idp_error_page(idp: &Idp, error: &IdpError) -> HttpResponse {
    let issuer = idp.issuer();
    tracing::warn!(%issuer, %error, "IdP sign-in failed");
    let (status, title, text) = match error {
        IdpError::Unreachable(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in service unreachable",
            format!(
                "Your company's sign-in service (the IdP at {issuer}) cannot be reached right now ({reason}). \
                 Try again in a few minutes; if this persists, tell the gateway's operators."
            ),
        ),
        IdpError::Unusable(reason) => (
            StatusCode::BAD_GATEWAY,
            "Sign-in service misconfigured",
            format!(
                "Your company's sign-in service (the IdP at {issuer}) answered, but not as the gateway \
                 expects: {reason}. Tell the gateway's operators."
            ),
        ),
        IdpError::ClientRefused(reason) => (
            StatusCode::BAD_GATEWAY,
            "Sign-in service misconfigured",
            format!(
                "Your company's sign-in service refused this gateway's client credentials ({reason}). \
                 Operators: check console.oidc_client_id and console.oidc_client_secret."
            ),
        ),
        IdpError::CodeRefused { error, description } if error == "invalid_grant" => (
            StatusCode::UNAUTHORIZED,
            "Sign-in code expired",
            format!(
                "Your company's sign-in service did not accept the sign-in code: it expired or was \
                 already used ({description}). This happens when a sign-in takes too long or a page \
                 is reloaded. Nothing was signed in."
            ),
        ),
        IdpError::CodeRefused { error, description } => (
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            format!("Your company's sign-in service refused the sign-in code ({error}: {description})."),
        ),
        IdpError::BadIdToken(reason) => (
            StatusCode::UNAUTHORIZED,
            "Sign-in not accepted",
            format!(
                "The identity your company's sign-in service sent did not pass the gateway's checks: \
                 {reason}. Nothing was signed in; tell the gateway's operators if this persists."
            ),
        ),
    };
    sign_in_problem(status, title, &text)
}

fn idp_not_configured() -> HttpResponse {
    html_error(
        StatusCode::NOT_FOUND,
        "Not found",
        "Sign-in with a company IdP is not configured on this gateway (console.oidc_issuer).",
        None,
    )
}

/// A sign-in failure: what happened, and a way to start again.
fn sign_in_problem(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    let body = format!(
        r#"<p class="notice" role="alert">{}</p>
<p><a class="button" href="/console/auth/login">Sign in again</a></p>"#,
        html::esc(text)
    );
    html_response(status, html::page(title, None, &body))
}

/// The flow cookie: only `/console/auth` sees it; `SameSite=Lax`, so it comes back with the
/// IdP's top-level redirect and with no cross-site request.
fn flow_cookie(value: &str, max_age: i64, state: &AppState, req: &HttpRequest) -> String {
    format!(
        "{FLOW_COOKIE}={value}; Path={FLOW_COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure_cookie(state, req) { "; Secure" } else { "" }
    )
}

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
    let caller = ticket.caller();
    match open_session(&state, &req, &caller, &ticket.jti, ticket.exp_ms).await {
        Ok(Some(response)) => {
            tracing::info!(user = %ticket.sub, tenant = ?ticket.tenant, "console session opened with a console-link ticket");
            response
        }
        Ok(None) => refused("This sign-in link was already used; each link signs in once. Ask for a new one."),
        Err(error) => error.into_response(None),
    }
}

/// Opens a session for `caller` (as `console-link` and IdP sign-ins both do): stored under
/// the hash of a random id, `jti` recorded so the same sign-in cannot open a second one.
/// `None` when `jti` was used already. The answer sends the browser to the console's home.
async fn open_session(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    jti: &str,
    jti_expires_ms: i64,
) -> Result<Option<HttpResponse>, PageError> {
    let secret = state.config.console.session_secret.expose_secret().as_bytes();
    let now_ms = state.clock.now().timestamp_millis();
    let ttl_ms = i64::try_from(state.config.console.session_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let session = ConsoleSession {
        user: caller.user.clone(),
        tenant: caller.tenant.clone(),
        roles: caller.roles.clone(),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(ttl_ms),
    };
    let id = random_token();
    if !state
        .store
        .open_console_session(jti, jti_expires_ms, &session_key(&id), &session)
        .await?
    {
        return Ok(None);
    }
    // One browser, one session: the one this sign-in replaces ends now, not at its expiry.
    if let Some(previous) = session_id(req, secret) {
        state.store.end_console_session(&session_key(previous)).await?;
    }
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        cookie_value(&id, secret),
        state.config.console.session_ttl_secs,
        if secure_cookie(state, req) { "; Secure" } else { "" }
    );
    Ok(Some(
        HttpResponse::SeeOther()
            .insert_header(("location", "/console/"))
            .append_header(("set-cookie", cookie))
            .insert_header(("cache-control", "no-store"))
            .insert_header(("referrer-policy", "no-referrer"))
            .finish(),
    ))
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
    query_param(req, "ticket")
}

/// A non-empty query parameter.
fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(key, _)| key == name)
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
