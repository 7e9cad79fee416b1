//! Pusher webhooks: signed POSTs to each app's endpoints (`X-Pusher-Key`,
//! `X-Pusher-Signature`), batched when the target asks, retried with
//! backoff, through the node's webhook sender (`crate::webhook`).
//!
//! The hub decides each cluster-wide transition on exactly one node (see
//! `herald_core::hub::occupancy`), and that node sends its webhook, so a
//! channel is reported occupied once per cluster, not once per node.

use std::sync::{Arc, Weak};

use serde::Serialize;
use tokio_rustls::TlsConnector;

use herald_core::HubObserver;
use herald_engine::{ChannelName, ClientInfo};

use super::{App, Frontend};
use crate::config::{PusherApp, WebhookTarget};
use crate::metrics::Metrics;
use crate::webhook::{Named, Signing, Target};

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
    SubscriptionCount {
        channel: String,
        subscription_count: usize,
    },
}

impl Named for Event {
    fn name(&self) -> &'static str {
        match self {
            Event::ChannelOccupied { .. } => "channel_occupied",
            Event::ChannelVacated { .. } => "channel_vacated",
            Event::MemberAdded { .. } => "member_added",
            Event::MemberRemoved { .. } => "member_removed",
            Event::ClientEvent { .. } => "client_event",
            Event::CacheMiss { .. } => "cache_miss",
            Event::SubscriptionCount { .. } => "subscription_count",
        }
    }
}

/// Every app's webhook targets, each with what it was made from.
#[derive(Default)]
pub(crate) struct Webhooks {
    targets: std::collections::HashMap<String, Vec<Made>>,
}

/// A target, with what it was made from.
type Made = (Recipe, Arc<Target<Event>>);

/// What a target is made from: a reload keeps a target (its worker and
/// queue) whose recipe it finds unchanged.
#[derive(PartialEq)]
struct Recipe {
    url: String,
    events: Vec<String>,
    batch: bool,
    key: String,
    secret: String,
}

impl Recipe {
    fn of(app: &PusherApp, hook: &WebhookTarget) -> Self {
        Recipe {
            url: hook.url.clone(),
            events: hook.events.clone(),
            batch: hook.batch,
            key: app.key.clone(),
            secret: app.secret.expose().to_owned(),
        }
    }
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("apps", &self.targets.len()).finish()
    }
}

