//! What the response and the stream share about a turn in flight.

use axum::http::HeaderValue;
use baton_runtime::{Caller, EventStream};
use baton_types::{EventKind, SessionId};
use futures::StreamExt;

use super::error::{ApiError, ended_early_error, runtime_error};

/// What a `chat.completion` and each of its chunks say about the call.
pub(super) struct Completion {
    /// `chatcmpl-<session id>`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The requested route; the response names the model that answered
    /// instead, once known.
    pub model: String,
}

/// Cancels the session's turn when dropped armed: the client went away
/// before the turn ended (as OpenAI stops generating).
pub(super) struct CancelOnDrop {
    runtime: Option<Caller>,
    id: SessionId,
}

impl CancelOnDrop {
    /// Armed: dropping it cancels the turn of session `id`.
    pub(super) fn new(runtime: Caller, id: SessionId) -> Self {
        Self {
            runtime: Some(runtime),
            id,
        }
    }

    pub(super) fn disarm(&mut self) {
        self.runtime = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let id = self.id;
            handle.spawn(async move {
                if let Err(e) = runtime.cancel(id).await {
                    tracing::debug!(session = %id, error = %e, "cannot cancel an abandoned front-door turn");
                }
            });
        }
    }
}

/// A server-sent events response from the frames `rx` yields, with the
/// session's id in its header.
pub(crate) fn sse_response(
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, std::convert::Infallible>>,
    id: SessionId,
) -> axum::response::Response {
    use axum::http::header;
    let mut resp = axum::response::Response::new(axum::body::Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(v) = header_value(&id.to_string()) {
        h.insert(super::headers::SESSION_HEADER, v);
    }
    resp
}

pub(super) fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// The next event of the turn: an error when the event stream fails or ends
/// before the turn does.
pub(super) async fn next_event(
    events: &mut EventStream,
    id: SessionId,
) -> Result<EventKind, ApiError> {
    match events.next().await {
        Some(Ok(event)) => Ok(event.kind),
        Some(Err(e)) => Err(runtime_error(&e)),
        None => Err(ended_early_error(id)),
    }
}
