//! Query-string parameters for the report routes: only the listed names, each at most once,
//! so a typo (`group-by`) is a 400 naming the parameter instead of a silent default.

use std::collections::HashMap;

use actix_web::HttpRequest;

use crate::error::ApiError;

pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub fn parse(req: &HttpRequest, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut params = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                return Err(ApiError::invalid(
                    format!("unknown parameter {name:?}; allowed: {}", allowed.join(", ")),
                    name,
                ));
            }
            if params.insert(name.to_string(), value.to_string()).is_some() {
                return Err(ApiError::invalid(format!("{name} is given more than once"), name));
            }
        }
        Ok(Self(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A parameter parsed by `parse`, whose error message is answered with the name as `param`.
    pub fn parsed<T>(&self, name: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|value| parse(value).map_err(|message| ApiError::invalid(message, name)))
            .transpose()
    }
}

/// An RFC 3339 time as unix ms (never before 1970).
pub fn rfc3339_ms(value: &str) -> Result<u64, String> {
    let time = chrono::DateTime::parse_from_rfc3339(value)
        .map_err(|e| format!("{value:?} is not an RFC 3339 time like 2026-11-25T00:00:00Z: {e}"))?;
    u64::try_from(time.timestamp_millis()).map_err(|_| format!("{value:?} is before 1970"))
}

/// `format=json|csv`; JSON when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    pub fn of(params: &QueryParams) -> Result<Self, ApiError> {
        Ok(params
            .parsed("format", |value| match value {
                "json" => Ok(Self::Json),
                "csv" => Ok(Self::Csv),
                other => Err(format!("format must be json or csv (got {other:?})")),
            })?
            .unwrap_or(Self::Json))
    }
}
