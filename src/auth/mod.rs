//! Caller authentication: verifies company JWTs (HS256, RS256/ES256 PEM keys, JWKS) and
//! yields the caller's tenant, user and roles.
// SKELETON: replaced by the auth implementation.
