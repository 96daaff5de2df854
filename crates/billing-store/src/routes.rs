//! Which account holds each reservation id, remembered so that Commit,
//! Extend and Release need no lookup.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;
use uuid::Uuid;

/// Reservation ids whose account is remembered.
const ROUTES: usize = 262_144;

/// Which account holds each reservation id. A reservation never moves, so
/// an entry never goes stale; it only saves a lookup.
#[derive(Debug)]
pub(crate) struct Routes(Mutex<LruCache<String, Uuid>>);

impl Default for Routes {
    fn default() -> Self {
        Self(Mutex::new(LruCache::new(
            NonZeroUsize::new(ROUTES).unwrap_or(NonZeroUsize::MIN),
        )))
    }
}

impl Routes {
    pub(crate) fn get(&self, reservation_id: &str) -> Option<Uuid> {
        self.lock().get(reservation_id).copied()
    }

    pub(crate) fn insert(&self, reservation_id: String, account_id: Uuid) {
        self.lock().put(reservation_id, account_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Uuid>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
