//! Console sessions as the store keeps them: who signed in, with which roles, until when.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    pub user: String,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms; the session ends then whatever the backend's own expiry does.
    pub expires_ms: i64,
}

impl ConsoleSession {
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_ms
    }
}
