//! One channel's history stream in memory: bounded by size; its
//! publications expire `ttl` after the last publication, its position
//! (offset and epoch) `meta_ttl` after, and then it is reborn under a new
//! epoch.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use crate::broker::HistoryOptions;
use crate::history::{HistoryQuery, HistoryResult};
use crate::ids::{Epoch, Offset};
use crate::message::{Publication, StreamPosition};

#[derive(Debug)]
pub(super) struct Stream {
    epoch: Epoch,
    top: u64,
    publications: VecDeque<Arc<Publication>>,
    publications_expire_at: Instant,
    meta_expires_at: Instant,
}

impl Stream {
    pub(super) fn new(now: Instant, options: &HistoryOptions) -> Self {
        Self {
            epoch: Epoch::fresh(),
            top: 0,
            publications: VecDeque::new(),
            publications_expire_at: now + options.ttl,
            meta_expires_at: now + options.meta_ttl.max(options.ttl),
        }
    }

    /// When the stream's position expires unless it is written again: the
    /// later, the more recently it was created or written.
    pub(super) fn expires_at(&self) -> Instant {
        self.meta_expires_at
    }

    /// Whether the stream's position has expired (the stream is gone).
    pub(super) fn is_expired(&self, now: Instant) -> bool {
        now >= self.meta_expires_at
    }

    /// The publications held, expired or not.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.publications.len()
    }

    /// Drops publications past their time, and the space they took.
    pub(super) fn expire_publications(&mut self, now: Instant) {
        if now >= self.publications_expire_at && self.publications.capacity() > 0 {
            self.publications = VecDeque::new();
        }
    }

    pub(super) fn position(&self) -> StreamPosition {
        StreamPosition { offset: Offset::new(self.top), epoch: self.epoch.clone() }
    }

    /// Gives the publication the next offset and keeps it.
    pub(super) fn append(
        &mut self,
        mut publication: Publication,
        options: &HistoryOptions,
        now: Instant,
    ) -> Arc<Publication> {
        self.top += 1;
        publication.offset = Offset::new(self.top);
        publication.epoch = self.epoch.clone();
        let publication = Arc::new(publication);
        self.publications.push_back(publication.clone());
        while self.publications.len() > options.size {
            self.publications.pop_front();
        }
        self.publications_expire_at = now + options.ttl;
        self.meta_expires_at = now + options.meta_ttl.max(options.ttl);
        publication
    }

    pub(super) fn read(&self, query: &HistoryQuery) -> HistoryResult {
        query.select(self.position(), self.publications.iter().cloned().collect())
    }
}
