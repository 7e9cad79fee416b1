//! What the hub measures for monitoring, handed to whoever exports it (the
//! server's Prometheus metrics). The hub knows nothing of the format; it
//! reports each fanout, recovery and engine interruption once, as it
//! happens.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Hears what the hub measures.
pub trait HubMeter: Send + Sync + std::fmt::Debug + 'static {
    /// A publication reached this node and was queued for `queued` local
    /// subscribers; queueing for all of them took `took`.
    fn fanned_out(&self, queued: usize, took: Duration);
    /// A subscription asked to recover: it got what it missed, or was told
    /// it could not (`recovered: false`).
    fn recovery(&self, recovered: bool);
    /// The engine lost its subscription to the backplane: publications may
    /// have been missed, and positioned subscribers are made to recover.
    fn engine_interrupted(&self);
}

/// The hub's meter, once installed. Until then nothing is measured.
#[derive(Debug, Clone, Default)]
pub(super) struct Meter(Arc<OnceLock<Arc<dyn HubMeter>>>);

impl Meter {
    /// Installs `meter`; only the first call takes effect.
    pub(super) fn install(&self, meter: Arc<dyn HubMeter>) {
        let _ = self.0.set(meter);
    }

    /// The installed meter, if any.
    pub(super) fn get(&self) -> Option<&dyn HubMeter> {
        self.0.get().map(|m| &**m)
    }
}
