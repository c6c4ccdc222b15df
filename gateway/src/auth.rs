//! Handshake authentication: a JWT from the Socket.IO `auth` payload (or, for dashboards, the
//! `vizora_auth_token` cookie) becomes a [`Principal`].
//!
//! The `type` claim picks the path before any signature check: `"device"` is verified with the
//! device secret only, anything else with the user secret only, so a token can never be promoted
//! from one kind to the other by trying both secrets.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use crate::db::DbError;
use crate::store::StoreError;

/// Clock skew tolerated on `exp`/`nbf` (the contract allows at most 30 s).
pub const LEEWAY_SECS: u64 = 5;
/// Name of the dashboard cookie set by the Vizora middleware.
pub const AUTH_COOKIE: &str = "vizora_auth_token";
/// Bound on a token's length: real tokens are a few hundred bytes.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Who is connecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Device(DevicePrincipal),
    User(UserPrincipal),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePrincipal {
    pub device_id: String,
    pub device_identifier: String,
    pub organization_id: String,
    /// `exp` (epoch seconds), when the token has one: drives the near-expiry refresh.
    pub exp: Option<i64>,
    /// `iat` (epoch seconds): only long-lived (pairing) tokens are refreshed.
    pub iat: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPrincipal {
    pub user_id: String,
    pub organization_id: String,
    pub role: String,
    pub jti: Option<String>,
    /// `iat` (epoch seconds): sessions issued before a password change are expired.
    pub iat: Option<i64>,
}

impl Principal {
    pub fn organization_id(&self) -> &str {
        match self {
            Principal::Device(d) => &d.organization_id,
            Principal::User(u) => &u.organization_id,
        }
    }
}

/// Why a handshake was refused. All but `Unavailable` are final (`connect_error`); `Unavailable`
/// is transient and must leave the client retrying.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth_invalid")]
    Invalid,
    #[error("auth_expired")]
    Expired,
    #[error("device_not_found")]
    DeviceNotFound,
    #[error("device_disabled")]
    DeviceDisabled,
    /// The token is not the one bound to the device row (re-paired, revoked, rotated away).
    #[error("device_revoked")]
    DeviceRevoked,
    #[error("tenant_suspended")]
    TenantSuspended,
    /// The handshake cannot be decided now: a store or the database failed (kept as the
    /// source), or the device's connect pace ran out.
    #[error("unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> AuthError {
        AuthError::Unavailable(Box::new(e))
    }
}

impl From<DbError> for AuthError {
    fn from(e: DbError) -> AuthError {
        AuthError::Unavailable(Box::new(e))
    }
}

/// Refusals compare by their code: the failure behind an `Unavailable` is not compared.
impl PartialEq for AuthError {
    fn eq(&self, other: &AuthError) -> bool {
        self.code() == other.code()
    }
}

impl Eq for AuthError {}

impl AuthError {
    /// The low-cardinality metric label.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Invalid => "auth_invalid",
            AuthError::Expired => "auth_expired",
            AuthError::DeviceNotFound => "device_not_found",
            AuthError::DeviceDisabled => "device_disabled",
            AuthError::DeviceRevoked => "device_revoked",
            AuthError::TenantSuspended => "tenant_suspended",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

#[derive(Deserialize)]
struct AnyClaims {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct DeviceClaims {
    sub: String,
    #[serde(rename = "deviceIdentifier", default)]
    device_identifier: Option<String>,
    #[serde(rename = "organizationId")]
    organization_id: String,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
}

#[derive(Deserialize)]
struct UserClaims {
    sub: String,
    #[serde(rename = "organizationId")]
    organization_id: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
}

/// Verifies tokens with the two configured secrets.
#[derive(Clone)]
pub struct TokenVerifier {
    device_key: DecodingKey,
    user_key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    pub fn new(device_secret: &str, user_secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // `exp` is enforced when present; tokens without it are accepted like the original did.
        validation.required_spec_claims.clear();
        TokenVerifier {
            device_key: DecodingKey::from_secret(device_secret.as_bytes()),
            user_key: DecodingKey::from_secret(user_secret.as_bytes()),
            validation,
        }
    }

    /// Verifies a token and returns its principal (before any database check).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::Invalid);
        }
        let kind = jsonwebtoken::dangerous::insecure_decode::<AnyClaims>(token)
            .map_err(|_| AuthError::Invalid)?
            .claims
            .kind;
        if kind.as_deref() == Some("device") {
            let c = jsonwebtoken::decode::<DeviceClaims>(token, &self.device_key, &self.validation)
                .map_err(map_jwt_error)?
                .claims;
            if !valid_id(&c.sub) || !valid_id(&c.organization_id) {
                return Err(AuthError::Invalid);
            }
            Ok(Principal::Device(DevicePrincipal {
                device_identifier: c.device_identifier.unwrap_or_default(),
                device_id: c.sub,
                organization_id: c.organization_id,
                exp: c.exp,
                iat: c.iat,
            }))
        } else {
            let c = jsonwebtoken::decode::<UserClaims>(token, &self.user_key, &self.validation)
                .map_err(map_jwt_error)?
                .claims;
            if !valid_id(&c.sub) || !valid_id(&c.organization_id) {
                return Err(AuthError::Invalid);
            }
            Ok(Principal::User(UserPrincipal {
                user_id: c.sub,
                organization_id: c.organization_id,
                role: c.role.unwrap_or_else(|| "viewer".into()),
                jti: c.jti.filter(|j| !j.is_empty()),
                iat: c.iat,
            }))
        }
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        _ => AuthError::Invalid,
    }
}

