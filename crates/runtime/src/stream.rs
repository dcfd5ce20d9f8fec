//! Event streams: history from the journal, then live events, gap-free.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use baton_types::{SessionEvent, SessionId};
use futures::{Stream, StreamExt};

use crate::error::{Error, Result};
use crate::handle::RuntimeHandle;
use crate::session::{Queued, SessionMsg, Subscription};

/// A stream of session events. It ends after the turn's last event (for
/// [`RuntimeHandle::send`]) or when the client drops it (for
/// [`RuntimeHandle::resume`]); an `Err` item ends it early (for example when a
/// slow client fell too far behind: resume from the last seq it saw).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<SessionEvent>> + Send>>;

/// A turn's event stream, ended the moment its last event is yielded rather
/// than when the forwarding task has gone: an HTTP/2 server then sends the
/// last message and the end of the stream in one flush, so a client that
/// stops reading at the turn's end has seen the whole stream. (One that
/// drops it before the trailers arrive makes its h2 count a reset for them;
/// after 1,024 of those hyper closes the connection with GOAWAY
/// `too_many_internal_resets`, failing every call multiplexed on it.)
struct UntilTurnEnd {
    inner: EventStream,
    ended: bool,
    /// Counted as an answer being waited for (a graceful stop waits for it)
    /// until the turn's end is read or the stream dropped.
    answering: crate::drain::Answering,
}

impl Stream for UntilTurnEnd {
    type Item = Result<SessionEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(Pin::new(&mut self.inner).poll_next(cx));
        self.ended = matches!(&item, Some(Ok(e)) if e.ends_turn());
        if self.ended || !matches!(&item, Some(Ok(_))) {
            self.answering.done();
        }
        Poll::Ready(item)
    }
}

impl RuntimeHandle {
    /// Every event after `after_seq`, then live events until the stream is
    /// dropped. Live model output arrives chunk by chunk, several chunks in
    /// a row sharing the seq of the `OutputDelta` record that holds their
    /// text joined: to resume after seeing part of a record, pass the seq
    /// before it and drop the text you have of it.
    pub async fn resume(&self, id: SessionId, after_seq: u64) -> Result<EventStream> {
        let sub = self
            .ask_read(id, |reply| SessionMsg::Subscribe { after_seq, reply })
            .await?;
        Ok(self.stream(id, sub, None))
    }

    /// The stream of a subscription: its history range read from the
    /// journal in pages, then its live events.
    /// A turn's stream counts as an answer being waited for (`answering`,
    /// taken by the caller before it was admitted, or here).
    pub(crate) fn stream(
        &self,
        id: SessionId,
        sub: Subscription,
        answering: Option<crate::drain::Answering>,
    ) -> EventStream {
        let store = self.shared().store.clone();
        let ends_with_turn = sub.turn.is_some();
        // Live events count against the subscriber's byte limit until the
        // client takes them from this stream (the bytes ride along).
        let (tx, rx) = tokio::sync::mpsc::channel::<(Result<SessionEvent>, usize)>(64);
        let queued_bytes = sub.queued_bytes.clone();
        tokio::spawn(async move {
            let Subscription {
                history_after,
                history_upto,
                mut rx,
                lagged,
                turn,
                queued_bytes,
            } = sub;
            let mut last = history_after;
            // What a resumption starts after: the last record seen whole.
            let mut complete = history_after;
            // History first, from the journal, in pages.
            while last < history_upto {
                let page = match store.read_journal(id, last, 512).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send((Err(e.into()), 0)).await;
                        return;
                    }
                };
                if page.is_empty() {
                    break;
                }
                for e in page {
                    if e.seq > history_upto {
                        break;
                    }
                    last = e.seq;
                    complete = e.seq;
                    if tx.send((Ok(e), 0)).await.is_err() {
                        return;
                    }
                }
            }
            // Then live events, which start right after `history_upto`. When
            // the client goes away, drop the receiver at once so the session
            // sees it (an idle session with no listener can passivate).
            loop {
                let Queued {
                    event: e,
                    fragment,
                    bytes,
                } = tokio::select! {
                    _ = tx.closed() => return,
                    e = rx.recv() => match e {
                        Some(e) => e,
                        None => break,
                    },
                };
                // Fragments of one output record share its seq.
                if e.seq < last || (e.seq == last && !fragment) {
                    queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    continue;
                }
                last = e.seq;
                // A record seen in part is read again whole on resumption.
                complete = if fragment { e.seq - 1 } else { e.seq };
                let end = turn.is_some() && e.ends_turn();
                if tx.send((Ok(e), bytes)).await.is_err() || end {
                    return;
                }
            }
            let err = if lagged.load(Ordering::Relaxed) {
                Error::ResourceExhausted(format!(
                    "the client fell too far behind session {id}; resume with after_seq = {complete}"
                ))
            } else {
                Error::Unavailable(format!(
                    "session {id} stopped streaming (restart or shutdown); resume with after_seq = {complete}"
                ))
            };
            let _ = tx.send((Err(err), 0)).await;
        });
        let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |(item, bytes)| {
            queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            item
        });
        if !ends_with_turn {
            return Box::pin(events);
        }
        Box::pin(UntilTurnEnd {
            inner: Box::pin(events),
            ended: false,
            answering: answering.unwrap_or_else(|| self.shared().drain.answering()),
        })
    }
}
