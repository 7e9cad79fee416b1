use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::config::{ClientConfig, Secret};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SECRET: &str = "test-secret";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn verifier(hmac: bool, rsa: bool, ecdsa: bool) -> TokenVerifier {
    let client = ClientConfig {
        token_hmac_secret: hmac.then(|| Secret::new(SECRET)),
        token_rsa_public_key: rsa.then(|| format!("{FIXTURES}/jwt-rsa.pub.pem")),
        token_ecdsa_public_key: ecdsa.then(|| fixture("jwt-ec.pub.pem")),
        token_ed25519_public_key: ecdsa.then(|| format!("{FIXTURES}/jwt-ed25519.pub.pem")),
        ..ClientConfig::default()
    };
    TokenVerifier::from_config(&client).unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn hs256(claims: serde_json::Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

fn rs256(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(fixture("jwt-rsa.key.pem").as_bytes()).unwrap();
    sign(Algorithm::RS256, &key, claims)
}

fn eddsa(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_ed_pem(fixture("jwt-ed25519.key.pem").as_bytes()).unwrap();
    sign(Algorithm::EdDSA, &key, claims)
}

fn es256(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_ec_pem(fixture("jwt-ec.key.pem").as_bytes()).unwrap();
    sign(Algorithm::ES256, &key, claims)
}

/// A token with `alg: none` and no signature.
fn unsigned(claims: serde_json::Value) -> String {
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", base64_url(claims.to_string().as_bytes()))
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn outcome(result: Result<ConnectClaims, TokenError>) -> Result<String, &'static str> {
    match result {
        Ok(claims) => Ok(claims.sub),
        Err(TokenError::Expired) => Err("expired"),
        Err(TokenError::Invalid(_) | TokenError::UnknownKey(_)) => Err("invalid"),
        Err(TokenError::KeysUnavailable(_)) => Err("unavailable"),
    }
}

#[test]
fn connection_tokens_are_verified_with_the_key_of_their_algorithm() {
    let future = unix_now() + 3600;
    let past = unix_now() - 10;
    let all = verifier(true, true, true);
    let hmac_only = verifier(true, false, false);
    let rsa_only = verifier(false, true, false);
    let rsa_pub_as_secret = EncodingKey::from_secret(fixture("jwt-rsa.pub.pem").as_bytes());

    let cases: Vec<(&str, &TokenVerifier, String, Result<String, &str>)> = vec![
        ("HS256", &all, hs256(json!({"sub": "42", "exp": future})), Ok("42".into())),
        ("HS256 without exp", &all, hs256(json!({"sub": "42"})), Ok("42".into())),
        ("RS256", &all, rs256(json!({"sub": "7"})), Ok("7".into())),
        ("ES256", &all, es256(json!({"sub": "8"})), Ok("8".into())),
        ("EdDSA", &all, eddsa(json!({"sub": "9"})), Ok("9".into())),
        ("EdDSA without an Ed25519 key", &hmac_only, eddsa(json!({"sub": "9"})), Err("invalid")),
        ("expired", &all, hs256(json!({"sub": "42", "exp": past})), Err("expired")),
        ("alg none", &all, unsigned(json!({"sub": "42"})), Err("invalid")),
        (
            "wrong secret",
            &all,
            sign(Algorithm::HS256, &EncodingKey::from_secret(b"other"), json!({"sub": "42"})),
            Err("invalid"),
        ),
        ("RS256 without an RSA key", &hmac_only, rs256(json!({"sub": "7"})), Err("invalid")),
        (
            "HS256 signed with the RSA public key",
            &rsa_only,
            sign(Algorithm::HS256, &rsa_pub_as_secret, json!({"sub": "42"})),
            Err("invalid"),
        ),
        ("garbage", &all, "not.a.token".to_owned(), Err("invalid")),
        ("empty", &all, String::new(), Err("invalid")),
    ];
    for (name, verifier, token, expected) in cases {
        let got = outcome(verifier.connection(&token));
        assert_eq!(got.as_ref().map(String::as_str), expected.as_ref().map(String::as_str), "{name}");
    }
}

#[test]
fn connection_claims_carry_info_and_server_side_channels() {
    let token = hs256(json!({"sub": "42", "info": {"name": "Ann"}, "channels": ["news", "chat:a"]}));
    let claims = verifier(true, false, false).connection(&token).unwrap();
    assert_eq!(claims.channels, ["news", "chat:a"]);
    assert_eq!(info_bytes(&claims.info).unwrap(), r#"{"name":"Ann"}"#);
}

#[test]
fn audience_and_issuer_are_enforced_when_configured() {
    let client = ClientConfig {
        token_hmac_secret: Some(Secret::new(SECRET)),
        token_audience: Some("app".into()),
        token_issuer: Some("auth".into()),
        ..ClientConfig::default()
    };
    let verifier = TokenVerifier::from_config(&client).unwrap();
    let good = hs256(json!({"sub": "1", "aud": "app", "iss": "auth"}));
    let wrong_aud = hs256(json!({"sub": "1", "aud": "other", "iss": "auth"}));
    let no_iss = hs256(json!({"sub": "1", "aud": "app"}));
    assert!(verifier.connection(&good).is_ok());
    assert!(matches!(verifier.connection(&wrong_aud), Err(TokenError::Invalid(_))));
    assert!(matches!(verifier.connection(&no_iss), Err(TokenError::Invalid(_))));
}

#[test]
fn a_configured_audience_must_be_present_and_a_future_nbf_is_refused_as_expired() {
    let client = ClientConfig {
        token_hmac_secret: Some(Secret::new(SECRET)),
        token_audience: Some("app".into()),
        ..ClientConfig::default()
    };
    let with_audience = TokenVerifier::from_config(&client).unwrap();
    let no_aud = hs256(json!({"sub": "1"}));
    assert!(matches!(with_audience.connection(&no_aud), Err(TokenError::Invalid(_))), "a token without aud");
    assert!(with_audience.connection(&hs256(json!({"sub": "1", "aud": "app"}))).is_ok());

    let plain = verifier(true, false, false);
    let later = hs256(json!({"sub": "1", "nbf": unix_now() + 3600}));
    // Refused as Centrifugo refuses it: expired, so the client asks for
    // another token instead of giving up.
    assert!(matches!(plain.connection(&later), Err(TokenError::Expired)), "not valid before an hour from now");
    let earlier = hs256(json!({"sub": "1", "nbf": unix_now() - 10}));
    assert!(plain.connection(&earlier).is_ok());
}

#[test]
fn a_subscription_token_is_not_a_connection_token() {
    let verifier = verifier(true, false, false);
    let subscription = hs256(json!({"sub": "42", "channel": "private:x"}));
    assert!(matches!(verifier.connection(&subscription), Err(TokenError::Invalid(_))));
    assert!(verifier.subscription(&subscription).is_ok());
    let connection = hs256(json!({"sub": "42"}));
    assert!(verifier.subscription(&connection).is_err(), "and a connection token grants no channel");
}

#[test]
fn minted_tokens_verify() {
    let minter = TokenMinter::hmac(SECRET);
    let token = minter.sign(&SubscribeClaims { sub: "42".into(), channel: "private:x".into(), ..Default::default() });
    let claims = verifier(true, false, false).subscription(&token).unwrap();
    assert_eq!((claims.sub.as_str(), claims.channel.as_str()), ("42", "private:x"));
}

#[test]
fn unusable_keys_are_all_reported() {
    let client = ClientConfig {
        token_hmac_secret: Some(Secret::new("")),
        token_rsa_public_key: Some("/nonexistent/key.pem".into()),
        token_ecdsa_public_key: Some("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----".into()),
        token_ed25519_public_key: Some(format!("{FIXTURES}/jwt-rsa.pub.pem")),
        ..ClientConfig::default()
    };
    let problems = TokenVerifier::from_config(&client).unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:#?}");
}
