//! The demos' web site at `/demos/`: their pages and scripts from the demos'
//! folder, the browser libraries from its `node_modules`, and `/demos/token`,
//! which signs anyone in under the name they give.
//!
//! Only what a page needs leaves the folder: a path is served when every
//! segment is plain (letters, digits, `-`, `_`, `.`, `@`, not starting with
//! a dot) and its extension names a web file (`.html`, `.js`, `.mjs`,
//! `.css`, `.svg`, `.png`), so neither the config nor `package.json` is
//! served. `vendor/<package>/…` reads from `node_modules/<package>/` for the
//! few packages the pages load.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::{self, ConnectClaims, TokenMinter};

/// The npm packages the pages load, from the demos' `node_modules`.
const PACKAGES: [&str; 5] = ["centrifuge", "pusher-js", "yjs", "lib0", "isomorphic.js"];

/// How long a demo sign-in lasts; the pages fetch a new token before then.
const TOKEN_TTL_SECONDS: u64 = 3600;

/// The longest name a demo user may take, in characters.
const MAX_NAME: usize = 32;

/// What the site serves from.
pub(crate) struct Site {
    dir: PathBuf,
    minter: TokenMinter,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Site {
    /// Serves `dir`; signs tokens with the node's HMAC `secret`.
    pub(crate) fn new(dir: PathBuf, secret: &str) -> Arc<Site> {
        Arc::new(Site { dir, minter: TokenMinter::hmac(secret) })
    }
}

/// The routes under `/demos`.
pub(crate) fn router(site: Arc<Site>) -> Router {
    Router::new()
        .route("/demos", get(|| async { Redirect::permanent("/demos/") }))
        .route("/demos/", get(index))
        .route("/demos/token", get(token))
        .route("/demos/{*path}", get(file))
        .with_state(site)
}

async fn index(State(site): State<Arc<Site>>) -> Response {
    serve(&site.dir.join("index.html"), "text/html; charset=utf-8").await
}

async fn file(State(site): State<Arc<Site>>, UrlPath(path): UrlPath<String>) -> Response {
    match resolve(&site.dir, &path) {
        Some((file, kind)) => serve(&file, kind).await,
        None => not_found(),
    }
}

/// The file a URL path names, and its content type; `None` for anything
/// the site does not serve.
fn resolve(dir: &Path, path: &str) -> Option<(PathBuf, &'static str)> {
    let segments: Vec<&str> = path.split('/').collect();
    if !segments.iter().all(|segment| plain(segment)) {
        return None;
    }
    let mut file = match segments.as_slice() {
        ["vendor", package, rest @ ..] if PACKAGES.contains(package) && !rest.is_empty() => {
            dir.join("node_modules").join(package).join(rest.join("/"))
        }
        ["vendor", ..] | ["node_modules", ..] => return None,
        _ => dir.join(path),
    };
    // Yjs imports lib0's modules without their extension (`lib0/array`).
    if file.extension().is_none() {
        file.set_extension("js");
    }
    let kind = match file.extension().and_then(|e| e.to_str())? {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => return None,
    };
    Some((file, kind))
}

/// A path segment that names a file or folder and nothing else.
fn plain(segment: &str) -> bool {
    !segment.is_empty()
        && !segment.starts_with('.')
        && segment.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

async fn serve(file: &Path, kind: &'static str) -> Response {
    match tokio::fs::read(file).await {
        Ok(body) => ([(header::CONTENT_TYPE, kind), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => not_found(),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "a demo file cannot be read");
            (StatusCode::INTERNAL_SERVER_ERROR, "the file cannot be read; see the node's log\n").into_response()
        }
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such demo file; the demos start at /demos/\n").into_response()
}

#[derive(Deserialize)]
struct SignIn {
    user: String,
}

/// `GET /demos/token?user=<name>`: a connection token for `<name>`, valid
/// for an hour, with `{"name": <name>}` as the connection's info. Anyone
/// may take any name: this stands in for an application's login.
async fn token(State(site): State<Arc<Site>>, query: Result<Query<SignIn>, QueryRejection>) -> Response {
    let name = match &query {
        Ok(Query(SignIn { user })) => user.trim(),
        Err(_) => "",
    };
    let length = name.chars().count();
    if length == 0 || length > MAX_NAME || name.chars().any(char::is_control) {
        let error = format!("?user= needs a name of 1 to {MAX_NAME} characters, without control characters");
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": error }))).into_response();
    }
    let claims = ConnectClaims {
        sub: name.to_owned(),
        exp: Some(auth::unix_now().saturating_add(TOKEN_TTL_SECONDS)),
        info: Some(serde_json::json!({ "name": name })),
        ..ConnectClaims::default()
    };
    let token = site.minter.sign(&claims);
    ([(header::CACHE_CONTROL, "no-store")], Json(serde_json::json!({ "token": token }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_scripts_and_the_listed_packages_are_served() {
        let dir = Path::new("/demos");
        let served = |path: &str| resolve(dir, path).map(|(file, kind)| (file.display().to_string(), kind));
        assert_eq!(served("chat.html"), Some(("/demos/chat.html".into(), "text/html; charset=utf-8")));
        assert_eq!(served("shared/demo.css"), Some(("/demos/shared/demo.css".into(), "text/css; charset=utf-8")));
        assert_eq!(
            served("vendor/centrifuge/dist/centrifuge.js"),
            Some(("/demos/node_modules/centrifuge/dist/centrifuge.js".into(), "text/javascript; charset=utf-8"))
        );
        assert_eq!(
            served("vendor/lib0/observable"),
            Some(("/demos/node_modules/lib0/observable.js".into(), "text/javascript; charset=utf-8")),
            "yjs's extension-less imports of lib0"
        );
    }

    #[test]
    fn nothing_outside_the_pages_and_the_listed_packages_is_served() {
        let dir = Path::new("/demos");
        for path in [
            "herald.toml",
            "package.json",
            "package-lock.json",
            "../herald.toml",
            "shared/../../etc/passwd",
            "node_modules/centrifuge/dist/centrifuge.js",
            "vendor/left-pad/index.js",
            "vendor/centrifuge",
            "vendor/centrifuge/package.json",
            "vendor/centrifuge/../../herald.toml",
            ".git/config",
            "chat.html/",
            "a//b.js",
            "a\\b.js",
            "%2e%2e/x.js",
        ] {
            assert_eq!(resolve(dir, path), None, "{path} must not be served");
        }
    }
}
