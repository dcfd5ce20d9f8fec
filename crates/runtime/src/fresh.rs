//! Sessions just created, handed to their first actor without a read.
//!
//! A front-door call creates a one-shot session and sends its one message
//! at once. Its actor would otherwise read back the metadata, snapshot
//! and journal that `create_session` has just written: thread hand-offs
//! to the blocking pool on the call's critical path. Instead `create_session` leaves the state it wrote here
//! and the actor's first load takes it.
//!
//! Only correct while nothing else writes the session before its actor
//! loads: every write to a session goes through its actor, and the id is
//! known to nobody until `create_session` returns. An entry is taken once;
//! entries nobody took (a send refused after the start) are dropped when
//! the map is full or old, so the map stays small.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use baton_store::SessionMeta;
use baton_store::seal::SealKey;
use baton_types::SessionId;

use crate::state::SessionState;

/// Most entries held; past it the map is cleared (the actors of those
/// sessions read the store instead).
const CAP: usize = 4096;

/// An entry older than this is not used (its actor reads the store).
const MAX_AGE: Duration = Duration::from_secs(10);

/// What a new session's first actor starts from.
pub(crate) struct Fresh {
    pub meta: SessionMeta,
    pub state: SessionState,
    pub seal: Option<Arc<SealKey>>,
    at: Instant,
}

/// The sessions created and not yet loaded by an actor.
#[derive(Default)]
pub(crate) struct FreshSessions {
    map: Mutex<HashMap<SessionId, Fresh>>,
}

impl std::fmt::Debug for FreshSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshSessions").finish_non_exhaustive()
    }
}

impl FreshSessions {
    /// Keep what session `id` was created with.
    pub(crate) fn put(
        &self,
        id: SessionId,
        meta: SessionMeta,
        state: SessionState,
        seal: Option<Arc<SealKey>>,
    ) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CAP {
            map.clear();
        }
        map.insert(
            id,
            Fresh {
                meta,
                state,
                seal,
                at: Instant::now(),
            },
        );
    }

    /// Take what session `id` was created with, if it is still here.
    pub(crate) fn take(&self, id: SessionId) -> Option<Fresh> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
            .filter(|f| f.at.elapsed() < MAX_AGE)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
