//! Caller authentication: verifies company JWTs (HS256, RS256/ES256 PEM keys, JWKS) and
//! yields the caller's tenant, user and roles.
// TEMPORARY stub until the auth branch merges.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Option<String>,
    pub user: String,
    pub roles: Vec<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("bad")]
    Bad,
}
pub struct Authenticator;
impl Authenticator {
    pub async fn from_config(_c: &crate::config::AuthConfig) -> Result<Self, crate::config::ConfigError> {
        Ok(Self)
    }
    pub async fn verify(&self, _t: &str) -> Result<Caller, AuthError> {
        Err(AuthError::Bad)
    }
    pub fn keys_loaded(&self) -> bool {
        true
    }
}
pub fn bearer_token(h: &str) -> Option<&str> {
    h.strip_prefix("Bearer ")
}
pub fn mint_hs256(
    _c: &crate::config::AuthConfig,
    _t: Option<&str>,
    _s: &str,
    _r: &[String],
    _ttl: std::time::Duration,
) -> Result<String, AuthError> {
    Err(AuthError::Bad)
}
pub fn parse_ttl(_t: &str) -> Result<std::time::Duration, String> {
    Err("x".into())
}
