//! Connection and subscription tokens (JWT).
//!
//! Tokens are verified with the key that matches their header's algorithm
//! family (HMAC secret for HS*, RSA public key for RS*, ECDSA public key for
//! ES*, Ed25519 public key for EdDSA), and only that algorithm is accepted
//! for that key, so an RSA public
//! key can never be used as an HMAC secret. `alg: none` is not an algorithm
//! Herald knows, and a token carrying it is invalid.
//!
//! A token whose header names a `kid`, on a node with a JWKS URL, is
//! verified with that key of the set instead (see [`jwks`]).
//!
//! `exp` and `nbf` are checked when present (no leeway); a configured
//! audience or issuer must be present and match. A subscription token
//! names a `channel`; a token that does is never accepted as a connection
//! token, so one kind cannot be used as the other.

pub mod jwks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{ClientConfig, TokenKeys};

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Well-formed and signed, but past its `exp`.
    #[error("token expired")]
    Expired,
    /// Malformed, badly signed, or signed with an algorithm Herald does not accept.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// It names a key (`kid`) the JWKS does not have (yet).
    #[error("invalid token: no key {0} in the JWKS")]
    UnknownKey(String),
    /// It names a key the JWKS did not have, and the JWKS could not be
    /// fetched again to look for it: it may be valid; ask again later.
    #[error("the key {0} is not known and the JWKS cannot be fetched now")]
    KeysUnavailable(String),
}

/// The claims of a connection token.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ConnectClaims {
    /// The user id; empty for an anonymous user.
    #[serde(default)]
    pub sub: String,
    /// Expiry, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Connection info shown to others (presence, publications).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Channels the server subscribes this connection to on connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// When the connection expires, apart from the token's own `exp`
    /// (Centrifugo's `expire_at`; 0: never). See [`Self::expiry`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    /// Server-side subscriptions with their options, beside `channels`
    /// (Centrifugo's `subs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, TokenSubscription>,
    /// What the backend is told of the connection in every proxied request
    /// after the connect; never shown to clients (Centrifugo's `meta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// The options of one of a connection token's `subs`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct TokenSubscription {
    /// Channel info shown to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Data for the client, in its subscribe result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl ConnectClaims {
    /// When the connection expires (unix seconds), if it does.
    pub fn expiry(&self) -> Option<u64> {
        expiry(self.exp, self.expire_at)
    }

    /// The `meta` claim as the JSON the proxies pass on, if there is one.
    pub(crate) fn meta_json(&self) -> Option<Box<serde_json::value::RawValue>> {
        self.meta.as_ref().and_then(|meta| serde_json::value::to_raw_value(meta).ok())
    }

    /// Every server-side channel: `channels`, then the `subs` not among them.
    pub fn server_side(&self) -> impl Iterator<Item = &str> {
        let listed = self.channels.iter().map(String::as_str);
        listed.chain(self.subs.keys().map(String::as_str).filter(|name| !self.channels.iter().any(|c| c == name)))
    }
}

/// A connection token's claims, and whether it names a channel (which
/// makes it a subscription token).
#[derive(Deserialize)]
struct ConnectionToken {
    #[serde(flatten)]
    claims: ConnectClaims,
    #[serde(default)]
    channel: Option<serde::de::IgnoredAny>,
}

/// The claims of a subscription token.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SubscribeClaims {
    /// The user id; must match the connection's.
    #[serde(default)]
    pub sub: String,
    /// The channel this token grants.
    pub channel: String,
    /// Expiry, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Channel info shown to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// When the subscription expires, apart from the token's own `exp`
    /// (0: never). See [`Self::expiry`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    /// The one connection the token is for, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Data for the client, in its subscribe result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl SubscribeClaims {
    /// When the subscription expires (unix seconds), if it does.
    pub fn expiry(&self) -> Option<u64> {
        expiry(self.exp, self.expire_at)
    }
}

/// As Centrifugo: `expire_at` when given (0: never), else `exp`.
fn expiry(exp: Option<u64>, expire_at: Option<u64>) -> Option<u64> {
    match expire_at {
        None => exp,
        Some(0) => None,
        Some(at) => Some(at),
    }
}

/// Refuses as expired a token whose `expire_at` has passed (`exp` is
/// checked with the signature).
fn not_past(expire_at: Option<u64>) -> Result<(), TokenError> {
    match expire_at {
        Some(at) if at != 0 && at <= unix_now() => Err(TokenError::Expired),
        _ => Ok(()),
    }
}

