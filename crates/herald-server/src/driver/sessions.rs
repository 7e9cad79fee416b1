//! Every running session's outbox, so that a node that stops can end them
//! all: the hub closes the connections it knows (the drain), and this
//! closes the rest, such as a Centrifuge client that never sent its connect
//! command. A session waits on its outbox anyway, so closing the outbox is
//! all it takes: a shutdown wait in each session would cost every idle
//! connection 136 bytes of its task (a watch receiver and its `changed`
//! future), where an entry here costs about 20.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use herald_core::Outbox;
use herald_engine::DisconnectReason;

/// The outboxes of a node's running sessions.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    /// By the outbox's address: two live outboxes never share one.
    open: HashMap<usize, Weak<Outbox>>,
    /// The node stopped: sessions that start now end at once.
    stopped: bool,
}

fn key(outbox: &Arc<Outbox>) -> usize {
    Arc::as_ptr(outbox) as usize
}

impl Sessions {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a session in until [`Sessions::leave`]; after
    /// [`Sessions::stop`], closes its outbox instead.
    pub(crate) fn enter(&self, outbox: &Arc<Outbox>) {
        let mut state = self.state();
        if state.stopped {
            drop(state);
            outbox.close(DisconnectReason::Shutdown);
            return;
        }
        state.open.insert(key(outbox), Arc::downgrade(outbox));
    }

    /// Counts a session out, when it ends.
    pub(crate) fn leave(&self, outbox: &Arc<Outbox>) {
        let mut state = self.state();
        state.open.remove(&key(outbox));
        if state.open.capacity() > state.open.len().saturating_mul(4).max(64) {
            state.open.shrink_to_fit();
        }
    }

    /// Ends every session, now and from now on, as the node shuts down.
    pub(crate) fn stop(&self) {
        let open = {
            let mut state = self.state();
            state.stopped = true;
            std::mem::take(&mut state.open)
        };
        for outbox in open.values().filter_map(Weak::upgrade) {
            outbox.close(DisconnectReason::Shutdown);
        }
    }

    /// Sessions running.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state().open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Drained;

    fn closed_for(outbox: &Outbox) -> Option<DisconnectReason> {
        match outbox.drain() {
            Drained::Closed(reason) => Some(reason),
            Drained::Items(_) => None,
        }
    }

    #[test]
    fn stopping_closes_every_open_session_and_every_later_one() {
        let sessions = Sessions::default();
        let (first, second, gone) =
            (Arc::new(Outbox::new(1024)), Arc::new(Outbox::new(1024)), Arc::new(Outbox::new(1024)));
        sessions.enter(&first);
        sessions.enter(&second);
        sessions.enter(&gone);
        sessions.leave(&gone);
        assert_eq!(sessions.len(), 2);

        sessions.stop();
        let late = Arc::new(Outbox::new(1024));
        sessions.enter(&late);

        assert_eq!(closed_for(&first), Some(DisconnectReason::Shutdown));
        assert_eq!(closed_for(&second), Some(DisconnectReason::Shutdown));
        assert_eq!(closed_for(&late), Some(DisconnectReason::Shutdown));
        assert_eq!(closed_for(&gone), None, "a session that left is not touched");
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn the_table_gives_back_its_room_as_sessions_leave() {
        let sessions = Sessions::default();
        let outboxes: Vec<_> = (0..10_000).map(|_| Arc::new(Outbox::new(1024))).collect();
        outboxes.iter().for_each(|outbox| sessions.enter(outbox));
        outboxes.iter().for_each(|outbox| sessions.leave(outbox));
        assert!(sessions.state().open.capacity() < 1_000);
    }
}
