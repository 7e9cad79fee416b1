//! The node's outbound HTTP(S): one request per connection, over TLS for
//! `https://` URLs (rustls, trusting the system's CAs and any the
//! configuration adds). The JWKS fetch and the Pusher webhooks use it;
//! the proxy keeps connections open with [`open`] and reuses them.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS client trusting the system's CAs and those in `extra` (PEM).
pub(crate) fn connector(extra: Option<&[u8]>) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system CA certificate could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra {
        let mut added = false;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
            roots.add(cert).map_err(|e| format!("not a usable CA certificate: {e}"))?;
            added = true;
        }
        if !added {
            return Err("no certificate in it".to_owned());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
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
