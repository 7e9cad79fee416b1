//! One timer for every session of a node.
//!
//! Every session has a deadline: its next ping, the pong it waits for, an
//! expiry. A tokio `Sleep` per session would be 112 bytes in every
//! connection's task, idle or not; instead the node keeps its sessions'
//! alarms in one ordered map, and one task sleeps until the earliest and
//! wakes the sessions whose alarms are due. A session is woken through its
//! outbox, which is already its waker for its socket and its timer (see
//! the outbox's module docs): a due alarm unparks the session's timer, and
//! the session looks at its deadline again.
//!
//! A session's alarm is found by a key its outbox keeps, so the session
//! holds nothing for it. An alarm is moved earlier as soon as the session
//! looks at its timer again, but never later: when a deadline moves later (the client sent something, a pong
//! came), the alarm still fires at the earlier time, the session finds its
//! deadline not yet come, and sets its alarm anew. So a session has one
//! alarm at most, and a busy session's messages cost the map nothing.
//! Alarms have a resolution of a millisecond, and never fire early.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::outbox::Outbox;

/// A key's low bits tell apart alarms set for the same millisecond.
const SEQUENCE_BITS: u32 = 20;

/// The sequence numbers of a millisecond: 1 to this.
const NUMBERS: u64 = (1 << SEQUENCE_BITS) - 1;

/// The last millisecond a key can hold (about 557 years after the
/// alarms were made); deadlines beyond it are as good as never.
const LAST_TICK: u64 = (1 << (64 - SEQUENCE_BITS)) - 1;

/// At most this many due alarms are taken under the lock at once, so a
/// burst of them (every session of a storm pinged at once) never holds
/// up sessions setting theirs for long.
const BATCH: usize = 256;

/// The alarms of a node's sessions; clones share them. The task that
/// fires them starts with the first alarm set, and ends when the last
/// clone is dropped.
#[derive(Clone, Default)]
pub struct Alarms(Arc<Shared>);

struct Shared {
    /// Ticks count the milliseconds since this instant.
    epoch: Instant,
    map: Mutex<Map>,
    /// Tells the task that an alarm earlier than all others was set, or
    /// that the alarms are gone.
    changed: Arc<Notify>,
}

#[derive(Default)]
struct Map {
    /// By key: the alarm's millisecond, then a sequence number. An entry
    /// does not keep its outbox alive.
    alarms: BTreeMap<u64, Weak<Outbox>>,
    sequence: u64,
    /// The task that fires the alarms: started with the first alarm, and
    /// again should it have ended (its runtime shut down) while sessions
    /// still set alarms.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self { epoch: Instant::now(), map: Mutex::default(), changed: Arc::new(Notify::new()) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The task holds the alarms only while it fires them: it wakes,
        // finds them gone, and ends.
        self.changed.notify_one();
    }
}

impl std::fmt::Debug for Alarms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarms").field("set", &self.0.map().alarms.len()).finish()
    }
}

impl Alarms {
    /// Whether `deadline` has come. If not, the session's alarm is set
    /// (or already set) to wake `outbox` by then.
    pub fn poll_due(&self, outbox: &Arc<Outbox>, deadline: Instant) -> Poll<()> {
        if deadline <= Instant::now() {
            return Poll::Ready(());
        }
        if !self.covers(outbox, deadline) {
            self.set(outbox, self.0.tick(deadline));
        }
        Poll::Pending
    }

    /// Whether the session's alarm is set to fire no later than
    /// `deadline`. If it is not, the session must poll [`Alarms::poll_due`]
    /// again.
    pub fn covers(&self, outbox: &Outbox, deadline: Instant) -> bool {
        match outbox.alarm() {
            0 => false,
            key => key.wrapping_shr(SEQUENCE_BITS) <= self.0.tick(deadline),
        }
    }

    /// Takes the session's alarm out: the session has ended.
    pub fn cancel(&self, outbox: &Outbox) {
        let mut map = self.0.map();
        let key = outbox.take_alarm();
        if key != 0 {
            map.alarms.remove(&key);
        }
    }

    /// How many alarms are set.
    pub fn len(&self) -> usize {
        self.0.map().alarms.len()
    }

    /// Whether no alarm is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the session's one alarm to `tick`, in place of the one it had.
    fn set(&self, outbox: &Arc<Outbox>, tick: u64) {
        let mut map = self.0.map();
        let old = outbox.alarm();
        if old != 0 {
            map.alarms.remove(&old);
        }
        let Some(key) = map.vacant_key(tick) else {
            // A million alarms in each of the milliseconds up to the last
            // a key can hold: this deadline is as good as never.
            outbox.set_alarm(0);
            return;
        };
        map.alarms.insert(key, Arc::downgrade(outbox));
        outbox.set_alarm(key);
        let earliest = map.alarms.first_key_value().is_some_and(|(first, _)| *first == key);
        if map.task.as_ref().is_none_or(|task| task.is_finished()) {
            map.task = Some(tokio::spawn(fire(Arc::downgrade(&self.0), self.0.changed.clone())));
        } else if earliest {
            drop(map);
            self.0.changed.notify_one();
        }
    }
}

