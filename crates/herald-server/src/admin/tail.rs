//! The channel inspector's live tail: `GET /admin/tail?channel=…` streams
//! the channel's publications as they reach this node, as server-sent
//! events (`publication`, with `offset`, `data`, `info` and `tags`).
//!
//! It watches the channel through the hub ([`herald_core::Watch`]): the
//! operator is not a subscriber, so presence, occupancy and counts stay
//! what the application made them. The stream ends with an `end` event
//! when the watch falls behind or the node drains; the browser's
//! `EventSource` then reconnects by itself. It ends too, within
//! [`SESSION_CHECK`], once the operator's session does (a log-out, its
//! expiry): the reconnect then needs a new log-in.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use herald_core::Watch;
use herald_engine::Publication;
use tokio::sync::watch;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often, at the longest, the operator's session is checked again.
pub(crate) const SESSION_CHECK: Duration = Duration::from_secs(5);

/// Streams `watch`'s publications until it ends, `draining` turns true,
/// or `open` says the operator's session has ended (asked before every
/// publication and every [`SESSION_CHECK`]).
pub(crate) fn stream(
    watch: Watch,
    draining: watch::Receiver<bool>,
    open: impl Fn() -> bool + Send + Sync + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = stream::unfold(Some((watch, draining, open)), |state| async move {
        let (mut watch, mut draining, open) = state?;
        let next = loop {
            let next = tokio::select! {
                next = watch.next() => next,
                _ = draining.wait_for(|draining| *draining) => None,
                _ = tokio::time::sleep(SESSION_CHECK) => match open() {
                    true => continue,
                    false => None,
                },
            };
            break next.filter(|_| open());
        };
        match next {
            Some(publication) => Some((Ok(publication_event(&publication)), Some((watch, draining, open)))),
            None => Some((Ok(Event::default().event("end").data("the tail ended; reconnecting")), None)),
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn publication_event(publication: &Publication) -> Event {
    // JSON payloads are shown as JSON; anything else as text.
    let data = match serde_json::from_slice::<serde_json::Value>(&publication.data) {
        Ok(value) => value,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(&publication.data).into_owned()),
    };
    let info = publication.info.as_ref().map(|info| {
        serde_json::json!({
            "user": info.user.as_str(),
            "client": info.client.as_str(),
        })
    });
    let body = serde_json::json!({
        "offset": publication.offset.get(),
        "data": data,
        "info": info,
        "tags": publication.tags,
    });
    Event::default().event("publication").data(body.to_string())
}
