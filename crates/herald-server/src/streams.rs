//! The Centrifuge endpoints besides `/connection/websocket`: for clients
//! where WebSocket is blocked, and for clients that only listen.
//!
//! - `POST /connection/http_stream` and `GET /connection/sse`: bidirectional
//!   emulation, as centrifuge-js falls back to (HTTP-streaming in JSON or,
//!   posted as `application/octet-stream`, Protobuf). The request carries the
//!   connect command (the body, or `cf_connect` in the query); replies and
//!   pushes come down the response; later commands are POSTed to
//!   `/emulation` (see `centrifuge::emulation`).
//! - `GET /connection/uni_websocket`, `GET|POST /connection/uni_sse`,
//!   `POST /connection/uni_http_stream`: uni-directional. The client sends a
//!   connect request (its first WebSocket message, `cf_connect`, or the body)
//!   and then only listens: a connect push, then bare pushes, and pings
//!   (`{}`) it need not answer. Channels come from the token's `channels`
//!   claim (or the connect proxy); a reconnecting client recovers by naming
//!   its positions in the request's `subs`, or, on uni SSE, by the
//!   `Last-Event-ID` that `EventSource` sends back by itself.
//!
//! Every one runs the same session (`centrifuge::session`) on the session
//! driver, with the same limits, codes, backpressure, drain and metrics as
//! a WebSocket. A stream takes its connection from hyper once it opens
//! (`http::takeover`) and writes its response itself (`transport::stream`);
//! so an event stream refuses the `HEAD` that other `GET` routes answer
//! (it would open a session and get a body). A page on another origin
//! may use them when its origin is allowed (`http.allowed_origins`): the
//! answers then carry CORS headers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use bytes::Bytes;
use serde::Deserialize;

use crate::centrifuge::positions;
use crate::centrifuge::session::{self, Encoding, Mode};
use crate::config::TransportName;
use crate::http::admission::Permit;
use crate::http::body::{self, BodyLimits};
use crate::http::takeover::Takeover;
use crate::server::AppState;
use crate::transport::stream::{Closing, Coding, Commands, Format, Opening as StreamOpening, StreamTransport};

/// The routes of the enabled transports besides `/connection/websocket`.
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    use axum::routing::{get, post};
    let on = |name| state.transports.contains(&name);
    let mut router = Router::new();
    if on(TransportName::HttpStream) {
        router = router.route("/connection/http_stream", post(http_stream).options(preflight));
    }
    if on(TransportName::Sse) {
        router = router.route("/connection/sse", get(sse));
    }
    if on(TransportName::HttpStream) || on(TransportName::Sse) {
        router = router.route("/emulation", post(emulation).options(preflight));
    }
    if on(TransportName::UniWebsocket) {
        router = router.route("/connection/uni_websocket", get(uni_websocket));
    }
    if on(TransportName::UniSse) {
        router = router.route("/connection/uni_sse", get(uni_sse).post(uni_sse_posted).options(preflight));
    }
    if on(TransportName::UniHttpStream) {
        router = router.route("/connection/uni_http_stream", post(uni_http_stream).options(preflight));
    }
    router
}

/// The connect request of an SSE stream, in its URL.
#[derive(Debug, Deserialize)]
struct ConnectQuery {
    #[serde(default)]
    cf_connect: Option<String>,
}

/// Who opens a stream: what the handlers share, from the request's head.
struct Opening {
    peer: std::net::SocketAddr,
    permit: Option<Extension<Arc<Permit>>>,
    headers: HeaderMap,
    version: Version,
    takeover: Takeover,
}

impl<S: Send + Sync> FromRequestParts<S> for Opening {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Opening, Response> {
        // axum routes a `HEAD` to a `GET` handler; refused before the rest
        // of the request is looked at.
        if parts.method == Method::HEAD {
            return Err(head_refused(parts.uri.path()));
        }
        let peer = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|info| info.0);
        let takeover = parts.extensions.get::<Takeover>().cloned();
        let (Some(peer), Some(takeover)) = (peer, takeover) else {
            // Every request the node's listener serves has both.
            return Err(
                (StatusCode::INTERNAL_SERVER_ERROR, "streams are served on the node's listener").into_response()
            );
        };
        Ok(Opening {
            peer,
            permit: parts.extensions.get::<Arc<Permit>>().cloned().map(Extension),
            headers: parts.headers.clone(),
            version: parts.version,
            takeover,
        })
    }
}

