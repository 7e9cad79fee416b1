//! Keys from a JWKS URL (`client.token_jwks_url`), so that an identity
//! provider can rotate its signing keys without a Herald restart.
//!
//! - A token whose header names a `kid` is verified with that key of the
//!   set, and only with an algorithm the key allows (an RSA key: RS* and
//!   PS*; a P-256 or P-384 key: ES256 or ES384; an Ed25519 key: EdDSA; a
//!   key's own `alg`, when it gives one). Symmetric (`oct`) keys in a set
//!   are ignored.
//! - The set is fetched at start and every `client.token_jwks_refresh`;
//!   a key removed from it stops being accepted then.
//! - A token naming a key not in the set makes the node fetch the set again
//!   at once, but at most once every [`REFETCH_AFTER`], however many such
//!   tokens come: forged `kid`s cannot make the node hammer the provider.
//! - Everything about a fetch is bounded: [`FETCH_TIMEOUT`] for all of it,
//!   [`MAX_BODY`] bytes of body, [`MAX_KEYS`] keys kept. A fetch that fails
//!   keeps the keys already known and is logged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{header, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::config::HttpEndpoint;

/// The longest a fetch may take, connection and body included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set read.
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// The most keys kept from one set.
pub(crate) const MAX_KEYS: usize = 100;
/// The least time between two fetches made for unknown keys.
pub(crate) const REFETCH_AFTER: Duration = Duration::from_secs(10);

/// A key of the set, and the algorithms it verifies.
#[derive(Clone)]
pub(crate) struct SetKey {
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

/// The set, its source, and when it was last fetched for an unknown key.
pub struct Jwks {
    endpoint: HttpEndpoint,
    tls: tokio_rustls::TlsConnector,
    keys: RwLock<Arc<HashMap<String, SetKey>>>,
    /// When the set was last fetched because of an unknown key, and
    /// whether that fetch succeeded; held while such a fetch runs, so that
    /// concurrent ones wait for it.
    unknown_fetched: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// [`REFETCH_AFTER`], shorter in tests.
    refetch_after: Duration,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.read().map_or(0, |k| k.len());
        f.debug_struct("Jwks").field("endpoint", &self.endpoint).field("keys", &keys).finish()
    }
}

impl Jwks {
    /// A set to fetch from `url`, trusting the system's CAs and `ca`
    /// (PEM), if given. Fetches nothing yet.
    pub fn new(url: &str, ca: Option<&[u8]>) -> Result<Self, String> {
        let endpoint = HttpEndpoint::parse(url)
            .ok_or_else(|| format!("`{url}`: write an https:// (or http://) URL with a host"))?;
        let tls = crate::http::client::connector(ca)?;
        Ok(Self {
            endpoint,
            tls,
            keys: RwLock::new(Arc::default()),
            unknown_fetched: tokio::sync::Mutex::new(None),
            refetch_after: REFETCH_AFTER,
        })
    }

    /// The same set, fetched again for unknown keys at most every `after`.
    #[cfg(test)]
    pub(crate) fn refetching_after(mut self, after: Duration) -> Self {
        self.refetch_after = after;
        self
    }

    /// The key named `kid`, if the set has it.
    pub(crate) fn key(&self, kid: &str) -> Option<SetKey> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).get(kid).cloned()
    }

    /// Fetches the set now, and every `every` after, for as long as the
    /// node runs.
    pub fn start(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(jwks) = weak.upgrade() else { return };
                jwks.refresh().await;
            }
        });
    }

    /// A token named a key not in the set: fetches it again, unless that was
    /// done less than [`REFETCH_AFTER`] ago. Returns once the set is as fresh
    /// as it will get: whether it could be fetched (the last time, when
    /// that was recent). A key missing from a set that could not be fetched
    /// may yet exist: its token is not known to be invalid.
    pub(crate) async fn refresh_for_unknown_key(&self) -> bool {
        let mut last = self.unknown_fetched.lock().await;
        if let Some((at, fetched)) = *last {
            if at.elapsed() < self.refetch_after {
                return fetched;
            }
        }
        let fetched = self.refresh().await;
        *last = Some((Instant::now(), fetched));
        fetched
    }

    /// Fetches the set and replaces the keys; on failure keeps them.
    /// Whether it was fetched.
    async fn refresh(&self) -> bool {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok(body)) => match parse_set(&body) {
                Ok(keys) => {
                    tracing::debug!(keys = keys.len(), "JWKS fetched");
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                    return true;
                }
                Err(error) => {
                    tracing::warn!(url = %self.endpoint.authority(), %error, "JWKS unusable; keeping the keys known")
                }
            },
            Ok(Err(error)) => {
                tracing::warn!(url = %self.endpoint.authority(), %error, "JWKS fetch failed; keeping the keys known")
            }
            Err(_) => tracing::warn!(
                url = %self.endpoint.authority(),
                "JWKS fetch took over {FETCH_TIMEOUT:?}; keeping the keys known"
            ),
        }
        false
    }

    /// One GET of the set's URL; its body.
    async fn fetch(&self) -> Result<Bytes, String> {
        let endpoint = &self.endpoint;
        let request = Request::get(endpoint.path())
            .header(header::HOST, endpoint.authority())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("herald/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("request: {e}"))?;
        let tls = endpoint.is_tls().then_some(&self.tls);
        let response = crate::http::client::send(tls, endpoint.host(), endpoint.port(), request).await?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("body (at most {MAX_BODY} bytes): {e}"))?;
        Ok(body.to_bytes())
    }
}

/// The usable keys of a JWKS document, by `kid`: at most [`MAX_KEYS`].
pub(crate) fn parse_set(body: &[u8]) -> Result<HashMap<String, SetKey>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in set.keys.iter().filter(|jwk| jwk.common.key_id.is_some()).take(MAX_KEYS) {
        let (Some(kid), Some(algorithms)) = (&jwk.common.key_id, algorithms_of(jwk)) else { continue };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid.clone(), SetKey { key, algorithms });
            }
            Err(error) => tracing::debug!(kid, %error, "a JWKS key is not usable; skipped"),
        }
    }
    Ok(keys)
}

/// The algorithms a key verifies, from its type and its `alg` if given;
/// `None` for keys Herald does not take from a set (symmetric ones).
fn algorithms_of(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        // Symmetric keys, and kinds this version does not know.
        _ => return None,
    };
    let named = jwk.common.key_algorithm.and_then(|alg| match alg {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::PS384 => Some(Algorithm::PS384),
        KeyAlgorithm::PS512 => Some(Algorithm::PS512),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    match (jwk.common.key_algorithm, named) {
        (None, _) => Some(by_type),
        (Some(_), Some(alg)) if by_type.contains(&alg) => Some(vec![alg]),
        // An `alg` that does not fit the key, or one Herald does not verify.
        (Some(_), _) => None,
    }
}

#[cfg(test)]
mod tests;
