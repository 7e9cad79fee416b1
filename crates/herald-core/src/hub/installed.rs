//! A hook the node installs once, after the hub is built (its observer, its
//! meter), shared by the parts of the hub that call it. Until it is
//! installed, calls are skipped.

use std::sync::{Arc, OnceLock};

/// The installed `T`, if any; clones share it.
pub(super) struct Installed<T: ?Sized>(Arc<OnceLock<Arc<T>>>);

impl<T: ?Sized> Installed<T> {
    /// Installs `hook`; only the first call takes effect.
    pub(super) fn install(&self, hook: Arc<T>) {
        let _ = self.0.set(hook);
    }

    /// The installed hook, if any.
    pub(super) fn get(&self) -> Option<&T> {
        self.0.get().map(|hook| &**hook)
    }
}

impl<T: ?Sized> Clone for Installed<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: ?Sized> Default for Installed<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T: ?Sized> std::fmt::Debug for Installed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Installed").field(&self.0.get().is_some()).finish()
    }
}
