//! Subscription counting, for apps with `subscription_count = true`: when
//! a non-presence channel gains or loses a subscriber, its subscribers are
//! sent `pusher_internal:subscription_count` with the channel's count in
//! the whole cluster (`pusher:subscription_count` in pusher-js), and the
//! `subscription_count` webhook is sent.
//!
//! Changes are gathered: a node sends a channel's count [`SMALL_DELAY`]
//! after the first change it saw; after a count above [`LARGE`], it waits
//! [`LARGE_DELAY`] before the next (as Pusher does), so a crowd joining at
//! once costs one event, not one per subscriber. One task per channel
//! sends its counts, in order, and ends when nothing changed while it
//! waited; the map of channels in hand holds only those tasks. The count
//! is published through the hub like any event, so subscribers on every
//! node get it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_engine::{ChannelName, Publication};

use super::webhooks::Event;
use super::{conventions::ChannelKind, Frontend, EVENT_TAG};

/// How long changes to a channel are gathered before its count is sent.
const SMALL_DELAY: Duration = Duration::from_millis(250);
/// After a count above [`LARGE`], how long until the next.
const LARGE_DELAY: Duration = Duration::from_secs(5);
/// Subscribers above which a channel's count is sent less often.
const LARGE: usize = 100;

/// The channels whose count a task is about to send, each with whether it
/// changed since that task last sent it.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    in_hand: Mutex<HashMap<ChannelName, bool>>,
}

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelName, bool>> {
        self.in_hand.lock().unwrap_or_else(|e| e.into_inner())
    }
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
    {
        let mut in_hand = frontend.counts.lock();
        if let Some(changed) = in_hand.get_mut(channel) {
            *changed = true;
            return;
        }
        in_hand.insert(channel.clone(), true);
    }
    let (frontend, channel) = (frontend.clone(), channel.clone());
    tokio::spawn(async move {
        let mut wait = SMALL_DELAY;
        loop {
            tokio::time::sleep(wait).await;
            {
                let mut in_hand = frontend.counts.lock();
                if in_hand.get(&channel) != Some(&true) {
                    in_hand.remove(&channel);
                    return;
                }
                in_hand.insert(channel.clone(), false);
            }
            let count = send(&frontend, &channel).await;
            wait = if count.is_some_and(|n| n > LARGE) { LARGE_DELAY } else { SMALL_DELAY };
        }
    });
}

/// Sends `channel`'s count to its subscribers and webhooks; the count.
async fn send(frontend: &Frontend, channel: &ChannelName) -> Option<usize> {
    let hub = frontend.hub();
    let count = match hub.subscription_count(channel).await {
        Ok(count) => count,
        Err(error) => {
            tracing::warn!(%channel, %error, "subscription count not sent: the engine could not count");
            return None;
        }
    };
    if count > 0 {
        let data = crate::json::to_vec(&serde_json::json!({ "subscription_count": count }));
        let mut publication = Publication::from_data(bytes::Bytes::from(data));
        publication.tags.insert(EVENT_TAG.to_owned(), "pusher_internal:subscription_count".to_owned());
        if let Err(error) = hub.publish(channel, publication, None, true).await {
            tracing::warn!(%channel, %error, "subscription count not sent");
        }
    }
    let (apps, _) = frontend.apps.accepted();
    if let Some((app, name)) = apps.owner(channel).and_then(|app| Some((app, app.name_of(channel)?))) {
        frontend.webhooks().send(app, Event::SubscriptionCount { channel: name.to_owned(), subscription_count: count });
    }
    Some(count)
}
