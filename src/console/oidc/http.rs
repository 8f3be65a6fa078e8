//! The HTTP client `openidconnect` talks through: the gateway's own reqwest, never following
//! redirects (a redirected token request could carry the code and secret elsewhere), with
//! short timeouts and a cap on what the IdP may send back.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::http;
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A discovery document, key set or token response larger than this is refused.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Why a request to the IdP failed, without the URL's query (never a code or secret).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(pub(super) String);

pub struct IdpHttp {
    client: reqwest::Client,
}

impl IdpHttp {
    /// `loopback`: the IdP runs on this machine (labs, tests), so no proxy applies.
    pub fn new(loopback: bool) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vidgate/", env!("CARGO_PKG_VERSION")));
        if loopback {
            builder = builder.no_proxy();
        }
        let client = builder.build().map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(Self { client })
    }

    /// One request, as `openidconnect` hands it over.
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request).map_err(|e| HttpError(e.without_url().to_string()))?;
        let mut response = self
            .client
            .execute(request)
            .await
            .map_err(|e| HttpError(describe(&e)))?;
        if response
            .content_length()
            .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
        {
            return Err(HttpError(format!(
                "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        let mut answer = http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            headers.extend(response.headers().iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| HttpError(describe(&e)))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError(format!(
                    "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        answer.body(body).map_err(|e| HttpError(e.to_string()))
    }
}

impl<'c> AsyncHttpClient<'c> for IdpHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// What went wrong, for a log line: a refused connection reads as such.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_connect() {
        "cannot connect"
    } else if error.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
