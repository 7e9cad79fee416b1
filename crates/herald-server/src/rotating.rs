//! A value a configuration reload replaces (an API key, the token keys)
//! while the one it replaces is still accepted for an overlap, so that
//! tokens and API clients can move to the new one without a gap.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

/// The value a reload replaced, and until when it is accepted.
type Previous<T> = Option<(Arc<T>, Instant)>;

/// The current value, and the previous one until its overlap ends.
#[derive(Debug)]
pub(crate) struct Rotating<T> {
    values: RwLock<(Arc<T>, Previous<T>)>,
}

impl<T> Rotating<T> {
    pub(crate) fn new(value: T) -> Self {
        Self { values: RwLock::new((Arc::new(value), None)) }
    }

    /// The current value, then the previous one while its overlap lasts.
    pub(crate) fn accepted(&self) -> (Arc<T>, Option<Arc<T>>) {
        let values = self.values.read().unwrap_or_else(|e| e.into_inner());
        let previous = values.1.as_ref().filter(|(_, until)| Instant::now() < *until).map(|(value, _)| value.clone());
        (values.0.clone(), previous)
    }

    /// Makes `next` current; the value it replaces is accepted for `overlap` more.
    pub(crate) fn rotate(&self, next: T, overlap: Duration) {
        let mut values = self.values.write().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now().checked_add(overlap).unwrap_or_else(Instant::now);
        let previous = std::mem::replace(&mut values.0, Arc::new(next));
        values.1 = Some((previous, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_replaced_value_is_accepted_for_the_overlap_then_not() {
        let key = Rotating::new("old");
        key.rotate("new", Duration::from_secs(60));
        let (current, previous) = key.accepted();
        assert_eq!((*current, previous.as_deref()), ("new", Some(&"old")));

        tokio::time::advance(Duration::from_secs(61)).await;

        assert_eq!(key.accepted().1, None);
    }
}
