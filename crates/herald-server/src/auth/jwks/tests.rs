use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{EncodingKey, Header};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::*;
use crate::auth::{TokenError, TokenVerifier};
use crate::config::{ClientConfig, TokenKeys};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// The fixture set's keys named in `kids`, as a JWKS document.
fn set_of(kids: &[&str]) -> Vec<u8> {
    let all: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let keys: Vec<&Value> =
        all["keys"].as_array().unwrap().iter().filter(|key| kids.contains(&key["kid"].as_str().unwrap())).collect();
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

/// A token for user `sub`, naming key `kid` and signed with the fixture key
/// for `alg`.
fn token(alg: Algorithm, kid: &str, sub: &str) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("jwt-rsa.key.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("jwt-ec.key.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture("jwt-ed25519.key.pem")).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(&fixture("jwt-rsa.pub.pem")),
        other => panic!("no fixture key for {other:?}"),
    };
    let header = Header { kid: Some(kid.to_owned()), ..Header::new(alg) };
    jsonwebtoken::encode(&header, &json!({ "sub": sub, "exp": crate::auth::unix_now() + 3600 }), &key).unwrap()
}

/// A local identity provider serving a key set that a test can change.
struct Provider {
    url: String,
    answer: Arc<Mutex<(u16, Vec<u8>)>>,
    requests: Arc<AtomicUsize>,
}

impl Provider {
    async fn serving(body: Vec<u8>) -> Self {
        Self::start(body, false).await
    }

    async fn serving_over_tls(body: Vec<u8>) -> Self {
        Self::start(body, true).await
    }

