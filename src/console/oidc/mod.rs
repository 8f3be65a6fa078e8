//! Sign-in with the company IdP: OpenID Connect authorization code flow with PKCE (S256),
//! done by the `openidconnect` crate. The provider's metadata and keys are discovered from
//! `console.oidc_issuer` at the first sign-in (so the gateway starts while the IdP is down)
//! and kept; the keys are fetched again when an ID token names a key id they lack, at most
//! once per `auth.jwks_refresh_cooldown_secs`, as for API JWTs.

mod flow;
mod http;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClientAuthMethod, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse,
    CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthType, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenClaims, IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use flow::{FLOW_COOKIE, FLOW_COOKIE_PATH, FLOW_TTL_SECS, Flow, FlowError};
use http::{HttpError, IdpHttp};

use crate::config::Config;

/// The path the IdP sends the browser back to, under `server.public_base_url`.
pub const CALLBACK_PATH: &str = "/console/auth/callback";

/// Every claim of the ID token beyond the standard ones, so `auth.tenant_claim` and
/// `auth.roles_claim` can name any of them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct OtherClaims {
    #[serde(flatten)]
    claims: Map<String, Value>,
}

impl AdditionalClaims for OtherClaims {}

type TokenResponse = StandardTokenResponse<
    IdTokenFields<
        OtherClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

/// A client made from discovered metadata: authorization endpoint set, token endpoint as
/// discovered (checked before use).
type IdpClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in with the IdP did not work; each becomes a page of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdpError {
    /// Discovery, the key set or the token endpoint could not be reached.
    #[error("the IdP cannot be reached: {0}")]
    Unreachable(String),
    /// The IdP answered, but not as an OpenID provider for this issuer should.
    #[error("the IdP's answer is not usable: {0}")]
    Unusable(String),
    /// The token endpoint refused the code (`invalid_grant`: expired or already used).
    #[error("the IdP refused the sign-in code: {error}")]
    CodeRefused { error: String, description: String },
    /// The token endpoint refused the gateway itself (client id or secret).
    #[error("the IdP refused this gateway's client credentials: {0}")]
    ClientRefused(String),
    /// The ID token failed a check: signature, issuer, audience, expiry or nonce.
    #[error("the ID token is not valid: {0}")]
    BadIdToken(String),
}

/// The provider as discovered, with the moment its keys were last fetched.
struct Discovered {
    metadata: CoreProviderMetadata,
    keys_fetched: Instant,
}

/// The configured IdP. Built at startup without contacting it.
pub struct Idp {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: Option<SecretString>,
    redirect: RedirectUrl,
    http: IdpHttp,
    key_cooldown: Duration,
    leeway: chrono::Duration,
    discovered: Mutex<Option<Arc<Discovered>>>,
}