impl Webhooks {
    /// Starts one worker per target, keeping those of `previous` (the
    /// targets before a reload) whose app and recipe are unchanged; the
    /// others' workers stop once `previous` is dropped. Call inside the
    /// runtime.
    pub(crate) fn start(
        apps: &[PusherApp],
        previous: Option<&Webhooks>,
        tls: Option<&TlsConnector>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Self> {
        let mut targets = std::collections::HashMap::new();
        for app in apps {
            let before = previous.and_then(|previous| previous.targets.get(&app.id));
            let list: Vec<Made> = app
                .webhooks
                .iter()
                .filter_map(|hook| {
                    let recipe = Recipe::of(app, hook);
                    let kept = before.and_then(|before| before.iter().find(|(made, _)| *made == recipe));
                    let target = match kept {
                        Some((_, target)) => target.clone(),
                        None => Arc::new(Self::target(app, hook, tls, metrics.clone())?),
                    };
                    Some((recipe, target))
                })
                .collect();
            targets.insert(app.id.clone(), list);
        }
        Arc::new(Self { targets })
    }

    fn target(
        app: &PusherApp,
        hook: &WebhookTarget,
        tls: Option<&TlsConnector>,
        metrics: Arc<Metrics>,
    ) -> Option<Target<Event>> {
        let signing = Signing {
            key: Some(("X-Pusher-Key", app.key.clone())),
            signature: "X-Pusher-Signature",
            secret: app.secret.expose().to_owned(),
        };
        Target::start(&hook.url, hook.events.clone(), hook.batch, signing, tls, &metrics)
    }

    /// Queues `event` for every target of `app` that wants it.
    pub(crate) fn send(&self, app: &App, event: Event) {
        let Some(targets) = self.targets.get(&app.config.id) else { return };
        for (_, target) in targets {
            target.send(&event);
        }
    }

    fn wants(&self, app: &App) -> bool {
        self.targets.get(&app.config.id).is_some_and(|t| !t.is_empty())
    }
}

/// Turns the hub's cluster-wide transitions into the owning app's webhooks.
///
/// As Pusher's, `channel_vacated` and `member_removed` wait
/// [`DEPARTURE_GRACE`]: a channel filled again, or a member back, in that
/// time (a page reload) sends neither the departure nor the return. A
/// return on this node cancels the waiting departure; when the wait ends,
/// the departure is sent only if the cluster still has the channel empty
/// (as the engine last heard from each node) or the member gone: a return
/// on another node, which then told it, drops it, and the receiver sees an
/// arrival twice. A departure never follows an arrival on this node that
/// undid it; one on another node deciding in the instant between the
/// check and the send can still come first. A node that stops drops the
/// departures still waiting (sent blind, they could follow the arrival of
/// its clients reconnected elsewhere).
#[derive(Debug, Clone)]
pub(crate) struct Observer {
    frontend: Weak<Frontend>,
    departures: Arc<Departures>,
}

/// How long a departure waits for a return.
const DEPARTURE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Departures waiting at most; past it they are sent at once.
const MOST_WAITING: usize = 100_000;

/// A channel (`None`: its vacating) or a member of it waiting to depart.
type Departure = (ChannelName, Option<String>);

/// The departures waiting for their grace to end, each with its number:
/// a departure made again replaces the one before (whose timer then does
/// nothing), so each waits its whole grace.
#[derive(Debug, Default)]
pub(crate) struct Departures(std::sync::Mutex<DeparturesState>);

#[derive(Debug, Default)]
struct DeparturesState {
    waiting: std::collections::HashMap<Departure, u64>,
    next: u64,
}

impl Departures {
    fn state(&self) -> std::sync::MutexGuard<'_, DeparturesState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DeparturesState {
    /// Whether `departure` still waits under `number` (no arrival took it,
    /// no later departure of it replaced it).
    fn waits(&self, departure: &Departure, number: u64) -> bool {
        self.waiting.get(departure) == Some(&number)
    }
}

impl Observer {
    pub(crate) fn new(frontend: Weak<Frontend>, departures: Arc<Departures>) -> Self {
        Self { frontend, departures }
    }

    /// The app owning `channel`, when it has webhooks, and the channel's
    /// name in it (not for `#server-to-user-` channels).
    fn owner(&self, channel: &ChannelName) -> Option<(Arc<Frontend>, Arc<App>, String)> {
        let frontend = self.frontend.upgrade()?;
        let (apps, _) = frontend.apps.accepted();
        let app = apps.owner(channel)?.clone();
        if !frontend.webhooks().wants(&app) {
            return None;
        }
        let name = app.name_of(channel).filter(|n| !n.starts_with('#') && super::valid_channel_name(n))?.to_owned();
        Some((frontend, app, name))
    }

    fn emit(&self, channel: &ChannelName, make: impl FnOnce(String) -> Event) {
        if let Some((frontend, app, name)) = self.owner(channel) {
            frontend.webhooks().send(&app, make(name));
        }
    }

    /// An arrival: sent, unless it cancels a departure still waiting.
    fn arrive(&self, departure: Departure, make: impl FnOnce(String) -> Event) {
        let mut state = self.departures.state();
        if state.waiting.remove(&departure).is_none() {
            // Under the lock: a departure's timer deciding now sends its
            // departure before this arrival, or not at all.
            self.emit(&departure.0, make);
        }
    }

