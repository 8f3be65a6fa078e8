//! The verified caller (`Caller`) and how it is read from a token's claims.

use serde_json::{Map, Value};

use super::AuthError;
use super::api_keys::API_KEY_USER_PREFIX;
use crate::config::valid_tenant_id;

/// Role that may read all usage and the ledger, and carry no tenant.
pub const ROLE_FINANCE: &str = "finance";
/// Role that may do what finance does, plus tenant management.
pub const ROLE_ADMIN: &str = "admin";
/// Role that manages its own tenant's webhook signing key.
pub const ROLE_TENANT_ADMIN: &str = "tenant_admin";

/// Who is calling, as proven by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The team; `None` only for finance or admin callers.
    pub tenant: Option<String>,
    /// The token's `sub`.
    pub user: String,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Finance or admin: may read every tenant's usage and the ledger.
    pub fn can_read_all_usage(&self) -> bool {
        self.has_role(ROLE_FINANCE) || self.has_role(ROLE_ADMIN)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(ROLE_ADMIN)
    }

    /// A machine caller authenticated by a tenant API key (JWTs cannot claim such a user).
    pub fn is_api_key(&self) -> bool {
        self.user.starts_with(API_KEY_USER_PREFIX)
    }
}

/// The longest `sub` accepted.
pub const MAX_SUB_BYTES: usize = 255;

/// Builds the caller from claims whose signature and time/issuer/audience checks passed (an
/// API JWT's, or the ID token of a console sign-in).
pub fn caller_from_claims(
    claims: &Map<String, Value>,
    tenant_claim: &str,
    roles_claim: &str,
) -> Result<Caller, AuthError> {
    let user = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        Some(Value::String(_)) | Some(Value::Null) | None => {
            return Err(AuthError::MissingClaim("sub".into()));
        }
        Some(_) => return Err(invalid("sub", "must be a string")),
    };
    // The user travels in vidgate's callback URL (sealed), which must stay within the
    // upstream's 2048 characters.
    if user.len() > MAX_SUB_BYTES {
        return Err(invalid("sub", "must be at most 255 bytes"));
    }
    if user.starts_with(API_KEY_USER_PREFIX) {
        return Err(invalid("sub", "the prefix `key:` is reserved for API keys"));
    }
    let roles = roles(claims, roles_claim)?;
    let tenant = tenant(claims, tenant_claim)?;
    let caller = Caller { tenant, user, roles };
    if caller.tenant.is_none() && !caller.can_read_all_usage() {
        return Err(AuthError::MissingClaim(tenant_claim.to_string()));
    }
    Ok(caller)
}

fn invalid(claim: &str, reason: &'static str) -> AuthError {
    AuthError::InvalidClaim {
        claim: claim.to_string(),
        reason,
    }
}

fn tenant(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t.is_empty() => Ok(None),
        Some(Value::String(t)) if valid_tenant_id(t) => Ok(Some(t.clone())),
        Some(Value::String(_)) => Err(invalid(name, "not a tenant id (1-64 of a-z, A-Z, 0-9, '-', '_', '.')")),
        Some(_) => Err(invalid(name, "must be a string")),
    }
}

/// Roles as a JSON array of strings or one space-separated string; absent means none.
fn roles(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, AuthError> {
    if name.is_empty() {
        return Ok(Vec::new());
    }
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text.split_whitespace().map(str::to_string).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .filter(|item| !matches!(item, Value::String(s) if s.is_empty()))
            .map(|item| match item {
                Value::String(role) => Ok(role.clone()),
                _ => Err(invalid(name, "must be an array of strings or a space-separated string")),
            })
            .collect(),
        Some(_) => Err(invalid(name, "must be an array of strings or a space-separated string")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(value: Value) -> Result<Caller, AuthError> {
        let Value::Object(map) = value else {
            panic!("test claims must be an object")
        };
        caller_from_claims(&map, "tenant", "roles")
    }

    #[test]
    fn roles_are_read_from_an_array() {
        let caller = read(json!({"sub": "u", "tenant": "t", "roles": ["finance", "x"]})).unwrap();
        assert_eq!(caller.roles, ["finance", "x"]);
        assert!(caller.can_read_all_usage());
        assert!(!caller.is_admin());
    }

    #[test]
    fn roles_are_read_from_a_space_separated_string() {
        let caller = read(json!({"sub": "u", "tenant": "t", "roles": " admin  ops "})).unwrap();
        assert_eq!(caller.roles, ["admin", "ops"]);
        assert!(caller.is_admin());
        assert!(caller.can_read_all_usage());
        assert!(caller.has_role("ops"));
        assert!(!caller.has_role("op"));
    }

    #[test]
    fn roles_of_another_type_are_refused() {
        for roles in [json!(1), json!({"a": 1}), json!(["admin", 2])] {
            let err = read(json!({"sub": "u", "tenant": "t", "roles": roles})).unwrap_err();
            assert!(
                matches!(err, AuthError::InvalidClaim { ref claim, .. } if claim == "roles"),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_roles_mean_none() {
        let caller = read(json!({"sub": "u", "tenant": "t"})).unwrap();
        assert!(caller.roles.is_empty());
        assert_eq!(caller.tenant.as_deref(), Some("t"));
        assert_eq!(caller.user, "u");
    }

    #[test]
    fn finance_and_admin_may_carry_no_tenant() {
        assert_eq!(read(json!({"sub": "f", "roles": ["finance"]})).unwrap().tenant, None);
        assert_eq!(
            read(json!({"sub": "a", "roles": "admin", "tenant": ""}))
                .unwrap()
                .tenant,
            None
        );
    }

    #[test]
    fn a_plain_user_without_tenant_is_refused() {
        let err = read(json!({"sub": "u", "roles": ["viewer"]})).unwrap_err();
        assert_eq!(err, AuthError::MissingClaim("tenant".into()));
    }

    #[test]
    fn tenant_must_be_a_plain_id() {
        let err = read(json!({"sub": "u", "tenant": "a b"})).unwrap_err();
        assert!(matches!(err, AuthError::InvalidClaim { .. }));
        let err = read(json!({"sub": "u", "tenant": 7})).unwrap_err();
        assert!(matches!(err, AuthError::InvalidClaim { .. }));
    }

    #[test]
    fn a_sub_in_the_api_key_namespace_is_refused() {
        assert!(read(json!({"sub": "é".repeat(127) + "u", "tenant": "t"})).is_ok());
        let err = read(json!({"sub": "u".repeat(256), "tenant": "t"})).unwrap_err();
        assert!(err.to_string().contains("255 bytes"), "{err}");
        let err = read(json!({"sub": "key:render-ci", "tenant": "t"})).unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidClaim { ref claim, .. } if claim == "sub"),
            "{err}"
        );
        assert!(!read(json!({"sub": "keyholder", "tenant": "t"})).unwrap().is_api_key());
    }

    #[test]
    fn sub_is_required() {
        assert_eq!(
            read(json!({"tenant": "t"})).unwrap_err(),
            AuthError::MissingClaim("sub".into())
        );
        assert_eq!(
            read(json!({"sub": "", "tenant": "t"})).unwrap_err(),
            AuthError::MissingClaim("sub".into())
        );
        assert!(matches!(
            read(json!({"sub": 5, "tenant": "t"})).unwrap_err(),
            AuthError::InvalidClaim { .. }
        ));
    }
}