impl Idp {
    /// The IdP of `console.oidc_issuer`, or `None` when sign-in with an IdP is not configured.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let console = &config.console;
        if console.oidc_issuer.is_empty() {
            return Ok(None);
        }
        let issuer = IssuerUrl::new(console.oidc_issuer.clone()).map_err(|e| format!("console.oidc_issuer: {e}"))?;
        let redirect = format!("{}{CALLBACK_PATH}", config.server.public_base_url.trim_end_matches('/'));
        let redirect = RedirectUrl::new(redirect).map_err(|e| format!("server.public_base_url: {e}"))?;
        let secret = console.oidc_client_secret.expose_secret();
        let loopback = match issuer.url().host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if issuer.url().scheme() != "https" && !loopback {
            tracing::warn!(issuer = %issuer.as_str(), "console.oidc_issuer is not https: sign-ins can be tampered with in transit");
        }
        Ok(Some(Self {
            issuer,
            client_id: ClientId::new(console.oidc_client_id.clone()),
            client_secret: (!secret.is_empty()).then(|| SecretString::from(secret.to_string())),
            redirect,
            http: IdpHttp::new(loopback)?,
            key_cooldown: Duration::from_secs(config.auth.jwks_refresh_cooldown_secs),
            leeway: chrono::Duration::seconds(i64::try_from(config.auth.leeway_secs).unwrap_or(i64::MAX / 1000)),
            discovered: Mutex::new(None),
        }))
    }

    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// Starts a sign-in: the IdP's authorization URL to send the browser to, and the attempt
    /// to keep in the flow cookie.
    pub async fn begin(&self, now_ms: i64) -> Result<(url::Url, Flow), IdpError> {
        let provider = self.provider().await?;
        let client = self.client(&provider.metadata);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("openid".into()))
            .set_pkce_challenge(challenge)
            .url();
        let flow = Flow {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            exp_ms: now_ms.saturating_add(FLOW_TTL_SECS * 1000),
        };
        Ok((url, flow))
    }

    /// Finishes a sign-in: redeems the code (with the PKCE verifier and, for a confidential
    /// client, the secret), verifies the ID token and returns all its claims.
    pub async fn finish(&self, code: &str, flow: &Flow, now: DateTime<Utc>) -> Result<Map<String, Value>, IdpError> {
        let provider = self.provider().await?;
        let client = self.client(&provider.metadata);
        let request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|_| IdpError::Unusable("its discovery document names no token_endpoint".into()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.pkce_verifier.clone()));
        let response = request.request_async(&self.http).await.map_err(token_error)?;
        let Some(id_token) = openidconnect::TokenResponse::id_token(&response) else {
            return Err(IdpError::Unusable("its token response carries no ID token".into()));
        };
        let nonce = Nonce::new(flow.nonce.clone());
        let checked_at = now - self.leeway;
        let verified = {
            let verifier = client.id_token_verifier().set_time_fn(move || checked_at);
            id_token.claims(&verifier, &nonce).cloned()
        };
        let claims = match verified {
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let provider = self.refresh_keys(&provider).await;
                let client = self.client(&provider.metadata);
                let verifier = client.id_token_verifier().set_time_fn(move || checked_at);
                id_token.claims(&verifier, &nonce).cloned()
            }
            other => other,
        }
        .map_err(|e| IdpError::BadIdToken(id_token_problem(&e)))?;
        claims_map(&claims)
    }

    fn client(&self, metadata: &CoreProviderMetadata) -> IdpClient {
        let secret = self
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose_secret().to_string()));
        let confidential = secret.is_some();
        let client = IdpClient::from_provider_metadata(metadata.clone(), self.client_id.clone(), secret)
            .set_redirect_uri(self.redirect.clone());
        // HTTP Basic unless the IdP says it only takes the secret in the form body.
        let post_only = metadata.token_endpoint_auth_methods_supported().is_some_and(|methods| {
            methods.contains(&CoreClientAuthMethod::ClientSecretPost)
                && !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
        });
        if confidential && post_only {
            client.set_auth_type(AuthType::RequestBody)
        } else {
            client
        }
    }

    /// The discovered provider; discovers it now if no sign-in did yet. A failure is not
    /// kept: the next sign-in tries again.
    async fn provider(&self) -> Result<Arc<Discovered>, IdpError> {
        let mut discovered = self.discovered.lock().await;
        if let Some(provider) = discovered.as_ref() {
            return Ok(Arc::clone(provider));
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| {
                let error = discovery_error(e);
                tracing::warn!(issuer = %self.issuer.as_str(), %error, "OIDC discovery failed");
                error
            })?;
        let kids = key_ids(metadata.jwks());
        tracing::info!(issuer = %self.issuer.as_str(), ?kids, "OIDC provider discovered");
        let provider = Arc::new(Discovered {
            metadata,
            keys_fetched: Instant::now(),
        });
        *discovered = Some(Arc::clone(&provider));
        Ok(provider)
    }

    /// Fetches the key set again because an ID token named a key `seen` lacks. Skipped when
    /// another sign-in already refreshed since `seen`, or within the cooldown; a failed
    /// fetch keeps the old keys.
    async fn refresh_keys(&self, seen: &Arc<Discovered>) -> Arc<Discovered> {
        let mut discovered = self.discovered.lock().await;
        let current = match discovered.as_ref() {
            Some(current) if Arc::ptr_eq(current, seen) => Arc::clone(current),
            Some(newer) => return Arc::clone(newer),
            None => return Arc::clone(seen),
        };
        if current.keys_fetched.elapsed() < self.key_cooldown {
            tracing::debug!(issuer = %self.issuer.as_str(), "IdP key refresh skipped: within the cooldown");
            return current;
        }
        let mut metadata = current.metadata.clone();
        match CoreJsonWebKeySet::fetch_async(metadata.jwks_uri(), &self.http).await {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer.as_str(), kids = ?key_ids(&keys), "IdP keys refreshed");
                metadata = metadata.set_jwks(keys);
            }
            Err(e) => {
                let error = discovery_error(e);
                tracing::warn!(issuer = %self.issuer.as_str(), %error, "IdP key refresh failed; keeping the last keys");
            }
        }
        let next = Arc::new(Discovered {
            metadata,
            keys_fetched: Instant::now(),
        });
        *discovered = Some(Arc::clone(&next));
        next
    }
}

