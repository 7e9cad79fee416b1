//! What the hub measures for monitoring, handed to whoever exports it (the
//! server's Prometheus metrics). The hub knows nothing of the format; it
//! reports each fanout, recovery and engine interruption once, as it
//! happens.

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
pub(super) type Meter = super::installed::Installed<dyn HubMeter>;
