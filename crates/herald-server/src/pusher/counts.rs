//! Subscription counting, for apps with `subscription_count = true`: when
//! a non-presence channel gains or loses a subscriber, its subscribers are
//! sent `pusher_internal:subscription_count` with the channel's count in
//! the whole cluster (`pusher:subscription_count` in pusher-js), and the
//! `subscription_count` webhook is sent.
//!
//! Changes are gathered: a node sends a channel's count [`SMALL_DELAY`]
//! after the first change it saw, or [`LARGE_DELAY`] for channels of more
//! than [`LARGE`] subscribers (as Pusher does), so a crowd joining at once
//! costs one event, not one per subscriber. The count is published through
//! the hub like any event, so subscribers on every node get it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_engine::{ChannelName, Publication};

use super::webhooks::Event;
use super::{conventions::ChannelKind, Frontend, EVENT_TAG};

/// How long changes to a channel are gathered before its count is sent.
const SMALL_DELAY: Duration = Duration::from_millis(250);
/// The same, for a channel of more than [`LARGE`] subscribers.
const LARGE_DELAY: Duration = Duration::from_secs(5);
/// Subscribers above which a channel's count is sent less often.
const LARGE: usize = 100;

/// The channels whose count is about to be sent, and each counted
/// channel's last count (forgotten when it reaches 0).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pending: Mutex<HashSet<ChannelName>>,
    last: Mutex<HashMap<ChannelName, usize>>,
}

/// Notes a change of `channel`'s subscribers; sends its count soon if its
/// app counts subscriptions.
pub(super) fn changed(frontend: &Arc<Frontend>, channel: &ChannelName) {
    let (apps, _) = frontend.apps.accepted();
    let Some(app) = apps.owner(channel) else { return };
    if !app.config.subscription_count {
        return;
    }
    let Some(name) = app.name_of(channel) else { return };
    if ChannelKind::of(name).is_presence() {
        return;
    }
    let counts = &frontend.counts;
    if !counts.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(channel.clone()) {
        return;
    }
    let large = counts.last.lock().unwrap_or_else(|e| e.into_inner()).get(channel).is_some_and(|n| *n > LARGE);
    let delay = if large { LARGE_DELAY } else { SMALL_DELAY };
    let (frontend, channel) = (frontend.clone(), channel.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        frontend.counts.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&channel);
        send(&frontend, &channel).await;
    });
}

async fn send(frontend: &Frontend, channel: &ChannelName) {
    let hub = frontend.hub();
    let count = match hub.subscription_count(channel).await {
        Ok(count) => count,
        Err(error) => {
            tracing::warn!(%channel, %error, "subscription count not sent: the engine could not count");
            return;
        }
    };
    {
        let mut last = frontend.counts.last.lock().unwrap_or_else(|e| e.into_inner());
        match count {
            0 => last.remove(channel),
            _ => last.insert(channel.clone(), count),
        };
    }
    let data = crate::json::to_vec(&serde_json::json!({ "subscription_count": count }));
    let mut publication = Publication::from_data(bytes::Bytes::from(data));
    publication.tags.insert(EVENT_TAG.to_owned(), "pusher_internal:subscription_count".to_owned());
    if count > 0 {
        if let Err(error) = hub.publish(channel, publication, None, true).await {
            tracing::warn!(%channel, %error, "subscription count not sent");
        }
    }
    let (apps, _) = frontend.apps.accepted();
    let Some(app) = apps.owner(channel) else { return };
    let Some(name) = app.name_of(channel) else { return };
    frontend.webhooks().send(app, Event::SubscriptionCount { channel: name.to_owned(), subscription_count: count });
}