async fn http_stream(State(state): State<AppState>, opening: Opening, body: Body) -> Response {
    let format = if crate::centrifuge::protobuf::posted(&opening.headers) { Format::Binary } else { Format::Lines };
    posted(&state, opening, body, format, true).await
}

async fn sse(State(state): State<AppState>, opening: Opening, Query(query): Query<ConnectQuery>) -> Response {
    let first = Bytes::from(query.cf_connect.unwrap_or_default());
    if let Some(refused) = too_large(&state, &first) {
        return refused;
    }
    open_emulated(&state, opening, first, Format::Events)
}

/// Refuses a connect request in a GET's query larger than a posted one
/// may be (`client.max_message_size`), as 413.
fn too_large(state: &AppState, first: &[u8]) -> Option<Response> {
    if first.len() <= state.max_message_size {
        return None;
    }
    let limit = state.max_message_size;
    tracing::info!(bytes = first.len(), limit, "stream not opened: its connect request is too large");
    let message = format!("the connect request is larger than client.max_message_size ({limit} bytes)");
    Some((StatusCode::PAYLOAD_TOO_LARGE, message).into_response())
}

async fn emulation(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Some(refused) = crate::server::refuse_origin(&state, &headers) {
        return refused;
    }
    let limits = BodyLimits { max_size: state.max_message_size, timeout: state.body_timeout };
    let answer = state.emulation.handle(state.shared.driver.hub.as_ref(), &headers, body, limits).await;
    with_cors(&headers, answer)
}

async fn uni_websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    permit: Option<Extension<Arc<Permit>>>,
    headers: HeaderMap,
    upgrade: crate::transport::WsUpgrade,
) -> Response {
    crate::server::centrifuge_upgrade(&state, peer, permit, &headers, upgrade, Mode::Unidirectional)
}

async fn uni_sse(State(state): State<AppState>, opening: Opening, Query(query): Query<ConnectQuery>) -> Response {
    let mut first = Bytes::from(query.cf_connect.unwrap_or_default());
    // `EventSource` reconnecting by itself: recover from the positions it saw.
    let last_event_id = opening.headers.get("last-event-id").and_then(|id| id.to_str().ok());
    if let Some(request) = last_event_id.and_then(|id| positions::with_recovery(&first, id)) {
        first = Bytes::from(request);
    }
    if let Some(refused) = too_large(&state, &first) {
        return refused;
    }
    open_unidirectional(&state, opening, first, Format::Events)
}

async fn uni_sse_posted(State(state): State<AppState>, opening: Opening, body: Body) -> Response {
    posted(&state, opening, body, Format::Events, false).await
}

async fn uni_http_stream(State(state): State<AppState>, opening: Opening, body: Body) -> Response {
    posted(&state, opening, body, Format::Lines, false).await
}

/// The answer to a `HEAD` of an event stream at `path`: it has no head
/// without a session, which a `HEAD` must not open.
fn head_refused(path: &str) -> Response {
    let allowed = match path {
        "/connection/uni_sse" => "GET, POST, OPTIONS",
        _ => "GET",
    };
    let mut refused = StatusCode::METHOD_NOT_ALLOWED.into_response();
    refused.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
    refused
}

/// Opens a stream whose connect command or request is the POST's body.
async fn posted(state: &AppState, opening: Opening, body: Body, format: Format, emulated: bool) -> Response {
    if let Some(refused) = refused(state, &opening.headers) {
        return refused;
    }
    match read_connect(state, &opening.headers, body).await {
        Ok(first) if emulated => open_emulated(state, opening, first, format),
        Ok(first) => open_unidirectional(state, opening, first, format),
        Err(refused) => refused,
    }
}

/// The body that opens a stream: the connect command or request, within
/// `client.max_message_size` and `http.body_timeout`. Read only once the
/// node has checked what it can before (draining, origin); the session
/// authenticates what it says.
async fn read_connect(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let limits = BodyLimits { max_size: state.max_message_size, timeout: state.body_timeout };
    body::read(headers, body, limits).await.map_err(|error| {
        tracing::info!(%error, "stream not opened: its connect request could not be read");
        (error.status(), error.to_string()).into_response()
    })
}

/// Refuses a stream the node would refuse as a WebSocket: while draining,
/// or from a page whose origin is not allowed.
fn refused(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    crate::server::refuse_draining(state).or_else(|| crate::server::refuse_origin(state, headers))
}

