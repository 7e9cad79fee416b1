//! History: reading a channel's stream of publications, and dropping it.
//! Appending is the broker's, since it happens in the same step as the
//! broadcast.
//!
//! Contract (checked by `conformance::history`):
//! - offsets start at 1 and grow by one per publication with history;
//! - a stream keeps at most `size` publications, drops them all `ttl`
//!   after its last publication, and keeps its position for `meta_ttl`;
//! - a stream whose position expired, or whose history was removed,
//!   starts again at offset 0 under a new epoch;
//! - a read answers as [`HistoryQuery::select`] does over the stream.

use std::sync::Arc;

use async_trait::async_trait;

use crate::broker::HistoryOptions;
use crate::engine::EngineError;
use crate::ids::ChannelName;
use crate::message::{Publication, StreamPosition};

/// Which publications a history read returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only publications after this position. Its epoch must match (or be
    /// empty, meaning any epoch); otherwise the result is empty and carries
    /// the current epoch.
    pub since: Option<StreamPosition>,
    /// At most this many; 0 returns only the stream position.
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
}

impl HistoryQuery {
    /// Applies the query to a stream at `position` holding `publications`
    /// (oldest first): every engine answers a history read this way.
    pub fn select(&self, position: StreamPosition, publications: Vec<Arc<Publication>>) -> HistoryResult {
        if self.limit == 0 {
            return HistoryResult { position, publications: Vec::new() };
        }
        let after = match &self.since {
            // An empty epoch means "any epoch".
            Some(since) if !since.epoch.is_empty() && since.epoch != position.epoch => {
                return HistoryResult { position, publications: Vec::new() };
            }
            Some(since) => since.offset.get(),
            None => 0,
        };
        let newer = publications.into_iter().filter(|p| p.offset.get() > after);
        let publications =
            if self.reverse { newer.rev().take(self.limit).collect() } else { newer.take(self.limit).collect() };
        HistoryResult { position, publications }
    }
}

/// A history read's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryResult {
    /// The stream's top: the last offset given out, and the epoch.
    pub position: StreamPosition,
    /// The publications the query selected, in the order it asked for.
    pub publications: Vec<Arc<Publication>>,
}

/// Reads and drops channels' history streams. See the module documentation
/// for its contract.
#[async_trait]
pub trait History: Send + Sync + std::fmt::Debug + 'static {
    /// Reads a channel's stream position and the publications `query`
    /// selects. A channel without a stream gets one (offset 0, a new epoch).
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        options: &HistoryOptions,
    ) -> Result<HistoryResult, EngineError>;

    /// Drops a channel's history; its stream continues under a new epoch.
    async fn remove_history(&self, channel: &ChannelName) -> Result<(), EngineError>;
}
