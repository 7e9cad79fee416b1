//! The node's connections, by client id and by user (commands address
//! users). Once closing, the registry refuses new connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use herald_engine::{ClientId, DisconnectReason, UserId};

use crate::connection::{push_exact, remove_first, Connection};
use crate::error::HubError;
use crate::shard::ShardedMap;

#[derive(Debug)]
pub(super) struct Registry {
    connections: ShardedMap<ClientId, Arc<Connection>>,
    /// Each user's connections, as a list kept exactly as long as it is:
    /// most users have one or two, and a hash map per user cost more than
    /// the rest of an idle connection's hub records.
    users: ShardedMap<UserId, Vec<Arc<Connection>>>,
    closing: AtomicBool,
}

impl Registry {
    pub(super) fn new() -> Self {
        Self { connections: ShardedMap::new(), users: ShardedMap::new(), closing: AtomicBool::new(false) }
    }

    /// Adds a connection, unless the node is shutting down.
    pub(super) fn add(&self, conn: Arc<Connection>) -> Result<(), HubError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(HubError::NotAvailable("node is shutting down".into()));
        }
        self.connections.write(&conn.client).insert(conn.client.clone(), conn.clone());
        let user = conn.user();
        self.remember_user(&conn, user);
        Ok(())
    }

    pub(super) fn remove(&self, conn: &Connection) {
        self.connections.write(&conn.client).remove(&conn.client);
        self.forget_user(conn, &conn.user());
    }

    /// Moves the connection to another user.
    pub(super) fn set_user(&self, conn: &Arc<Connection>, user: UserId) {
        let previous = std::mem::replace(&mut *conn.user.lock().unwrap_or_else(|e| e.into_inner()), user.clone());
        self.forget_user(conn, &previous);
        self.remember_user(conn, user);
    }

    fn remember_user(&self, conn: &Arc<Connection>, user: UserId) {
        push_exact(self.users.write(&user).entry(user).or_default(), conn.clone());
    }

    fn forget_user(&self, conn: &Connection, user: &UserId) {
        let mut users = self.users.write(user);
        let Some(conns) = users.get_mut(user) else { return };
        remove_first(conns, |c| c.client == conn.client);
        if conns.is_empty() {
            users.remove(user);
        }
    }

    /// The user's connections on this node, or the one of them named `client`.
    pub(super) fn of_user(&self, user: &UserId, client: Option<&ClientId>) -> Vec<Arc<Connection>> {
        let users = self.users.read(user);
        let Some(conns) = users.get(user) else { return Vec::new() };
        conns.iter().filter(|c| client.is_none_or(|id| *id == c.client)).cloned().collect()
    }

    /// Visits every connection.
    pub(super) fn for_each(&self, mut visit: impl FnMut(&Arc<Connection>)) {
        self.connections.for_each_shard(|shard| shard.values().for_each(&mut visit));
    }

    /// Refuses new connections from now on.
    pub(super) fn refuse_new(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// The open connections, at this moment.
    pub(super) fn snapshot(&self) -> Vec<Arc<Connection>> {
        let mut all = Vec::new();
        self.for_each(|conn| all.push(conn.clone()));
        all
    }

    /// Refuses new connections and closes every open one with `reason`.
    pub(super) fn close_all(&self, reason: DisconnectReason) {
        self.closing.store(true, Ordering::Release);
        self.for_each(|conn| conn.outbox.close(reason.clone()));
    }

    /// Connections and distinct users.
    pub(super) fn counts(&self) -> (usize, usize) {
        let (mut clients, mut users) = (0, 0);
        self.connections.for_each_shard(|s| clients = s.len().saturating_add(clients));
        self.users.for_each_shard(|s| users = s.len().saturating_add(users));
        (clients, users)
    }
}