/// Verifies tokens with the configured keys.
#[derive(Clone)]
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ecdsa: Option<DecodingKey>,
    ed25519: Option<DecodingKey>,
    jwks: Option<Arc<jwks::Jwks>>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("ed25519", &self.ed25519.is_some())
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl TokenVerifier {
    /// A verifier of tokens signed with `keys`, that also requires the
    /// configured audience and issuer.
    pub fn new(keys: TokenKeys, client: &ClientConfig) -> Self {
        let TokenKeys { hmac, rsa, ecdsa, ed25519, jwks } = keys;
        let (audience, issuer) = (client.token_audience.clone(), client.token_issuer.clone());
        Self { hmac, rsa, ecdsa, ed25519, jwks, audience, issuer }
    }

    /// Starts fetching the JWKS, if there is one, every `every`.
    pub fn start(&self, every: std::time::Duration) {
        if let Some(jwks) = &self.jwks {
            jwks.start(every);
        }
    }

    /// Verifies a connection token; a token naming a key the JWKS does not
    /// have makes the set be fetched again (at most every 10 s) first.
    pub async fn connection_now(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        self.with_fresh_keys(token, Self::connection).await
    }

    /// Verifies a subscription token, as [`Self::connection_now`] does.
    pub async fn subscription_now(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        self.with_fresh_keys(token, Self::subscription).await
    }

    /// `verify`, and again after fetching the JWKS if the token named a
    /// key it did not have.
    async fn with_fresh_keys<T>(
        &self,
        token: &str,
        verify: impl Fn(&Self, &str) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        match (verify(self, token), &self.jwks) {
            (Err(TokenError::UnknownKey(kid)), Some(jwks)) => match jwks.refresh_for_unknown_key().await {
                true => verify(self, token).map_err(known_or_invalid),
                false => Err(TokenError::KeysUnavailable(kid)),
            },
            (verified, _) => verified,
        }
    }

    /// Reads the configured keys and builds a verifier, or lists every key
    /// that cannot be used.
    pub fn from_config(client: &ClientConfig) -> Result<Self, Vec<String>> {
        Ok(Self::new(TokenKeys::load(client)?, client))
    }

    /// Verifies a connection token.
    pub fn connection(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let token: ConnectionToken = self.verify(token)?;
        if token.channel.is_some() {
            return Err(TokenError::Invalid(
                "a subscription token (it names a channel) is not a connection token".into(),
            ));
        }
        not_past(token.claims.expire_at)?;
        Ok(token.claims)
    }

    /// Verifies a subscription token.
    pub fn subscription(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        let claims: SubscribeClaims = self.verify(token)?;
        not_past(claims.expire_at)?;
        Ok(claims)
    }

    fn verify<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(format!("malformed header: {e}")))?;
        let from_set;
        let key = match (&self.jwks, &header.kid) {
            (Some(jwks), Some(kid)) => {
                // The caller's `kid`, in logs: escaped and cut.
                let shown = || kid.chars().take(64).flat_map(char::escape_debug).collect::<String>();
                let key = jwks.key(kid).ok_or_else(|| TokenError::UnknownKey(shown()))?;
                if !key.algorithms.contains(&header.alg) {
                    return Err(TokenError::Invalid(format!("key {} does not verify {:?}", shown(), header.alg)));
                }
                from_set = key.key;
                &from_set
            }
            _ => match header.alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.as_ref(),
                Algorithm::ES256 | Algorithm::ES384 => self.ecdsa.as_ref(),
                Algorithm::EdDSA => self.ed25519.as_ref(),
                _ => None,
            }
            .ok_or_else(|| TokenError::Invalid(format!("algorithm {:?} is not accepted", header.alg)))?,
        };

        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        jsonwebtoken::decode::<T>(token, key, &validation).map(|data| data.claims).map_err(|e| match e.kind() {
            // Not valid yet counts as expired, as in Centrifugo: the client
            // asks its backend for a token again and retries, where an
            // invalid one would end it (a backend clock a second ahead).
            jsonwebtoken::errors::ErrorKind::ExpiredSignature | jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                TokenError::Expired
            }
            _ => TokenError::Invalid(e.to_string()),
        })
    }
}

/// The node's verifiers: after a reload that changed the token keys, a
/// token the current keys refuse is tried with the previous ones while
/// their overlap lasts.
impl crate::rotating::Rotating<TokenVerifier> {
    /// A connection token, as [`TokenVerifier::connection_now`] checks it.
    pub(crate) async fn connection_now(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        self.current_then_previous(|verifier| async move { verifier.connection_now(token).await }).await
    }

    /// A subscription token, as [`TokenVerifier::subscription_now`] checks it.
    pub(crate) async fn subscription_now(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        self.current_then_previous(|verifier| async move { verifier.subscription_now(token).await }).await
    }

    /// `verify` with the current keys; if they refuse the token, with the
    /// previous ones while their overlap lasts (the current refusal stands
    /// if those refuse it too).
    async fn current_then_previous<T, F, Fut>(&self, verify: F) -> Result<T, TokenError>
    where
        F: Fn(Arc<TokenVerifier>) -> Fut,
        Fut: std::future::Future<Output = Result<T, TokenError>>,
    {
        let (current, previous) = self.accepted();
        match (verify(current).await, previous) {
            (
                Err(refused @ (TokenError::Invalid(_) | TokenError::UnknownKey(_) | TokenError::KeysUnavailable(_))),
                Some(previous),
            ) => verify(previous).await.map_err(|_| refused),
            (outcome, _) => outcome,
        }
    }
}

/// A key still unknown after the set was fetched again: the token is invalid.
fn known_or_invalid(error: TokenError) -> TokenError {
    match error {
        TokenError::UnknownKey(kid) => TokenError::Invalid(format!("no key {kid} in the JWKS")),
        other => other,
    }
}

/// Mints HS256 tokens (for `herald token` and tests).
#[derive(Clone)]
pub struct TokenMinter {
    key: EncodingKey,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenMinter")
    }
}

impl TokenMinter {
    pub fn hmac(secret: &str) -> Self {
        Self { key: EncodingKey::from_secret(secret.as_bytes()) }
    }

    /// Signs any claims with HS256.
    #[allow(clippy::expect_used)] // HS256 over claims that serialize cannot fail; minting is for the CLI and tests, never on a request's path
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
            .expect("HS256 signing of serializable claims cannot fail")
    }
}

/// Seconds since the unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A JSON claim as compact bytes, for connection and channel info.
pub fn info_bytes(info: &Option<serde_json::Value>) -> Option<Bytes> {
    info.as_ref().map(|v| Bytes::from(crate::json::to_vec(v)))
}

#[cfg(test)]
mod tests;
