//! The one client that holds the company's upstream key and speaks the upstream video
//! API: create and query tasks, with the upstream's errors classified.

mod client;

pub use client::UpstreamClient;

use serde_json::Value;

/// An upstream call that did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with an HTTP error.
    #[error("upstream answered {status}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<String>,
    },
    /// No answer in time; for a create, the task may or may not exist.
    #[error("upstream did not answer within {0} ms")]
    Timeout(u64),
    /// The request never reached the upstream (connection refused, DNS, TLS).
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The request was sent, then the exchange broke (a reset, a body cut short).
    #[error("upstream exchange interrupted: {0}")]
    Interrupted(String),
    /// An answer that is not the documented JSON.
    #[error("upstream answer unparseable: {0}")]
    Unparseable(String),
    /// An answer body over the cap (`MAX_ANSWER_BYTES`): never read whole.
    #[error("upstream answer larger than {0} bytes")]
    TooLarge(usize),
}

/// What a create did upstream, as far as vidgate can tell: the three cases the money rules
/// follow (design.md, Money, "Unknown outcomes").
#[derive(Debug)]
pub enum CreateOutcome {
    /// A 200 with a task id: bind it.
    Created { task: Value, task_id: String },
    /// Certainly nothing created (4xx, 429, 502, 503, or no connection): release the hold.
    Refused(UpstreamError),
    /// The task may exist (500, 504, other 5xx, a timeout or reset after sending, a 200
    /// without an id or too large to read): keep the hold unbound for recovery.
    Unknown(UpstreamError),
}

impl CreateOutcome {
    pub fn of(result: Result<Value, UpstreamError>) -> Self {
        match result {
            Ok(task) => match task_id(&task).map(str::to_owned) {
                Some(task_id) => Self::Created { task, task_id },
                None => Self::Unknown(UpstreamError::Unparseable("the answer carried no task id".into())),
            },
            Err(error @ UpstreamError::Status { status, .. }) if status >= 500 && !matches!(status, 502 | 503) => {
                Self::Unknown(error)
            }
            Err(error @ (UpstreamError::Status { .. } | UpstreamError::Unreachable(_))) => Self::Refused(error),
            Err(
                error @ (UpstreamError::Timeout(_)
                | UpstreamError::Interrupted(_)
                | UpstreamError::Unparseable(_)
                | UpstreamError::TooLarge(_)),
            ) => Self::Unknown(error),
        }
    }
}

/// Upstream task states as vidgate understands them; unknown values count as running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn of(task: &Value) -> Self {
        match task.get("status").and_then(Value::as_str) {
            Some("completed") => Self::Completed,
            Some("failed") => Self::Failed,
            Some("cancelled" | "canceled") => Self::Cancelled,
            _ => Self::Running,
        }
    }

    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

/// The task id of an upstream task object.
pub fn task_id(task: &Value) -> Option<&str> {
    task.get("id").and_then(Value::as_str).filter(|id| !id.is_empty())
}

/// The first result URL of a completed task.
pub fn result_url(task: &Value) -> Option<&str> {
    task.get("results")
        .and_then(Value::as_array)?
        .iter()
        .find_map(Value::as_str)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(status: u16) -> Result<Value, UpstreamError> {
        Err(UpstreamError::Status {
            status,
            code: status.to_string(),
            message: String::new(),
            retry_after: None,
        })
    }

    fn kind(outcome: CreateOutcome) -> &'static str {
        match outcome {
            CreateOutcome::Created { .. } => "created",
            CreateOutcome::Refused(_) => "refused",
            CreateOutcome::Unknown(_) => "unknown",
        }
    }

    #[test]
    fn every_create_outcome_is_created_refused_or_unknown() {
        let of = |result| kind(CreateOutcome::of(result));
        assert_eq!(of(Ok(json!({"id": "task-unified-1"}))), "created");
        for refused in [400, 401, 402, 403, 404, 413, 429, 502, 503] {
            assert_eq!(of(status(refused)), "refused", "{refused}");
        }
        assert_eq!(of(Err(UpstreamError::Unreachable("refused".into()))), "refused");
        for unknown in [500, 501, 504, 505, 599] {
            assert_eq!(of(status(unknown)), "unknown", "{unknown}");
        }
        assert_eq!(of(Ok(json!({"status": "pending"}))), "unknown", "200 without an id");
        assert_eq!(of(Ok(json!({"id": ""}))), "unknown", "200 with an empty id");
        assert_eq!(of(Err(UpstreamError::Timeout(30_000))), "unknown");
        assert_eq!(of(Err(UpstreamError::Interrupted("reset".into()))), "unknown");
        assert_eq!(of(Err(UpstreamError::Unparseable("<html>".into()))), "unknown");
        assert_eq!(of(Err(UpstreamError::TooLarge(1 << 20))), "unknown");
    }
}
