//! A graceful stop: the runtime stops taking new work and waits, up to a
//! grace period, for the answers clients are waiting for to end before it
//! stops ([`crate::RuntimeHandle::drain`]).
//!
//! An answer being waited for is a turn's event stream (`send_message` and
//! what is built on it: `SendMessage`, the front door, flow steps) that has
//! not reached its turn's end and is still held by its client. Streams that
//! follow a session (`resume`) do not count: they would hold a stop forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How often a drain looks at what is left.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub(crate) struct Drain {
    draining: AtomicBool,
    answering: Arc<AtomicUsize>,
}

/// Counts one answer being waited for, until dropped or [`Self::done`].
#[derive(Debug)]
pub(crate) struct Answering(Option<Arc<AtomicUsize>>);

impl Answering {
    /// The answer ended (its turn's last event was read).
    pub(crate) fn done(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.done();
    }
}

impl Drain {
    pub(crate) fn answering(&self) -> Answering {
        self.answering.fetch_add(1, Ordering::SeqCst);
        Answering(Some(self.answering.clone()))
    }

    /// Why new work is refused, while a drain runs.
    pub(crate) fn refusing(&self) -> Option<String> {
        self.draining.load(Ordering::SeqCst).then(|| {
            "the server is shutting down: new sessions and messages are refused \
             (the answers in progress are being finished); retry on another server \
             or after the restart"
                .to_string()
        })
    }

    pub(crate) fn open(&self) -> usize {
        self.answering.load(Ordering::SeqCst)
    }

    /// Refuse new work from now on, then wait until no answer is being
    /// waited for or `grace` has passed; the answers still open.
    pub(crate) async fn run(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let open = self.open();
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
        }
    }
}