impl Map {
    /// A key for an alarm at `tick` that no alarm holds. Never 0, which is
    /// "no alarm" in an outbox. Should every number of `tick` be taken (a
    /// million alarms for one millisecond), the alarm goes to the next
    /// millisecond: late by one, never early.
    fn vacant_key(&mut self, mut tick: u64) -> Option<u64> {
        loop {
            for _ in 0..NUMBERS {
                self.sequence = match self.sequence < NUMBERS {
                    true => self.sequence.saturating_add(1),
                    false => 1,
                };
                let key = tick.wrapping_shl(SEQUENCE_BITS) | self.sequence;
                if !self.alarms.contains_key(&key) {
                    return Some(key);
                }
            }
            if tick == LAST_TICK {
                return None;
            }
            tick = tick.saturating_add(1);
        }
    }
}

impl Shared {
    fn map(&self) -> MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The millisecond `deadline` falls in, rounded up: an alarm never
    /// fires before its deadline.
    fn tick(&self, deadline: Instant) -> u64 {
        let begun = self.millisecond(deadline);
        let within = deadline.saturating_duration_since(self.epoch).subsec_nanos() % 1_000_000 != 0;
        begun.saturating_add(u64::from(within)).min(LAST_TICK)
    }

    /// The millisecond `at` falls in, counted from the epoch.
    fn millisecond(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(LAST_TICK)
    }

    /// The instant `tick` begins, if the clock can tell one that far.
    fn instant(&self, tick: u64) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_millis(tick))
    }

    /// Wakes the sessions whose alarms are due; returns when the next
    /// alarm is, if one is set (and the clock can tell when).
    fn fire_due(&self) -> Option<Instant> {
        // The millisecond that has begun: alarms at or before it are due.
        let now = self.millisecond(Instant::now());
        let mut due = Vec::new();
        loop {
            let mut map = self.map();
            let mut taken = 0;
            while taken < BATCH {
                let Some(entry) = map.alarms.first_entry() else { break };
                if entry.key().wrapping_shr(SEQUENCE_BITS) > now {
                    break;
                }
                let (key, outbox) = entry.remove_entry();
                taken = taken.saturating_add(1);
                if let Some(outbox) = outbox.upgrade() {
                    outbox.alarm_fired(key);
                    due.push(outbox);
                }
            }
            let next = map.alarms.first_key_value().map(|(key, _)| key.wrapping_shr(SEQUENCE_BITS));
            drop(map);
            for outbox in due.drain(..) {
                std::task::Wake::wake(outbox);
            }
            // A batch cut short by the bound may have more due behind it;
            // else the first alarm left is not due yet.
            if taken < BATCH {
                return next.and_then(|tick| self.instant(tick));
            }
        }
    }
}

