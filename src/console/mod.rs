//! The web console at `/console/`: server-rendered pages for finance, admins and team members,
//! plus sign-in with `console-link` tickets and sign-out. Pages read the same report functions
//! as `/v1/admin/*` and `/v1/usage`, and writes go through the same JSON routes (from the
//! page's script, with the session's CSRF token), so a figure on a page equals the API's.
//! Route handlers never import this module; `app.rs` mounts it when the console is on.

mod html;
mod oidc;
mod pages;
mod signin;

pub use oidc::Idp;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;

use crate::auth::Caller;
use crate::auth::session::{SESSION_COOKIE, cookie_in_header, csrf_token, session_id_of_cookie};
use crate::state::AppState;
use crate::store::StoreError;

/// Mounts the console's routes (only when `console.enabled` and a session secret are set),
/// with sign-in through `idp` when `console.oidc_issuer` is set.
pub fn configure(cfg: &mut web::ServiceConfig, idp: Option<web::Data<Idp>>) {
    if let Some(idp) = idp {
        cfg.app_data(idp);
    }
    cfg.service(web::resource("/console").route(web::get().to(to_console)))
        .service(web::resource("/console/").route(web::get().to(pages::home)))
        .service(web::resource("/console/tenants/{id}").route(web::get().to(pages::tenant)))
        .service(web::resource("/console/ledger").route(web::get().to(pages::ledger)))
        .service(web::resource("/console/admin/tenants/{id}").route(web::get().to(pages::edit_tenant)))
        .service(web::resource("/console/team").route(web::get().to(pages::team)))
        .service(web::resource("/console/link").route(web::get().to(signin::link)))
        .service(web::resource("/console/auth/login").route(web::get().to(signin::idp_login)))
        .service(web::resource("/console/auth/callback").route(web::get().to(signin::idp_callback)))
        .service(web::resource("/console/logout").route(web::post().to(signin::logout)))
        .service(web::resource("/console/assets/{name}").route(web::get().to(asset)));
}

/// The assets, compiled into the binary: nothing comes from a CDN.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
];

/// Total bytes of the assets a page loads (for the docs' figure).
pub fn asset_bytes() -> usize {
    ASSETS.iter().map(|(_, _, body)| body.len()).sum()
}

async fn asset(name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(n, _, _)| *n == name.as_str()) {
        Some((_, kind, body)) => HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, *kind))
            .insert_header((CACHE_CONTROL, "public, max-age=300"))
            .body(*body),
        None => html_error(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such console asset.",
            None,
        ),
    }
}

async fn to_console() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("location", "/console/"))
        .finish()
}

/// Who is looking at a page: the caller the auth middleware found, and the session's CSRF
/// token when a session cookie authenticated the request.
pub(crate) struct Viewer {
    pub caller: Caller,
    pub csrf: Option<String>,
}

impl Viewer {
    fn of(req: &HttpRequest, state: &AppState) -> Result<Self, PageError> {
        let caller = req.extensions().get::<Caller>().cloned().ok_or(PageError::NoSession)?;
        let secret = state.config.console.session_secret.expose_secret().as_bytes();
        let csrf = session_id(req, secret).map(|id| csrf_token(id, secret));
        Ok(Self { caller, csrf })
    }

    fn nav(&self) -> html::Nav<'_> {
        html::Nav {
            user: &self.caller.user,
            tenant: self.caller.tenant.as_deref(),
            finance: self.caller.can_read_all_usage(),
            csrf: self.csrf.as_deref(),
        }
    }

    fn require_finance(&self) -> Result<(), PageError> {
        if self.caller.can_read_all_usage() {
            Ok(())
        } else {
            Err(PageError::Role("finance or admin"))
        }
    }

    fn require_admin(&self) -> Result<(), PageError> {
        if self.caller.is_admin() {
            Ok(())
        } else {
            Err(PageError::Role("admin"))
        }
    }
}

/// The id in a request's session cookie, when its signature matches.
fn session_id<'a>(req: &'a HttpRequest, secret: &[u8]) -> Option<&'a str> {
    let header = req.headers().get(actix_web::http::header::COOKIE)?.to_str().ok()?;
    session_id_of_cookie(cookie_in_header(header, SESSION_COOKIE)?, secret)
}

/// Why a page could not be shown; each becomes an HTML page, never a stack trace.
#[derive(Debug)]
pub(crate) enum PageError {
    NoSession,
    Role(&'static str),
    NotFound(String),
    BadInput(String),
    Store(StoreError),
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl PageError {
    fn into_response(self, viewer: Option<&Viewer>) -> HttpResponse {
        let nav = viewer.map(Viewer::nav);
        let (status, title, text) = match self {
            Self::NoSession => (
                StatusCode::UNAUTHORIZED,
                "Sign in",
                "You are not signed in, or your session has ended. Open a sign-in link made by \
                 the command vidgate console-link (ask an operator for one)."
                    .to_string(),
            ),
            Self::Role(role) => (
                StatusCode::FORBIDDEN,
                "Not for your role",
                format!("This page needs the role {role}. Ask an admin if you should have it."),
            ),
            Self::NotFound(what) => (StatusCode::NOT_FOUND, "Not found", what),
            Self::BadInput(why) => (StatusCode::BAD_REQUEST, "Check the filters", why),
            Self::Store(error) => {
                tracing::error!(%error, "console page: store read failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again shortly",
                    "The gateway's store did not answer. Nothing was changed.".to_string(),
                )
            }
        };
        html_error(status, title, &text, nav.as_ref())
    }
}

fn html_error(status: StatusCode, title: &str, text: &str, nav: Option<&html::Nav<'_>>) -> HttpResponse {
    let body = format!(r#"<p class="notice" role="alert">{}</p>"#, html::esc(text));
    html_response(status, html::page(title, nav, &body))
}

fn html_response(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((
            "content-security-policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
        .body(body)
}