/// Ids appear in room names and Redis keys: bound them and keep them printable.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// SHA-256 of a device token, lowercase hex: the form `devices."jwtToken"` binds.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(token.as_bytes()))
}

/// Whether a stored `jwtToken` is a SHA-256 hash (rather than NULL or the raw token that older
/// middleware stored).
pub fn is_token_hash(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads `vizora_auth_token` from a `Cookie` header value.
pub fn token_from_cookie(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == AUTH_COOKIE)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Mints tokens with the configured secrets (`vizora-gateway token …`, tests, the demo).
pub mod mint {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    fn sign(secret: &str, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    pub fn device_token(
        secret: &str,
        device_id: &str,
        device_identifier: &str,
        org: &str,
        ttl_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now();
        device_token_at(
            secret,
            device_id,
            device_identifier,
            org,
            iat,
            iat + ttl_secs,
        )
    }

    /// A device token with explicit `iat` and `exp` (epoch seconds), e.g. a 90-day pairing
    /// token issued 80 days ago.
    pub fn device_token_at(
        secret: &str,
        device_id: &str,
        device_identifier: &str,
        org: &str,
        iat: i64,
        exp: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        sign(
            secret,
            &json!({"sub": device_id, "deviceIdentifier": device_identifier, "organizationId": org,
                    "type": "device", "iat": iat, "exp": exp}),
        )
    }

    /// A refreshed device token: the same claims, a fresh `iat`/`exp`, and a unique `jti` so
    /// two rotations within one second never mint byte-identical tokens.
    pub fn refreshed_device_token(
        secret: &str,
        device_id: &str,
        device_identifier: &str,
        org: &str,
        ttl_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now();
        sign(
            secret,
            &json!({"sub": device_id, "deviceIdentifier": device_identifier, "organizationId": org,
                    "type": "device", "jti": uuid::Uuid::new_v4().to_string(), "iat": iat, "exp": iat + ttl_secs}),
        )
    }

    pub fn user_token(
        secret: &str,
        user_id: &str,
        org: &str,
        role: &str,
        ttl_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now();
        sign(
            secret,
            &json!({"sub": user_id, "email": format!("{user_id}@example.invalid"), "organizationId": org,
                    "role": role, "isSuperAdmin": false, "type": "user", "jti": uuid::Uuid::new_v4().to_string(),
                    "iat": iat, "exp": iat + ttl_secs}),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const DS: &str = "device-secret-device-secret-0123456789";
    const US: &str = "user-secret-user-secret-user-0123456789";

    fn v() -> TokenVerifier {
        TokenVerifier::new(DS, US)
    }

    /// A failed dependency defers the handshake with the failure kept as the source; the text
    /// stays what logs always said.
    #[test]
    fn a_store_failure_is_unavailable_with_its_source() {
        let e = AuthError::from(StoreError::Timeout);
        assert_eq!(e.code(), "unavailable");
        assert_eq!(
            e.to_string(),
            "unavailable: store unavailable: redis operation timed out"
        );
        let source = std::error::Error::source(&e).unwrap();
        assert!(source.downcast_ref::<StoreError>().is_some(), "{source:?}");
        let e = AuthError::from(DbError::Timeout("device_auth"));
        assert_eq!(
            e.to_string(),
            "unavailable: database: device_auth timed out"
        );
    }

    #[test]
    fn device_token_verifies_with_device_secret_only() {
        let t = mint::device_token(DS, "dev-1", "mac-1", "org-1", 60).unwrap();
        assert!(matches!(v().verify(&t), Ok(Principal::Device(d)) if d.device_id == "dev-1"));
        let wrong = mint::device_token(US, "dev-1", "mac-1", "org-1", 60).unwrap();
        assert_eq!(v().verify(&wrong), Err(AuthError::Invalid));
    }

    #[test]
    fn user_type_signed_with_device_secret_is_refused() {
        let t = mint::user_token(DS, "u1", "org-1", "admin", 60).unwrap();
        assert_eq!(v().verify(&t), Err(AuthError::Invalid));
        let ok = mint::user_token(US, "u1", "org-1", "admin", 60).unwrap();
        assert!(matches!(v().verify(&ok), Ok(Principal::User(_))));
    }

    #[test]
    fn expired_and_other_algorithms() {
        let t = mint::device_token(DS, "dev-1", "mac-1", "org-1", -120).unwrap();
        assert_eq!(v().verify(&t), Err(AuthError::Expired));
        let hs384 = encode(
            &Header::new(jsonwebtoken::Algorithm::HS384),
            &json!({"sub":"d","organizationId":"o","type":"device"}),
            &EncodingKey::from_secret(DS.as_bytes()),
        )
        .unwrap();
        assert_eq!(v().verify(&hs384), Err(AuthError::Invalid));
        // alg "none": header {"alg":"none","typ":"JWT"}
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJkIiwib3JnYW5pemF0aW9uSWQiOiJvIiwidHlwZSI6ImRldmljZSJ9.";
        assert_eq!(v().verify(none), Err(AuthError::Invalid));
        assert_eq!(v().verify("garbage"), Err(AuthError::Invalid));
        assert_eq!(v().verify(""), Err(AuthError::Invalid));
    }

    #[test]
    fn cookie_parsing() {
        assert_eq!(
            token_from_cookie("a=b; vizora_auth_token=xyz; c=d"),
            Some("xyz")
        );
        assert_eq!(token_from_cookie("a=b"), None);
    }
}