/// The task that fires the alarms, until they are dropped.
async fn fire(alarms: Weak<Shared>, changed: Arc<Notify>) {
    loop {
        // Registered before the alarms are looked at, so that an earlier
        // one set in between is not missed.
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(shared) = alarms.upgrade() else { return };
        let next = shared.fire_due();
        drop(shared);
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(1 << 16))
    }

    /// Whether the outbox's session was woken for its timer since it
    /// parked it.
    fn woken(outbox: &Outbox) -> bool {
        !outbox.parked(crate::Waiting::Timer)
    }

    #[tokio::test(start_paused = true)]
    async fn an_alarm_wakes_its_session_at_its_deadline_and_not_before() {
        let alarms = Alarms::default();
        let session = outbox();
        session.park(crate::Waiting::Timer);
        let deadline = Instant::now() + Duration::from_millis(1500);

        assert!(alarms.poll_due(&session, deadline).is_pending());
        assert_eq!(alarms.len(), 1);
        tokio::time::sleep(Duration::from_millis(1499)).await;
        assert!(!woken(&session), "not woken a millisecond early");
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(woken(&session), "woken at its deadline");
        assert!(alarms.poll_due(&session, deadline).is_ready());
        assert!(alarms.is_empty(), "a fired alarm is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_keeps_the_alarm_and_an_earlier_one_replaces_it() {
        let alarms = Alarms::default();
        let session = outbox();
        let start = Instant::now();

        assert!(alarms.poll_due(&session, start + Duration::from_secs(10)).is_pending());
        assert!(alarms.covers(&session, start + Duration::from_secs(20)), "a later deadline is covered");
        assert!(!alarms.covers(&session, start + Duration::from_secs(5)), "an earlier one is not");
        assert!(alarms.poll_due(&session, start + Duration::from_secs(5)).is_pending());
        assert_eq!(alarms.len(), 1, "the session still has one alarm");
        assert!(alarms.covers(&session, start + Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_alarm_set_later_but_due_sooner_wakes_the_task_early() {
        let alarms = Alarms::default();
        let (late, soon) = (outbox(), outbox());
        late.park(crate::Waiting::Timer);
        soon.park(crate::Waiting::Timer);
        let start = Instant::now();

        assert!(alarms.poll_due(&late, start + Duration::from_secs(60)).is_pending());
        tokio::task::yield_now().await;
        assert!(alarms.poll_due(&soon, start + Duration::from_secs(1)).is_pending());
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        assert!(woken(&soon), "the sooner alarm fired on time");
        assert!(!woken(&late));
        assert_eq!(alarms.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_alarm_never_fires_and_a_dropped_session_is_not_kept() {
        let alarms = Alarms::default();
        let (cancelled, dropped) = (outbox(), outbox());
        cancelled.park(crate::Waiting::Timer);
        let start = Instant::now();

        assert!(alarms.poll_due(&cancelled, start + Duration::from_secs(1)).is_pending());
        assert!(alarms.poll_due(&dropped, start + Duration::from_secs(1)).is_pending());
        alarms.cancel(&cancelled);
        assert_eq!(alarms.len(), 1);
        let weak = Arc::downgrade(&dropped);
        drop(dropped);
        assert!(weak.upgrade().is_none(), "the alarm does not keep its session's outbox");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(!woken(&cancelled));
        assert!(alarms.is_empty(), "the dropped session's alarm went when due");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_due_alarms_wakes_every_session() {
        let alarms = Alarms::default();
        let sessions: Vec<_> = (0..BATCH * 3 + 7).map(|_| outbox()).collect();
        let deadline = Instant::now() + Duration::from_secs(25);
        for session in &sessions {
            session.park(crate::Waiting::Timer);
            assert!(alarms.poll_due(session, deadline).is_pending());
        }
        assert_eq!(alarms.len(), sessions.len());

        tokio::time::sleep(Duration::from_secs(25)).await;
        tokio::task::yield_now().await;
        for session in &sessions {
            assert!(woken(session));
        }
        assert!(alarms.is_empty());
    }

    #[test]
    fn ticks_round_up_and_far_deadlines_are_capped() {
        let shared = Shared::default();
        let epoch = shared.epoch;
        assert_eq!(shared.tick(epoch), 0);
        assert_eq!(shared.tick(epoch + Duration::from_micros(1)), 1);
        assert_eq!(shared.tick(epoch + Duration::from_millis(7)), 7);
        let ages_away = epoch.checked_add(Duration::from_secs(1 << 40)).expect("an instant ages away");
        assert_eq!(shared.tick(ages_away), LAST_TICK);
        assert!(shared.instant(7) > Some(epoch));
    }

    #[test]
    fn a_millisecond_whose_numbers_are_all_taken_sends_the_alarm_to_the_next() {
        let mut map = Map::default();
        for _ in 0..NUMBERS {
            let key = map.vacant_key(7).expect("a key");
            assert_eq!(key >> SEQUENCE_BITS, 7);
            map.alarms.insert(key, Weak::new());
        }
        assert_eq!(map.vacant_key(7).map(|key| key >> SEQUENCE_BITS), Some(8));
    }

    #[test]
    fn alarms_outlive_the_runtime_their_task_ran_on() {
        let runtime = || tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
        let alarms = Alarms::default();
        let first = runtime().expect("a runtime");
        first.block_on(async {
            assert!(alarms.poll_due(&outbox(), Instant::now() + Duration::from_secs(3600)).is_pending());
            tokio::task::yield_now().await;
        });
        drop(first);

        runtime().expect("a runtime").block_on(async {
            let session = outbox();
            session.park(crate::Waiting::Timer);
            assert!(alarms.poll_due(&session, Instant::now() + Duration::from_secs(1)).is_pending());
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::yield_now().await;
            assert!(woken(&session), "a task of its own fired the alarm");
        });
    }

    #[test]
    fn the_task_ends_with_the_alarms() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
        runtime.block_on(async {
            let alarms = Alarms::default();
            let session = outbox();
            assert!(alarms.poll_due(&session, Instant::now() + Duration::from_secs(3600)).is_pending());
            tokio::task::yield_now().await;
            let metrics = tokio::runtime::Handle::current().metrics();
            assert_eq!(metrics.num_alive_tasks(), 1, "the alarms' task runs");
            drop(alarms);
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(metrics.num_alive_tasks(), 0, "and ends when they are dropped");
        });
    }
}
