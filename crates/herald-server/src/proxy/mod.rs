//! Proxying client events to the application's HTTP backend, in
//! Centrifugo's proxy format, so a backend written for Centrifugo's HTTP
//! proxy works unchanged.
//!
//! Each event is a `POST` of a JSON body to the endpoint of a named proxy
//! (`[proxies.<name>]`), with the client's allow-listed request headers,
//! the proxy's static headers and the client's address
//! (`X-Forwarded-For`, `X-Real-Ip`). The backend answers `200` with one of
//! `{"result": …}`, `{"error": {"code", "message", "temporary"}}` or
//! `{"disconnect": {"code", "reason"}}` (see [`Answer`]); anything else —
//! unreachable, slower than the proxy's `timeout`, another status, a body
//! that is not such JSON or larger than [`MAX_ANSWER`] — is a [`Failed`]
//! call, logged and counted, which the session turns into a temporary
//! error (the client retries) and never into an accepted request.
//!
//! Connections to a backend are kept open and reused: at most
//! [`MAX_CONNECTIONS`] per proxy, so a storm of connects (every client of
//! a failed node at once) queues at the backend's door instead of opening
//! thousands of connections to it; a call that waits there longer than the
//! proxy's timeout fails like any slow call. A request on a reused
//! connection that the backend had closed is made again on a new one when
//! it never left; when it may have reached the backend, only if its event
//! is safe to repeat (`connect`, `refresh`, `subscribe`, `sub_refresh`:
//! answers, not actions), never a `publish`, `rpc` or `send`, which the
//! backend could act on twice.
//!
//! Which events go where: `client.connect_proxy`, `refresh_proxy`,
//! `rpc_proxy`, `send_proxy`, and the namespaces' `subscribe_proxy`,
//! `publish_proxy`, `sub_refresh_proxy` name the proxies (`events`
//! has each event's request and result).

pub(crate) mod events;

/// Whether a call for `kind` may be made again when it may have reached
/// the backend already: it asks for an answer and changes nothing.
fn repeatable(kind: &str) -> bool {
    matches!(kind, "connect" | "refresh" | "subscribe" | "sub_refresh")
}

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::config::{Config, HttpEndpoint, ProxyConfig};
use crate::http::client::{self, Sender};
use crate::metrics::Metrics;

/// The largest answer read from a backend.
pub(crate) const MAX_ANSWER: usize = 1024 * 1024;
/// Connections open at once to one proxy's backend (and requests in flight).
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// `send` calls in flight at once on a node; past it they are dropped. Half
/// of a backend's connections at most, so sends never starve the events
/// a client waits for.
pub(crate) const MAX_SENDS_IN_FLIGHT: usize = MAX_CONNECTIONS / 2;

/// What a backend answered to an event.
#[derive(Debug)]
pub(crate) enum Answer<R> {
    /// Go ahead, with this result.
    Result(R),
    /// Refuse the request with this error.
    Error { code: u32, message: String, temporary: bool },
    /// Close the client's connection with this code and reason.
    Disconnect { code: u16, reason: String },
}

/// A call without a usable answer; why is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed;

#[derive(serde::Deserialize)]
struct Envelope<R> {
    #[serde(default = "Option::default")]
    result: Option<R>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    disconnect: Option<DisconnectBody>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(serde::Deserialize)]
struct DisconnectBody {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// Who a client is to the backend beyond its protocol: the headers of its
/// HTTP request that some proxy passes on, and its address. Taken once,
/// when its connection opens. A client on an emulated stream also keeps
/// here its session's key (the session itself stays small: every idle
/// connection holds one).
#[derive(Debug, Clone)]
pub(crate) struct ClientContext {
    headers: Vec<(HeaderName, HeaderValue)>,
    ip: Option<IpAddr>,
    /// The transport's name, as the proxies tell the backend.
    pub(crate) transport: &'static str,
    /// The key of an emulated session, which the client's posted
    /// commands carry.
    pub(crate) emulation_key: Option<Arc<str>>,
    /// The connection's `meta`, as its connection token or the connect
    /// proxy gave it (the refresh proxy may replace it): never shown to
    /// clients, passed on in the proxied requests after the connect.
    pub(crate) meta: Option<Box<RawValue>>,
}

impl Default for ClientContext {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl ClientContext {
    /// Nothing passed on.
    pub(crate) const EMPTY: ClientContext =
        ClientContext { headers: Vec::new(), ip: None, transport: "websocket", emulation_key: None, meta: None };