    /// A departure: sent once its grace ends, if nothing cancelled it and
    /// the cluster still agrees.
    fn depart(&self, departure: Departure, make: impl FnOnce(String) -> Event + Send + 'static) {
        if self.owner(&departure.0).is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.emit(&departure.0, make);
            return;
        };
        let number = {
            let mut state = self.departures.state();
            if state.waiting.len() >= MOST_WAITING && !state.waiting.contains_key(&departure) {
                // Under the lock, as an arrival's is.
                self.emit(&departure.0, make);
                return;
            }
            state.next = state.next.wrapping_add(1);
            let number = state.next;
            state.waiting.insert(departure.clone(), number);
            number
        };
        let observer = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(DEPARTURE_GRACE).await;
            if !observer.departures.state().waits(&departure, number) {
                return;
            }
            let Some(frontend) = observer.frontend.upgrade() else { return };
            let (channel, member) = &departure;
            let hub = frontend.hub();
            let back = match member {
                None => hub.recorded_subscription_count(channel).await.map(|count| count > 0),
                Some(user) => hub.presence(channel).await.map(|list| list.iter().any(|i| i.user.as_str() == user)),
            };
            let back = back.unwrap_or_else(|error| {
                // Sent rather than lost: the receiver may be told of a
                // departure a return then follows.
                tracing::warn!(%channel, %error, "could not check a departure before its webhook; sending it");
                false
            });
            // Taken and sent under the lock, and only if no arrival took it
            // while the cluster was asked.
            let mut state = observer.departures.state();
            if state.waits(&departure, number) {
                state.waiting.remove(&departure);
                if !back {
                    observer.emit(channel, make);
                }
            }
        });
    }
}

impl HubObserver for Observer {
    fn channel_occupied(&self, channel: &ChannelName) {
        self.arrive((channel.clone(), None), |channel| Event::ChannelOccupied { channel });
    }

    fn channel_vacated(&self, channel: &ChannelName) {
        self.depart((channel.clone(), None), |channel| Event::ChannelVacated { channel });
    }

    fn user_joined(&self, channel: &ChannelName, info: &ClientInfo) {
        let user_id = info.user.as_str().to_owned();
        self.arrive((channel.clone(), Some(user_id.clone())), |channel| Event::MemberAdded { channel, user_id });
    }

    fn user_left(&self, channel: &ChannelName, info: &ClientInfo) {
        let user_id = info.user.as_str().to_owned();
        self.depart((channel.clone(), Some(user_id.clone())), |channel| Event::MemberRemoved { channel, user_id });
    }

    fn subscribers_changed(&self, channel: &ChannelName) {
        if let Some(frontend) = self.frontend.upgrade() {
            super::counts::changed(&frontend, channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn app(id: &str, secret: &str, urls: &[&str]) -> PusherApp {
        let webhooks =
            urls.iter().map(|url| WebhookTarget { url: (*url).into(), events: vec![], batch: false }).collect();
        PusherApp {
            id: id.into(),
            key: format!("{id}-key"),
            secret: Secret::new(secret),
            webhooks,
            ..PusherApp::default()
        }
    }

    fn target<'a>(webhooks: &'a Webhooks, app: &str, url: &str) -> &'a Arc<Target<Event>> {
        let targets = webhooks.targets.get(app).expect("the app's targets");
        &targets.iter().find(|(recipe, _)| recipe.url == url).expect("the target").1
    }

    #[tokio::test]
    async fn a_reload_keeps_the_targets_it_leaves_as_they_were_and_replaces_the_others() {
        let metrics = Arc::new(Metrics::new());
        let (one, two) = ("http://127.0.0.1:9/one", "http://127.0.0.1:9/two");
        let before = Webhooks::start(
            &[app("a", "secret-of-a-0", &[one, two]), app("b", "secret-of-b-0", &[one])],
            None,
            None,
            &metrics,
        );
        let after = Webhooks::start(
            &[app("a", "secret-of-a-0", &[one]), app("b", "secret-of-b-1", &[one])],
            Some(&before),
            None,
            &metrics,
        );
        assert!(Arc::ptr_eq(target(&before, "a", one), target(&after, "a", one)), "unchanged: its worker kept");
        assert!(!Arc::ptr_eq(target(&before, "b", one), target(&after, "b", one)), "a new secret: a new worker");
        assert_eq!(after.targets["a"].len(), 1, "the removed one is gone");
        drop(before);
        assert_eq!(Arc::strong_count(target(&after, "a", one)), 1, "held by the new targets alone");
    }

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