/// Every claim of a verified ID token, standard or not, in one map: what `auth.tenant_claim`
/// and `auth.roles_claim` are looked up in, as in an API JWT's claims.
fn claims_map(claims: &IdTokenClaims<OtherClaims, CoreGenderClaim>) -> Result<Map<String, Value>, IdpError> {
    match serde_json::to_value(claims) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(IdpError::Unusable("its ID token's claims cannot be read".into())),
    }
}

/// What failed in an ID token, with the cause a signature failure wraps (an unknown key id
/// reads "No matching key found").
fn id_token_problem(error: &openidconnect::ClaimsVerificationError) -> String {
    match error {
        openidconnect::ClaimsVerificationError::SignatureVerification(cause) => {
            format!("signature verification failed: {cause}")
        }
        other => other.to_string(),
    }
}

fn key_ids(keys: &CoreJsonWebKeySet) -> Vec<String> {
    use openidconnect::JsonWebKey;
    keys.keys()
        .iter()
        .filter_map(|key| key.key_id().map(|kid| kid.as_str().to_string()))
        .collect()
}

fn discovery_error(error: openidconnect::DiscoveryError<HttpError>) -> IdpError {
    use openidconnect::DiscoveryError;
    match error {
        DiscoveryError::Request(e) => IdpError::Unreachable(e.to_string()),
        DiscoveryError::Response(status, _, _) if status.is_server_error() => {
            IdpError::Unreachable(format!("it answered HTTP {status}"))
        }
        DiscoveryError::Response(status, _, _) => IdpError::Unusable(format!("it answered HTTP {status}")),
        DiscoveryError::Parse(e) => IdpError::Unusable(format!("its discovery document or key set is not valid: {e}")),
        DiscoveryError::Validation(e) => IdpError::Unusable(e),
        other => IdpError::Unusable(other.to_string()),
    }
}

fn token_error(error: RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>) -> IdpError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response.error_description().cloned().unwrap_or_default();
            match response.error() {
                CoreErrorResponseType::InvalidClient | CoreErrorResponseType::UnauthorizedClient => {
                    IdpError::ClientRefused(format!("{} {description}", response.error().as_ref()))
                }
                other => IdpError::CodeRefused {
                    error: other.as_ref().to_string(),
                    description,
                },
            }
        }
        RequestTokenError::Request(e) => IdpError::Unreachable(e.to_string()),
        RequestTokenError::Parse(e, _) => IdpError::Unusable(format!("its token response is not valid: {e}")),
        RequestTokenError::Other(e) => IdpError::Unusable(e),
    }
}

#[cfg(test)]
mod tests {
    use openidconnect::http::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::auth::{AuthError, Caller, caller_from_claims};

    /// The claims of an ID token as the IdP signed them, read as the gateway reads them.
    fn caller(claims: Value, tenant_claim: &str, roles_claim: &str) -> Result<Caller, AuthError> {
        let claims: IdTokenClaims<OtherClaims, CoreGenderClaim> = serde_json::from_value(claims).unwrap();
        caller_from_claims(&claims_map(&claims).unwrap(), tenant_claim, roles_claim)
    }

    fn id_token(extra: Value) -> Value {
        let mut claims = json!({
            "iss": "https://idp.example.com", "aud": "vidgate", "sub": "jane",
            "exp": 1_900_000_000, "iat": 1_800_000_000, "nonce": "n", "name": "Jane",
        });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    }

