//! The conformance suite: what every engine must do, checked the same way.
//!
//! The cases are grouped like the engine's parts: [`broker`], [`history`],
//! [`presence`], [`occupancy`] and [`nodes`]. Each case is a function that
//! takes a fresh, not yet started [`Engine`] and a [`Clock`]. An engine's
//! own tests call [`engine_conformance!`](crate::engine_conformance), which
//! makes every case a test of its own, named `<group>::<case>`, so a
//! failure says what broke:
//!
//! ```ignore
//! herald_engine::engine_conformance! {
//!     #[tokio::test]
//!     make: || async { my_engine().await },
//!     clock: herald_engine::conformance::Clock::Real,
//! }
//! ```
//!
//! Durations here are short so that a real clock costs seconds, not
//! minutes. Cases wait on conditions with a deadline, never on fixed sleeps
//! (letting time pass for an expiry is what the [`Clock`] is for).

pub mod broker;
pub mod history;
pub mod nodes;
pub mod occupancy;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::broker::{EventHandler, HistoryOptions, PublishOptions, PublishResult};
use crate::engine::Engine;
use crate::ids::{ChannelName, ClientId, UserId};
use crate::message::{ClientInfo, EngineEvent, Publication};

/// How long a case waits for something that should happen.
const EVENTUALLY: Duration = Duration::from_secs(5);

/// History options used by the cases.
pub const HISTORY: HistoryOptions =
    HistoryOptions { size: 5, ttl: Duration::from_secs(2), meta_ttl: Duration::from_secs(4) };

/// How a case lets time pass for expiries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The engine runs on paused `tokio::time`: time is advanced at once.
    Paused,
    /// The engine's clock is a server's: time passes by sleeping.
    Real,
}

impl Clock {
    /// Lets `duration` pass.
    pub async fn advance(self, duration: Duration) {
        match self {
            Clock::Paused => tokio::time::advance(duration).await,
            Clock::Real => tokio::time::sleep(duration).await,
        }
    }
}

/// Makes every case of the suite a test of the calling engine's crate, in
/// modules named after the groups. `make` is a closure returning a future
/// of a fresh, not yet started [`Engine`]; `clock` a [`Clock`]; the
/// attributes before `make` go on every test.
#[macro_export]
macro_rules! engine_conformance {
    ($(#[$test:meta])* make: $make:expr, clock: $clock:expr $(,)?) => {
        $crate::engine_conformance!(@group [$(#[$test])*] $make, $clock; broker:
            publications_reach_a_subscribed_node_in_order,
            publications_skip_channels_the_node_is_not_subscribed_to,
            unsubscribe_stops_delivery,
            channels_without_history_have_no_positions,
            a_repeated_idempotency_key_publishes_once,
            joins_and_leaves_reach_subscribed_nodes,
            control_commands_reach_the_sending_node,
            a_started_engine_is_ready,
        );
        $crate::engine_conformance!(@group [$(#[$test])*] $make, $clock; history:
            offsets_grow_by_one_and_history_reads_back_in_order,
            history_is_trimmed_to_its_size,
            reads_of_part_of_a_trimmed_stream_get_exactly_their_part,
            a_history_of_one_read_while_published_to_answers_with_its_newest,
            publications_expire_but_the_position_survives,
            an_expired_stream_starts_again_under_a_new_epoch,
            removing_history_starts_a_new_epoch,
        );
        $crate::engine_conformance!(@group [$(#[$test])*] $make, $clock; presence:
            presence_counts_users_once_and_expires,
            anonymous_connections_arrive_and_depart_each_on_their_own,
            a_users_arrival_and_departure_are_reported_once,
            many_channels_are_refreshed_and_swept_together,
        );
        $crate::engine_conformance!(@group [$(#[$test])*] $make, $clock; occupancy:
            the_first_node_occupies_and_the_last_vacates,
            concurrent_first_and_last_nodes_report_once,
            a_refreshed_entry_outlives_its_ttl_and_sweeps_dead_nodes,
            a_channel_whose_nodes_all_died_is_reported_vacated_once,
        );
        $crate::engine_conformance!(@group [$(#[$test])*] $make, $clock; nodes:
            the_node_registry_forgets_silent_nodes,
        );
    };
    (@group $attrs:tt $make:expr, $clock:expr; $group:ident: $($case:ident),* $(,)?) => {
        mod $group {
            #[allow(unused_imports)]
            use super::*;
            $( $crate::engine_conformance!(@case $attrs $make, $clock; $group::$case); )*
        }
    };
    (@case [$($attr:tt)*] $make:expr, $clock:expr; $group:ident::$case:ident) => {
        $($attr)*
        async fn $case() {
            let engine: $crate::Engine = ($make)().await;
            $crate::conformance::$group::$case(engine, $clock).await;
        }
    };
}

/// Collects what an engine delivers, for assertions.
#[derive(Debug)]
pub struct Recorder {
    rx: mpsc::UnboundedReceiver<EngineEvent>,
}

struct RecordingHandler(mpsc::UnboundedSender<EngineEvent>);

impl EventHandler for RecordingHandler {
    fn handle(&self, event: EngineEvent) {
        let _ = self.0.send(event);
    }
}

impl Recorder {
    /// Starts `engine` with a handler that records into the returned recorder.
    pub async fn start(engine: &Engine) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        engine.start(Arc::new(RecordingHandler(tx))).await.expect("engine starts");
        Recorder { rx }
    }

    /// The next event, or a panic naming what was awaited.
    pub async fn next(&mut self, waiting_for: &str) -> EngineEvent {
        match tokio::time::timeout(EVENTUALLY, self.rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("engine dropped its handler while waiting for {waiting_for}"),
            Err(_) => panic!("timed out waiting for {waiting_for}"),
        }
    }

    /// The next publication's channel and the publication.
    pub async fn next_publication(&mut self, waiting_for: &str) -> (ChannelName, Arc<Publication>) {
        match self.next(waiting_for).await {
            EngineEvent::Publication { channel, publication } => (channel, publication),
            other => panic!("expected a publication ({waiting_for}), got {other:?}"),
        }
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::new(name).expect("valid channel")
}

fn data(text: &str) -> Publication {
    Publication::from_data(Bytes::from(text.to_owned()))
}

fn with_history() -> PublishOptions {
    PublishOptions { history: Some(HISTORY), ..Default::default() }
}

async fn publish(engine: &Engine, ch: &ChannelName, text: &str, options: &PublishOptions) -> PublishResult {
    engine.broker().publish(ch, data(text), options).await.expect("publish succeeds")
}

/// A presence entry of `client`, a connection of `user`, with no info:
/// what the cases add, and engines' own tests beside them.
pub fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: UserId::new(user).expect("valid user"),
        client: ClientId::new(client),
        conn_info: None,
        chan_info: None,
    }
}
