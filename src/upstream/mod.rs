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
    /// An answer that is not the documented JSON.
    #[error("upstream answer unparseable: {0}")]
    Unparseable(String),
}

impl UpstreamError {
    /// True when the upstream certainly did not create anything (safe to refund at once).
    pub fn is_definite(&self) -> bool {
        matches!(self, Self::Status { .. } | Self::Unreachable(_))
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