    #[test]
    fn tenant_and_roles_come_from_the_configured_claims() {
        let jane = caller(
            id_token(json!({"tenant": "alpha", "roles": ["finance"]})),
            "tenant",
            "roles",
        )
        .unwrap();
        assert_eq!(
            jane,
            Caller {
                tenant: Some("alpha".into()),
                user: "jane".into(),
                roles: vec!["finance".into()],
            }
        );
        // Other names, as Entra ID's extension claims or namespaced claims; a space-separated string.
        let claims = id_token(json!({"extension_abc_team": "beta", "https://example.com/roles": "admin ops"}));
        let jane = caller(claims, "extension_abc_team", "https://example.com/roles").unwrap();
        assert_eq!(jane.tenant.as_deref(), Some("beta"));
        assert_eq!(jane.roles, ["admin", "ops"]);
    }

    #[test]
    fn a_standard_claim_can_carry_the_tenant() {
        let jane = caller(id_token(json!({"locale": "gamma"})), "locale", "roles").unwrap();
        assert_eq!(jane.tenant.as_deref(), Some("gamma"));
    }

    #[test]
    fn neither_tenant_nor_role_names_no_caller() {
        let error = caller(id_token(json!({})), "tenant", "roles").unwrap_err();
        assert_eq!(error, AuthError::MissingClaim("tenant".into()));
        let error = caller(id_token(json!({"roles": ["viewer"]})), "tenant", "roles").unwrap_err();
        assert_eq!(error, AuthError::MissingClaim("tenant".into()));
        let finance = caller(id_token(json!({"roles": ["finance"]})), "tenant", "roles").unwrap();
        assert_eq!(finance.tenant, None);
    }

    #[test]
    fn token_endpoint_refusals_are_told_apart() {
        let refused = |kind: CoreErrorResponseType| {
            token_error(RequestTokenError::ServerResponse(StandardErrorResponse::new(
                kind,
                Some("grant request is invalid".into()),
                None,
            )))
        };
        assert_eq!(
            refused(CoreErrorResponseType::InvalidGrant),
            IdpError::CodeRefused {
                error: "invalid_grant".into(),
                description: "grant request is invalid".into()
            }
        );
        assert!(matches!(
            refused(CoreErrorResponseType::InvalidClient),
            IdpError::ClientRefused(_)
        ));
        assert!(matches!(
            token_error(RequestTokenError::Request(HttpError("cannot connect".into()))),
            IdpError::Unreachable(_)
        ));
    }

    #[test]
    fn an_idp_that_is_down_reads_as_unreachable_and_a_wrong_one_as_unusable() {
        use openidconnect::DiscoveryError;
        let down = discovery_error(DiscoveryError::Request(HttpError("cannot connect".into())));
        assert_eq!(down, IdpError::Unreachable("cannot connect".into()));
        let busy = discovery_error(DiscoveryError::Response(
            StatusCode::BAD_GATEWAY,
            Vec::new(),
            String::new(),
        ));
        assert!(matches!(busy, IdpError::Unreachable(_)));
        let missing = discovery_error(DiscoveryError::Response(
            StatusCode::NOT_FOUND,
            Vec::new(),
            String::new(),
        ));
        assert!(matches!(missing, IdpError::Unusable(_)));
        let other = discovery_error(DiscoveryError::Validation("unexpected issuer URI".into()));
        assert_eq!(other, IdpError::Unusable("unexpected issuer URI".into()));
    }

    #[test]
    fn the_redirect_uri_is_under_the_public_base_url() {
        let mut config = Config::default();
        config.console.oidc_issuer = "https://idp.example.com/realms/company".into();
        config.console.oidc_client_id = "vidgate".into();
        for base in ["https://vidgate.example.com", "https://vidgate.example.com/"] {
            config.server.public_base_url = base.into();
            let idp = Idp::from_config(&config).unwrap().unwrap();
            assert_eq!(
                idp.redirect.as_str(),
                "https://vidgate.example.com/console/auth/callback"
            );
            assert!(idp.client_secret.is_none(), "no secret: a public client");
        }
        config.console.oidc_client_secret = SecretString::from("s3cret".to_string());
        assert!(Idp::from_config(&config).unwrap().unwrap().client_secret.is_some());
        config.console.oidc_issuer = String::new();
        assert!(Idp::from_config(&config).unwrap().is_none());
    }
}
