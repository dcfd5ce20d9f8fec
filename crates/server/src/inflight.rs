//! Open calls per principal: a cap on how many calls (streams included)
//! one principal may hold open at once, across connections, so one client
//! cannot take every stream the server has. A call counts from admission
//! until its response body ends or is dropped.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Open calls by principal label.
#[derive(Debug, Default)]
pub struct InFlight {
    open: Mutex<HashMap<String, usize>>,
}

/// One admitted call; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard {
    table: Arc<InFlight>,
    who: String,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.who);
            }
        }
    }
}

impl InFlight {
    /// Admit one more call of `who`, unless it already holds `limit`.
    pub fn admit(self: &Arc<Self>, who: &str, limit: usize) -> Result<CallGuard, usize> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(who.to_string()).or_default();
        if limit > 0 && *n >= limit {
            return Err(*n);
        }
        *n += 1;
        Ok(CallGuard {
            table: self.clone(),
            who: who.to_string(),
        })
    }
}

/// A response body that holds its call's guard until it ends.
pub struct Guarded<B> {
    inner: B,
    guard: Option<CallGuard>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, guard: CallGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_holds_at_most_its_limit_and_dropped_calls_free_slots() {
        let t = Arc::new(InFlight::default());
        let a = t.admit("p", 2).unwrap();
        let _b = t.admit("p", 2).unwrap();
        assert_eq!(t.admit("p", 2).err(), Some(2));
        assert!(t.admit("q", 2).is_ok());
        drop(a);
        assert!(t.admit("p", 2).is_ok());
    }
}