fn open_emulated(state: &AppState, opening: Opening, first: Bytes, format: Format) -> Response {
    if let Some(refused) = refused(state, &opening.headers) {
        return refused;
    }
    let (key, posted) = state.emulation.open(first, format == Format::Binary);
    let key = state.emulation.key_text(&key);
    open(state, opening, Commands::Posted(posted), format, Closing::Push, Some(key.into()))
}

fn open_unidirectional(state: &AppState, opening: Opening, first: Bytes, format: Format) -> Response {
    if let Some(refused) = refused(state, &opening.headers) {
        return refused;
    }
    open(state, opening, Commands::First(first), format, Closing::Bare, None)
}

/// Takes the connection over for the stream and starts the session on it
/// once hyper has let it go: an emulated session when it has an emulation
/// key, else a uni-directional one.
fn open(
    state: &AppState,
    opening: Opening,
    commands: Commands,
    format: Format,
    closing: Closing,
    emulation_key: Option<Arc<str>>,
) -> Response {
    let Opening { peer, permit, headers, version, takeover } = opening;
    let shared = state.shared.clone();
    let proxies = &shared.proxies;
    let mode = if emulation_key.is_some() { Mode::Emulated } else { Mode::Unidirectional };
    let transport = match (format, mode) {
        (Format::Lines | Format::Binary, Mode::Emulated) => "http_stream",
        (Format::Events, Mode::Emulated) => "sse",
        (Format::Lines | Format::Binary, _) => "uni_http_stream",
        (Format::Events, _) => "uni_sse",
    };
    let context = match (proxies.any(), emulation_key) {
        (false, None) => None,
        (any, emulation_key) => {
            let mut context = match any {
                true => crate::proxy::ClientContext::capture(proxies, &headers, peer.ip(), transport),
                false => crate::proxy::ClientContext::default(),
            };
            context.emulation_key = emulation_key;
            Some(Arc::new(context))
        }
    };
    // The session keeps the node's count of live sessions (shutdown waits
    // for it) and the connection's place under the caps.
    let held = (state.tracker.enter(), permit);
    let encoding = if format == Format::Binary { Encoding::Protobuf } else { Encoding::Json };
    let content_type = match format {
        Format::Binary => "application/octet-stream",
        Format::Lines => "application/json",
        Format::Events => "text/event-stream",
    };
    let mut answer = HeaderMap::new();
    answer.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    // Proxies such as nginx would otherwise buffer the stream.
    answer.insert(header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    add_cors(&headers, &mut answer);
    let coding = if version == Version::HTTP_10 { Coding::Bare } else { Coding::Chunked };
    let head = response_head(&answer, coding);
    let opening = StreamOpening { head, coding, format, closing, commands, held };
    takeover.take(Box::new(move |socket| {
        let transport = StreamTransport::over(socket, opening);
        drop(tokio::spawn(session::run(transport, shared, context, mode, encoding)));
    }));
    // Never written: the stream writes its own head once it has the socket.
    StatusCode::OK.into_response()
}

/// A stream's response head: `200 OK` with `headers`, the date, and how
/// the body is framed; the connection closes when the stream ends.
fn response_head(headers: &HeaderMap, coding: Coding) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let framing: &[(&str, &[u8])] = match coding {
        Coding::Chunked => &[("transfer-encoding", b"chunked")],
        Coding::Bare => &[],
    };
    let fixed = [("date", date.as_bytes()), ("connection", b"close".as_slice())];
    let given = headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
    for (name, value) in given.chain(fixed).chain(framing.iter().copied()) {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Answers a CORS preflight from an allowed origin.
async fn preflight(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refused) = crate::server::refuse_origin(&state, &headers) {
        return refused;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let answer = response.headers_mut();
    answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    answer.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    with_cors(&headers, response)
}

/// `response`, with the CORS headers a page on the request's (allowed)
/// origin needs to read it.
fn with_cors(request: &HeaderMap, mut response: Response) -> Response {
    add_cors(request, response.headers_mut());
    response
}

/// Adds to `answer` the CORS headers a page on the request's (allowed)
/// origin needs to read it.
fn add_cors(request: &HeaderMap, answer: &mut HeaderMap) {
    if let Some(origin) = request.get(header::ORIGIN) {
        answer.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        answer.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        answer.append(header::VARY, HeaderValue::from_static("origin"));
    }
}
