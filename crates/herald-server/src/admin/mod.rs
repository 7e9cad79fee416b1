//! The admin web UI at `/admin`: served only when `admin.password` is set,
//! on `http.internal_port` when there is one, else on the public port.
//!
//! The page, its styles, script and charts are in `assets/`, embedded in
//! the binary; nothing is fetched from elsewhere, so it works offline.
//! Everything it shows comes from the server API: the page calls
//! `POST /admin/api/<method>`, which runs the API's own handler for a
//! logged-in operator (see [`crate::api::call`]). Besides the API it has
//! the chart's samples (`series`) and a channel's live tail (`tail`).
//!
//! Routes:
//! - `GET /admin`, `/admin/admin.js`, `/admin/admin.css`: the UI.
//! - `POST /admin/login` (`{"password": …}`): opens a session (see `login`);
//!   401 for a wrong password, 429 once an address guessed too often.
//! - `POST /admin/logout`, `GET /admin/session`.
//! - `POST /admin/api/<method>`: the server API.
//! - `GET /admin/series`: the last ten minutes of cluster totals.
//! - `GET /admin/tail?channel=…`: a channel's publications, as events.
//!
//! Every route but the UI's files and the login needs a session cookie;
//! the `POST`s also need the `X-Herald-Admin` header, which a form on
//! another site cannot send (on top of the cookie's `SameSite=Strict`).

mod login;
mod series;
mod tail;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::{Hub, HubError};
use tokio::sync::watch;

use crate::api::ApiState;
use crate::config::AdminConfig;
use crate::http::body::{self, BodyLimits};
use login::{Gate, Login};
use series::Series;

/// The header every admin `POST` carries.
const CSRF_HEADER: &str = "x-herald-admin";

/// The largest login body read.
const LOGIN_BODY: usize = 1024;

/// Who may see the page's resources: this origin only, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const ADMIN_JS: &str = include_str!("assets/admin.js");
const ADMIN_CSS: &str = include_str!("assets/admin.css");

/// What the admin routes share.
#[derive(Debug)]
pub(crate) struct Admin {
    gate: Gate,
    api: Arc<ApiState>,
    hub: Arc<Hub>,
    series: Arc<Series>,
    draining: watch::Receiver<bool>,
    login_body: BodyLimits,
    /// The node's name, as `/api/info` gives it.
    node_name: String,
}

impl Admin {
    /// The admin UI of a node, if `config` turns it on; starts sampling
    /// the cluster for its charts.
    pub(crate) fn start(
        config: &AdminConfig,
        api: Arc<ApiState>,
        node_name: String,
        body_timeout: std::time::Duration,
        draining: watch::Receiver<bool>,
    ) -> Option<Arc<Admin>> {
        let password = config.password.clone()?;
        let series = Arc::new(Series::default());
        Series::start(&series, &api.hub);
        let login_body = BodyLimits { max_size: LOGIN_BODY, timeout: body_timeout };
        let hub = api.hub.clone();
        let gate = Gate::new(password, config.session_ttl);
        Some(Arc::new(Admin { gate, api, hub, series, draining, login_body, node_name }))
    }
}

/// The admin routes; `secure` when they are served over TLS (the session
/// cookie is then `Secure`).
pub(crate) fn router(admin: Arc<Admin>, secure: bool) -> Router {
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/admin.js", get(script))
        .route("/admin/admin.css", get(styles))
        .route("/admin/login", post(log_in))
        .route("/admin/logout", post(log_out))
        .route("/admin/session", get(session))
        .route("/admin/api/{method}", post(api_call))
        .route("/admin/series", get(series))
        .route("/admin/tail", get(tail))
        .with_state((admin, secure))
}

type AdminState = State<(Arc<Admin>, bool)>;

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], text).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", ADMIN_JS)
}

async fn styles() -> Response {
    asset("text/css; charset=utf-8", ADMIN_CSS)
}

/// `{"error": {"code", "message"}}` with `status`.
fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The refusal (403) of a `POST` without the admin header, which a form
/// on another site cannot send.
fn forged(headers: &HeaderMap) -> Option<Response> {
    let missing = !headers.contains_key(CSRF_HEADER);
    missing.then(|| error(StatusCode::FORBIDDEN, crate::codes::PERMISSION_DENIED, "send the X-Herald-Admin header"))
}

