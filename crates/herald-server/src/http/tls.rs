//! TLS for the node's listener (`http.tls_cert`, `http.tls_key`): the
//! certificate chain and key are read once at start, with rustls; each
//! accepted connection's handshake must finish within
//! `http.handshake_timeout`, like a request's headers.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// An acceptor for the certificate chain `cert` and the private key `key`
/// (PEM), speaking HTTP/1.1; or what is wrong with them.
pub(crate) fn acceptor(cert: &[u8], key: &[u8]) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("http.tls_cert: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("http.tls_cert: no certificate in it".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("http.tls_key: not a PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("http.tls_cert and http.tls_key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
