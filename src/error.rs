//! The client-facing error: one enum, mapped to HTTP status, a stable `code` and the
//! error envelope in one place.

use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// What went wrong, as the caller can act on it. `code()` is the body's `code` and the
/// metric label.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    #[error("{message}")]
    InvalidCallbackUrl { message: String, param: Option<String> },
    /// A reference video the probe refused; `code` is one of `reference_video_invalid`,
    /// `reference_video_unreachable`, `reference_video_forbidden`.
    #[error("{message}")]
    ReferenceVideo {
        code: &'static str,
        message: String,
        param: String,
    },
    #[error("Content-Length is required for uploads")]
    LengthRequired,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("tenant {0:?} is not known to this gateway")]
    UnknownTenant(String),
    #[error("quality {0:?} is not allowed for this tenant")]
    QualityNotAllowed(String),
    #[error("{0}")]
    BudgetExceeded(String),
    #[error("task {0:?} not found")]
    TaskNotFound(String),
    #[error("the tenant already has an API key named {0:?}")]
    KeyNameTaken(String),
    #[error("the tenant has no API key {0:?}")]
    KeyNotFound(String),
    #[error("{message}")]
    ConcurrencyLimited { message: String, retry_after_secs: u64 },
    /// A request-rate limit: the decision gives `Retry-After` and the `RateLimit` headers.
    #[error("{message}")]
    RateLimited {
        message: String,
        policy: crate::limits::Policy,
        decision: crate::limits::RateDecision,
    },
    #[error("the first request with this Idempotency-Key is still running, or its outcome is being resolved")]
    RequestInProgress { retry_after_secs: u64 },
    #[error("this Idempotency-Key was used with a different body")]
    IdempotencyKeyReused,
    #[error("{message}")]
    UpstreamRateLimited {
        message: String,
        retry_after: Option<String>,
    },
    #[error("{0}")]
    UpstreamError(String),
    #[error("{0}")]
    UpstreamAuthFailed(String),
    #[error("{0}")]
    UpstreamAccountExhausted(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    /// A create whose outcome is unknown (`timed_out`: no answer in time): the task may
    /// exist, so the hold named by `reservation_id` stays until the task is found or expires.
    #[error("{message}")]
    UpstreamOutcomeUnknown {
        message: String,
        reservation_id: String,
        timed_out: bool,
    },
    #[error("{0}")]
    StoreUnavailable(String),
    /// The task's video asked for before it completed.
    #[error("{0}")]
    ResultNotReady(String),
    /// Neither archived nor still at the upstream (or the task never produced one).
    #[error("{0}")]
    ResultGone(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("not found")]
    RouteNotFound,
    /// Carries the `Allow` header value.
    #[error("method not allowed; allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// Never shown to the caller: logged with its cause, answered as an opaque 500.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// A probe refusal of the video at `param` (`video_urls[1]`, `file_url`).
    pub fn reference_video(error: crate::probe::ProbeError, param: impl Into<String>) -> Self {
        Self::ReferenceVideo {
            code: error.code(),
            message: error.to_string(),
            param: param.into(),
        }
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidCallbackUrl { .. } | Self::ReferenceVideo { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::BudgetExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            Self::Forbidden(_) | Self::UnknownTenant(_) | Self::QualityNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::TaskNotFound(_) | Self::KeyNotFound(_) | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::KeyNameTaken(_) | Self::ResultNotReady(_) => StatusCode::CONFLICT,
            Self::ResultGone(_) => StatusCode::GONE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ConcurrencyLimited { .. } | Self::RateLimited { .. } | Self::UpstreamRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::RequestInProgress { .. } => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UpstreamError(_) | Self::UpstreamAuthFailed(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamAccountExhausted(_) | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout(_) | Self::UpstreamOutcomeUnknown { timed_out: true, .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::UpstreamOutcomeUnknown { .. } => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::InvalidCallbackUrl { .. } => "invalid_callback_url",
            Self::ReferenceVideo { code, .. } => code,
            Self::LengthRequired => "length_required",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::UnknownTenant(_) => "unknown_tenant",
            Self::QualityNotAllowed(_) => "quality_not_allowed",
            Self::BudgetExceeded(_) => "budget_exceeded",
            Self::TaskNotFound(_) => "task_not_found",
            Self::KeyNameTaken(_) => "key_name_taken",
            Self::KeyNotFound(_) => "key_not_found",
            Self::ConcurrencyLimited { .. } => "concurrency_limited",
            Self::RateLimited { .. } => "rate_limited",
            Self::RequestInProgress { .. } => "request_in_progress",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::UpstreamRateLimited { .. } => "upstream_rate_limited",
            Self::UpstreamError(_) => "upstream_error",
            Self::UpstreamAuthFailed(_) => "upstream_auth_failed",
            Self::UpstreamAccountExhausted(_) => "upstream_account_exhausted",
            Self::UpstreamTimeout(_) | Self::UpstreamOutcomeUnknown { timed_out: true, .. } => "upstream_timeout",
            Self::UpstreamOutcomeUnknown { .. } => "upstream_outcome_unknown",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::ResultNotReady(_) => "result_not_ready",
            Self::ResultGone(_) => "result_gone",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "authentication_error",
            Self::BudgetExceeded(_) => "budget_error",
            Self::Forbidden(_) | Self::UnknownTenant(_) | Self::QualityNotAllowed(_) => "permission_error",
            Self::ConcurrencyLimited { .. } | Self::RateLimited { .. } => "rate_limit_error",
            Self::UpstreamRateLimited { .. }
            | Self::UpstreamError(_)
            | Self::UpstreamAuthFailed(_)
            | Self::UpstreamAccountExhausted(_)
            | Self::UpstreamTimeout(_)
            | Self::UpstreamOutcomeUnknown { .. } => "upstream_error",
            Self::StoreUnavailable(_) | Self::Internal(_) => "api_error",
            _ => "invalid_request_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } | Self::InvalidCallbackUrl { param, .. } => param.as_deref(),
            Self::ReferenceVideo { param, .. } => Some(param),
            _ => None,
        }
    }

    /// The message shown to the caller (internal causes stay in the log).
    fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error; quote the request id when reporting it".into(),
            other => other.to_string(),
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
    request_id: String,
    /// The hold a create with an unknown outcome left (`upstream_outcome_unknown`, `upstream_timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<&'a str>,
}

/// The `code` of an error response, left in its extensions for the access log and metrics.
#[derive(Debug, Clone)]
pub struct ErrorCode {
    pub code: &'static str,
    /// What the caller was told (never a token or a secret), for the access log.
    pub message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let request_id = crate::telemetry::current_request_id().unwrap_or_default();
        if let Self::Internal(cause) = self {
            tracing::error!(request_id = %request_id, cause = %cause, "internal error");
        }
        let body = Envelope {
            error: ErrorBody {
                code: self.code(),
                message: self.public_message(),
                kind: self.error_type(),
                param: self.param(),
                request_id,
                reservation_id: match self {
                    Self::UpstreamOutcomeUnknown { reservation_id, .. } => Some(reservation_id),
                    _ => None,
                },
            },
        };
        let mut response = HttpResponse::build(self.status());
        match self {
            Self::Unauthenticated(_) => {
                response.insert_header((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            Self::ConcurrencyLimited { retry_after_secs, .. } => {
                response.insert_header((RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::MethodNotAllowed(allow) => {
                response.insert_header((ALLOW, *allow));
            }
            Self::RateLimited { policy, decision, .. } => {
                response.insert_header((RETRY_AFTER, decision.retry_after_secs().to_string()));
                for header in decision.headers(*policy) {
                    response.insert_header(header);
                }
            }
            Self::RequestInProgress { retry_after_secs } => {
                response.insert_header((RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::UpstreamRateLimited {
                retry_after: Some(value),
                ..
            } => {
                response.insert_header((RETRY_AFTER, value.clone()));
            }
            _ => {}
        }
        let mut response = response.json(body);
        response.extensions_mut().insert(ErrorCode {
            code: self.code(),
            message: self.public_message(),
        });
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            crate::store::StoreError::Unavailable(reason) => {
                tracing::error!(reason = %reason, "store unavailable");
                Self::StoreUnavailable("the gateway's store is unreachable; nothing was forwarded or charged".into())
            }
            crate::store::StoreError::Corrupt(reason) => Self::Internal(format!("store: {reason}")),
        }
    }
}

impl From<crate::upstream::UpstreamError> for ApiError {
    fn from(error: crate::upstream::UpstreamError) -> Self {
        use crate::upstream::UpstreamError as U;
        match error {
            U::Status {
                status: 400, message, ..
            } => Self::invalid_body(format!("the upstream refused the request: {message}")),
            U::Status {
                status: 401 | 403,
                message,
                ..
            } => {
                tracing::error!(upstream_message = %message, "upstream refused the company API key: check upstream.api_key");
                Self::UpstreamAuthFailed(
                    "the upstream refused the gateway's credentials; the operators have been alerted".into(),
                )
            }
            U::Status { status: 402, .. } => Self::UpstreamAccountExhausted(
                "the company's upstream account balance is exhausted (not your team's budget); try again later".into(),
            ),
            U::Status {
                status: 413, message, ..
            } => Self::PayloadTooLarge(format!("the upstream refused the size: {message}")),
            U::Status {
                status: 429,
                message,
                retry_after,
                ..
            } => Self::UpstreamRateLimited {
                message: format!("the upstream is rate limiting: {message}"),
                retry_after,
            },
            U::Status { status, message, .. } => {
                Self::UpstreamError(format!("the upstream answered {status}: {message}"))
            }
            U::Timeout(ms) => Self::UpstreamTimeout(format!("the upstream did not answer within {ms} ms")),
            U::Unreachable(reason) => {
                tracing::warn!(reason = %reason, "upstream unreachable");
                Self::UpstreamError("the upstream is unreachable".into())
            }
            U::Interrupted(reason) => Self::UpstreamError(format!("the exchange with the upstream broke: {reason}")),
            U::Unparseable(reason) => Self::UpstreamError(format!("the upstream's answer was unusable: {reason}")),
            U::TooLarge(cap) => Self::UpstreamError(format!("the upstream's answer was larger than {cap} bytes")),
        }
    }
}