/// The refusal of a request without a live session (401), or of a
/// `POST` without the admin header (403); `None` to go ahead.
fn refusal(admin: &Admin, headers: &HeaderMap, posting: bool) -> Option<Response> {
    if let Some(refused) = forged(headers).filter(|_| posting) {
        return Some(refused);
    }
    match login::session_cookie(headers) {
        Some(token) if admin.gate.is_open(token) => None,
        _ => Some(error(StatusCode::UNAUTHORIZED, crate::codes::UNAUTHORIZED, "log in at /admin first")),
    }
}

#[derive(serde::Deserialize)]
struct Credentials {
    password: String,
}

async fn log_in(
    State((admin, secure)): AdminState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = forged(&headers) {
        return refused;
    }
    if let Some(wait) = admin.gate.braked_for(peer.ip()) {
        return braked(peer, wait);
    }
    let password = match body::read(&headers, body, admin.login_body).await {
        Ok(bytes) => match serde_json::from_slice::<Credentials>(&bytes) {
            Ok(credentials) => credentials.password,
            Err(_) => return error(StatusCode::BAD_REQUEST, crate::codes::BAD_REQUEST, "send {\"password\": \"…\"}"),
        },
        Err(refused) => return error(refused.status(), crate::codes::BAD_REQUEST, &refused.to_string()),
    };
    match admin.gate.log_in(peer.ip(), &password) {
        Login::Opened(token) => {
            tracing::info!(%peer, "admin login");
            let cookie = login::set_cookie(&token, admin.gate.ttl(), secure);
            let mut response = StatusCode::NO_CONTENT.into_response();
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Login::Refused => {
            tracing::warn!(%peer, "admin login refused: wrong password");
            error(StatusCode::UNAUTHORIZED, crate::codes::UNAUTHORIZED, "wrong password")
        }
        Login::Braked(wait) => braked(peer, wait),
    }
}

fn braked(peer: SocketAddr, wait: std::time::Duration) -> Response {
    tracing::warn!(%peer, retry_in = ?wait, "admin login braked: too many wrong passwords");
    let seconds = wait.as_secs().max(1);
    let message = format!("too many wrong passwords; try again in {seconds} s");
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, crate::codes::TOO_MANY_REQUESTS, &message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

async fn log_out(State((admin, secure)): AdminState, headers: HeaderMap) -> Response {
    if let Some(refused) = forged(&headers) {
        return refused;
    }
    if let Some(token) = login::session_cookie(&headers) {
        admin.gate.close(token);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(cookie) = HeaderValue::from_str(&login::set_cookie("", std::time::Duration::ZERO, secure)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// Who the page is talking to, for a logged-in operator.
async fn session(State((admin, _)): AdminState, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&admin, &headers, false) {
        return refused;
    }
    let body = serde_json::json!({
        "node": admin.node_name,
        "uid": admin.hub.node().as_str(),
        "engine": admin.hub.engine().name(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    Json(body).into_response()
}

async fn api_call(
    State((admin, _)): AdminState,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match refusal(&admin, &headers, true) {
        None => crate::api::call(&admin.api, &method, &headers, body, crate::api::Errors::InBody).await,
        Some(refused) => refused,
    };
    admin.api.metrics.api_request("admin", &method, response.status().as_u16());
    response
}

async fn series(State((admin, _)): AdminState, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&admin, &headers, false) {
        return refused;
    }
    Json(admin.series.snapshot()).into_response()
}

#[derive(serde::Deserialize)]
struct TailQuery {
    channel: String,
}

async fn tail(State((admin, _)): AdminState, headers: HeaderMap, Query(query): Query<TailQuery>) -> Response {
    if let Some(refused) = refusal(&admin, &headers, false) {
        return refused;
    }
    if *admin.draining.borrow() {
        return error(StatusCode::SERVICE_UNAVAILABLE, crate::codes::NOT_AVAILABLE, "this node is draining");
    }
    let channel = match herald_engine::ChannelName::new(&query.channel) {
        Ok(channel) => channel,
        Err(problem) => {
            let message = format!("channel {:?}: {problem}", query.channel);
            return error(StatusCode::BAD_REQUEST, crate::codes::BAD_REQUEST, &message);
        }
    };
    let token = login::session_cookie(&headers).unwrap_or_default().to_owned();
    let gate = admin.clone();
    let open = move || gate.gate.is_open(&token);
    match admin.hub.watch(&channel).await {
        Ok(watch) => tail::stream(watch, admin.draining.clone(), open).into_response(),
        Err(refused) => {
            let status = match &refused {
                HubError::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
                HubError::EngineUnavailable(_) | HubError::NotAvailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            error(status, crate::codes::hub_error(&refused).code, &refused.to_string())
        }
    }
}