    async fn start(body: Vec<u8>, tls: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(Mutex::new((200, body)));
        let requests = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.then(tls_acceptor);
        let (served, counted) = (answer.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (served, counted, acceptor) = (served.clone(), counted.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                answer_requests(TokioIo::new(tls), served, counted).await;
                            }
                        }
                        None => answer_requests(TokioIo::new(tcp), served, counted).await,
                    }
                });
            }
        });
        let scheme = if tls { "https" } else { "http" };
        let host = if tls { "localhost" } else { "127.0.0.1" };
        Self { url: format!("{scheme}://{host}:{port}/.well-known/jwks.json"), answer, requests }
    }

    fn now_serves(&self, status: u16, body: Vec<u8>) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer_requests<IO>(io: IO, served: Arc<Mutex<(u16, Vec<u8>)>>, counted: Arc<AtomicUsize>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |_request| {
        counted.fetch_add(1, Ordering::SeqCst);
        let (status, body) = served.lock().unwrap().clone();
        async move {
            Ok::<_, Infallible>(hyper::Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap())
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&fixture("tls-server.pem")).map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_slice(&fixture("tls-server.key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A verifier that only knows the set at `jwks`.
fn verifier_of(jwks: Jwks) -> (TokenVerifier, Arc<Jwks>) {
    let jwks = Arc::new(jwks);
    let keys = TokenKeys { hmac: None, rsa: None, ecdsa: None, ed25519: None, jwks: Some(jwks.clone()) };
    (TokenVerifier::new(keys, &ClientConfig::default()), jwks)
}

fn subject(result: Result<crate::auth::ConnectClaims, TokenError>) -> Result<String, String> {
    match result {
        Ok(claims) => Ok(claims.sub),
        Err(TokenError::Invalid(why) | TokenError::UnknownKey(why)) => Err(why),
        Err(TokenError::Expired) => Err("expired".to_owned()),
        Err(TokenError::KeysUnavailable(kid)) => Err(format!("unavailable: {kid}")),
    }
}

/// Waits (up to 5 s) for `condition`.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_token_naming_a_key_of_the_set_is_verified_with_that_key() {
    let provider = Provider::serving(set_of(&["rsa-1", "ec-1", "ed-1"])).await;
    let (verifier, _) = verifier_of(Jwks::new(&provider.url, None).unwrap());

    assert_eq!(subject(verifier.connection_now(&token(Algorithm::RS256, "rsa-1", "ann")).await), Ok("ann".into()));
    assert_eq!(subject(verifier.connection_now(&token(Algorithm::ES256, "ec-1", "bob")).await), Ok("bob".into()));
    assert_eq!(subject(verifier.connection_now(&token(Algorithm::EdDSA, "ed-1", "cy")).await), Ok("cy".into()));
    assert_eq!(provider.requests(), 1, "the first unknown key fetched the set; the others were in it");
}

#[tokio::test]
async fn a_key_verifies_only_the_algorithms_of_its_kind() {
    let provider = Provider::serving(set_of(&["rsa-1", "ed-1"])).await;
    let (verifier, _) = verifier_of(Jwks::new(&provider.url, None).unwrap());

    // Signed by the Ed25519 key but naming the RSA key, and the classic
    // confusion: HS256 with the RSA public key as the secret.
    let wrong_key = verifier.connection_now(&token(Algorithm::EdDSA, "rsa-1", "eve")).await;
    let confused = verifier.connection_now(&token(Algorithm::HS256, "rsa-1", "eve")).await;

    assert!(subject(wrong_key).unwrap_err().contains("does not verify EdDSA"));
    assert!(subject(confused).unwrap_err().contains("does not verify HS256"));
}

#[tokio::test]
async fn forged_key_ids_make_the_set_be_fetched_at_most_once_per_window() {
    let provider = Provider::serving(set_of(&["rsa-1"])).await;
    let (verifier, _) = verifier_of(Jwks::new(&provider.url, None).unwrap());
    let verifier = Arc::new(verifier);

    let forged = (0..200).map(|n| {
        let verifier = verifier.clone();
        tokio::spawn(
            async move { verifier.connection_now(&token(Algorithm::RS256, &format!("forged-{n}"), "eve")).await },
        )
    });
    for outcome in futures_util::future::join_all(forged).await {
        assert!(subject(outcome.unwrap()).unwrap_err().contains("no key forged-"));
    }

    assert_eq!(provider.requests(), 1, "200 forged kids, one fetch");
    assert_eq!(subject(verifier.connection_now(&token(Algorithm::RS256, "rsa-1", "ann")).await), Ok("ann".into()));
}

#[tokio::test]
async fn a_rotated_set_is_taken_up_by_the_first_token_naming_the_new_key_and_the_old_key_is_refused() {
    let provider = Provider::serving(set_of(&["rsa-1"])).await;
    let jwks = Jwks::new(&provider.url, None).unwrap().refetching_after(Duration::ZERO);
    let (verifier, _) = verifier_of(jwks);
    assert_eq!(subject(verifier.connection_now(&token(Algorithm::RS256, "rsa-1", "ann")).await), Ok("ann".into()));

    provider.now_serves(200, set_of(&["ed-1"]));

    assert_eq!(subject(verifier.connection_now(&token(Algorithm::EdDSA, "ed-1", "bob")).await), Ok("bob".into()));
    assert!(subject(verifier.connection_now(&token(Algorithm::RS256, "rsa-1", "ann")).await)
        .unwrap_err()
        .contains("no key rsa-1"));
}

#[tokio::test]
async fn the_periodic_refresh_drops_a_key_removed_from_the_set() {
    let provider = Provider::serving(set_of(&["rsa-1", "ed-1"])).await;
    let (verifier, jwks) = verifier_of(Jwks::new(&provider.url, None).unwrap());
    jwks.start(Duration::from_millis(50));
    eventually("the set is fetched", || jwks.key("rsa-1").is_some()).await;

    provider.now_serves(200, set_of(&["ed-1"]));
    eventually("the removed key is gone", || jwks.key("rsa-1").is_none()).await;

    assert!(jwks.key("ed-1").is_some());
    assert!(subject(verifier.connection(&token(Algorithm::RS256, "rsa-1", "ann"))).is_err());
}

#[tokio::test]
async fn a_failed_or_oversized_fetch_keeps_the_keys_already_known() {
    let provider = Provider::serving(set_of(&["rsa-1"])).await;
    let (_, jwks) = verifier_of(Jwks::new(&provider.url, None).unwrap());
    jwks.refresh().await;
    assert!(jwks.key("rsa-1").is_some());

    let oversized = format!("{{\"keys\":[], \"pad\": \"{}\"}}", "x".repeat(MAX_BODY)).into_bytes();
    for (status, body) in [(500, set_of(&[])), (200, b"<html>".to_vec()), (200, oversized)] {
        provider.now_serves(status, body);
        jwks.refresh().await;
        assert!(jwks.key("rsa-1").is_some(), "a fetch answered {status} dropped the keys");
    }
    assert_eq!(provider.requests(), 4);
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_leaves_tokens_unchecked_not_hanging_nor_called_invalid() {
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/jwks.json", unused.local_addr().unwrap().port());
    drop(unused);
    let (verifier, _) = verifier_of(Jwks::new(&url, None).unwrap());

    let token = token(Algorithm::RS256, "rsa-1", "a");

    let outcome = tokio::time::timeout(FETCH_TIMEOUT * 2, verifier.connection_now(&token)).await;
    let outcome = outcome.expect("a verdict within the fetch timeout");
    assert!(matches!(outcome, Err(TokenError::KeysUnavailable(_))), "the key may exist: {outcome:?}");
    let again = verifier.connection_now(&token).await;
    assert!(matches!(again, Err(TokenError::KeysUnavailable(_))), "within the window, as the last fetch left it");
}

#[tokio::test]
async fn while_new_keys_cannot_be_fetched_the_previous_keys_still_verify_during_their_overlap() {
    let provider = Provider::serving(set_of(&["rsa-1"])).await;
    let (previous, _) = verifier_of(Jwks::new(&provider.url, None).unwrap());
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unreachable = format!("http://127.0.0.1:{}/jwks.json", unused.local_addr().unwrap().port());
    drop(unused);
    let (current, _) = verifier_of(Jwks::new(&unreachable, None).unwrap());
    let verifiers = crate::rotating::Rotating::new(previous);
    verifiers.rotate(current, Duration::from_secs(60));

    let outcome = verifiers.connection_now(&token(Algorithm::RS256, "rsa-1", "ann")).await;
    assert_eq!(subject(outcome), Ok("ann".into()), "the previous set, still accepted, has the key");
    let forged = verifiers.connection_now(&token(Algorithm::RS256, "forged", "eve")).await;
    assert!(matches!(forged, Err(TokenError::KeysUnavailable(_))), "a key neither knows: {forged:?}");
}

#[tokio::test]
async fn a_forged_kid_reaches_the_logs_escaped_and_cut() {
    let provider = Provider::serving(set_of(&["rsa-1"])).await;
    let (verifier, _) = verifier_of(Jwks::new(&provider.url, None).unwrap());
    let forged = format!("x\nlevel=ERROR forged line{}", "y".repeat(500));
    let refused = subject(verifier.connection_now(&token(Algorithm::RS256, &forged, "eve")).await).unwrap_err();
    assert!(!refused.contains('\n'), "{refused}");
    assert!(refused.contains("x\\nlevel=ERROR"), "{refused}");
    assert!(refused.len() < 200, "cut: {} bytes", refused.len());
}

#[tokio::test]
async fn a_set_served_over_https_is_fetched_when_its_ca_is_trusted() {
    let provider = Provider::serving_over_tls(set_of(&["ec-1"])).await;
    let trusted = Jwks::new(&provider.url, Some(&fixture("tls-ca.pem"))).unwrap();
    let untrusted = Jwks::new(&provider.url, None).unwrap();

    trusted.refresh().await;
    untrusted.refresh().await;

    assert!(trusted.key("ec-1").is_some());
    assert!(untrusted.key("ec-1").is_none(), "a certificate from an unknown CA was accepted");
}

#[test]
fn only_signing_keys_with_a_kid_and_a_fitting_alg_are_kept_from_a_set() {
    let mut document: Value = serde_json::from_slice(&set_of(&["rsa-1", "ec-1", "ed-1"])).unwrap();
    let keys = document["keys"].as_array_mut().unwrap();
    let mut no_kid = keys[0].clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut misfit = keys[1].clone();
    misfit["kid"] = json!("misfit");
    misfit["alg"] = json!("RS256");
    keys.extend([no_kid, misfit, json!({ "kty": "oct", "kid": "shared", "k": "c2VjcmV0" })]);

    let kept = parse_set(&serde_json::to_vec(&document).unwrap()).unwrap();

    let mut kids: Vec<&str> = kept.keys().map(String::as_str).collect();
    kids.sort_unstable();
    assert_eq!(kids, ["ec-1", "ed-1", "rsa-1"]);
    assert_eq!(kept["rsa-1"].algorithms, [Algorithm::RS256], "the key's own alg narrows it");
    assert!(parse_set(b"{\"keys\": 3}").is_err());
}

#[test]
fn at_most_max_keys_are_kept_from_a_set() {
    let template: Value = serde_json::from_slice(&set_of(&["ed-1"])).unwrap();
    let keys: Vec<Value> = (0..MAX_KEYS + 50)
        .map(|n| {
            let mut key = template["keys"][0].clone();
            key["kid"] = json!(format!("k{n}"));
            key
        })
        .collect();

    let kept = parse_set(&serde_json::to_vec(&json!({ "keys": keys })).unwrap()).unwrap();

    assert_eq!(kept.len(), MAX_KEYS);
}

#[test]
fn a_jwks_url_must_be_http_or_https_with_a_host() {
    // The parser is the node's one for every outbound URL (its own tests
    // are in config::endpoint); a JWKS URL it refuses is refused loudly.
    assert!(Jwks::new("https://id.example.com/.well-known/jwks.json", None).is_ok());
    assert!(Jwks::new("http://[::1]:8080/k", None).is_ok());
    for bad in ["ftp://id.example.com/k", "id.example.com/jwks.json", "https:///jwks.json", "not a url"] {
        let refused = Jwks::new(bad, None).err().unwrap_or_default();
        assert!(refused.contains("write an https://"), "{bad} was accepted: {refused}");
    }
}
