//! A map split into independently locked shards, so the fanout path and
//! connection churn never contend on one global lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How many shards each map has.
pub(crate) const SHARDS: usize = 64;

/// The item of a fixed pool of [`SHARDS`] items that `hash` falls on.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
// Every pool is built with SHARDS (> 0) items and never changes size: the
// modulo is defined and the index in range.
pub(crate) fn pick<T>(pool: &[T], hash: u64) -> &T {
    debug_assert_eq!(pool.len(), SHARDS);
    &pool[(hash % SHARDS as u64) as usize]
}

#[derive(Debug)]
pub(crate) struct ShardedMap<K, V> {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<K, V>>]>,
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    pub(crate) fn new() -> Self {
        Self { hasher: RandomState::new(), shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect() }
    }

    /// The hash that places `key`.
    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, key: &K) -> &RwLock<HashMap<K, V>> {
        pick(&self.shards, self.hash(key))
    }

    pub(crate) fn read(&self, key: &K) -> RwLockReadGuard<'_, HashMap<K, V>> {
        self.shard(key).read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self, key: &K) -> RwLockWriteGuard<'_, HashMap<K, V>> {
        self.shard(key).write().unwrap_or_else(|e| e.into_inner())
    }

    /// Visits every shard in turn under its read lock.
    pub(crate) fn for_each_shard(&self, mut visit: impl FnMut(&HashMap<K, V>)) {
        for shard in self.shards.iter() {
            visit(&shard.read().unwrap_or_else(|e| e.into_inner()));
        }
    }
}
