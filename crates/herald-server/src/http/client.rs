//! The node's outbound HTTP(S): one request per connection, over TLS for
//! `https://` URLs (rustls, trusting the system's CAs and any the
//! configuration adds). The JWKS fetch and the Pusher webhooks use it;
//! the proxy keeps connections open with [`open`] and reuses them.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS client trusting the system's CAs and those in `extra` (PEM).
/// Without `extra` every client shares one configuration, made on first
/// use: the system's CAs take tens of milliseconds to decode and over a
/// megabyte to hold, so they are read once per process (a change to them
/// takes a restart), not once per webhook target, JWKS or proxy.
pub(crate) fn connector(extra: Option<&[u8]>) -> Result<TlsConnector, String> {
    static SYSTEM_ONLY: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let Some(pem) = extra else {
        if let Some(shared) = SYSTEM_ONLY.get() {
            return Ok(TlsConnector::from(shared.clone()));
        }
        let made = Arc::new(config_trusting(system_roots())?);
        return Ok(TlsConnector::from(SYSTEM_ONLY.get_or_init(|| made).clone()));
    };
    let mut roots = system_roots();
    add_pem(&mut roots, pem)?;
    Ok(TlsConnector::from(Arc::new(config_trusting(roots)?)))
}

/// What is wrong with `pem` as CA certificates to trust, if anything; the
/// configuration's check, which has no need of the system's.
pub(crate) fn check_ca(pem: &[u8]) -> Result<(), String> {
    add_pem(&mut rustls::RootCertStore::empty(), pem)
}

fn config_trusting(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Adds the certificates of `pem` to `roots`; an error if one is unusable
/// or there is none.
fn add_pem(roots: &mut rustls::RootCertStore, pem: &[u8]) -> Result<(), String> {
    let mut added = false;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
        roots.add(cert).map_err(|e| format!("not a usable CA certificate: {e}"))?;
        added = true;
    }
    match added {
        true => Ok(()),
        false => Err("no certificate in it".to_owned()),
    }
}

/// The system's CA certificates, as the operating system has them now.
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system CA certificate could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    roots
}

/// An open HTTP/1.1 connection, to send requests on one after another.
pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Sends `request` to `host:port`, over TLS with `tls` when given; the
/// response, its body not yet read.
pub(crate) async fn send(
    tls: Option<&TlsConnector>,
    host: &str,
    port: u16,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, String> {
    let mut sender = open(tls, host, port).await?;
    sender.send_request(request).await.map_err(|e| format!("request failed: {e}"))
}

/// Opens a connection to `host:port`, over TLS with `tls` when given.
pub(crate) async fn open(tls: Option<&TlsConnector>, host: &str, port: u16) -> Result<Sender, String> {
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => handshake(TokioIo::new(tcp)).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
            let stream = tls.connect(name, tcp).await.map_err(|e| format!("TLS with {host}: {e}"))?;
            handshake(TokioIo::new(stream)).await
        }
    }
}

async fn handshake<IO>(io: IO) -> Result<Sender, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
