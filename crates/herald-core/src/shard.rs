//! A map split into independently locked shards, so the fanout path and
//! connection churn never contend on one global lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How many shards each map has.
pub(crate) const SHARDS: usize = 64;

#[derive(Debug)]
pub(crate) struct ShardedMap<K, V> {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<K, V>>]>,
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    pub(crate) fn new() -> Self {
        Self { hasher: RandomState::new(), shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect() }
    }

    pub(crate) fn shard_index(&self, key: &K) -> usize {
        self.hasher.hash_one(key) as usize % self.shards.len()
    }

    pub(crate) fn read(&self, key: &K) -> RwLockReadGuard<'_, HashMap<K, V>> {
        self.shards[self.shard_index(key)].read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self, key: &K) -> RwLockWriteGuard<'_, HashMap<K, V>> {
        self.shards[self.shard_index(key)].write().unwrap_or_else(|e| e.into_inner())
    }

    /// Visits every shard in turn under its read lock.
    pub(crate) fn for_each_shard(&self, mut visit: impl FnMut(&HashMap<K, V>)) {
        for shard in self.shards.iter() {
            visit(&shard.read().unwrap_or_else(|e| e.into_inner()));
        }
    }
}
