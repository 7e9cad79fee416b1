//! Sending webhooks: signed POSTs of `{"time_ms", "events": […]}` to one
//! target, batched when it asks, retried with backoff. The Pusher apps'
//! webhooks and the hub's events webhooks both send through this.
//!
//! Sending never holds up the node: events go into a bounded queue per
//! target, and a full queue drops the event (counted; a warning at most
//! every 10 s says how many). Each target has one worker that sends in
//! order. A request that fails (connection error or a non-2xx answer) is
//! retried after 1 s, 2 s, 4 s, … up to 60 s apart, for 5 minutes, then
//! dropped with an error in the log. A target that stops answering is
//! logged once when it starts failing and once when it answers again, not
//! at every retry: a target nobody runs must not flood the log.
//!
//! A target's worker lives as long as the target: once it is dropped (a
//! reload removed or changed it; an unchanged one is kept across reloads),
//! the worker stops, even mid-retry, and what its queue held is discarded
//! (counted): a target removed, or whose secret was replaced, gets no more
//! requests, and events do not arrive from two workers out of order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

use crate::config::HttpEndpoint;
use crate::http::client;
use crate::metrics::Metrics;

/// Events a target's queue holds before new ones are dropped.
const QUEUE: usize = 10_000;
/// The most events one batched request carries.
const BATCH_MAX: usize = 100;
/// How long a batch gathers events after its first.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two warnings about dropped events.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// How long a failing request is retried.
const RETRY_FOR: Duration = Duration::from_secs(300);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(60);

/// An event a target may subscribe to by name.
pub(crate) trait Named {
    fn name(&self) -> &'static str;
}

/// How a target's requests are signed: `signature` carries the hex
/// HMAC-SHA256 of the body with `secret`; `key` is an extra header naming
/// the key (Pusher's `X-Pusher-Key`), if any.
#[derive(Clone)]
pub(crate) struct Signing {
    pub(crate) key: Option<(&'static str, String)>,
    pub(crate) signature: &'static str,
    pub(crate) secret: String,
}

/// Where one target's events go, and which it wants.
pub(crate) struct Target<E> {
    /// Event names it wants; empty for all.
    events: Vec<String>,
    /// Each event with when it happened (Unix milliseconds).
    queue: mpsc::Sender<(u128, E)>,
    metrics: Arc<Metrics>,
    /// Events dropped since the last warning, and when that was.
    dropped: AtomicU64,
    warned_at: Mutex<Option<tokio::time::Instant>>,
    /// Stops the worker when dropped with the target.
    _stop: oneshot::Sender<()>,
}

impl<E: Named + Serialize + Clone + Send + Sync + 'static> Target<E> {
    /// Starts the target's worker; `None` if `url` is unusable (the
    /// configuration's check reports it) or needs TLS that is not set up.
    pub(crate) fn start(
        url: &str,
        events: Vec<String>,
        batch: bool,
        signing: Signing,
        tls: Option<&TlsConnector>,
        metrics: &Arc<Metrics>,
    ) -> Option<Self> {
        let endpoint = HttpEndpoint::parse(url)?;
        let tls = if endpoint.is_tls() { Some(tls?.clone()) } else { None };
        let (queue, receiver) = mpsc::channel(QUEUE);
        let (stop, stopped) = oneshot::channel();
        let worker = Worker {
            endpoint,
            url: crate::config::endpoint::for_logs(url),
            signing,
            batch,
            tls,
            metrics: metrics.clone(),
            failing_since: None,
        };
        tokio::spawn(worker.run_until(receiver, stopped));
        Some(Self {
            events,
            queue,
            metrics: metrics.clone(),
            dropped: AtomicU64::new(0),
            warned_at: Mutex::new(None),
            _stop: stop,
        })
    }

    /// Whether the target wants events named `name`.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|wanted| wanted == name)
    }

    /// Queues `event` if the target wants it; drops it (counted, logged)
    /// when the queue is full.
    pub(crate) fn send(&self, event: &E) {
        if !self.wants(event.name()) {
            return;
        }
        if self.queue.try_send((unix_millis(), event.clone())).is_err() {
            self.metrics.webhook("queue_full");
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            let mut warned_at = self.warned_at.lock().unwrap_or_else(|e| e.into_inner());
            if warned_at.is_none_or(|at| at.elapsed() >= DROP_WARNING_EVERY) {
                *warned_at = Some(tokio::time::Instant::now());
                self.dropped.store(0, Ordering::Relaxed);
                tracing::warn!(
                    dropped,
                    "webhook queue full (its target is slow or down): events dropped; see herald_webhooks_total"
                );
            }
        }
    }
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// Sends one target's events in order.
struct Worker {
    endpoint: HttpEndpoint,
    /// The target as logs show it (no query, which may hold a token).
    url: String,
    signing: Signing,
    batch: bool,
    /// For an `https://` target.
    tls: Option<TlsConnector>,
    metrics: Arc<Metrics>,
    /// Since when requests to the target have been failing, if they are.
    failing_since: Option<tokio::time::Instant>,
}

#[derive(Serialize)]
struct Body<'a, E> {
    time_ms: u128,
    events: &'a [E],
}

