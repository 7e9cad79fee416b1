//! Centrifugo's older API format, which Centrifugo still serves at
//! `POST /api` and which some server SDKs speak (gocent, older cent and
//! phpcent): one or more commands, JSON objects one after another (a line
//! each, as the SDKs write them, or spread over several),
//! `{"id"?, "method", "params"}`, the method named (`"publish"`) or
//! numbered as Centrifugo's `MethodType` numbers them (`0`); each is
//! answered, in order, by a line `{"id"?, "result": …}` or
//! `{"id"?, "error": {"code", "message"}}`. The methods, their parameters
//! and their results are those of `POST /api/<method>`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

use super::{ApiCommand, ApiError, ApiState, Reply};

/// One command of the older format.
#[derive(Debug, Deserialize)]
struct Command<'a> {
    #[serde(default)]
    id: Option<u64>,
    method: Method,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

/// A method by its name, or by its number in Centrifugo's `MethodType`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Method {
    Number(u64),
    Name(String),
}

impl Method {
    /// The method's name as `/api/<method>` has it.
    fn name(&self) -> Result<&str, ApiError> {
        const NUMBERED: [&str; 13] = [
            "publish",
            "broadcast",
            "unsubscribe",
            "disconnect",
            "presence",
            "presence_stats",
            "history",
            "history_remove",
            "channels",
            "info",
            "rpc",
            "refresh",
            "subscribe",
        ];
        match self {
            Method::Name(name) => Ok(name),
            Method::Number(number) => usize::try_from(*number)
                .ok()
                .and_then(|n| NUMBERED.get(n).copied())
                .ok_or_else(|| ApiError::MethodNotFound(number.to_string())),
        }
    }
}

/// `POST /api`: the caller is authenticated by its key before the body is
/// read (within `http.max_body_size` and `http.body_timeout`); at most
/// `api.max_batch` commands.
pub(crate) async fn handle(State(api): State<Arc<ApiState>>, headers: HeaderMap, body: Body) -> Response {
    let response = respond(&api, &headers, body).await;
    api.metrics.api_request("server", "legacy", response.status().as_u16());
    response
}

async fn respond(api: &ApiState, headers: &HeaderMap, body: Body) -> Response {
    if let Err(error) = api.authorize(headers) {
        tracing::info!(%error, "API call refused");
        return error.into_response();
    }
    let body = match crate::http::body::read(headers, body, api.body).await {
        Ok(body) => body,
        Err(error) => return ApiError::Body(error).into_response(),
    };
    // Read one after another; the first that cannot be read is answered
    // in its place, and ends the reading (what follows it has no start).
    let mut commands: Vec<Result<Command<'_>, ApiError>> = Vec::new();
    for read in serde_json::Deserializer::from_slice(&body).into_iter::<Command>() {
        let failed = read.is_err();
        commands.push(read.map_err(super::methods::refused));
        if let Err(error) = api.within_batch_limit(commands.len(), "commands in a request") {
            return error.into_response();
        }
        if failed {
            break;
        }
    }
    if commands.is_empty() {
        return ApiError::Undecodable("no command: send {\"method\": …, \"params\": {…}}, one a line".into())
            .into_response();
    }
    let mut out = BytesMut::with_capacity(64);
    for command in commands {
        let (id, outcome) = match command {
            Ok(command) => (command.id, run(api, &command).await),
            Err(error) => (None, Err(error)),
        };
        if !out.is_empty() {
            out.put_u8(b'\n');
        }
        write_line(&mut out, id, outcome);
    }
    ([(header::CONTENT_TYPE, "application/json")], out.freeze()).into_response()
}

async fn run(api: &ApiState, command: &Command<'_>) -> Result<super::reply::Response, ApiError> {
    let name = command.method.name()?;
    let params = command.params.map_or("{}", RawValue::get);
    let parsed = ApiCommand::parse(name, params.as_bytes())?;
    if matches!(parsed, ApiCommand::Batch(_)) {
        return Err(ApiError::MethodNotFound(name.to_owned()));
    }
    api.execute(parsed).await
}

/// One answer: `{"id"?, "result": …}` or `{"id"?, "error": …}`.
fn write_line(out: &mut BytesMut, id: Option<u64>, outcome: Result<super::reply::Response, ApiError>) {
    let answer = match outcome {
        Ok(reply) => Reply::to_json(&reply),
        Err(error) => {
            let mut body = BytesMut::from(&b"{\"error\":"[..]);
            error.write(&mut body);
            body.put_u8(b'}');
            body.freeze()
        }
    };
    match (id, answer.strip_prefix(b"{")) {
        (Some(id), Some(rest)) => {
            out.put_slice(format!("{{\"id\":{id},").as_bytes());
            out.put_slice(rest);
        }
        _ => out.put_slice(&answer),
    }
}

/// Any other HTTP method on `/api`: 405, saying what to send.
pub(crate) async fn wrong_method() -> Response {
    let message = "method not allowed: API calls are POST /api/<method>, or POST /api with commands";
    let body = serde_json::json!({"error": {"code": crate::codes::BAD_REQUEST, "message": message}});
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")], axum::Json(body)).into_response()
}
