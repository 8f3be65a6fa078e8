//! The upstream's HTTP error envelope: `{"error": {code, message, type, param, ...}}`.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::RETRY_AFTER;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Value, json};

/// An error answered in the upstream's shape.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    /// A string, or the HTTP number (the upstream sends both; 5xx use the number here).
    code: Value,
    message: String,
    param: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: impl Into<Value>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error` about one field.
    pub(crate) fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_parameters", message)
        }
    }

    /// 400 `invalid_request_error` about the whole body.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(crate) fn invalid_task_id(id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_task_id",
            format!("Invalid task id `{id}`"),
        )
    }

    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// What `[mock:http=CODE]` answers: the upstream's error for that status.
    pub(crate) fn simulated(status: StatusCode) -> Self {
        let n = status.as_u16();
        let (code, message): (Value, &str) = match n {
            400 => ("invalid_request".into(), "Invalid request"),
            401 => ("invalid_api_key".into(), "Invalid API key provided"),
            402 => (
                "insufficient_quota".into(),
                "Insufficient account balance, please top up",
            ),
            403 => ("permission_denied".into(), "You do not have access to this model"),
            404 => ("not_found".into(), "Resource not found"),
            413 => ("request_too_large".into(), "Request body too large"),
            429 => ("rate_limit_exceeded".into(), "retry after 60 seconds"),
            500 => (n.into(), "Internal server error"),
            502 => (n.into(), "Upstream model provider error"),
            503 => (n.into(), "Service temporarily unavailable"),
            _ => (n.into(), "Simulated error"),
        };
        let error = Self::new(status, code, message);
        if n == 429 {
            Self {
                retry_after: Some(60),
                ..error
            }
        } else {
            error
        }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            402 => "insufficient_quota_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large_error",
            429 => "rate_limit_error",
            500 => "internal_server_error",
            502 => "upstream_error",
            503 => "service_unavailable_error",
            504 => "timeout_error",
            n if n >= 500 => "internal_server_error",
            _ => "invalid_request_error",
        }
    }

    pub(crate) fn body(&self) -> Value {
        json!({"error": {
            "code": self.code,
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "fallback_suggestion": null,
        }})
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((RETRY_AFTER, seconds.to_string()));
        }
        response.json(self.body())
    }
}
