//! Pusher webhooks: signed POSTs to each app's endpoints, batched when the
//! target asks, retried with backoff.
//!
//! The hub decides each cluster-wide transition on exactly one node (see
//! `herald_core::hub::occupancy`), and that node sends its webhook, so a
//! channel is reported occupied once per cluster, not once per node.
//!
//! Sending never holds up the hub: events go into a bounded queue per
//! target, and a full queue drops the event with a warning. Each target has
//! one worker that sends in order. A request that fails (connection error
//! or a non-2xx answer) is retried after 1 s, 2 s, 4 s, … up to 60 s apart,
//! for 5 minutes, then dropped with an error in the log.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use herald_core::HubObserver;
use herald_engine::{ChannelName, ClientInfo};

use super::{sign, App, Frontend};
use crate::config::{PusherApp, WebhookEndpoint, WebhookTarget};
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
/// How long a failing request is retried.
const RETRY_FOR: Duration = Duration::from_secs(300);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(60);

/// One webhook event, named as Pusher names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)] // the names are Pusher's: `client_event` among them
pub(crate) enum Event {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    CacheMiss {
        channel: String,
    },
}

impl Event {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Event::ChannelOccupied { .. } => "channel_occupied",
            Event::ChannelVacated { .. } => "channel_vacated",
            Event::MemberAdded { .. } => "member_added",
            Event::MemberRemoved { .. } => "member_removed",
            Event::ClientEvent { .. } => "client_event",
            Event::CacheMiss { .. } => "cache_miss",
        }
    }
}

struct Target {
    events: Vec<String>,
    queue: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
}

/// Every app's webhook targets.
#[derive(Default)]
pub(crate) struct Webhooks {
    targets: std::collections::HashMap<String, Vec<Target>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("apps", &self.targets.len()).finish()
    }
}

impl Webhooks {
    /// Starts one worker per target. Call inside the runtime.
    pub(crate) fn start(apps: &[PusherApp], tls: Option<&TlsConnector>, metrics: &Arc<Metrics>) -> Arc<Self> {
        let mut targets = std::collections::HashMap::new();
        for app in apps {
            let list: Vec<Target> =
                app.webhooks.iter().filter_map(|hook| Self::target(app, hook, tls, metrics.clone())).collect();
            targets.insert(app.id.clone(), list);
        }
        Arc::new(Self { targets })
    }

    fn target(
        app: &PusherApp,
        hook: &WebhookTarget,
        tls: Option<&TlsConnector>,
        metrics: Arc<Metrics>,
    ) -> Option<Target> {
        let endpoint = WebhookEndpoint::parse(&hook.url)?;
        let tls = if endpoint.is_tls() { Some(tls?.clone()) } else { None };
        let (queue, events) = mpsc::channel(QUEUE);
        let worker = Worker {
            endpoint,
            url: hook.url.clone(),
            key: app.key.clone(),
            secret: app.secret.expose().to_owned(),
            batch: hook.batch,
            tls,
            metrics: metrics.clone(),
        };
        tokio::spawn(worker.run(events));
        Some(Target { events: hook.events.clone(), queue, metrics })
    }

    /// Queues `event` for every target of `app` that wants it.
    pub(crate) fn send(&self, app: &App, event: Event) {
        let Some(targets) = self.targets.get(&app.config.id) else { return };
        for target in targets.iter().filter(|t| t.events.is_empty() || t.events.iter().any(|e| e == event.name())) {
            if target.queue.try_send(event.clone()).is_err() {
                target.metrics.webhook("queue_full");
                tracing::warn!(app = %app.config.id, event = event.name(), "webhook queue full; event dropped");
            }
        }
    }

    fn wants(&self, app: &App) -> bool {
        self.targets.get(&app.config.id).is_some_and(|t| !t.is_empty())
    }
}

/// Sends one target's events in order.
struct Worker {
    endpoint: WebhookEndpoint,
    url: String,
    key: String,
    secret: String,
    batch: bool,
    /// For an `https://` target.
    tls: Option<TlsConnector>,
    metrics: Arc<Metrics>,
}

#[derive(Serialize)]
struct Body<'a> {
    time_ms: u128,
    events: &'a [Event],
}

impl Worker {
    async fn run(self, mut queue: mpsc::Receiver<Event>) {
        while let Some(first) = queue.recv().await {
            let mut events = vec![first];
            if self.batch {
                let window = tokio::time::sleep(BATCH_WINDOW);
                tokio::pin!(window);
                while events.len() < BATCH_MAX {
                    tokio::select! {
                        next = queue.recv() => match next {
                            Some(event) => events.push(event),
                            None => break,
                        },
                        _ = &mut window => break,
                    }
                }
            }
            self.deliver(&events).await;
        }
    }

    async fn deliver(&self, events: &[Event]) {
        let time_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let body = Bytes::from(crate::json::to_vec(&Body { time_ms, events }));
        let signature = sign::hmac_hex(&self.secret, &body);
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_secs(1);
        loop {
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, self.post(body.clone(), &signature)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    self.metrics.webhook("delivered");
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
            tracing::warn!(url = %self.url, %outcome, retry_in = ?delay, "webhook failed; retrying");
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(RETRY_MAX_DELAY);
        }
    }

    async fn post(&self, body: Bytes, signature: &str) -> Result<u16, String> {
        let endpoint = &self.endpoint;
        let request = Request::post(endpoint.path())
            .header(hyper::header::HOST, endpoint.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("X-Pusher-Key", &self.key)
            .header("X-Pusher-Signature", signature)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = client::send(self.tls.as_ref(), endpoint.host(), endpoint.port(), request).await?;
        Ok(response.status().as_u16())
    }
}

/// Turns the hub's cluster-wide transitions into the owning app's webhooks.
#[derive(Debug)]
pub(crate) struct Observer(pub Weak<Frontend>);

impl Observer {
    fn emit(&self, channel: &ChannelName, make: impl FnOnce(String) -> Event) {
        let Some(frontend) = self.0.upgrade() else { return };
        let (apps, _) = frontend.apps.accepted();
        let webhooks = frontend.webhooks();
        let Some(app) = apps.owner(channel) else { return };
        if !webhooks.wants(app) {
            return;
        }
        let Some(name) = app.name_of(channel).filter(|n| !n.starts_with('#') && super::valid_channel_name(n)) else {
            return;
        };
        webhooks.send(app, make(name.to_owned()));
    }
}

impl HubObserver for Observer {
    fn channel_occupied(&self, channel: &ChannelName) {
        self.emit(channel, |channel| Event::ChannelOccupied { channel });
    }

    fn channel_vacated(&self, channel: &ChannelName) {
        self.emit(channel, |channel| Event::ChannelVacated { channel });
    }

    fn user_joined(&self, channel: &ChannelName, info: &ClientInfo) {
        let user_id = info.user.as_str().to_owned();
        self.emit(channel, |channel| Event::MemberAdded { channel, user_id });
    }

    fn user_left(&self, channel: &ChannelName, info: &ClientInfo) {
        let user_id = info.user.as_str().to_owned();
        self.emit(channel, |channel| Event::MemberRemoved { channel, user_id });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_pusher_names_them() {
        let event = Event::MemberAdded { channel: "presence-room".into(), user_id: "42".into() };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"name": "member_added", "channel": "presence-room", "user_id": "42"})
        );
        let event = Event::ClientEvent {
            channel: "private-chat".into(),
            event: "client-typing".into(),
            data: "{\"on\":true}".into(),
            socket_id: "1.2".into(),
            user_id: None,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["name"], "client_event");
        assert!(json.get("user_id").is_none(), "user_id only on presence channels");
    }
}
