//! The position check. Fanout finds a gap when the next publication
//! arrives (see `channels::Followed`); when the missed publications were
//! the last of their stream, nothing arrives to show it. So every
//! `position_check_interval` the node reads the stream position of each
//! channel with a live positioned subscriber here, and ends with
//! "insufficient state" each subscription that follows another epoch, or
//! was still not sent what the stream held at the check before. The
//! interval between the two reads is the time a publication has to arrive.
//! It holds the hub weakly and ends with it.

use std::collections::HashMap;
use std::sync::Arc;

use herald_engine::{ChannelName, HistoryQuery, StreamPosition};

use super::Hub;

/// Checks every interval in a task of its own; never when it is zero.
pub(super) fn start(hub: &Arc<Hub>) {
    let every = hub.config.position_check_interval;
    if every.is_zero() {
        return;
    }
    let weak = Arc::downgrade(hub);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut earlier = HashMap::new();
        loop {
            ticks.tick().await;
            let Some(hub) = weak.upgrade() else { return };
            earlier = hub.check_positions(&earlier).await;
        }
    });
}

impl Hub {
    /// One round: ends the subscriptions that missed publications, and
    /// returns the positions read, for the next round.
    async fn check_positions(
        self: &Arc<Self>,
        earlier: &HashMap<ChannelName, StreamPosition>,
    ) -> HashMap<ChannelName, StreamPosition> {
        let channels = self.channels.followed();
        let mut now = HashMap::with_capacity(channels.len());
        let mut stale = Vec::new();
        let rules = self.rules();
        for channel in channels {
            let Some(history) = rules.resolve(&channel).ok().and_then(|o| o.history()) else { continue };
            // An engine that cannot answer was interrupted, and that
            // already ended these subscriptions.
            let Ok(read) = self.engine.history().history(&channel, &HistoryQuery::default(), &history).await else {
                continue;
            };
            stale.extend(self.channels.fell_behind(&channel, &read.position, earlier.get(&channel)));
            now.insert(channel, read.position);
        }
        if !stale.is_empty() {
            tracing::warn!(
                subscriptions = stale.len(),
                "position check: subscriptions behind their stream (publications missed here) will recover"
            );
            self.clone().end_stale(stale);
        }
        now
    }
}