    /// The headers of `request` that any of `proxies` passes on, of a
    /// client on `transport`: the first value of each (the one a proxy
    /// passes on), [`MAX_PASSED_BYTES`] in all. The client chose them and
    /// they stay as long as its connection: a client that sends more has
    /// what is over left out (its backend then sees it without them).
    pub(crate) fn capture(proxies: &Proxies, request: &HeaderMap, ip: IpAddr, transport: &'static str) -> Self {
        let mut headers = Vec::new();
        let mut kept = 0usize;
        for name in &proxies.passed_headers {
            let Some(value) = request.get(name) else { continue };
            let size = name.as_str().len().saturating_add(value.len());
            if kept.saturating_add(size) > MAX_PASSED_BYTES {
                tracing::debug!(header = %name, bytes = value.len(), "a client's header left out: past what is passed on to the backend");
                continue;
            }
            kept = kept.saturating_add(size);
            headers.push((name.clone(), value.clone()));
        }
        Self { headers, ip: Some(ip), transport, emulation_key: None, meta: None }
    }
}

/// The most bytes of a client's headers kept to pass on to the backend
/// (names and values): enough for a browser's cookies.
pub(crate) const MAX_PASSED_BYTES: usize = 16 * 1024;

/// One backend endpoint.
pub(crate) struct Proxy {
    name: String,
    endpoint: HttpEndpoint,
    timeout: Duration,
    passed: Vec<HeaderName>,
    fixed: Vec<(HeaderName, HeaderValue)>,
    tls: Option<tokio_rustls::TlsConnector>,
    idle: Mutex<Vec<Sender>>,
    /// A permit per request in flight, [`MAX_CONNECTIONS`] in all.
    in_flight: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
    /// Its requests carry the connection's `meta`.
    include_meta: bool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("name", &self.name).field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl Proxy {
    fn new(name: &str, config: &ProxyConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let endpoint = HttpEndpoint::parse(&config.endpoint)
            .ok_or_else(|| format!("proxies.{name}.endpoint: not an http(s) URL"))?;
        let tls = match endpoint.is_tls() {
            true => Some(client::connector(None).map_err(|e| format!("proxies.{name}: {e}"))?),
            false => None,
        };
        let header = |h: &String| HeaderName::from_bytes(h.as_bytes()).map_err(|e| format!("proxies.{name}: {e}"));
        let passed = config.http_headers.iter().map(header).collect::<Result<_, _>>()?;
        let mut fixed = Vec::new();
        for (name_text, value) in &config.static_headers {
            let value = HeaderValue::from_str(value.expose())
                .map_err(|_| format!("proxies.{name}.static_headers.{name_text}: not a header value"))?;
            fixed.push((header(name_text)?, value));
        }
        Ok(Self {
            name: name.to_owned(),
            endpoint,
            timeout: config.timeout,
            passed,
            fixed,
            tls,
            idle: Mutex::new(Vec::new()),
            in_flight: tokio::sync::Semaphore::new(MAX_CONNECTIONS),
            metrics,
            include_meta: config.include_connection_meta,
        })
    }

    /// Whether its requests carry the connection's `meta`.
    pub(crate) fn includes_meta(&self) -> bool {
        self.include_meta
    }

    /// POSTs `body` for event `kind` on behalf of the client in `context`,
    /// and reads the answer, within the proxy's timeout.
    pub(crate) async fn call<R: DeserializeOwned>(
        &self,
        kind: &'static str,
        context: &ClientContext,
        body: Vec<u8>,
    ) -> Result<Answer<R>, Failed> {
        let started = Instant::now();
        let answered = tokio::time::timeout(self.timeout, self.exchange(kind, context, body)).await;
        let outcome = match answered {
            Err(_) => Err(format!("no answer within {:?} (proxies.{}.timeout)", self.timeout, self.name)),
            Ok(Err(problem)) => Err(problem),
            // Compacted first: what the backend returns is embedded in
            // frames of one line each, and may go to other clients.
            Ok(Ok(bytes)) => match std::str::from_utf8(&bytes) {
                Err(_) => Err("the answer is not UTF-8 JSON".to_owned()),
                Ok(text) => serde_json::from_slice::<Envelope<R>>(&crate::json::compact(text))
                    .map_err(|e| {
                        format!(
                            "the answer is not a proxy reply ({:?} at line {}, column {})",
                            e.classify(),
                            e.line(),
                            e.column()
                        )
                    })
                    .and_then(Self::read_envelope),
            },
        };
        let label = match &outcome {
            Ok(Answer::Result(_)) => "result",
            Ok(Answer::Error { .. }) => "error",
            Ok(Answer::Disconnect { .. }) => "disconnect",
            Err(_) => "failed",
        };
        self.metrics.proxy_call(kind, label, started.elapsed());
        outcome.map_err(|problem| {
            tracing::warn!(proxy = %self.name, event = kind, %problem, "proxy call failed; the client gets a temporary error");
            Failed
        })
    }

    fn read_envelope<R>(envelope: Envelope<R>) -> Result<Answer<R>, String> {
        if let Some(disconnect) = envelope.disconnect {
            return Ok(Answer::Disconnect { code: disconnect.code, reason: disconnect.reason });
        }
        if let Some(error) = envelope.error {
            return Ok(Answer::Error { code: error.code, message: error.message, temporary: error.temporary });
        }
        envelope.result.map(Answer::Result).ok_or_else(|| "the answer has no result, error or disconnect".to_owned())
    }

    async fn exchange(&self, kind: &'static str, context: &ClientContext, body: Vec<u8>) -> Result<Bytes, String> {
        let body = Bytes::from(body);
        let _permit = self.in_flight.acquire().await.map_err(|_| "the proxy is closed".to_owned())?;
        let (mut sender, reused) = self.connection().await?;
        let response = match sender.try_send_request(self.request(context, body.clone())?).await {
            Ok(response) => response,
            // The backend closed a kept-alive connection as it was reused:
            // once more, on a new one, if that cannot make it act twice.
            Err(failed) if reused && (failed.message().is_some() || repeatable(kind)) => {
                tracing::debug!(proxy = %self.name, error = %failed.error(), "a reused connection failed; trying a new one");
                sender = client::open(self.tls.as_ref(), self.endpoint.host(), self.endpoint.port()).await?;
                sender.send_request(self.request(context, body)?).await.map_err(|e| format!("request failed: {e}"))?
            }
            Err(failed) => return Err(format!("request failed: {}", failed.error())),
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        self.give_back(sender);
        if status != axum::http::StatusCode::OK {
            return Err(format!("the backend answered HTTP {status}"));
        }
        Ok(body)
    }

    /// The request for one event: its body, the passed and static headers
    /// and the client's address.
    fn request(&self, context: &ClientContext, body: Bytes) -> Result<Request<Full<Bytes>>, String> {
        let mut request = Request::post(self.endpoint.path())
            .header(header::HOST, self.endpoint.authority())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let headers = request.headers_mut();
        for (name, value) in &context.headers {
            if self.passed.contains(name) && !headers.contains_key(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        for (name, value) in &self.fixed {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(ip) = context.ip {
            let forwarded = match context.headers.iter().find(|(n, _)| n.as_str() == "x-forwarded-for") {
                Some((_, earlier)) if self.passed.iter().any(|n| n.as_str() == "x-forwarded-for") => {
                    format!("{}, {ip}", earlier.to_str().unwrap_or_default())
                }
                _ => ip.to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&forwarded) {
                headers.insert("x-forwarded-for", value);
            }
            // An allow-listed X-Real-Ip (set by your load balancer) stays.
            if !headers.contains_key("x-real-ip") {
                if let Ok(value) = HeaderValue::from_str(&ip.to_string()) {
                    headers.insert("x-real-ip", value);
                }
            }
        }
        Ok(request)
    }

    /// An idle connection to the backend (`true`: reused), or a new one.
    async fn connection(&self) -> Result<(Sender, bool), String> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match idle {
                Some(mut sender) if !sender.is_closed() => {
                    if sender.ready().await.is_ok() {
                        return Ok((sender, true));
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        Ok((client::open(self.tls.as_ref(), self.endpoint.host(), self.endpoint.port()).await?, false))
    }

    fn give_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_CONNECTIONS {
            idle.push(sender);
        }
    }
}

/// The node's proxies, and which one each client-wide event goes to.
#[derive(Debug)]
pub(crate) struct Proxies {
    by_name: HashMap<String, Arc<Proxy>>,
    pub(crate) connect: Option<Arc<Proxy>>,
    pub(crate) refresh: Option<Arc<Proxy>>,
    pub(crate) rpc: Option<Arc<Proxy>>,
    pub(crate) send: Option<Arc<Proxy>>,
    /// Every header some proxy passes on: what is kept of a handshake.
    passed_headers: Vec<HeaderName>,
    /// `send` calls in flight.
    sends: Arc<tokio::sync::Semaphore>,
}

impl Default for Proxies {
    /// No proxy.
    fn default() -> Self {
        Self {
            by_name: HashMap::new(),
            connect: None,
            refresh: None,
            rpc: None,
            send: None,
            passed_headers: Vec::new(),
            sends: Arc::new(tokio::sync::Semaphore::new(MAX_SENDS_IN_FLIGHT)),
        }
    }
}

impl Proxies {
    /// The proxies `config` defines. The configuration was validated, so
    /// a failure here is a bug or an unusable TLS setup.
    pub(crate) fn from_config(config: &Config, metrics: &Arc<Metrics>) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        let mut passed_headers: Vec<HeaderName> = Vec::new();
        for (name, proxy) in &config.proxies {
            let proxy = Proxy::new(name, proxy, metrics.clone())?;
            for header in &proxy.passed {
                if !passed_headers.contains(header) {
                    passed_headers.push(header.clone());
                }
            }
            by_name.insert(name.clone(), Arc::new(proxy));
        }
        let pick = |name: &Option<String>| name.as_ref().and_then(|name| by_name.get(name).cloned());
        let client = &config.client;
        Ok(Self {
            connect: pick(&client.connect_proxy),
            refresh: pick(&client.refresh_proxy),
            rpc: pick(&client.rpc_proxy),
            send: pick(&client.send_proxy),
            passed_headers,
            sends: Arc::new(tokio::sync::Semaphore::new(MAX_SENDS_IN_FLIGHT)),
            by_name,
        })
    }

    /// Whether any proxy is defined (else no client context is kept).
    pub(crate) fn any(&self) -> bool {
        !self.by_name.is_empty()
    }

    /// Whether some proxy's requests carry the connection's `meta` (else
    /// none is kept).
    pub(crate) fn any_includes_meta(&self) -> bool {
        self.by_name.values().any(|proxy| proxy.include_meta)
    }

    /// The proxy a namespace names for an event: `Ok(None)` when it names
    /// none, `Err` when it names one this node does not have (a reload
    /// added it; proxies change only with a restart). The caller refuses
    /// the command then: a namespace that wants a backend's say never goes
    /// ahead without it.
    pub(crate) fn named(&self, name: Option<&String>) -> Result<Option<&Arc<Proxy>>, Failed> {
        let Some(name) = name else { return Ok(None) };
        match self.by_name.get(name) {
            Some(proxy) => Ok(Some(proxy)),
            None => {
                tracing::warn!(proxy = %name, "a namespace names a proxy this node does not have (restart to add it); refusing");
                Err(Failed)
            }
        }
    }

    /// Sends a client's `send` message to the send proxy without waiting
    /// for it; dropped (and counted) when too many are in flight.
    pub(crate) fn send(&self, context: Arc<ClientContext>, body: Vec<u8>) {
        let Some(proxy) = self.send.clone() else { return };
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            proxy.metrics.proxy_call("send", "dropped", Duration::ZERO);
            tracing::warn!(proxy = %proxy.name, "send dropped: {MAX_SENDS_IN_FLIGHT} sends already in flight");
            return;
        };
        tokio::spawn(async move {
            let _ = proxy.call::<serde::de::IgnoredAny>("send", &context, body).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_keeps_the_first_value_of_each_passed_header_and_no_more_than_the_bound() {
        let passed = ["cookie", "authorization", "x-tenant"].map(HeaderName::from_static);
        let proxies = Proxies { passed_headers: passed.to_vec(), ..Proxies::default() };
        let mut request = HeaderMap::new();
        for cookie in ["session=1", "second=2"] {
            request.append(header::COOKIE, HeaderValue::from_static(cookie));
        }
        let huge = HeaderValue::from_str(&"x".repeat(MAX_PASSED_BYTES)).unwrap();
        request.insert(header::AUTHORIZATION, huge);
        request.insert("x-tenant", HeaderValue::from_static("acme"));
        let ip = IpAddr::from([127, 0, 0, 1]);
        let context = ClientContext::capture(&proxies, &request, ip, "websocket");
        let kept: Vec<(&str, &[u8])> = context.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(
            kept,
            [("cookie", &b"session=1"[..]), ("x-tenant", &b"acme"[..])],
            "the first cookie; no 16 KiB header"
        );
    }

    #[test]
    fn a_namespace_naming_a_proxy_the_node_lacks_is_refused_not_waved_through() {
        let proxies = Proxies::default();
        assert!(matches!(proxies.named(None), Ok(None)), "no proxy named: the namespace's own rules");
        assert_eq!(proxies.named(Some(&"added-by-a-reload".to_owned())).map(|p| p.is_some()), Err(Failed));
    }
}
