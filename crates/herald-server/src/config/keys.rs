//! The token verification keys, read from their settings: an HMAC secret,
//! and RSA, ECDSA and Ed25519 public keys given as PEM text or as a path to
//! a PEM file. A key that cannot be read or parsed is a configuration problem,
//! reported with every other one.

use jsonwebtoken::DecodingKey;

use super::ClientConfig;

/// The keys tokens may be verified with; each is optional.
#[derive(Clone, Default)]
pub struct TokenKeys {
    /// For HS256, HS384 and HS512 tokens.
    pub hmac: Option<DecodingKey>,
    /// For RS256, RS384 and RS512 tokens.
    pub rsa: Option<DecodingKey>,
    /// For ES256 and ES384 tokens.
    pub ecdsa: Option<DecodingKey>,
    /// For EdDSA (Ed25519) tokens.
    pub ed25519: Option<DecodingKey>,
    /// For tokens that name a `kid`: the set at `client.token_jwks_url`.
    pub jwks: Option<std::sync::Arc<crate::auth::jwks::Jwks>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ecdsa", &self.ecdsa.is_some())
            .field("ed25519", &self.ed25519.is_some())
            .field("jwks", &self.jwks)
            .finish()
    }
}

/// Reads a PEM setting (`setting` is its full name): PEM text anywhere in
/// the value (keys exported with "Bag Attributes" before it, say) is the
/// PEM itself, anything else a file path. The value is never repeated in an
/// error: it may be a private key.
pub(crate) fn pem_text(setting: &str, value: &str) -> Result<Vec<u8>, String> {
    if value.contains("-----BEGIN") || value.contains('\n') {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value)
        .map_err(|e| format!("{setting}: cannot read the file it names: {e}; give PEM text or a readable path"))
}

impl TokenKeys {
    /// Reads the configured keys, or lists every one that cannot be used.
    pub fn load(client: &ClientConfig) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let hmac = client.token_hmac_secret.as_ref().and_then(|secret| {
            if secret.expose().is_empty() {
                problems.push("client.token_hmac_secret: must not be empty".to_owned());
                return None;
            }
            Some(DecodingKey::from_secret(secret.expose().as_bytes()))
        });
        let rsa = client.token_rsa_public_key.as_deref().and_then(|value| {
            let pem = pem_text("client.token_rsa_public_key", value).map_err(|e| problems.push(e)).ok()?;
            DecodingKey::from_rsa_pem(&pem)
                .map_err(|e| problems.push(format!("client.token_rsa_public_key: not an RSA public key in PEM: {e}")))
                .ok()
        });
        let ecdsa = client.token_ecdsa_public_key.as_deref().and_then(|value| {
            let pem = pem_text("client.token_ecdsa_public_key", value).map_err(|e| problems.push(e)).ok()?;
            DecodingKey::from_ec_pem(&pem)
                .map_err(|e| problems.push(format!("client.token_ecdsa_public_key: not an EC public key in PEM: {e}")))
                .ok()
        });
        let ed25519 = client.token_ed25519_public_key.as_deref().and_then(|value| {
            let pem = pem_text("client.token_ed25519_public_key", value).map_err(|e| problems.push(e)).ok()?;
            DecodingKey::from_ed_pem(&pem)
                .map_err(|e| {
                    problems.push(format!("client.token_ed25519_public_key: not an Ed25519 public key in PEM: {e}"))
                })
                .ok()
        });
        let jwks = client.token_jwks_url.as_deref().and_then(|url| {
            let ca = client.token_jwks_ca.as_deref().map(|value| pem_text("client.token_jwks_ca", value)).transpose();
            let endpoint = super::HttpEndpoint::parse(url)
                .ok_or_else(|| format!("`{url}`: write an https:// (or http://) URL with a host"));
            match (ca, endpoint) {
                (Ok(ca), Ok(_)) => crate::auth::jwks::Jwks::new(url, ca.as_deref())
                    .map(std::sync::Arc::new)
                    .map_err(|e| problems.push(format!("client.token_jwks_ca: {e}")))
                    .ok(),
                (ca, endpoint) => {
                    problems.extend(ca.err());
                    problems.extend(endpoint.err().map(|e| format!("client.token_jwks_url: {e}")));
                    None
                }
            }
        });
        if problems.is_empty() {
            Ok(Self { hmac, rsa, ecdsa, ed25519, jwks })
        } else {
            Err(problems)
        }
    }
}