impl Worker {
    /// Sends the queue's events until its target is dropped, then
    /// discards what is left.
    async fn run_until<E: Serialize>(mut self, mut queue: mpsc::Receiver<(u128, E)>, stopped: oneshot::Receiver<()>) {
        tokio::select! {
            () = self.run(&mut queue) => {}
            _ = stopped => {
                queue.close();
                let mut discarded = 0u64;
                while queue.try_recv().is_ok() {
                    self.metrics.webhook("discarded");
                    discarded = discarded.saturating_add(1);
                }
                if discarded > 0 {
                    tracing::info!(url = %self.url, discarded, "webhook target removed or changed by a reload: its queued events are discarded");
                }
            }
        }
    }

    async fn run<E: Serialize>(&mut self, queue: &mut mpsc::Receiver<(u128, E)>) {
        while let Some((time_ms, first)) = queue.recv().await {
            let mut events = vec![first];
            if self.batch {
                let window = tokio::time::sleep(BATCH_WINDOW);
                tokio::pin!(window);
                while events.len() < BATCH_MAX {
                    tokio::select! {
                        next = queue.recv() => match next {
                            Some((_, event)) => events.push(event),
                            None => break,
                        },
                        _ = &mut window => break,
                    }
                }
            }
            self.deliver(time_ms, &events).await;
        }
    }

    /// Sends `events`, the first of which happened at `time_ms`: the body
    /// says when (as Pusher's `time_ms`), however long it waited behind a
    /// failing target, so the receiver can tell a late webhook.
    async fn deliver<E: Serialize>(&mut self, time_ms: u128, events: &[E]) {
        let body = Bytes::from(crate::json::to_vec(&Body { time_ms, events }));
        let signature = crate::pusher::sign::hmac_hex(&self.signing.secret, &body);
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_secs(1);
        loop {
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, self.post(body.clone(), &signature)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    self.metrics.webhook("delivered");
                    if let Some(since) = self.failing_since.take() {
                        tracing::info!(url = %self.url, failed_for = ?since.elapsed(), "webhook target answers again");
                    }
                    return;
                }
                Ok(Ok(status)) => format!("answered {status}"),
                Ok(Err(error)) => error,
                Err(_) => format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            };
            if started.elapsed().saturating_add(delay) > RETRY_FOR {
                self.metrics.webhook("given_up");
                tracing::error!(url = %self.url, events = events.len(), %outcome, "webhook dropped after 5 minutes of retries");
                return;
            }
            self.metrics.webhook("retried");
            match self.failing_since {
                None => {
                    self.failing_since = Some(started);
                    tracing::warn!(url = %self.url, %outcome, "webhook failed; retrying with backoff (until it answers, further failures are logged at debug)");
                }
                Some(_) => tracing::debug!(url = %self.url, %outcome, retry_in = ?delay, "webhook failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(RETRY_MAX_DELAY);
        }
    }

    async fn post(&self, body: Bytes, signature: &str) -> Result<u16, String> {
        let endpoint = &self.endpoint;
        let mut request = Request::post(endpoint.path())
            .header(hyper::header::HOST, endpoint.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(self.signing.signature, signature);
        if let Some((name, value)) = &self.signing.key {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = client::send(self.tls.as_ref(), endpoint.host(), endpoint.port(), request).await?;
        Ok(response.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[derive(Clone, Serialize)]
    struct Ping;

    impl Named for Ping {
        fn name(&self) -> &'static str {
            "ping"
        }
    }

    /// A receiver that answers every request 500, and how many it got.
    async fn failing_receiver() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(AtomicUsize::new(0));
        let counted = got.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        (url, got)
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_dropped_target_stops_its_worker_mid_retry_and_discards_its_queue() {
        let (url, got) = failing_receiver().await;
        let metrics = Arc::new(Metrics::new());
        let signing = Signing { key: None, signature: "X-Signature", secret: "a-webhook-secret".into() };
        let target = Target::start(&url, Vec::new(), false, signing, None, &metrics).expect("a usable URL");
        for _ in 0..3 {
            target.send(&Ping);
        }
        until("the first event's first attempt", || got.load(Ordering::SeqCst) == 1).await;

        drop(target);
        let discarded = r#"herald_webhooks_total{outcome="discarded"} 2"#;
        until("the two queued behind it are discarded", || metrics.render().contains(discarded)).await;
        assert_eq!(got.load(Ordering::SeqCst), 1, "no retry after the target was dropped");
    }

    /// A receiver that answers its first request 500 and the others 200,
    /// keeping the bodies it took.
    async fn receiver_failing_once() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let taken = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let kept = taken.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
                if !first {
                    kept.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                }
                async move {
                    if first {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        (url, taken)
    }

    #[tokio::test]
    async fn an_event_that_waited_behind_a_retry_says_when_it_happened_not_when_it_was_sent() {
        let (url, taken) = receiver_failing_once().await;
        let metrics = Arc::new(Metrics::new());
        let signing = Signing { key: None, signature: "X-Signature", secret: "a-webhook-secret".into() };
        let target = Target::start(&url, Vec::new(), false, signing, None, &metrics).expect("a usable URL");
        let happened = unix_millis();
        target.send(&Ping);
        target.send(&Ping);
        until("both delivered, the first after a retry 1 s later", || taken.lock().unwrap().len() == 2).await;

        let sent_at = unix_millis();
        assert!(sent_at >= happened + 1000, "the retry waited its second");
        for body in taken.lock().unwrap().iter() {
            let time_ms = u128::from(body["time_ms"].as_u64().unwrap());
            assert!(time_ms >= happened && time_ms < happened + 500, "{time_ms} is not when it happened ({happened})");
        }
    }
}
