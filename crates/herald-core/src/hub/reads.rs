//! Reads for the server API and for subscribers: history, presence, and
//! cluster-wide subscriber counts and occupied channels.

use herald_engine::{ChannelName, ClientInfo, HistoryQuery, HistoryResult, PresenceStats};

use super::Hub;
use crate::connection::Connection;
use crate::error::HubError;

impl Hub {
    /// A channel's history. `since` from another epoch, or already
    /// trimmed, is an unrecoverable position (a read of the position alone,
    /// `limit` 0, reads no publication to tell the latter by: only its
    /// epoch is checked).
    pub async fn history(&self, channel: &ChannelName, query: HistoryQuery) -> Result<HistoryResult, HubError> {
        let rules = self.rules();
        let options = rules.resolve(channel)?;
        let history =
            options.history().ok_or_else(|| HubError::NotAvailable("history is off in this namespace".into()))?;
        let result = self.engine.history().history(channel, &query, &history).await?;
        if let Some(since) = &query.since {
            let same_epoch = since.epoch.is_empty() || since.epoch == result.position.epoch;
            let continues = same_epoch
                && since.offset <= result.position.offset
                && (query.reverse
                    || query.limit == 0
                    || since.offset == result.position.offset
                    || result
                        .publications
                        .first()
                        .is_some_and(|p| p.offset > since.offset && p.offset == since.offset.next()));
            if !continues {
                return Err(HubError::UnrecoverablePosition);
            }
        }
        Ok(result)
    }

    /// Drops a channel's history (its epoch changes).
    pub async fn remove_history(&self, channel: &ChannelName) -> Result<(), HubError> {
        self.rules().resolve(channel)?;
        Ok(self.engine.history().remove_history(channel).await?)
    }

    /// Who is in a channel with presence.
    pub async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, HubError> {
        self.require_presence(channel)?;
        Ok(self.engine.presence().presence(channel).await?)
    }

    /// How many connections and users are in a channel with presence.
    pub async fn presence_stats(&self, channel: &ChannelName) -> Result<PresenceStats, HubError> {
        self.require_presence(channel)?;
        Ok(self.engine.presence().presence_stats(channel).await?)
    }

    fn require_presence(&self, channel: &ChannelName) -> Result<(), HubError> {
        match self.rules().resolve(channel)?.presence {
            true => Ok(()),
            false => Err(HubError::NotAvailable("presence is off in this namespace".into())),
        }
    }

    /// Whether `conn` may read history (`presence: false`) or presence
    /// (`presence: true`) of `channel` as a subscriber. A namespace without
    /// the feature answers that first (108), as Centrifugo does.
    pub fn authorize_read(&self, conn: &Connection, channel: &ChannelName, presence: bool) -> Result<(), HubError> {
        let rules = self.rules();
        let options = rules.resolve(channel)?;
        match presence {
            true if !options.presence => {
                return Err(HubError::NotAvailable("presence is off in this namespace".into()));
            }
            false if options.history().is_none() => {
                return Err(HubError::NotAvailable("history is off in this namespace".into()));
            }
            _ => {}
        }
        let allowed = match presence {
            true => options.allow_presence_for_subscriber,
            false => options.allow_history_for_subscriber,
        };
        if allowed && conn.is_subscribed(channel) {
            Ok(())
        } else {
            Err(HubError::PermissionDenied)
        }
    }

    /// How many subscribers `channel` has in the whole cluster (on this
    /// node only, unless occupancy is tracked).
    pub async fn subscription_count(&self, channel: &ChannelName) -> Result<usize, HubError> {
        let local = self.channels.count(channel);
        Ok(local.saturating_add(self.occupancy.remote_subscribers(channel).await?))
    }

    /// How many subscribers `channel` has in the cluster as the engine
    /// last heard from each node, this one included: what its
    /// `channel_occupied` and `channel_vacated` are decided from (a
    /// subscriber come and gone before its node wrote its count changed
    /// neither). This node's count as it is now, unless occupancy is tracked.
    pub async fn recorded_subscription_count(&self, channel: &ChannelName) -> Result<usize, HubError> {
        match self.occupancy.written_subscribers(channel).await? {
            Some(count) => Ok(count),
            None => Ok(self.channels.count(channel)),
        }
    }

    /// The channels with subscribers anywhere in the cluster (on this node
    /// only, unless occupancy is tracked), sorted.
    pub async fn occupied_channels(&self) -> Result<Vec<ChannelName>, HubError> {
        let local = self.channels.list(None).into_iter().map(|(name, _)| name).collect();
        Ok(self.occupancy.occupied(local).await?)
    }
}
